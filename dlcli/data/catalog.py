"""The dataset catalog: every named dataset, what kind of data it is, its shape and classes.

Torch-free (it is read by `dlcli --help`, `dlcli models` and `dlcli datasets`). A model
says which kinds of data it takes ("image", "toy", "text"); the catalog says which datasets
are of each kind. A folder of your own images is of kind "image" too, with the shape and
classes found in it.
"""

from __future__ import annotations

from dataclasses import dataclass

MNIST_DIGITS = tuple(str(i) for i in range(10))


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    kind: str  # image | toy | text
    description: str
    shape: tuple[int, ...] = ()  # (C, H, W) for images
    classes: tuple[str, ...] = ()  # class names, index = label; () when unlabeled or text
    source: str = ""  # where the files come from


_DATASETS: dict[str, DatasetInfo] = {}


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


def names_of_kinds(kinds) -> tuple[str, ...]:
    """The datasets a model that takes these kinds of data can train on."""
    return tuple(d.name for d in _DATASETS.values() if d.kind in kinds)


register_dataset(DatasetInfo(
    "mnist", "image", "handwritten digits (LeCun et al., 1998)", (1, 28, 28), MNIST_DIGITS,
    "IDX files: --data-dir, $DLCLI_DATA_DIR, the cache, a download; else a bundled subset"))
register_dataset(DatasetInfo(
    "fashion-mnist", "image", "Zalando's clothing pictures (Xiao et al., 2017)", (1, 28, 28),
    ("T-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
     "ankle boot"),
    "IDX files: --data-dir, $DLCLI_DATA_DIR, the cache, a download"))
for _table in ("and", "or", "xor"):
    register_dataset(DatasetInfo(
        _table, "toy", f"the truth table of {_table} over two binary inputs", (2,), ("0", "1"),
        "built in"))
register_dataset(DatasetInfo(
    "numbers", "text", "numbers in digits -> the same numbers in English words", source="generated"))
register_dataset(DatasetInfo(
    "multi30k", "text", "Multi30k image captions, English-German (Elliott et al., 2016)",
    source="--data-dir, $DLCLI_DATA_DIR or the cache"))
