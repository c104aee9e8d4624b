"""Run folders: runs/<model>/<name>/, created fresh, never reused; finding the newest."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from dlcli.errors import DlcliError

RUNS_ROOT = Path("runs")
STAMP = "%Y%m%d-%H%M%S"  # a run folder's name: the time it started, then -2, -3 on a clash


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
    stamp = time.strftime(STAMP)
    for i in range(1, 1000):
        path = base / (stamp if i == 1 else f"{stamp}-{i}")
        try:
            path.mkdir()  # atomic claim: two runs started in the same second get two folders
            return path
        except FileExistsError:
            continue
    raise DlcliError(f"could not create a run folder under {base}")


def elastic_run_dir(model: str, root: Path = RUNS_ROOT) -> Path | None:
    """Under torchrun with restarts allowed, the run folder every restart finds again:
    runs/<model>/<rendezvous id> (torchrun's --rdzv-id; --standalone makes one up per
    launch). None elsewhere: a run folder named by the time is claimed as usual."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    if run_id and int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0") or 0) > 0:
        return root / model / run_id
    return None


def resume_point(model: str, resume: str | None, run_dir: Path | None
                 ) -> tuple[Path | None, Path | None, bool]:
    """What `train --resume` continues from: (checkpoint or None, run folder, auto).
    `--resume auto`, or any restart by torchrun, takes the run folder's newest complete
    checkpoint, or starts there afresh; under torchrun the folder is one every restart finds."""
    from dlcli.console import notice
    from dlcli.distributed import restart_count

    auto = resume == "auto" or (resume is None and restart_count() > 0)
    run_dir = run_dir or elastic_run_dir(model)
    if not auto:
        return (Path(resume) if resume is not None else None), run_dir, False
    if run_dir is None:
        raise DlcliError("--resume auto continues the run in --run-dir; name that folder "
                         "(e.g. --run-dir runs/job-$SLURM_JOB_ID)")
    found = newest_resumable(run_dir)
    if found is None:
        notice(f"--resume auto: no checkpoint in {run_dir} yet; starting there afresh")
    return found, run_dir, True


def newest_resumable(folder: Path) -> Path | None:
    """The newest checkpoint of a run folder that holds training state and reads whole
    (last.safetensors, else best.safetensors, by optimizer step); None: none."""
    from dlcli.checkpoint import read_metadata

    found = []
    for rank, name in enumerate(("best.safetensors", "last.safetensors")):  # ties: last
        try:
            meta = read_metadata(Path(folder) / name)
            if "state" in meta:
                found.append((int(meta.get("step", 0)), rank, Path(folder) / name))
        except (DlcliError, ValueError):
            continue
    return max(found)[2] if found else None


def adopt_run_dir(model: str, run_dir: Path) -> Path:
    """--resume auto: the run folder to go on in. A new or empty one is claimed as usual;
    one a run of ours has written to (config.yaml) is taken over, less the temporary
    files a killed writer left behind; anything else is refused."""
    path = Path(run_dir)
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        return new_run_dir(model, path)
    if not (path / "config.yaml").is_file():
        raise DlcliError(f"--run-dir {path} is not a dlcli run folder (no config.yaml); "
                         "--resume auto only continues runs of dlcli")
    for leftover in path.rglob(".*.tmp"):  # atomic_write's, from a process killed mid-write
        leftover.unlink(missing_ok=True)
    return path


SHORT_RUN_STEPS = 100  # a run with fewer optimizer steps has hardly learned anything


def run_checkpoint(run: Path) -> Path | None:
    """What a run hands on: averaged.safetensors when the config asked for an average of the
    last snapshots (`average_last`) and nothing was trained after it was made, else
    best.safetensors, else last.safetensors (None: none of them)."""
    averaged, last = run / "averaged.safetensors", run / "last.safetensors"
    if averaged.is_file() and (not last.is_file()
                               or averaged.stat().st_mtime >= last.stat().st_mtime):
        return averaged
    return next((run / name for name in ("best.safetensors", "last.safetensors")
                 if (run / name).is_file()), None)


def run_progress(run: Path) -> tuple[int, int, int] | None:
    """(epochs done, epochs planned, optimizer steps) of a run, from its newest checkpoint's
    metadata (no tensors read); None when it has no readable one."""
    from dlcli.checkpoint import read_metadata

    for name in ("last.safetensors", "best.safetensors"):
        try:
            meta = read_metadata(run / name)
            planned = json.loads(meta["config"]).get("epochs", 0)
            return int(meta.get("epoch", 0)), int(planned), int(meta.get("step", 0))
        except (DlcliError, ValueError, KeyError):
            continue
    return None


def _finished(run: Path) -> bool:
    progress = run_progress(run)
    return progress is not None and progress[0] >= progress[1]


def newest_checkpoint(model: str, root: Path = RUNS_ROOT) -> Path | None:
    """The checkpoint (see run_checkpoint) of the most recently written finished run of `model`;
    of the most recent run when none finished (interrupted, or still training)."""
    found = []
    for run in (root / model).glob("*/"):
        ckpt = run_checkpoint(run)
        if ckpt is not None:
            found.append((_finished(run), ckpt.stat().st_mtime, ckpt))
    return max(found)[2] if found else None


def announce_pick(ckpt: Path, role: str = "", option: str = "--checkpoint") -> None:
    """Say on stderr which checkpoint a command picked by itself, and warn when its run
    stopped early or trained only a few steps."""
    from dlcli.console import notice, warn

    progress = run_progress(ckpt.parent)
    written = time.strftime("%Y-%m-%d %H:%M", time.localtime(ckpt.stat().st_mtime))
    if progress is None:
        notice(f"using {role}{ckpt} (written {written})")
        return
    done, planned, steps = progress
    notice(f"using {role}{ckpt} (run at epoch {done} of {planned}, {steps:,} steps; "
           f"written {written}); pass {option} to choose another")
    if done < planned:
        warn(f"that run stopped at epoch {done} of {planned} (interrupted, or still training); "
             "its results may be poor")
    elif steps < SHORT_RUN_STEPS:
        warn(f"that run trained only {steps} steps; its results may be poor")


def checkpoint_file(path) -> Path:
    """A checkpoint given by its file or by its run folder (see run_checkpoint; said on
    stderr)."""
    path = Path(path)
    if not path.is_dir():
        return path
    found = run_checkpoint(path)
    if found is None:
        raise DlcliError(f"{path} is a folder without best.safetensors or last.safetensors; "
                         "pass a run folder or a checkpoint file")
    from dlcli.console import notice

    notice(f"reading {found}")
    return found


def resolve_checkpoint(model: str, checkpoint=None, root: Path = RUNS_ROOT) -> Path:
    if checkpoint:
        return checkpoint_file(checkpoint)
    found = newest_checkpoint(model, root)
    if found is None:
        raise DlcliError(
            f"no {model} run found under ./{root}; train one with `dlcli train {model}` "
            "or pass --checkpoint FILE"
        )
    announce_pick(found)
    return found
