"""A safetensors file's header, read without torch (it is JSON after an 8-byte length),
and the checks that a dlcli checkpoint's metadata is what dlcli writes. Used by inspect,
by checkpoint loading and by the training summary."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from dlcli.errors import DlcliError


def read_header(path: Path) -> dict:
    if not path.is_file():
        raise DlcliError(f"checkpoint not found: {path}")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise DlcliError(f"{path} is not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, 100_000_000):
            raise DlcliError(f"{path} is not a safetensors file (bad header length)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise DlcliError(f"{path} is not a safetensors file (unreadable header)") from None
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    if ends and 8 + n + max(ends) > size:
        raise DlcliError(f"{path} is truncated: {size} bytes, the header promises "
                         f"{8 + n + max(ends)}")
    return header


def check_metadata(path: Path, meta: dict[str, str]) -> None:
    """A damaged or hand-edited header says so here, not as a JSON traceback later."""
    for key in ("config", "metrics", "modules", "parameters", "state", "provenance", "image_data"):
        try:
            value = json.loads(meta[key]) if key in meta else {}
        except (json.JSONDecodeError, RecursionError):  # RecursionError: nested past reason
            value = None
        if value is None or (key in ("config", "image_data") and not isinstance(value, dict)):
            raise DlcliError(f"{path}: its {key!r} metadata is not what dlcli writes (a damaged "
                             "or edited checkpoint)")
    for key in ("epoch", "step"):
        if not meta.get(key, "0").isdigit():
            raise DlcliError(f"{path}: its {key!r} metadata is not a count: {meta[key]!r}")
