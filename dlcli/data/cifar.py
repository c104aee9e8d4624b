"""CIFAR-10 (Krizhevsky, 2009) from its binary distribution, never from its pickles.

`cifar-10-binary.tar.gz` holds data_batch_1.bin .. data_batch_5.bin (training) and
test_batch.bin, each a run of 3,073-byte records: one label byte, then 1,024 red, 1,024
green and 1,024 blue bytes (32 x 32, row by row), and batches.meta.txt with the class
names. It is read straight from the archive (streamed, nothing unpacked to disk) or from
the unpacked .bin files, found like MNIST: --data-dir, $DLCLI_DATA_DIR, the cache, then a
download checked against the MD5 the dataset's page publishes.

The "python version" (cifar-10-python.tar.gz) is Python pickles: unpickling runs whatever
code the file holds, so it is refused, never opened.

Finding the files is torch-free (`dlcli datasets` asks where they are); reading them is not.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import urllib.request
from pathlib import Path

from dlcli.console import console, notice
from dlcli.data.catalog import get_dataset
from dlcli.data.files import (
    cache_dir,
    candidate_dirs,
    downloads_allowed,
    recently_failed,
    remember_failure,
)
from dlcli.errors import DlcliError

ARCHIVE = "cifar-10-binary.tar.gz"
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
# Published on https://www.cs.toronto.edu/~kriz/cifar.html ("CIFAR-10 binary version
# (suitable for C programs)", 162 MB); the archive is 170,052,171 bytes.
MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
SIZE = 170_052_171
UNPACKED = "cifar-10-batches-bin"
TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST = "test_batch.bin"
META = "batches.meta.txt"
RECORD = 1 + 3 * 32 * 32
MAX_BATCH_BYTES = 10_000 * RECORD  # a real batch's size: a bigger member is not CIFAR-10
PICKLED = ("cifar-10-python.tar.gz", "cifar-10-batches-py", "data_batch_1")


def locate(folder: Path) -> tuple[str, Path] | None:
    """('archive', file) or ('files', folder of .bin files) found in folder, or
    ('pickled', what) when only the pickled version is there; None when nothing is."""
    for place in (folder, folder / UNPACKED):
        if all((place / name).is_file() for name in (*TRAIN, TEST)):
            return "files", place
    if (folder / ARCHIVE).is_file():
        return "archive", folder / ARCHIVE
    for name in PICKLED:
        if (folder / name).exists():
            return "pickled", folder / name
    return None


def read_archive(path: Path) -> dict[str, bytes]:
    """The batch and meta files of the archive, by name, read as a stream of members."""
    wanted = {*TRAIN, TEST, META}
    found = {}
    try:
        with tarfile.open(path, "r|gz") as archive:  # "|": a stream, never seeks, unpacks nothing
            for member in archive:
                name = Path(member.name).name
                if name in PICKLED[2:] or name == "batches.meta":
                    raise DlcliError(_refusal(path))
                if name not in wanted or not member.isfile():
                    continue
                if member.size > MAX_BATCH_BYTES + 4096:
                    raise DlcliError(f"{path}: {member.name} is {member.size:,} bytes, larger than "
                                     "a CIFAR-10 batch; not the CIFAR-10 binary archive")
                found[name] = archive.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DlcliError(f"{path} is not a readable tar.gz archive ({e}); delete it or "
                         "download cifar-10-binary.tar.gz again") from None
    missing = [name for name in (*TRAIN, TEST) if name not in found]
    if missing:
        raise DlcliError(f"{path} lacks {', '.join(missing)}: not the CIFAR-10 binary archive")
    return found


def read_files(folder: Path) -> dict[str, bytes]:
    names = [*TRAIN, TEST] + ([META] if (folder / META).is_file() else [])
    return {name: (folder / name).read_bytes() for name in names}


def parse_batch(data: bytes, what: str):
    """(images uint8 (N, 3, 32, 32), labels int64 (N,)) tensors from one batch's records."""
    import numpy as np
    import torch

    if not data or len(data) % RECORD:
        raise DlcliError(f"{what} is {len(data):,} bytes, not a whole number of {RECORD:,}-byte "
                         "CIFAR-10 records (truncated?)")
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, RECORD)
    labels = records[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise DlcliError(f"{what} has label {labels.max()}; CIFAR-10 labels are 0-9")
    images = records[:, 1:].reshape(-1, 3, 32, 32)  # the planes are R, G, B, each row by row
    return torch.from_numpy(images.copy()), torch.from_numpy(labels)


def _class_names(meta: bytes | None) -> list[str]:
    default = list(get_dataset("cifar10").classes)
    if meta is None:
        return default
    names = [line.strip() for line in meta.decode("utf-8", "replace").splitlines() if line.strip()]
    return names if len(names) == len(default) else default


def _refusal(where) -> str:
    return (f"{where} is CIFAR-10's pickled \"python version\", which dlcli never opens "
            f"(unpickling can run any code); get the binary version, {ARCHIVE}, from {URL}")


def download(target: Path) -> Path:
    """Fetch the archive into target/, streamed to a temporary file, checked against the
    published MD5 and size, then renamed into place."""
    from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

    target.mkdir(parents=True, exist_ok=True)
    part = target / f".{ARCHIVE}.part"
    md5 = hashlib.md5(usedforsecurity=False)
    try:
        with urllib.request.urlopen(URL, timeout=20) as response, open(part, "wb") as out, \
                Progress(*Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn(),
                         console=console, transient=True) as progress:
            bar = progress.add_task(f"download {ARCHIVE}", total=SIZE)
            while chunk := response.read(1 << 20):
                out.write(chunk)
                md5.update(chunk)
                progress.advance(bar, len(chunk))
            out.flush()
            os.fsync(out.fileno())
        verify(part.stat().st_size, md5.hexdigest())
        part.replace(target / ARCHIVE)
    finally:
        part.unlink(missing_ok=True)
    return target / ARCHIVE


def verify(size: int, md5: str) -> None:
    if size != SIZE or md5 != MD5:
        raise DlcliError(f"downloaded {ARCHIVE} fails its check ({size:,} bytes, MD5 {md5}; "
                         f"published: {SIZE:,} bytes, MD5 {MD5})")


def _find_or_fetch(data_dir) -> tuple[dict[str, bytes], str]:
    if data_dir is not None and not Path(data_dir).is_dir():
        raise DlcliError(f"--data-dir {data_dir} is not a folder")
    for label, folder in candidate_dirs("cifar10", data_dir):
        found = locate(folder)
        if found is None:
            continue
        kind, path = found
        if kind == "pickled":
            raise DlcliError(_refusal(path))
        blobs = read_archive(path) if kind == "archive" else read_files(path)
        return blobs, f"{path} ({label})"
    target = cache_dir() / "cifar10"
    marker = cache_dir() / ".cifar10-download-failed"
    why = "no download (offline)"
    if downloads_allowed():
        if recently_failed(marker):
            why = f"a download failed less than an hour ago (delete {marker} to retry now)"
        else:
            try:
                path = download(target)
                marker.unlink(missing_ok=True)
                return read_archive(path), f"{path} (downloaded)"
            except (OSError, DlcliError) as e:
                why = f"download failed ({getattr(e, 'reason', e)})"
                remember_failure(marker, why)
    raise DlcliError(f"CIFAR-10 not found; {why}: put {ARCHIVE} (or its unpacked {UNPACKED}/) "
                     f"in {target} or pass --data-dir DIR (a folder with cifar10/ inside)")


def load_cifar10(data_dir=None):
    """CIFAR-10 as an ImageData: 50,000 training then 10,000 test rows."""
    import torch

    from dlcli.data.images import ImageData

    blobs, source = _find_or_fetch(data_dir)
    meta = blobs.pop(META, None)
    # popped as parsed: the raw bytes of a batch go once its tensors are made
    train = [parse_batch(blobs.pop(name), f"{source}: {name}") for name in TRAIN]
    test_x, test_y = parse_batch(blobs.pop(TEST), f"{source}: {TEST}")
    images = torch.cat([x for x, _ in train] + [test_x])
    labels = torch.cat([y for _, y in train] + [test_y])
    n = len(images) - len(test_x)
    info = get_dataset("cifar10")
    if n != 50_000 or len(test_x) != 10_000:
        notice(f"CIFAR-10 from {source}: {n:,} training and {len(test_x):,} test images "
               "(the full set has 50,000 and 10,000)")
    return ImageData("cifar10", info.shape, _class_names(meta), images, labels,
                     torch.arange(n), torch.arange(n, len(images)), source, info.mean, info.std,
                     None)
