"""Where dataset files are found, and fetching them: shared by every dataset.

Look-up order: --data-dir, $DLCLI_DATA_DIR (each a folder with one subfolder per dataset,
or the files themselves), then the user cache ($XDG_CACHE_HOME/dlcli/<dataset>), where a
verified download is kept.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import time
import urllib.request
from pathlib import Path

from dlcli.console import console
from dlcli.errors import DlcliError

# The four files of an MNIST-format dataset, by role (gzip or raw).
IDX_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "dlcli"


def candidate_dirs(dataset: str, data_dir=None) -> list[tuple[str, Path]]:
    out = []
    for label, root in (("--data-dir", data_dir), ("$DLCLI_DATA_DIR", os.environ.get("DLCLI_DATA_DIR"))):
        if root:
            root = Path(root)
            out += [(label, root / dataset), (label, root)]
    out.append(("cache", cache_dir() / dataset))
    return out


def fetch(url: str, label: str) -> bytes:
    from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

    with urllib.request.urlopen(url, timeout=20) as response:
        total = int(response.headers.get("Content-Length") or 0) or None
        chunks = []
        with Progress(*Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn(),
                      console=console, transient=True) as progress:
            bar = progress.add_task(f"download {label}", total=total)
            while chunk := response.read(1 << 16):
                chunks.append(chunk)
                progress.advance(bar, len(chunk))
    return b"".join(chunks)


def keep_verified(blob: bytes, target: Path, name: str, sha256: str | None) -> bytes:
    """Check a downloaded gzip file against the SHA-256 of its decompressed bytes, then
    store it as target/name.gz atomically; returns the decompressed bytes."""
    data = gzip.decompress(blob)
    if sha256 and hashlib.sha256(data).hexdigest() != sha256:
        raise DlcliError(f"downloaded {name} fails its SHA-256 check")
    target.mkdir(parents=True, exist_ok=True)
    tmp = target / f".{name}.gz.part"
    tmp.write_bytes(blob)
    tmp.replace(target / f"{name}.gz")
    return data


def read_maybe_gzip(path: Path) -> bytes:
    """A file's bytes, decompressed when it is gzip (by its magic number, not its name)."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DlcliError(f"{path} is a broken gzip file ({e})") from None
    return raw


OFFLINE_TTL = 3600  # seconds a failed download is remembered (a marker in the cache)


def downloads_allowed() -> bool:
    return os.environ.get("DLCLI_OFFLINE", "") in ("", "0")


def recently_failed(marker: Path) -> bool:
    """Did a download fail less than OFFLINE_TTL seconds ago? Offline, every command
    would otherwise wait for the same failure."""
    try:
        return time.time() - marker.stat().st_mtime < OFFLINE_TTL
    except OSError:
        return False


def remember_failure(marker: Path, why: str) -> None:
    with contextlib.suppress(OSError):  # a read-only cache: just try again next time
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(why, encoding="utf-8")
