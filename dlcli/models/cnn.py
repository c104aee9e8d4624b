"""A small LeNet-style convolutional classifier (LeCun et al., 1998) with BatchNorm.

    C x H x W -> conv5x5(32) BN ReLU -> pool -> conv5x5(64) BN ReLU -> pool -> 64 x H/4 x W/4
              -> linear(128) BN ReLU -> dropout -> linear(classes)

(In the code each ReLU follows its pool: max-pooling commutes with ReLU, and this way
the ReLU runs on a quarter of the values.) The input is normalised per channel with the
training data's mean and standard deviation, so the network takes pixels in [0, 1].

Besides classifying, it is the judge of the generative models: its 128 penultimate
features give the Frechet distance of GAN samples, its predictions the label accuracy
of conditional samples.
"""

from __future__ import annotations

import torch
from torch import nn

from dlcli.errors import DlcliError

POOLS = 2  # each halves the map (rounding down), so a side must be at least 2**POOLS


class CNN(nn.Module):
    def __init__(self, shape: tuple[int, int, int], classes: int,
                 channels: tuple[int, int] = (32, 64), width: int = 128, dropout: float = 0.3,
                 mean: tuple[float, ...] = (0.0,), std: tuple[float, ...] = (1.0,)):
        super().__init__()
        colours, height, width_px = shape
        c1, c2 = channels
        self.conv = nn.Sequential(
            nn.Conv2d(colours, c1, 5, padding=2, bias=False), nn.BatchNorm2d(c1), nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Conv2d(c1, c2, 5, padding=2, bias=False), nn.BatchNorm2d(c2), nn.MaxPool2d(2),
            nn.ReLU(),
        )
        flat = c2 * (height // 2 // 2) * (width_px // 2 // 2)
        self.fc = nn.Sequential(
            nn.Flatten(), nn.Linear(flat, width, bias=False), nn.BatchNorm1d(width),
            nn.ReLU(),
        )
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(width, classes)
        # The data's statistics, not learned and not saved with the weights: the checkpoint's
        # metadata holds them (and checkpoints from before that are MNIST's).
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features of images in [0, 1]."""
        return self.fc(self.conv((x - self.mean) / self.std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.dropout(self.features(x)))


def build(config: dict, data: dict) -> CNN:
    """The cnn of a config for images of `data`'s shape, classes and statistics."""
    if len(config["channels"]) != 2:
        raise DlcliError(f"the cnn has two convolution blocks, so channels takes two widths "
                         f"([32, 64], say), got {config['channels']}")
    shape = tuple(data["shape"])
    if len(shape) != 3 or min(shape[1:]) < 2 ** POOLS:
        raise DlcliError(f"the cnn takes images of at least {2 ** POOLS}x{2 ** POOLS} pixels, "
                         f"got {'x'.join(map(str, shape))}")
    return CNN(shape, len(data["classes"]), tuple(config["channels"]), config["width"],
               config["dropout"], tuple(data["mean"]), tuple(data["std"]))
