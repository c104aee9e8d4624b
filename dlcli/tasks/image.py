"""Shared by every task that trains on images (classifiers, VAEs, GANs): what the data is
(its shape, classes and statistics), loading, the validation hold-out, batching by
indexing, and labels.

The networks are built for the data they will see. Training loads the data first and builds
from its description (ImageData.describe(): dataset, shape, classes, mean, std); a task
rebuilt from a checkpoint reads the same description from the checkpoint's metadata, so
sampling and evaluating never need the training data. Checkpoints written before the
description was kept are MNIST-shaped, of the dataset their config names.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import torch

from dlcli.data.batches import IndexBatches, epoch_permutation
from dlcli.errors import DlcliError
from dlcli.tasks.base import Task, sha256_of

DATA_KEY = "image_data"  # the checkpoint metadata that describes the data
DEVICE_COPY_BYTES = 2 << 30  # data up to this size moves to the device once; larger, per batch


def to_unit_float(x: torch.Tensor, *rest):
    """uint8 pixels -> float in [0, 1]; other tensors pass through."""
    x = x.float().div_(255) if x.dtype == torch.uint8 else x
    return (x, *rest)


@dataclass
class Split:
    """One split: rows of the data's arrays (which hold every split, and may be memory-mapped,
    so a split copies nothing)."""
    images: torch.Tensor
    labels: torch.Tensor
    rows: torch.Tensor

    def __len__(self) -> int:
        return len(self.rows)

    def take(self, rows: torch.Tensor | slice) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, labels) of some of the split's rows, as stored (uint8 pixels)."""
        picked = self.rows[rows]
        return self.images[picked], self.labels[picked]


def on_device(device):
    """A batch's `prepare`: to the device (when the data stays elsewhere), pixels to floats."""
    if device is None:
        return to_unit_float
    return lambda x, y: to_unit_float(x.to(device, non_blocking=True), y.to(device))


# What every image checkpoint was before checkpoints described their data: 1x28x28 pixels,
# and (in the cnn) MNIST's normalisation, whatever the dataset. This is history, so it is
# written out here rather than read from the catalog, whose numbers may change.
LEGACY_SHAPE, LEGACY_MEAN, LEGACY_STD = [1, 28, 28], [0.1307], [0.3081]


def legacy_description(config: dict) -> dict:
    """The data a checkpoint from before the data was described in its metadata learned:
    LEGACY_SHAPE images of its dataset's classes (an MNIST-format dataset's, or digits)."""
    from dlcli.data.catalog import MNIST_DIGITS, get_dataset

    return {"dataset": config["dataset"], "shape": list(LEGACY_SHAPE),
            "classes": list(get_dataset(config["dataset"]).classes or MNIST_DIGITS),
            "mean": list(LEGACY_MEAN), "std": list(LEGACY_STD)}


MAX_SIDE, MAX_CHANNELS, MAX_CLASSES = 8192, 16, 100_000  # far beyond any real image data


def checked_description(text: str) -> dict:
    """A checkpoint's description of its data, refused (before anything is built from it)
    unless it is what dlcli writes: a damaged or hostile file must not make dlcli build a
    network of a billion inputs."""
    try:
        d = json.loads(text)
        shape, classes = d["shape"], d["classes"]
        ok = (isinstance(d["dataset"], str) and isinstance(classes, list)
              and all(isinstance(c, str) for c in classes) and len(classes) <= MAX_CLASSES
              and isinstance(shape, list) and len(shape) in (1, 3)
              and all(isinstance(v, int) and 0 < v for v in shape)
              and (len(shape) == 1 or shape[0] <= MAX_CHANNELS and max(shape[1:]) <= MAX_SIDE))
        if ok and len(shape) == 3:
            stats = d["mean"] + d["std"]
            ok = (len(d["mean"]) == len(d["std"]) == shape[0]
                  and all(isinstance(v, (int, float)) and math.isfinite(v) for v in stats)
                  and all(v > 0 for v in d["std"]))
    except (ValueError, TypeError, KeyError):
        ok = False
    if not ok:
        raise DlcliError(f"the checkpoint's {DATA_KEY} metadata is not what dlcli writes (a "
                         "damaged or edited file): it must give the dataset, its shape (C, H, W "
                         f"up to {MAX_CHANNELS}x{MAX_SIDE}x{MAX_SIDE}), class names and "
                         "per-channel mean and std")
    return d


def shape_text(shape) -> str:
    return "x".join(map(str, shape))


class ImageTask(Task):
    drop_last = False  # GANs and BN nets may prefer equal batches

    def build(self) -> None:
        self.data = None  # the ImageData, once loaded
        self.factor_data = None  # set up with the data, where its factors are known
        self.data_spec = self.describe_data()
        self.class_names = list(self.data_spec["classes"])
        self.classes = len(self.class_names)
        if self.spec.conditional and not self.classes:
            raise DlcliError(f"{self.spec.name} draws the class it is asked for, but "
                             f"{self.data_spec['dataset']} has no classes (a flat folder); give "
                             "the images class subfolders, or train an unconditional model")
        self.build_networks()

    def build_networks(self) -> None:
        """Create self.modules from self.data_spec (shape, classes, mean, std)."""
        raise NotImplementedError

    def describe_data(self) -> dict:
        """The data's description: from the checkpoint being rebuilt or resumed, else from
        the data itself, loaded now."""
        if DATA_KEY in self.meta:
            return checked_description(self.meta[DATA_KEY])
        if "config" in self.meta:
            return legacy_description(self.config)
        self.data = self.load_data()
        return self.data.describe()

    def load_data(self):
        from dlcli.data.images import load_image_data

        return load_image_data(self.config, self.data_dir)

    def checkpoint_extra(self) -> dict[str, str]:
        return {DATA_KEY: json.dumps(self.data_spec)}

    def setup_data(self) -> None:
        data = self.data if self.data is not None else self.load_data()
        found = data.describe()
        for key in ("shape", "classes"):
            if list(found[key]) != list(self.data_spec[key]):
                raise DlcliError(
                    f"this model was built for {self.data_spec['dataset']} images of "
                    f"{key} {self.data_spec[key]}, but the data found now ({data.source}) has "
                    f"{found[key]}; point --data-dir (or --data) at the data it was trained on")
        train, val = data.train, data.val
        if val is None:
            val_size = min(int(self.config.get("val_size", 0)), len(train) // 5)
            # A fixed hold-out, the same for every seed and run: the last val_size of a
            # permutation seeded by the split's size alone.
            order = torch.randperm(len(train), generator=torch.Generator().manual_seed(len(train)))
            train, val = train[order[:len(train) - val_size]], train[order[len(train) - val_size:]]
        images, labels = data.images, data.labels
        if images.nbytes <= DEVICE_COPY_BYTES:  # small: onto the device once, as a whole
            images, labels = images.to(self.device), labels.to(self.device)
        train, val, test = (rows.to(images.device) for rows in (train, val, data.test))
        self.train_data = Split(images, labels, train)
        self.val_data = Split(images, labels, val) if len(val) else None
        self.test_data = Split(images, labels, test)
        self.data_source = data.source
        self.data_digest = data.digest  # a folder's; the pixels are hashed only when asked
        self.factor_data = None  # data whose factors of variation are known: measured on them
        if data.factors is not None:
            from dlcli.disentanglement import FactorData

            self.factor_data = FactorData(images, data.factors, data.factor_names,
                                          data.factor_sizes, labels)
        self.data = None  # the splits hold what is needed

    def data_sha256(self) -> str:
        data = self.train_data  # every split indexes the same pixels
        digest = self.data_digest or sha256_of(data.images, data.labels)
        return sha256_of(digest, self.train_data.rows, self.test_data.rows,
                         self.val_data.rows if self.val_data is not None else "")

    def epoch_images(self) -> int:
        """How many training images an epoch sees: `epoch_images` of them, the first of
        each epoch's shuffle (a fresh draw every epoch), or the whole split."""
        n = len(self.train_data)
        return min(n, self.config.get("epoch_images") or n)

    def train_batches(self, epoch: int):
        split, size = self.train_data, self.config["batch_size"]
        n = self.epoch_images()
        shuffle = epoch_permutation(len(split), self.config["seed"], epoch)[:n]
        order = split.rows[shuffle.to(split.rows.device)]
        # BatchNorm cannot normalise a batch of one image (one value per feature): such a
        # last batch is left out; the next epoch's shuffle puts that image elsewhere
        drop_last = self.drop_last or (n % size == 1 and size > 1)
        return IndexBatches((split.images, self.training_labels(split)), size, order,
                            prepare=self.to_device(split), drop_last=drop_last)

    def training_labels(self, split: Split) -> torch.Tensor:
        """What a training batch pairs each image with (indexed as split.images): its label."""
        return split.labels

    def test_items(self) -> int:
        return len(self.test_data)

    def eval_batches(self, split: str = "val", batch_size: int = 1000):
        data = self.val_data if split == "val" and self.val_data is not None else self.test_data
        return self.batches_of(data, batch_size)

    def batches_of(self, split: Split, batch_size: int = 1000) -> IndexBatches:
        """Every row of a split once, in order, as (images in [0, 1], labels) on the device."""
        return IndexBatches((split.images, split.labels), batch_size, split.rows,
                            prepare=self.to_device(split))

    def to_device(self, split: Split):
        """A batch's `prepare` for rows of `split`: to the device where the split stays
        elsewhere (a memory-mapped folder), and pixels to floats."""
        return on_device(self.device if split.images.device != self.device else None)

    def parse_label(self, label: str | None):
        """--label as sample() takes it: None, 'all', or a class index. A class name or an
        index is accepted, the name first (so in a folder of classes "1", "2", "3", --label 1
        means the folder named 1); anything else is refused, naming the valid ones."""
        if label is None or label == "all":
            return label
        names = self.class_names
        if label in names:
            return names.index(label)
        folded = [name.casefold() for name in names]
        if folded.count(label.casefold()) == 1:  # "Ankle Boot" for "ankle boot"
            return folded.index(label.casefold())
        if label.isdecimal() and int(label) < self.classes:
            return int(label)
        return self.unknown_label(label)

    def unknown_label(self, label):
        names = self.class_names
        listed = ", ".join(repr(n) if " " in n else n for n in names[:20])
        more = f" and {len(names) - 20} more" if len(names) > 20 else ""
        raise DlcliError(f"--label {label!r} is not a class of {self.data_spec['dataset']}; "
                         f"give a class name or an index 0-{self.classes - 1}, or 'all': "
                         f"{listed}{more}")

    def captions(self, n: int, label=None, grid: str | None = None, interpolate: bool = False):
        """--label all: one row per class, labelled with its name."""
        from dlcli.images import Captions

        words = Captions(below="each row: one path through the latent space, left to right"
                         if interpolate else "")
        if label == "all" and self.spec.conditional:
            words.rows = self.class_names
        return words if words.rows or words.below else None


def labels_for(label, n: int, classes: int, device="cpu") -> tuple[torch.Tensor, int]:
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
