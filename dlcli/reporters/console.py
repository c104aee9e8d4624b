"""The console (stderr): a progress bar per epoch, one line of metrics after it, and when
the run finishes, the task's verdict and a summary of what was done and written."""

from __future__ import annotations

import json
from pathlib import Path

from dlcli.console import console
from dlcli.reporters import End, Meter, Reporter, Run


class ConsoleReporter(Reporter):
    def start(self, run: Run) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.run = run
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("eta"),
            TimeRemainingColumn(), console=console, transient=True)
        self.progress.start()
        self.bar = None

    def epoch_start(self, epoch: int, batches: int, done: int) -> None:
        self.bar = self.progress.add_task(f"epoch {epoch}/{self.run.epochs}", total=batches,
                                          completed=done, info="")
        self.total = batches

    def step(self, done: int, logs: dict[str, float], meter: Meter) -> None:
        if meter.steps % 10 == 0 or done == self.total:  # redrawing costs; every 10 steps
            rate = meter.items / max(meter.seconds(), 1e-9)
            shown = " ".join(f"{k} {v:.4g}" for k, v in list(meter.means().items())[:3])
            self.progress.update(self.bar, completed=done,
                                 info=f"{shown} {rate:,.0f} {self.run.item_name}/s")

    def record(self, record: dict) -> None:
        if record["kind"] != "epoch":
            return
        self.progress.remove_task(self.bar)
        self.bar = None
        console.print(f"epoch {record['epoch']}/{self.run.epochs}  " + "  ".join(
            f"{k} {v:.4g}" for k, v in record.items() if isinstance(v, float)))

    def end(self, end: End) -> None:
        self.progress.stop()
        if end.state != "finished":
            return  # the error or the interruption speaks for itself
        if end.message:
            console.print(end.message)
        console.print(summary(self.run.dir, end.epochs_run, end.seconds, self.run.monitor))


def summary(run_dir: Path, epochs_run: int, seconds: float, monitor: str | None = "val_loss") -> str:
    """The closing lines of a training run: epochs, wall time, the best epoch (as its
    checkpoint records it; the last one when nothing is monitored) with its validation
    metrics, and the files written."""
    from dlcli.header import read_header

    minutes, secs = divmod(round(seconds), 60)
    lines = [f"done: {epochs_run} epoch{'s' if epochs_run != 1 else ''} in "
             + (f"{minutes} min {secs} s" if minutes else f"{seconds:.1f} s")]
    best = run_dir / "best.safetensors"
    if best.is_file():
        meta = read_header(best).get("__metadata__", {})
        shown = {k: v for k, v in json.loads(meta.get("metrics", "{}")).items()
                 if isinstance(v, (int, float)) and not k.startswith("train_")
                 and k not in ("epoch_seconds", "items_per_s")}
        lines.append(f"{'best' if monitor else 'last'} epoch {meta.get('epoch')}: "
                     + ", ".join(f"{k} {v:.4g}" for k, v in shown.items()))
    files = sorted(p.name for p in run_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    pictures = len(list((run_dir / "samples").glob("*.png")))
    lines.append(f"wrote {run_dir}/: " + ", ".join(files)
                 + (f", samples/ ({pictures} pictures)" if pictures else ""))
    return "\n".join(lines)
