"""Image data as every image model sees it: uint8 pixels with their shape and classes.

This is the one place the rest of dlcli learns what an image dataset is. Models and tasks
read `shape`, `classes` and the normalisation from an ImageData (or from a checkpoint's
metadata, which holds the same), never from a dataset's name.

All splits index one array of pixels, which may be memory-mapped from a cache file: a
split is a tensor of row indices, so holding one out copies nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dlcli.errors import DlcliError


@dataclass
class ImageData:
    name: str  # the dataset's name ("mnist", "cifar10") or "folder"
    shape: tuple[int, int, int]  # (channels, height, width) of every image
    classes: list[str]  # class names, index = label; [] when the images carry no labels
    images: torch.Tensor  # uint8 (N, C, H, W), every split's rows; may be memory-mapped
    labels: torch.Tensor  # int64 (N,); zeros when unlabeled
    train: torch.Tensor  # int64 row indices of each split
    test: torch.Tensor
    source: str  # where the files were found, for people
    mean: tuple[float, ...]  # per-channel mean of the training pixels, scaled to [0, 1]
    std: tuple[float, ...]
    sha256: str  # of the data as loaded (provenance)
    val: torch.Tensor | None = None  # the source's own validation rows; None: the task holds some out

    @property
    def labeled(self) -> bool:
        return bool(self.classes)

    def describe(self) -> dict:
        """What a checkpoint keeps so that sampling and evaluating need no data."""
        return {"dataset": self.name, "shape": list(self.shape), "classes": list(self.classes),
                "mean": list(self.mean), "std": list(self.std)}


# Per-channel statistics of the training pixels, the values commonly quoted (and the ones
# today's MNIST models were trained with).
KNOWN_STATS = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
}


def load_image_data(config: dict, data_dir=None) -> ImageData:
    """The image data a config names (its `dataset`), found as the data layer finds it."""
    from dlcli.data.mnist import load_images
    from dlcli.tasks.base import sha256_of

    name = config["dataset"]
    if name not in KNOWN_STATS:
        raise DlcliError(f"unknown image dataset {name!r}; choose one of: {', '.join(KNOWN_STATS)}")
    found = load_images(name, data_dir)
    images = torch.cat([found.train_x, found.test_x])
    labels = torch.cat([found.train_y, found.test_y])
    n = len(found.train_x)
    mean, std = KNOWN_STATS[name]
    return ImageData(name, tuple(images.shape[1:]), found.classes, images, labels,
                     torch.arange(n), torch.arange(n, len(images)), found.source, mean, std,
                     sha256_of(images, labels))
