"""MNIST-format image data: IDX files, verified, found in a fixed order of places.

Look-up order for each dataset: --data-dir, $DLCLI_DATA_DIR, the user cache
($XDG_CACHE_HOME/dlcli), a download from the public mirrors (verified, saved to the
cache), and last, for MNIST only, the small subset bundled with the package.
Everything is returned as uint8 tensors held in memory.
"""

from __future__ import annotations

import gzip
import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from dlcli.console import notice
from dlcli.data.files import (
    IDX_FILES,
    OFFLINE_TTL,
    cache_dir,
    candidate_dirs,
    downloads_allowed,
    fetch,
    keep_verified,
    read_maybe_gzip,
    recently_failed,
    remember_failure,
)
from dlcli.errors import DlcliError

# SHA-256 of the decompressed files. Fashion-MNIST publishes only gzip MD5s, so its
# files are checked by their IDX headers and sizes instead (None below).
SHA256 = {
    "mnist": {
        "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
    "fashion-mnist": None,
}
MIRRORS = {
    "mnist": ["https://ossci-datasets.s3.amazonaws.com/mnist/",
              "https://storage.googleapis.com/cvdf-datasets/mnist/"],
    "fashion-mnist": ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
}
SIZES = {"train": 60000, "t10k": 10000}
BUNDLED = Path(__file__).parent / "bundled"
CLASSES = {
    "mnist": [str(i) for i in range(10)],
    "fashion-mnist": ["T-shirt", "trouser", "pullover", "dress", "coat",
                      "sandal", "shirt", "sneaker", "bag", "ankle boot"],
}


@dataclass
class ImageSet:
    name: str
    train_x: torch.Tensor  # (N, 1, 28, 28) uint8
    train_y: torch.Tensor  # (N,) int64
    test_x: torch.Tensor
    test_y: torch.Tensor
    source: str

    @property
    def classes(self) -> list[str]:
        return CLASSES.get(self.name, [str(i) for i in range(10)])


def parse_idx(data: bytes, what: str) -> torch.Tensor:
    """IDX format: magic (0, 0, dtype 0x08 = uint8, ndim), big-endian dims, then the bytes."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DlcliError(f"{what} is not an IDX file of unsigned bytes")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    body = data[4 + 4 * ndim:]
    count = 1
    for d in dims:
        count *= d
    if len(body) != count:
        raise DlcliError(f"{what} is truncated: {len(body)} of {count} bytes")
    return torch.frombuffer(bytearray(body), dtype=torch.uint8).reshape(dims)


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _load_folder(dataset: str, folder: Path, verify: bool = True) -> dict | None:
    """The four tensors from `folder`, or None when a file is missing there."""
    paths = {key: _find(folder, stem) for key, stem in IDX_FILES.items()}
    if any(p is None for p in paths.values()):
        return None
    out = {}
    for key, path in paths.items():
        data = read_maybe_gzip(path)
        expected = (SHA256.get(dataset) or {}).get(IDX_FILES[key])
        if verify and expected and hashlib.sha256(data).hexdigest() != expected:
            raise DlcliError(
                f"{path} fails its SHA-256 check (corrupt or not {dataset}); delete it or "
                "point --data-dir elsewhere"
            )
        out[key] = parse_idx(data, str(path))
    for split in ("train", "test"):
        if len(out[f"{split}_x"]) != len(out[f"{split}_y"]):
            raise DlcliError(f"{folder}: {split} images and labels differ in count")
    return out


def download(dataset: str, target: Path) -> str | None:
    """Fetch the four files from the first mirror that answers; verify, then keep them.
    Returns None on success, else why every mirror failed."""
    failures = []
    for mirror in MIRRORS[dataset]:
        try:
            fetched = {stem: fetch(mirror + stem + ".gz", stem) for stem in IDX_FILES.values()}
            for stem, blob in fetched.items():
                parse_idx(gzip.decompress(blob), stem)  # a well-formed IDX file, before keeping any
            for stem, blob in fetched.items():
                keep_verified(blob, target, stem, (SHA256.get(dataset) or {}).get(stem))
            return None
        except (OSError, EOFError, DlcliError) as e:
            failures.append(f"{mirror.split('/')[2]}: {getattr(e, 'reason', e)}")
    return "; ".join(failures)


def _bundled() -> dict:
    out = {}
    for key, stem in IDX_FILES.items():
        out[key] = parse_idx(read_maybe_gzip(BUNDLED / f"mnist-subset-{stem}.gz"), stem)
    return out


def load_images(dataset: str, data_dir=None, allow_download: bool | None = None) -> ImageSet:
    if dataset not in SHA256:
        raise DlcliError(f"unknown image dataset {dataset!r}; choose one of: {', '.join(SHA256)}")
    if data_dir is not None and not Path(data_dir).is_dir():
        raise DlcliError(f"--data-dir {data_dir} is not a folder")
    for label, folder in candidate_dirs(dataset, data_dir):
        tensors = _load_folder(dataset, folder)
        if tensors is not None:
            return ImageSet(dataset, **_shaped(tensors), source=f"{folder} ({label})")
        if label == "--data-dir" and folder == Path(data_dir):  # its last place: say why
            named = folder / dataset if (folder / dataset).is_dir() else folder
            missing = [stem for stem in IDX_FILES.values() if _find(named, stem) is None]
            notice(f"--data-dir {data_dir}: no complete {dataset} in {named} (missing "
                   f"{', '.join(missing)}); looking elsewhere")
    if allow_download is None:
        allow_download = downloads_allowed()
    target = cache_dir() / dataset
    marker = cache_dir() / f".{dataset}-download-failed"
    why = ""
    if allow_download:
        if recently_failed(marker):  # offline: every command would wait for the same failure
            why = (f"; no download tried (one failed less than {OFFLINE_TTL // 60} minutes ago; "
                   f"delete {marker} to retry now)")
        else:
            failed = download(dataset, target)
            if failed is None:
                marker.unlink(missing_ok=True)
                tensors = _load_folder(dataset, target)
                return ImageSet(dataset, **_shaped(tensors), source=f"{target} (downloaded)")
            remember_failure(marker, failed)
            why = f"; download failed ({failed})"
    if dataset == "mnist":
        tensors = _bundled()
        notice(
            f"using the bundled MNIST subset ({len(tensors['train_x']):,} training, "
            f"{len(tensors['test_x']):,} test images){why}; for the full set put the four IDX "
            f"files in {target} or in the --data-dir folder's {dataset}/"
        )
        return ImageSet(dataset, **_shaped(tensors), source="bundled subset")
    raise DlcliError(
        f"{dataset} not found{why}: put its four IDX files in {target} or pass --data-dir DIR "
        f"(a folder with {dataset}/ inside)"
    )


def _shaped(t: dict) -> dict:
    return {
        "train_x": t["train_x"].reshape(-1, 1, 28, 28), "train_y": t["train_y"].long(),
        "test_x": t["test_x"].reshape(-1, 1, 28, 28), "test_y": t["test_y"].long(),
    }
