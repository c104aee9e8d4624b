"""Image data as every image model sees it: uint8 pixels with their shape and classes.

This is the one place the rest of dlcli learns what an image dataset is. Models and tasks
read `shape`, `classes` and the normalisation from an ImageData (or from a checkpoint's
metadata, which holds the same), never from a dataset's name.

All splits index one array of pixels, which may be memory-mapped from a cache file, or
drawn when indexed (`shapes`, dlcli.data.shapes.ShapeImages): a split is a tensor of row
indices, so holding one out copies nothing.
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
    digest: str | None  # the source's own fingerprint (a folder's cache key), or None
    val: torch.Tensor | None = None  # the source's own validation rows; None: the task holds some out
    # Data whose factors of variation are known (shapes): each row's factor indices (N, K),
    # the factors' names and how many values each takes; None where they are not known.
    factors: torch.Tensor | None = None
    factor_names: list[str] | None = None
    factor_sizes: list[int] | None = None

    @property
    def sha256(self) -> str:
        """Of the data as loaded (provenance): the source's fingerprint, else the pixels and
        labels hashed, once and only when asked (a training run's provenance asks)."""
        if self.digest is None:
            from dlcli.tasks.base import sha256_of

            self.digest = sha256_of(self.images, self.labels)
        return self.digest

    @property
    def labeled(self) -> bool:
        return bool(self.classes)

    def describe(self) -> dict:
        """What a checkpoint keeps so that sampling and evaluating need no data."""
        return {"dataset": self.name, "shape": list(self.shape), "classes": list(self.classes),
                "mean": list(self.mean), "std": list(self.std)}


def load_image_data(config: dict, data_dir=None) -> ImageData:
    """The image data a config names: its `data` folder when given (`--data DIR`), else
    its `dataset`, found as the data layer finds it."""
    from dlcli.data.catalog import get_dataset, list_datasets

    if config.get("data") or config.get("dataset") == "folder":
        if not config.get("data"):
            raise DlcliError("dataset folder needs the folder: --data DIR")
        from dlcli.data.folder import load_folder

        return load_folder(config)
    name = config["dataset"]
    info = get_dataset(name)
    if info.kind != "image":
        names = ", ".join(d.name for d in list_datasets("image"))
        raise DlcliError(f"{name!r} is not an image dataset; choose one of: {names}")
    if name == "shapes":
        from dlcli.data.shapes import load_shapes

        return load_shapes(config)
    if name == "cifar10":
        from dlcli.data.cifar import load_cifar10

        return load_cifar10(data_dir)
    from dlcli.data.mnist import load_images

    found = load_images(name, data_dir)
    images = torch.cat([found.train_x, found.test_x])
    labels = torch.cat([found.train_y, found.test_y])
    n = len(found.train_x)
    return ImageData(name, tuple(images.shape[1:]), found.classes, images, labels,
                     torch.arange(n), torch.arange(n, len(images)), found.source, info.mean,
                     info.std, None)
