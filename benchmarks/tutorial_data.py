"""The tutorial way of reading MNIST, shared by the benchmarks' baselines."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


class TutorialMNIST(torch.utils.data.Dataset):
    """The tutorial way: torchvision.datasets.MNIST with transforms.ToTensor(), step for
    step (torchvision itself is not needed): index one image, make it a PIL image, and
    turn that back into a float tensor in [0, 1]; the DataLoader collates. (The tutorials'
    Normalize is left out: dlcli's networks take [0, 1] and normalise inside.)"""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.data, self.targets = images.view(-1, 28, 28), labels

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        img, target = self.data[i], int(self.targets[i])
        img = Image.fromarray(img.numpy(), mode="L")
        return to_tensor(img), target


def to_tensor(picture: Image.Image) -> torch.Tensor:
    """torchvision.transforms.functional.to_tensor for an 8-bit PIL image."""
    img = torch.from_numpy(np.array(picture, np.uint8, copy=True))
    img = img.view(picture.size[1], picture.size[0], len(picture.getbands()))
    img = img.permute((2, 0, 1)).contiguous()
    return img.to(dtype=torch.get_default_dtype()).div(255)
