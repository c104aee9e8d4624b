"""Writing files so that a reader never sees half of one (checkpoints, configs, pictures)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from dlcli.errors import DlcliError


def _read_umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


UMASK = _read_umask()  # once, at import, before any other thread could create a file


def atomic_write(path: Path, write) -> None:
    """Call write(tmp_path), fsync, then rename over `path`: readers never see half a file."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        write(tmp)
        # mkstemp makes it private, and a writer may replace the file (safetensors does):
        # after writing, the permissions every other file of the user gets
        with contextlib.suppress(OSError):  # some network mounts refuse chmod; not worth failing
            os.chmod(tmp, 0o666 & ~UMASK)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):  # name the file the user knows, not the temporary one
            raise DlcliError(f"cannot write {path}: {e.strerror or e}") from None
        raise
