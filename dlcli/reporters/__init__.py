"""Where a training run's progress goes. The loop (dlcli/train.py) emits events to a list
of reporters; each reporter turns the events it cares about into one kind of output:
metrics.jsonl, the console, curves.png, the sample pictures, TensorBoard, MLflow.

Adding a logger is one class in one file here: subclass Reporter, override the events it
needs, and name it in LOGGERS (with the pip extra that brings its library).
"""

from __future__ import annotations

import importlib
import importlib.util
import time
from dataclasses import dataclass, field
from pathlib import Path

from dlcli.errors import DlcliError

# --logger NAME: (module.Class under dlcli.reporters, the import it needs, the pip extra)
LOGGERS = {
    "tensorboard": ("tensorboard.TensorBoard", "tensorboard", "tensorboard"),
    "mlflow": ("mlflow.MLflow", "mlflow", "mlflow"),
}


@dataclass
class Run:
    """What every reporter is told when a run starts."""

    dir: Path
    model: str
    config: dict
    epochs: int  # planned
    monitor: str | None = None  # lower is better; picks best.safetensors
    item_name: str = "img"  # unit of throughput (img/s, tok/s)
    provenance: dict = field(default_factory=dict)


@dataclass
class End:
    """How a run ended: state is finished, interrupted (a signal), diverged (a loss went
    non-finite) or failed (an unexpected error)."""

    state: str
    epochs: int  # epochs done, in all
    epochs_run: int  # in this process (a resumed run counts from where it resumed)
    step: int  # optimizer steps done, in all
    seconds: float  # in this process
    checkpoint: Path | None = None  # best.safetensors, else last.safetensors, if written
    message: str | None = None  # the task's closing words (the perceptron's verdict)


class Meter:
    """An epoch so far: the running sums of its step metrics, its items, its time."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.steps = self.items = 0
        self.started = time.perf_counter()

    def add(self, logs: dict[str, float], items: int) -> None:
        self.steps += 1
        self.items += items
        for k, v in logs.items():
            self.sums[k] = self.sums.get(k, 0.0) + v

    def means(self) -> dict[str, float]:
        return {k: v / max(self.steps, 1) for k, v in self.sums.items()}

    def seconds(self) -> float:
        return time.perf_counter() - self.started


class Reporter:
    """One place a run's progress goes. Every event does nothing here; a reporter
    overrides the ones it uses. Events arrive in this order: start; then per epoch
    epoch_start, step (every optimizer step), record (each metrics.jsonl record: a
    "step" record every LOG_EVERY steps, an "epoch" record after validation), images,
    checkpoint (each file written); and end, whatever happened."""

    def start(self, run: Run) -> None: ...

    def epoch_start(self, epoch: int, batches: int, done: int) -> None:
        """Epoch `epoch` (1-based) of `batches` steps begins, `done` of them already run."""

    def step(self, done: int, logs: dict[str, float], meter: Meter) -> None:
        """One optimizer step: `done` steps of this epoch so far, its metrics, and the
        epoch's so far."""

    def record(self, record: dict) -> None:
        """A metrics record: {"kind": "step"|"epoch", "epoch": N, "step": S, name: value}."""

    def images(self, epoch: int, tag: str, images, nrow: int, captions=None) -> None:
        """A picture of the model at the end of `epoch` (images in [0, 1], N x C x H x W)."""

    def checkpoint(self, path: Path, role: str) -> None:
        """A checkpoint was written: role is last, best, epoch, update or averaged."""

    def end(self, end: End) -> None: ...


class Reporters(Reporter):
    """Several reporters as one: each event goes to each, in order (metrics.jsonl first,
    so the reporters after it may read the file; the console last, so its summary names
    every file written). Empty on ranks other than 0 under torchrun."""

    def __init__(self, reporters: list[Reporter]):
        self.reporters = list(reporters)

    def start(self, run):
        for r in self.reporters:
            r.start(run)

    def epoch_start(self, epoch, batches, done):
        for r in self.reporters:
            r.epoch_start(epoch, batches, done)

    def step(self, done, logs, meter):
        for r in self.reporters:
            r.step(done, logs, meter)

    def record(self, record):
        for r in self.reporters:
            r.record(record)

    def images(self, epoch, tag, images, nrow, captions=None):
        for r in self.reporters:
            r.images(epoch, tag, images, nrow, captions)

    def checkpoint(self, path, role):
        for r in self.reporters:
            r.checkpoint(path, role)

    def end(self, end):
        for r in self.reporters:
            r.end(end)


def check_loggers(names) -> list[str]:
    """The --logger names, checked before any training starts: known, and their library
    installed (else one line naming the pip command)."""
    names = list(dict.fromkeys(names))  # once each, in order
    for name in names:
        if name not in LOGGERS:
            raise DlcliError(f"unknown logger {name!r}; choose one of: {', '.join(LOGGERS)}")
        _, module, extra = LOGGERS[name]
        if importlib.util.find_spec(module) is None:
            raise DlcliError(f"--logger {name} needs {module}: pip install \"dlcli[{extra}]\"")
    return names


def make_reporters(loggers=()) -> Reporters:
    """The reporters of a run on rank 0: the run folder's own files, then the loggers."""
    from dlcli.reporters.console import ConsoleReporter
    from dlcli.reporters.curves import Curves
    from dlcli.reporters.metrics import MetricsFile
    from dlcli.reporters.samples import SamplePictures

    chosen = []
    for name in check_loggers(loggers):
        where, _, _ = LOGGERS[name]
        module, cls = where.rsplit(".", 1)
        chosen.append(getattr(importlib.import_module(f"dlcli.reporters.{module}"), cls)())
    return Reporters([MetricsFile(), SamplePictures(), Curves(), *chosen, ConsoleReporter()])
