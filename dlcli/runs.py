"""Run folders: runs/<model>/<name>/, created fresh, never reused; finding the newest."""

from __future__ import annotations

import os
import time
from pathlib import Path

from dlcli.errors import DlcliError

RUNS_ROOT = Path("runs")


def new_run_dir(model: str, run_dir=None, root: Path = RUNS_ROOT) -> Path:
    """Claim a new run folder. An explicit --run-dir must be new or empty, and is claimed
    by creating its config.yaml exclusively (training writes the real one over it): of two
    runs started together on one folder, one gets it and the other is refused."""
    if run_dir is not None:
        path = Path(run_dir)
        if path.exists() and not path.is_dir():
            raise DlcliError(f"--run-dir {path} is a file; give a new or empty folder")
        if path.exists() and any(path.iterdir()):
            raise DlcliError(f"--run-dir {path} exists and is not empty; runs are never overwritten")
        path.mkdir(parents=True, exist_ok=True)
        try:
            os.close(os.open(path / "config.yaml", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except FileExistsError:
            raise DlcliError(f"--run-dir {path} was just claimed by another run; runs are "
                             "never overwritten") from None
        return path
    base = root / model
    base.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for i in range(1, 1000):
        path = base / (stamp if i == 1 else f"{stamp}-{i}")
        try:
            path.mkdir()  # atomic claim: two runs started in the same second get two folders
            return path
        except FileExistsError:
            continue
    raise DlcliError(f"could not create a run folder under {base}")


def newest_checkpoint(model: str, root: Path = RUNS_ROOT) -> Path | None:
    """best.safetensors (else last) of the most recently written run of `model`."""
    found = []
    for run in (root / model).glob("*/"):
        for name in ("best.safetensors", "last.safetensors"):
            ckpt = run / name
            if ckpt.is_file():
                found.append((ckpt.stat().st_mtime, ckpt))
                break
    return max(found)[1] if found else None


def resolve_checkpoint(model: str, checkpoint=None, root: Path = RUNS_ROOT) -> Path:
    if checkpoint:
        return Path(checkpoint)
    found = newest_checkpoint(model, root)
    if found is None:
        raise DlcliError(
            f"no {model} run found under ./{root}; train one with `dlcli train {model}` "
            "or pass --checkpoint FILE"
        )
    return found
