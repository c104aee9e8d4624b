"""The one training loop. Every model family trains through `fit`, driven by its Task
(calling only what tasks/base.py declares). The loop emits events to reporters
(dlcli/reporters: metrics.jsonl, console, curves, pictures, TensorBoard, MLflow) and leaves
checkpoints to a Checkpointer (dlcli/checkpointer.py); `train` sets a run up around it."""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from pathlib import Path

import torch
import yaml

from dlcli import distributed
from dlcli.checkpoint import load_checkpoint
from dlcli.checkpointer import Checkpointer
from dlcli.config import dataset_name
from dlcli.console import console, notice
from dlcli.distributed import Dist
from dlcli.errors import DlcliError, Interrupted, TrainingFailed
from dlcli.fileio import atomic_write
from dlcli.reporters import End, Meter, Reporters, Run, make_reporters
from dlcli.runtime import (
    apply_precision,
    compile_modules,
    pick_device,
    precision_context,
    seed_everything,
    set_rng_state,
)

LOG_EVERY = 50  # steps between step records in metrics.jsonl


class StopRequest:
    """Ctrl-C (SIGINT), a polite kill (SIGTERM: `timeout`, a job scheduler) or a closed
    terminal (SIGHUP) asks the loop to stop after the current step, save, and exit 128 +
    the signal number: a signal arriving inside an optimizer step must not leave
    half-updated weights behind. A second signal aborts at once (the last epoch's
    checkpoint is still intact). Under torchrun the launcher passes each signal on to
    every worker, and the workers agree on the step to stop after (see fit)."""

    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self):
        self.requested = False
        self.signum = None
        self.previous = {}

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested, self.signum = True, signum
        if signum == signal.SIGINT:  # someone at a terminal, who may want to abort instead
            console.print("stopping after this step to save a checkpoint (Ctrl-C again to abort)")

    def agreed(self, d: Dist) -> bool:
        """Whether to stop now: asked of every rank after each step, as one rank may get
        the signal a step before another; alone, whether a signal came."""
        return distributed.any_rank(self.requested, d) if d.active else self.requested

    def interrupt(self, d: Dist, checkpoint: Path | None):
        """Stop every rank alike, once rank 0 has saved `checkpoint`."""
        distributed.barrier(d)
        raise Interrupted(checkpoint, self.signum)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._handle) for s in self.signals}
        return self

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def fit(task, run_dir: Path | None, resume=None, d: Dist = Dist(), precision: str = "32",
        provenance: dict | None = None) -> Path | None:
    """Train `task` for config['epochs'] epochs in `run_dir`; return the checkpoint path.
    Under torch.distributed every rank calls this; only rank 0 (run_dir given) reports and
    writes: the other ranks get no reporters and a checkpointer that writes nothing."""
    epochs, started = task.config["epochs"], time.perf_counter()
    autocast = precision_context(task.device, precision)
    if precision == "16-mixed":
        task.scaler = torch.amp.GradScaler("cuda")
    start_epoch, skip, step, best = restore(task, resume)
    report = make_reporters(task.config.get("logger", [])) if d.main else Reporters([])
    saver = Checkpointer(task, run_dir if d.main else None, provenance, best, report)
    distributed.join(task, d)
    report.start(Run(run_dir, task.spec.name, task.config, epochs, task.monitor, task.item_name,
                     provenance or {}))
    done, state, message = start_epoch, "failed", None  # done: epochs trained in all
    try:
        with StopRequest() as stop:
            for epoch in range(start_epoch, epochs):
                task.train_mode(True)
                batches = distributed.shard(task.train_batches(epoch), d)
                report.epoch_start(epoch + 1, len(batches), skip)
                meter = Meter()
                for i in range(skip, len(batches)):
                    with autocast:
                        logs = task.train_step(batches[i])
                    if d.main:  # rank 0 judges, as it reports
                        check_finite(logs, task.losses, epoch + 1, step + 1, saver, run_dir)
                    step += 1
                    saver.after_update(epoch, i + 1, len(batches), step)  # rank 0 writes
                    meter.add(logs, task.batch_items(batches[i]))
                    report.step(i + 1, logs, meter)
                    if step % LOG_EVERY == 0:
                        report.record({"kind": "step", "epoch": epoch + 1, "step": step, **logs})
                    if i + 1 < len(batches) and stop.agreed(d):  # a resume skips the batches seen
                        saver.save(epoch, i + 1, step, must=True)
                        stop.interrupt(d, saver.last)
                skip = 0
                task.train_mode(False)
                if d.active:
                    distributed.average_floating_state(list(task.modules.values()), d)
                if d.main:
                    end_of_epoch(task, report, saver, epoch + 1, step, meter,
                                 final=epoch + 1 == epochs)
                done = epoch + 1
                if epoch + 1 < epochs and stop.agreed(d):
                    stop.interrupt(d, saver.last)
                if task.done and not d.active:
                    break
        saver.finish()
        state, message = "finished", task.report(done) if d.main else None
    except (Interrupted, KeyboardInterrupt, TrainingFailed) as e:
        state = "diverged" if isinstance(e, TrainingFailed) else "interrupted"
        raise
    finally:
        report.end(End(state, done, done - start_epoch, step, time.perf_counter() - started,
                       saver.checkpoint(), message))
    return saver.checkpoint()


def restore(task, resume) -> tuple[int, int, int, float | None]:
    """Load a checkpoint's weights, training state and random streams into `task`; return
    where training continues: (epoch, batches of it done, optimizer steps, best metric)."""
    if resume is None:
        return 0, 0, 0, None
    state = resume.state
    resume.load_into(task.modules)
    task.load_training_state(state["task"])
    set_rng_state(state["rng"])
    notice(f"resuming {resume.path} at epoch {resume.epoch + 1}, step {resume.step}")
    return resume.epoch, int(state["batch"]), resume.step, state.get("best")


def check_finite(logs: dict, losses, epoch: int, step: int, saver, run_dir) -> None:
    """A loss that is NaN or infinite means training diverged: stop, keeping the last good
    checkpoint, rather than train on garbage."""
    bad = [k for k in losses if k in logs and not math.isfinite(logs[k])]
    if bad:
        last = saver.last
        raise TrainingFailed(
            f"{bad[0]} became {logs[bad[0]]} at epoch {epoch}, step {step}; training stopped. "
            + (f"The last good checkpoint is {last}" if last.exists() else
               f"No checkpoint was written yet ({run_dir} holds the metrics)")
            + "; try a lower --lr")


def end_of_epoch(task, report, saver, epoch: int, step: int, meter: Meter,
                 final: bool = False) -> None:
    """Validate, report the epoch's metrics and pictures, and checkpoint (rank 0)."""
    seconds = meter.seconds()
    metrics = {f"train_{k}": v for k, v in meter.means().items()}
    metrics.update(task.validate())
    metrics.update(epoch_seconds=round(seconds, 3), items_per_s=round(meter.items / max(seconds, 1e-9), 1))
    report.record({"kind": "epoch", "epoch": epoch, "step": step, **metrics})
    for tag, (images, nrow, captions) in task.end_of_epoch(epoch).items():
        report.images(epoch, tag, images, nrow, captions)
    saver.end_of_epoch(epoch, step, metrics, final)


def check_resumable(ckpt, epochs: int) -> None:
    """Refuse a checkpoint that cannot continue to `epochs` epochs, before anything is
    written: one without training state, or one that has trained that many already."""
    if "state" not in ckpt.meta:
        raise DlcliError(f"{ckpt.path} holds no training state to resume from")
    if ckpt.epoch >= epochs:
        part = " and part of the next" if ckpt.batch else ""
        raise DlcliError(f"{ckpt.path} has trained {ckpt.epoch} epochs{part} already; ask for "
                         f"more with --epochs (more than {ckpt.epoch})")


def continues_its_run(ckpt) -> bool:
    """Whether resuming `ckpt` may carry on in its run folder: only from the run's newest
    checkpoint (last.safetensors, or a copy of it such as best.safetensors). From an older
    one, training on there would overwrite the newer checkpoint and write a second
    timeline into metrics.jsonl, so it goes to a new run folder instead, and says so."""
    folder = ckpt.path.parent
    if not (folder / "metrics.jsonl").is_file():
        return False  # not a run folder: a checkpoint the user keeps elsewhere
    last = folder / "last.safetensors"
    if last.is_file() and last.resolve() == ckpt.path.resolve():
        return True
    if last.is_file():
        newest = load_checkpoint(last, tensors=False)
        if (newest.epoch, newest.step, newest.batch) == (ckpt.epoch, ckpt.step, ckpt.batch):
            return True
        notice(f"{ckpt.path} is not the newest checkpoint of its run ({last} is at epoch "
               f"{newest.epoch}, step {newest.step}); continuing in a new run folder, so "
               "that one is kept")
    return False


def keep_metrics_until(path: Path, step: int) -> None:
    """Drop the records metrics.jsonl holds past the checkpoint resumed from (logged by a
    run killed before its next save): a resumed run writes them anew, and one file must
    tell one story."""
    def logged_at(line: str) -> int:
        try:
            return int(json.loads(line).get("step", 0))
        except (ValueError, TypeError, AttributeError):
            return 0  # not a record of ours: left as it is

    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    # a last line without its newline was torn by a kill mid-write: it goes too
    kept = [line for line in lines if logged_at(line) <= step and line.endswith("\n")]
    if len(kept) != len(lines):
        atomic_write(path, lambda tmp: Path(tmp).write_text("".join(kept), encoding="utf-8"))


def train(spec, config: dict, *, device: str = "auto", data_dir=None, run_dir=None,
          resume_path=None, precision: str | None = None, compile: bool = False,
          auto: bool = False) -> Path | None:
    """Build the task, claim the run folder (rank 0), and fit. Returns the checkpoint path
    (None on ranks other than 0). `auto` (--resume auto, a torchrun restart): `run_dir`
    may hold the run to go on with, and `resume_path` is its newest checkpoint or None."""
    from dlcli.runs import adopt_run_dir, new_run_dir

    dev = pick_device(device)
    d = distributed.init_from_env(dev)
    dev = distributed.local_device(dev, d)
    if not d.main:
        console.quiet = True
    seed_everything(config["seed"] + d.rank)  # own noise per rank; weights come from rank 0
    resume = load_checkpoint(resume_path, expect_model=spec.name) if resume_path else None
    if resume is not None:  # checked before any folder is claimed or file written
        check_resumable(resume, config["epochs"])
        spec.load_task().check_checkpoint(resume)
        if not {"task", "rng", "batch"} <= resume.state.keys():
            raise DlcliError(f"{resume.path}: its training state is not what dlcli writes (a "
                             "damaged or edited checkpoint)")
    if auto and d.active:
        agree_on_resume(resume, run_dir, d)
    task, precision = prepare_task(spec, config, dev, data_dir, resume, precision)
    if compile:
        compile_modules(task.modules)
    where = f", {d.world} processes" if d.active else ""
    mixed = f", precision {precision}" if precision != "32" else ""
    n = torch.get_num_threads()
    threads = f" ({n} thread{'s' if n != 1 else ''})" if dev.type == "cpu" else ""
    notice(f"{spec.name} on {dataset_name(config)} ({task.data_source}), "
           f"device {dev}{threads}{where}{mixed}")
    folder, provenance = None, None
    if d.main:
        provenance = run_provenance(task, precision)
        if auto:  # the run folder of a run that died (or of none yet)
            folder = adopt_run_dir(spec.name, run_dir)
            metrics = folder / "metrics.jsonl"
            if resume is not None:
                keep_metrics_until(metrics, resume.step)
            else:  # died before its first checkpoint: starts over
                metrics.unlink(missing_ok=True)
        elif resume is not None and run_dir is None and continues_its_run(resume):
            folder = resume.path.parent  # carry on in the run folder the checkpoint came from
            keep_metrics_until(folder / "metrics.jsonl", resume.step)
        else:  # --run-dir, a fresh run, or a checkpoint kept elsewhere: never write next to it
            folder = new_run_dir(spec.name, run_dir)
        notice(f"run folder: {folder}")
        write_config(folder, config, provenance)
    try:
        return fit(task, folder, resume, d, precision, provenance)
    finally:
        if d.active and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def agree_on_resume(resume, run_dir, d: Dist) -> None:
    """--resume auto under torchrun: rank 0 decides which checkpoint every rank starts
    from (by its step; -1: none). A rank that found another (a node that does not see the
    run folder rank 0 writes) stops the whole group with one clear line."""
    mine = resume.step if resume is not None else -1
    chosen = distributed.from_rank0(mine, d)
    if distributed.any_rank(chosen != mine, d):
        said = "none" if chosen < 0 else f"the one at step {chosen}"
        raise DlcliError(f"--resume auto: the ranks found different checkpoints in {run_dir} "
                         f"(rank 0 {said}); every node must see the run folder (a shared "
                         "filesystem), or pass --run-dir on one")


def write_config(run_dir: Path, config: dict, provenance: dict) -> None:
    """config.yaml: the resolved config, and where the run came from (`provenance`)."""
    written = {**config, "provenance": provenance} if provenance else config
    atomic_write(run_dir / "config.yaml",
                 lambda tmp: Path(tmp).write_text(yaml.safe_dump(written, sort_keys=False)))


def prepare_task(spec, config: dict, dev: torch.device, data_dir, resume, precision: str | None):
    """The task ready to train: built on `dev` with its data loaded (from the checkpoint's
    data folder when resuming without --data-dir). Returns (task, resolved precision)."""
    if resume is not None:
        data_dir = resume.data_dir(data_dir)
    task = spec.load_task()(spec, config, dev, data_dir, meta=resume.meta if resume else None)
    precision = apply_precision(task, precision)
    task.setup_data()
    return task, precision


def run_provenance(task, precision: str) -> dict:
    """Where a run came from, for config.yaml and every checkpoint: versions, the command
    line, the data and its SHA-256, the device and precision."""
    import os
    import platform
    import shlex
    import sys

    from dlcli import __version__

    dev = task.device
    device = f"cuda ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else str(dev)
    return {
        "dlcli": __version__, "torch": str(torch.__version__), "python": platform.python_version(),
        "command": shlex.join(["dlcli", *sys.argv[1:]]),
        "data": task.data_source, "data_sha256": task.data_sha256(),
        "device": device, "precision": precision,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "pid": os.getpid(), "hostname": platform.node(),  # `dlcli runs` tells running from stale
    }


def dry_run(spec, config: dict, sources: dict, *, device: str = "auto", data_dir=None,
            resume_path=None, precision: str | None = None) -> str:
    """`train --dry-run`: the resolved config as YAML, each value commented with where it
    came from, then the data and device the run would use. Loads the data (to name it
    truly) but trains nothing and makes no run folder."""
    dev = pick_device(device)
    resume = load_checkpoint(resume_path, expect_model=spec.name) if resume_path else None
    task, precision = prepare_task(spec, config, dev, data_dir, resume, precision)
    lines = [yaml.safe_dump({k: v}, default_flow_style=True, width=math.inf).strip()[1:-1]
             for k, v in config.items()]  # "{key: value}" less its braces: one line each
    width = max(map(len, lines))
    where = f"{dev}, precision {precision}"
    return "\n".join(
        [f"# dlcli train {spec.name} --dry-run: nothing trained, no run folder made"]
        + [f"{line:<{width}}  # {sources.get(k, 'default')}" for line, k in zip(lines, config)]
        + [f"# data: {dataset_name(config)}, {task.data_source} "
           f"(sha256 {task.data_sha256()})",
           f"# device: {where}"])
