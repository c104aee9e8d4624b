"""The dataset catalog: every named dataset, what kind of data it is, its shape and classes.

Torch-free (it is read by `dlcli --help`, `dlcli models` and `dlcli datasets`). A model
says which kinds of data it takes ("image", "toy", "text"); the catalog says which datasets
are of each kind. A folder of your own images is of kind "image" too, with the shape and
classes found in it.
"""

from __future__ import annotations

from dataclasses import dataclass

MNIST_DIGITS = tuple(str(i) for i in range(10))
RESIZE_MODES = ("center-crop", "pad", "stretch")  # how a folder's images are brought to one size
SHAPES_GRIDS = ("full", "small")  # the factor grids of `shapes` (dlcli.data.shapes.GRIDS)
SHAPES_IMAGE_SIZES = (64, 32)  # the sizes `shapes` is drawn at


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    kind: str  # image | toy | text
    description: str
    shape: tuple[int, ...] = ()  # (C, H, W) for images
    classes: tuple[str, ...] = ()  # class names, index = label; () when unlabeled or text
    source: str = ""  # where the files come from
    mean: tuple[float, ...] = ()  # per-channel mean and std of the training pixels in [0, 1]
    std: tuple[float, ...] = ()
    by_name: bool = True  # chosen with --dataset NAME; a folder is chosen with --data DIR
    factors: tuple[str, ...] = ()  # its known factors of variation, where it has them


_DATASETS: dict[str, DatasetInfo] = {}
# shapes' pixel statistics at the full grid and 64 px (dlcli.data.shapes.pixel_statistics,
# exact: the loader computes them for the grid and size asked for)
MEAN_SHAPES, STD_SHAPES = (0.01951,), (0.13351,)


def register_dataset(info: DatasetInfo) -> DatasetInfo:
    if info.name in _DATASETS:
        raise ValueError(f"dataset {info.name!r} registered twice")
    _DATASETS[info.name] = info
    return info


def get_dataset(name: str) -> DatasetInfo:
    from dlcli.errors import DlcliError, did_you_mean

    try:
        return _DATASETS[name]
    except KeyError:
        raise DlcliError(did_you_mean("dataset", name, _DATASETS)) from None


def list_datasets(kind: str | None = None) -> list[DatasetInfo]:
    return [d for d in _DATASETS.values() if kind is None or d.kind == kind]


def check_shapes_keys(config: dict) -> tuple[str, int]:
    """The `shapes` grid and image size a config asks for, refused unless dlcli draws them."""
    from dlcli.errors import DlcliError

    grid = config.get("shapes_grid") or "full"
    if grid not in SHAPES_GRIDS:
        raise DlcliError(f"unknown shapes_grid {grid!r}; choose one of: {', '.join(SHAPES_GRIDS)}")
    size = config.get("image_size") or 64
    if size not in SHAPES_IMAGE_SIZES:
        raise DlcliError(f"shapes are drawn at image_size 64 or 32, got {size!r}")
    return grid, size


def names_of_kinds(kinds) -> tuple[str, ...]:
    """The datasets a model that takes these kinds of data can train on."""
    return tuple(d.name for d in _DATASETS.values() if d.kind in kinds)


# Image statistics are the values commonly quoted (and, for MNIST, the ones dlcli's models
# were always trained with). CIFAR-10's std is the std of all training pixels (0.247, ...),
# not the often-copied mean of per-image stds (0.2023, ...).
register_dataset(DatasetInfo(
    "mnist", "image", "handwritten digits (LeCun et al., 1998)", (1, 28, 28), MNIST_DIGITS,
    "IDX files: --data-dir, $DLCLI_DATA_DIR, the cache, a download; else a bundled subset",
    (0.1307,), (0.3081,)))
register_dataset(DatasetInfo(
    "fashion-mnist", "image", "Zalando's clothing pictures (Xiao et al., 2017)", (1, 28, 28),
    ("T-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
     "ankle boot"),
    "IDX files: --data-dir, $DLCLI_DATA_DIR, the cache, a download", (0.2860,), (0.3530,)))
register_dataset(DatasetInfo(
    "cifar10", "image", "small photos in 10 classes (Krizhevsky, 2009)", (3, 32, 32),
    ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    "cifar-10-binary.tar.gz: --data-dir, $DLCLI_DATA_DIR, the cache, a download",
    (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)))
register_dataset(DatasetInfo(
    "shapes", "image", "sprites over 5 known factors, on the dSprites grid (Matthey et al., 2017)",
    (1, 64, 64), ("square", "ellipse", "heart"),
    "generated (shapes_grid: full | small; image_size: 64 | 32)", MEAN_SHAPES, STD_SHAPES,
    factors=("shape", "scale", "orientation", "x", "y")))
# Your own images: shape and classes are found in the folder (and kept in the checkpoint).
register_dataset(DatasetInfo(
    "folder", "image", "your own images: --data DIR (class subfolders give the labels)",
    source="--data DIR", by_name=False))
for _table in ("and", "or", "xor"):
    register_dataset(DatasetInfo(
        _table, "toy", f"the truth table of {_table} over two binary inputs", (2,), ("0", "1"),
        "built in"))
register_dataset(DatasetInfo(
    "numbers", "text", "numbers in digits -> the same numbers in English words", source="generated"))
register_dataset(DatasetInfo(
    "multi30k", "text", "Multi30k image captions, English-German (Elliott et al., 2016)",
    source="--data-dir, $DLCLI_DATA_DIR or the cache"))
