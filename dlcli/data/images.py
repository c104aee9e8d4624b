"""Image data as every image model sees it: uint8 pixels with their shape and classes.

This is the one place the rest of dlcli learns what an image dataset is. Models and tasks
read `shape`, `classes` and the normalisation from an ImageData (or from a checkpoint's
metadata, which holds the same three), never from a dataset's name.
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
    train: tuple[torch.Tensor, torch.Tensor]  # uint8 (N, C, H, W) (maybe memory-mapped), int64 (N,)
    test: tuple[torch.Tensor, torch.Tensor]
    source: str  # where the files were found, for people
    mean: tuple[float, ...]  # per-channel mean of the training pixels, scaled to [0, 1]
    std: tuple[float, ...]
    val: tuple[torch.Tensor, torch.Tensor] | None = None  # a held-out split of the source's own

    @property
    def labeled(self) -> bool:
        return bool(self.classes)

    def describe(self) -> dict:
        """What a checkpoint keeps so that sampling and evaluating need no data."""
        return {"shape": list(self.shape), "classes": list(self.classes),
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

    name = config["dataset"]
    if name not in KNOWN_STATS:
        raise DlcliError(f"unknown image dataset {name!r}; choose one of: {', '.join(KNOWN_STATS)}")
    images = load_images(name, data_dir)
    mean, std = KNOWN_STATS[name]
    return ImageData(name, tuple(images.train_x.shape[1:]), images.classes,
                     (images.train_x, images.train_y), (images.test_x, images.test_y),
                     images.source, mean, std)
