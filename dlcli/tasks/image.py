"""Shared by every task that trains on MNIST-format images (classifiers, VAEs, GANs):
loading, the validation hold-out, batching by indexing, and picture grids."""

from __future__ import annotations

import torch

from dlcli.data.batches import IndexBatches, epoch_permutation
from dlcli.tasks.base import Task, sha256_of


def to_unit_float(x: torch.Tensor, *rest):
    """uint8 pixels -> float in [0, 1]; other tensors pass through."""
    x = x.float().div_(255) if x.dtype == torch.uint8 else x
    return (x, *rest)


def in_order(data, batch_size: int = 1000) -> IndexBatches:
    """Evaluation batches of (images, labels): every row once, in order, as floats."""
    return IndexBatches(data, batch_size, torch.arange(len(data[0])), prepare=to_unit_float)


class ImageTask(Task):
    image_shape = (1, 28, 28)
    classes = 10

    def setup_data(self) -> None:
        from dlcli.data.mnist import load_images

        images = load_images(self.config["dataset"], self.data_dir)
        self.class_names = images.classes
        x, y = images.train_x, images.train_y
        val_size = min(int(self.config.get("val_size", 0)), len(x) // 5)
        # A fixed hold-out, the same for every seed and run: the last val_size of a
        # permutation seeded by the dataset size alone.
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(len(x)))
        train_idx, val_idx = order[:len(x) - val_size], order[len(x) - val_size:]
        dev = self.device
        self.train_data = (x[train_idx].to(dev), y[train_idx].to(dev))
        self.val_data = (x[val_idx].to(dev), y[val_idx].to(dev)) if val_size else None
        self.test_data = (images.test_x.to(dev), images.test_y.to(dev))
        self.data_source = images.source

    def data_sha256(self) -> str:
        return sha256_of(self.train_data, self.val_data, self.test_data)

    def train_batches(self, epoch: int):
        n, size = len(self.train_data[0]), self.config["batch_size"]
        order = epoch_permutation(n, self.config["seed"], epoch)
        # BatchNorm cannot normalise a batch of one image (one value per feature): such a
        # last batch is left out; the next epoch's shuffle puts that image elsewhere
        drop_last = self.drop_last or (n % size == 1 and size > 1)
        return IndexBatches(self.train_data, size, order, prepare=to_unit_float,
                            drop_last=drop_last)

    drop_last = False  # GANs and BN nets may prefer equal batches

    def test_items(self) -> int:
        return len(self.test_data[0])

    def eval_batches(self, split: str = "val", batch_size: int = 1000):
        data = self.val_data if split == "val" and self.val_data is not None else self.test_data
        return in_order(data, batch_size)

    def class_list(self) -> list[str]:
        """Class names: the loaded data's, else the dataset's (a checkpoint names it)."""
        from dlcli.data.mnist import CLASSES

        return getattr(self, "class_names", None) or CLASSES.get(
            self.config["dataset"], [str(i) for i in range(self.classes)])

    def captions(self, n: int, label=None, grid: str | None = None, interpolate: bool = False):
        """--label all: one row per class, labelled with its name."""
        from dlcli.images import Captions

        words = Captions(below="each row: one path through the latent space, left to right"
                         if interpolate else "")
        if label == "all" and self.spec.conditional:
            words.rows = self.class_list()
        return words if words.rows or words.below else None


def labels_for(label, n: int, classes: int = 10, device="cpu") -> tuple[torch.Tensor, int]:
    """The labels a conditional sample asks for, and images per grid row.

    label an int: n copies of it (rows of 8); 'all': one row per class, n // classes
    each (at least 1); None: n labels cycling through the classes, one class per column."""
    if label == "all":
        per = max(1, n // classes)
        return torch.arange(classes, device=device).repeat_interleave(per), per
    if label is None:
        return torch.arange(n, device=device) % classes, classes
    return torch.full((n,), int(label), dtype=torch.long, device=device), min(n, 8)


def interpolation_path(start: torch.Tensor, end: torch.Tensor, steps: int) -> torch.Tensor:
    """`steps` points from start to end (rows of z), linearly; (rows, steps, dim) -> flat."""
    t = torch.linspace(0, 1, steps, device=start.device).view(1, steps, 1)
    path = start.unsqueeze(1) * (1 - t) + end.unsqueeze(1) * t
    return path.reshape(-1, start.shape[-1])
