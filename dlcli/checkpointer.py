"""A run's checkpoint policy, and weight averaging.

The Checkpointer writes, in the run folder: last.safetensors after every epoch, every
`checkpoint_every` steps or seconds between epoch ends, and when stopped mid-epoch (it holds
the training state --resume needs, down to the batch inside the epoch), best.safetensors when the
monitored metric improves, and when the config asks (`average_last: N`) weight-only
snapshots, the last N of them kept: epoch-NNN.safetensors at each epoch end, or with
`average_every: K` update-NNNNNNN.safetensors every K optimizer updates. At the end of
training the kept snapshots are averaged into averaged.safetensors, as fairseq's
scripts/average_checkpoints.py does with --num-epoch-checkpoints or --num-update-checkpoints.
average_checkpoints is also `dlcli average`.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import torch

from dlcli.checkpoint import load_checkpoint, save_checkpoint
from dlcli.config import checkpoint_interval
from dlcli.errors import DlcliError, TrainingFailed
from dlcli.fileio import atomic_write
from dlcli.registry import get_spec
from dlcli.runtime import rng_state


class Checkpointer:
    """Checkpoints of `task` in `run_dir`; with run_dir None (ranks other than 0 under
    torchrun) it writes nothing."""

    def __init__(self, task, run_dir: Path | None, provenance: dict | None = None,
                 best: float | None = None, reporter=None):
        self.task, self.dir, self.provenance = task, run_dir, provenance or {}
        self.best = best  # the best monitored value so far (a resumed run's, to begin with)
        self.reporter = reporter  # told of each file written
        self.last = run_dir / "last.safetensors" if run_dir else None
        self.best_path = run_dir / "best.safetensors" if run_dir else None
        self.keep = int(task.config.get("average_last", task.config.get("keep_epochs", 0)))
        self.snapshot_every = int(task.config.get("average_every", 0))  # 0: at epoch ends
        self.metrics: dict = {}  # the last epoch's, which a mid-epoch checkpoint carries too
        self.every_steps, self.every_seconds = checkpoint_interval(
            task.config.get("checkpoint_every", 0))
        self.saved_at = (time.monotonic(), None)  # (when, at which step) last.safetensors was
        self.failing = False  # the last write failed (said once until one succeeds)

    def due(self, step: int) -> bool:
        """Whether checkpoint_every asks for a save after optimizer step `step`. Steps are
        counted from the last save, so a resumed run saves at the same steps as one never
        stopped; the clock is rank 0's own, and only rank 0 writes."""
        if self.dir is None:
            return False
        since, at = self.saved_at
        if self.every_steps is not None:
            return step % self.every_steps == 0 and step != at
        return self.every_seconds is not None and time.monotonic() - since >= self.every_seconds

    def save(self, epoch_done: int, batch: int, step: int, must: bool = False) -> None:
        """last.safetensors: the weights and everything --resume needs to continue after
        `batch` batches of epoch `epoch_done` + 1 (0: at the epoch's start).

        A write that fails (disk full, folder read-only) leaves the previous file whole
        (atomic_write). Training then goes on with a one-line warning: hours of progress
        held in memory are worth more than one missed checkpoint, and the next one tries
        again (space is often freed meanwhile). Only a save that must succeed, the final
        one or the one a signal asked for, stops the run with exit 1."""
        if self.dir is None:
            return
        if self._guarded(lambda: self._write_last(epoch_done, batch, step), step, must):
            self.saved_at = (time.monotonic(), step)

    def _guarded(self, write, step: int, must: bool) -> bool:
        """Run write(); on failure warn (or, `must`, stop with exit 1). True: written."""
        try:
            write()
        except DlcliError as e:
            kept = f"{self.last} is kept as it was" if self.last.is_file() else \
                "no checkpoint was written yet"
            if must:
                raise TrainingFailed(f"checkpoint at step {step} not saved: {e}; {kept}") from None
            if not self.failing:
                from dlcli.console import warn

                warn(f"checkpoint at step {step} not saved: {e}; {kept}; training goes on "
                     "and tries again at the next checkpoint")
            self.failing = True
            return False
        if self.failing:
            from dlcli.console import notice

            notice(f"checkpoints are written again (step {step})")
        self.failing = False
        return True

    def _write_last(self, epoch_done: int, batch: int, step: int) -> None:
        task = self.task
        state = {"task": task.training_state(), "rng": rng_state(), "batch": batch, "best": self.best}
        save_checkpoint(self.last, model=task.spec.name, config=task.config, modules=task.modules,
                        epoch=epoch_done, step=step, metrics=self.metrics, state=state,
                        extra=self._extra())
        self._wrote(self.last, "last")

    def _extra(self) -> dict:
        """What every checkpoint of the run records beside its weights: the task's own
        metadata, the data folder (so that --resume, evaluate and an average of snapshots
        find the same data without --data-dir) and where the run came from."""
        task = self.task
        where = {"data_dir": str(Path(task.data_dir).absolute())} if task.data_dir else {}
        origin = {"provenance": json.dumps(self.provenance)} if self.provenance else {}
        return {**task.checkpoint_extra(), **where, **origin}

    def end_of_epoch(self, epoch: int, step: int, metrics: dict, final: bool = False) -> None:
        """After epoch `epoch` (1-based) has been validated: last, best if it improved,
        and the epoch's own snapshot if the config keeps some. `final`: the last epoch,
        whose checkpoint must be written (see save)."""
        monitor = self.task.monitor
        improved = monitor is None or self.best is None or metrics.get(monitor, math.inf) < self.best
        if improved and monitor is not None:
            self.best = metrics.get(monitor)
        if self.keep > 0 and self.dir is not None and not self.snapshot_every:
            self._guarded(lambda: self.snapshot(f"epoch-{epoch:03d}", epoch, step), step,
                          must=False)
        self.metrics = metrics
        self.save(epoch, 0, step, must=final)
        if improved and self.dir is not None and not self.failing:
            def copy_best():
                atomic_write(self.best_path, lambda tmp: shutil.copyfile(self.last, tmp))
                self._wrote(self.best_path, "best")
            self._guarded(copy_best, step, must=final)

    def after_update(self, epoch_done: int, batch: int, batches: int, step: int) -> None:
        """After optimizer update `step`, batch `batch` of `batches` in epoch `epoch_done` + 1:
        the update's snapshot when `average_every` asks, and a mid-epoch last.safetensors
        when `checkpoint_every` does (an epoch's end saves anyway)."""
        if self.keep > 0 and self.dir is not None and self.snapshot_every \
                and step % self.snapshot_every == 0:
            self._guarded(lambda: self.snapshot(f"update-{step:07d}", epoch_done, step), step,
                          must=False)
        if batch < batches and self.due(step):
            self.save(epoch_done, batch, step)

    def snapshot(self, name: str, epoch: int, step: int) -> None:
        """NAME.safetensors (weights only), keeping the newest `average_last`."""
        task = self.task
        path = self.dir / f"{name}.safetensors"
        save_checkpoint(path, model=task.spec.name, config=task.config, modules=task.modules,
                        epoch=epoch, step=step, extra=self._extra())
        self._wrote(path, "epoch" if name.startswith("epoch") else "update")
        for old in self.kept()[:-self.keep]:
            old.unlink()

    def kept(self) -> list[Path]:
        """This run's snapshots, oldest first (zero-padded numbers sort in order)."""
        pattern = "update-*.safetensors" if self.snapshot_every else "epoch-*.safetensors"
        return sorted(self.dir.glob(pattern))

    def finish(self) -> None:
        """Training ran its course: average the kept snapshots into averaged.safetensors (the
        mean of the last few epochs' or updates' weights often scores better than any one
        of them)."""
        kept = self.kept() if self.dir is not None and self.keep >= 1 else []
        if len(kept) < 2:
            return
        from dlcli.console import notice

        target = self.dir / "averaged.safetensors"
        average_checkpoints(kept, target)
        unit = f"snapshots ({self.snapshot_every} updates apart)" if self.snapshot_every else "epochs"
        notice(f"averaged the last {len(kept)} {unit} into {target}")
        self._wrote(target, "averaged")

    def checkpoint(self) -> Path | None:
        """What the run hands on (see runs.run_checkpoint)."""
        from dlcli.runs import run_checkpoint

        return None if self.dir is None else run_checkpoint(self.dir)

    def _wrote(self, path: Path, role: str) -> None:
        if self.reporter is not None:
            self.reporter.checkpoint(path, role)


# ---- averaging --------------------------------------------------------------------------

STANDARD_KEYS = {"format", "model", "dlcli_version", "config", "epoch", "step", "metrics",
                 "modules", "parameters", "state"}
# Config keys that steer how a model trains or samples, not what it computes: checkpoints
# may differ in these (the epochs of one run, runs of several seeds) and still be averaged.
TRAINING_KEYS = {"epochs", "lr", "seed", "batch_size", "optimizer", "momentum", "weight_decay",
                 "schedule", "lr_decay", "warmup", "clip_norm", "beta1", "beta2", "d_lr_scale",
                 "label_smoothing", "dropout", "d_dropout", "precision", "val_size", "keep_epochs",
                 "average_last", "average_every", "attention_dropout", "activation_dropout",
                 "val_translate", "ema", "beta", "gamma", "capacity", "capacity_epochs",
                 "kl_warmup", "free_bits", "iwae_samples", "loss", "r1", "classify",
                 "truncation", "temperature", "beam", "length_penalty", "data", "train_size",
                 "logger", "checkpoint_every"}
# Metadata that gives the weights their meaning: the same numbers under another tokenizer
# or other class names are another model.
MEANING_KEYS = ("tokenizer", "image_data", "classes", "class_names", "image_shape",
                "normalization")


def meaning_difference(a, b) -> str | None:
    """What makes checkpoints a and b models of different things, or None."""
    ca, cb = a.config, b.config
    for key in sorted((ca.keys() | cb.keys()) - TRAINING_KEYS):
        if ca.get(key) != cb.get(key):
            return f"config {key} is {ca.get(key)!r} in one and {cb.get(key)!r} in the other"
    for key in MEANING_KEYS:
        if a.meta.get(key) != b.meta.get(key):
            return f"their {key.replace('_', ' ')} differ"
    return None


def average_checkpoints(paths, output) -> Path:
    ckpts = [load_checkpoint(p) for p in paths]
    last = ckpts[-1]
    for c in ckpts[:-1]:
        if c.model != last.model:
            raise DlcliError(f"cannot average a {c.model} checkpoint ({c.path}) with a "
                             f"{last.model} one ({last.path})")
        difference = meaning_difference(c, last)
        if difference:
            raise DlcliError(f"cannot average {c.path} with {last.path}: {difference}")
    modules = {}
    for name in last.module_names():
        reference = last.state_dict(name)
        summed = {}
        for c in ckpts:
            state = c.state_dict(name)
            if state.keys() != reference.keys() or any(
                    state[k].shape != reference[k].shape for k in reference):
                raise DlcliError(f"{c.path} and {last.path} hold different architectures; "
                                 "only checkpoints of one training setup can be averaged")
            for key, tensor in state.items():
                summed[key] = summed.get(key, 0) + tensor.double()
        modules[name] = {
            # integer buffers (BatchNorm's batch counter) are counts, not weights: keep the last
            key: (value / len(ckpts)).to(reference[key].dtype)
            if reference[key].is_floating_point() else reference[key]
            for key, value in summed.items()}
    # Rebuild the model from the last checkpoint and give it the mean weights, so what is
    # saved is a real module (parameter counts, tied weights) like any training checkpoint.
    spec = get_spec(last.model)
    task = spec.load_task().from_checkpoint(spec, last, torch.device("cpu"))
    for name, module in task.modules.items():
        module.load_state_dict(modules[name])
    extra = {k: v for k, v in last.meta.items() if k not in STANDARD_KEYS}
    extra["averaged_from"] = json.dumps([str(c.path) for c in ckpts])
    metrics = {"averaged_checkpoints": len(ckpts)}
    return save_checkpoint(output, model=last.model, config=last.config, modules=task.modules,
                           epoch=last.epoch, step=last.step, metrics=metrics, extra=extra)

