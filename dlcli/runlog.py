"""Past runs, for `dlcli runs`: what each run folder says about itself.

A run folder (runs/<model>/<name>/, made by runs.new_run_dir) holds config.yaml (the
resolved config and its provenance), metrics.jsonl and last/best.safetensors. This module
reads those text files and the checkpoints' headers only, never a tensor, so that listing a
hundred runs is quick. One damaged run never stops a listing: what could not be read
becomes a note on that run.
"""

from __future__ import annotations

import functools
import json
import math
import os
import platform
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import yaml

from dlcli.errors import DlcliError
from dlcli.runs import RUNS_ROOT, STAMP

CHECKPOINTS = ("last.safetensors", "best.safetensors")  # newest first
MARKERS = ("config.yaml", "metrics.jsonl", *CHECKPOINTS)  # any one makes a folder a run
STATES = ("finished", "interrupted", "diverged", "running")
NOT_COMPARED = {"provenance.started", "provenance.pid"}  # they differ between any two runs


def is_run(path: Path) -> bool:
    return path.is_dir() and any((path / name).is_file() for name in MARKERS)


# ---- reading one run ----------------------------------------------------------------

def read_records(path: Path) -> tuple[list[dict], int]:
    """metrics.jsonl's records, and how many of its lines could not be read. A last line
    without its newline is a record cut short by a killed run: dropped, not counted."""
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.splitlines()
    records, bad = [], 0
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            record = None
        if isinstance(record, dict):
            records.append(record)
        elif i < len(lines) - 1 or text.endswith("\n"):
            bad += 1
    return records, bad


def read_checkpoint_header(path: Path) -> dict:
    """What a checkpoint's header says about its run: model, config, provenance, epoch,
    step, metrics and the batch a mid-epoch save stopped at. No tensor is read."""
    from dlcli.header import check_metadata, read_header

    meta = read_header(path).get("__metadata__") or {}
    if "model" not in meta or "config" not in meta:
        raise DlcliError(f"{path.name} is not a dlcli checkpoint")
    check_metadata(path, meta)
    state = json.loads(meta.get("state", "null"))  # a JSON skeleton: tensors are mere keys
    plain = dict(state["__dict__"]) if isinstance(state, dict) and "__dict__" in state else {}
    return {"model": meta["model"], "config": json.loads(meta["config"]),
            "provenance": json.loads(meta.get("provenance", "{}")),
            "epoch": int(meta.get("epoch", 0)), "step": int(meta.get("step", 0)),
            "metrics": json.loads(meta.get("metrics", "{}")), "batch": int(plain.get("batch") or 0)}


def parse_time(text) -> float | None:
    """Seconds since the epoch of provenance's `started` (ISO, with its UTC offset)."""
    for form in ("%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S"):
        try:
            return datetime.strptime(str(text), form).timestamp()
        except ValueError:
            continue
    return None


def process_start(pid: int) -> float | None:
    """When process `pid` started (seconds since the epoch), where /proc tells (Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime"))
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: start, in ticks
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def writer_alive(provenance: dict) -> bool:
    """Whether the process that is writing this run still runs: on this host, its pid alive,
    and started no later than the run (a pid reused since belongs to a younger process)."""
    pid = provenance.get("pid")
    if (os.name != "posix"  # elsewhere os.kill(pid, 0) would end the process, not probe it
            or not isinstance(pid, int) or pid <= 0 or provenance.get("hostname") != platform.node()):
        return False
    try:
        os.kill(pid, 0)
    except PermissionError:
        pass  # another user's process, alive
    except OSError:
        return False
    began, started = process_start(pid), parse_time(provenance.get("started"))
    return began is None or started is None or began <= started + 1


def finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@functools.cache
def monitored_metric(model: str) -> str | None:
    """The metric by which the model's task keeps best.safetensors (lower is better); None
    when it keeps the last epoch (GANs), or the model is unknown here. It imports the task
    module, and so torch: once per model a listing shows, never for `--help`."""
    from dlcli.registry import get_spec

    try:
        return get_spec(model).load_task().monitor
    except DlcliError:
        return None


@dataclass
class Run:
    path: Path
    config: dict = field(default_factory=dict)  # config.yaml, provenance included
    records: list = field(default_factory=list)  # metrics.jsonl, in order
    headers: dict = field(default_factory=dict)  # checkpoint name -> read_checkpoint_header
    notes: list = field(default_factory=list)  # what could not be read, said once per run

    @classmethod
    def read(cls, path: Path) -> "Run":
        run = cls(Path(path))
        config_file, metrics_file = run.path / "config.yaml", run.path / "metrics.jsonl"
        if config_file.is_file():
            try:  # YAML's dates become strings: the config is shown as JSON too
                config = json.loads(json.dumps(yaml.safe_load(config_file.read_text(encoding="utf-8")),
                                               default=str))
            except (OSError, UnicodeDecodeError, yaml.YAMLError, TypeError, ValueError, RecursionError):
                config = "unreadable"
            if isinstance(config, dict):
                run.config = config
            elif config is not None:  # None: the empty file that claims a --run-dir
                run.notes.append("config.yaml unreadable")
        if metrics_file.is_file():
            try:
                run.records, bad = read_records(metrics_file)
                if bad:
                    run.notes.append(f"metrics.jsonl: {bad} unreadable line{'s' * (bad > 1)} skipped")
            except OSError as e:
                run.notes.append(f"metrics.jsonl unreadable ({e.strerror or e})")
        for name in CHECKPOINTS:
            if (run.path / name).is_file():
                try:
                    run.headers[name] = read_checkpoint_header(run.path / name)
                except (DlcliError, OSError, ValueError, KeyError, TypeError, AttributeError,
                        RecursionError):
                    run.notes.append(f"{name} unreadable")
        if not run.config and run.checkpoint:  # the checkpoint carries the config too
            run.config = {**run.checkpoint["config"], "provenance": run.checkpoint["provenance"]}
        return run

    # ---- what the files say ---------------------------------------------------------
    @property
    def checkpoint(self) -> dict | None:
        """The newest readable checkpoint's header: last, else best."""
        return next((self.headers[n] for n in CHECKPOINTS if n in self.headers), None)

    @property
    def provenance(self) -> dict:
        found = self.config.get("provenance")
        return found if isinstance(found, dict) else {}

    @property
    def model(self) -> str:
        """As the config says; else as the folder says (runs/<model>/<name>/), if it can."""
        from dlcli.registry import list_models

        named = self.path.parent.name
        return str(self.config.get("model")
                   or (named if named in {s.name for s in list_models()} else "?"))

    @property
    def dataset(self) -> str:
        data = self.config.get("data")  # the user's own files (--data)
        if data:
            return ", ".join(Path(str(p)).name for p in (data if isinstance(data, list) else [data]))
        return str(self.config.get("dataset", "?"))

    @property
    def epochs_planned(self) -> int | None:
        planned = self.config.get("epochs")
        return planned if isinstance(planned, int) else None

    @functools.cached_property
    def epoch_records(self) -> list[dict]:
        return [r for r in self.records if r.get("kind") == "epoch"]

    @property
    def epochs_done(self) -> int:
        if self.checkpoint:
            return self.checkpoint["epoch"]
        return max((r["epoch"] for r in self.epoch_records if isinstance(r.get("epoch"), int)),
                   default=0)

    @functools.cached_property
    def started(self) -> float | None:
        """From provenance; else the time in the folder's name; else config.yaml's mtime."""
        when = parse_time(self.provenance.get("started"))
        if when is None:
            try:
                when = time.mktime(time.strptime(self.path.name[:15], STAMP))
            except ValueError:
                files = [self.path / n for n in MARKERS if (self.path / n).is_file()]
                when = min((f.stat().st_mtime for f in files), default=None)
        return when

    @functools.cached_property
    def end(self) -> dict | None:
        """The record training writes as it ends, when it is the run's last word: the last
        record, written after the newest start (a resumed run rewrites config.yaml)."""
        if not self.records or self.records[-1].get("kind") != "end":
            return None
        config, metrics = self.path / "config.yaml", self.path / "metrics.jsonl"
        if config.is_file() and config.stat().st_mtime > metrics.stat().st_mtime:
            return None
        return self.records[-1]

    @functools.cached_property
    def state(self) -> str:
        end = self.end
        if end is not None and end.get("state") in STATES:
            return end["state"]
        planned = self.epochs_planned
        if self.checkpoint and planned is not None and self.epochs_done >= planned:
            return "finished"
        if writer_alive(self.provenance):
            return "running"
        if any(not finite_number(v) for r in self.records for k, v in r.items()
               if isinstance(v, float)):
            return "diverged"  # a NaN or infinity made it into the log
        if ((self.path / "metrics.jsonl").is_file()
                and not any((self.path / n).is_file() for n in CHECKPOINTS)):
            # training began but never saved: a bad loss stops a run so before epoch 1 ends
            # (Ctrl-C and SIGTERM save first; only a hard kill looks the same)
            return "diverged"
        return "interrupted"  # killed, stopped by a signal, or its process is gone

    @functools.cached_property
    def seconds(self) -> float | None:
        """Wall time: as the end record says; else from the start to now (running) or to the
        last file written."""
        end = self.end
        if end is not None and finite_number(end.get("seconds")):
            return float(end["seconds"])
        started = self.started
        if started is None:
            return None
        if self.state == "running":
            return max(time.time() - started, 0.0)
        written = [self.path / n for n in ("metrics.jsonl", *CHECKPOINTS) if (self.path / n).is_file()]
        return max(max((f.stat().st_mtime for f in written), default=started) - started, 0.0)

    @functools.cached_property
    def monitor(self) -> str | None:
        starts = [r for r in self.records if r.get("kind") == "start" and "monitor" in r]
        if starts:
            return starts[-1]["monitor"]
        return monitored_metric(self.model)  # a run from before the start record

    @functools.cached_property
    def best(self) -> float | None:
        """The best (lowest) value of the monitored metric over the epochs; from
        best.safetensors when metrics.jsonl has none."""
        if self.monitor is None:
            return None
        scored = [r[self.monitor] for r in self.epoch_records if finite_number(r.get(self.monitor))]
        if scored:
            return min(scored)
        metrics = self.headers.get("best.safetensors", {}).get("metrics")
        value = metrics.get(self.monitor) if isinstance(metrics, dict) else None
        return value if finite_number(value) else None

    @property
    def final_metrics(self) -> dict:
        """The last epoch's record (the last checkpoint's metrics when the log has none)."""
        if self.epoch_records:
            return {k: v for k, v in self.epoch_records[-1].items() if k != "kind"}
        return dict(self.checkpoint["metrics"]) if self.checkpoint else {}

    def summary(self) -> dict:
        started = self.started
        return {
            "path": str(self.path), "model": self.model, "dataset": self.dataset,
            "started": (datetime.fromtimestamp(started).astimezone().isoformat(timespec="seconds")
                        if started is not None else None),
            "epochs": self.epochs_done, "epochs_planned": self.epochs_planned,
            "batch": self.checkpoint["batch"] if self.checkpoint else 0,
            "steps": self.checkpoint["step"] if self.checkpoint else None,
            "seconds": None if self.seconds is None else round(self.seconds, 1),
            "state": self.state, "monitor": self.monitor, "best": self.best,
            "pid": self.provenance.get("pid"), "hostname": self.provenance.get("hostname"),
            "notes": self.notes,
        }


# ---- finding runs -------------------------------------------------------------------

def subfolders(path: Path) -> list[Path]:
    try:
        return sorted(p for p in path.iterdir() if p.is_dir())
    except OSError:  # a folder we may not read: nothing of ours is in it
        return []


def find_runs(root: Path) -> list[Path]:
    """The run folders under `root`: root/<model>/<name>/ as train makes them, and run
    folders right in root (root = runs/<model>, or the parent of --run-dir folders)."""
    if is_run(root):
        return [root]
    found = []
    for child in subfolders(root):
        found += [child] if is_run(child) else [g for g in subfolders(child) if is_run(g)]
    return found


def check_root(root: Path | None) -> Path:
    """--root (default ./runs): a folder that exists, unless it is the default."""
    if root is None:
        return RUNS_ROOT
    if not root.is_dir():
        raise DlcliError(f"--root {root}: " + ("not a folder" if root.exists() else "no such folder")
                         + "; give the folder that holds your runs (default ./runs)")
    return root


def list_runs(root: Path, model: str | None = None) -> list[Run]:
    """The runs under root (of `model` only, when given), newest first."""
    runs = [Run.read(p) for p in find_runs(root)] if root.is_dir() else []
    if model is not None:
        runs = [r for r in runs if r.model == model]
    return sorted(runs, key=lambda r: r.started or 0.0, reverse=True)


def resolve_run(name, root: Path) -> Path:
    """A run named on the command line: its folder (or a file in it), or its name under
    root (`20260101-120000`, `mlp/20260101-120000`)."""
    path = Path(name)
    if path.is_file() and is_run(path.parent):
        return path.parent
    if path.is_dir():
        if is_run(path):
            return path
        raise DlcliError(f"{path} is not a run folder: it holds none of {', '.join(MARKERS)}")
    candidates = [root / path] + [model / path for model in subfolders(root)]
    found = list(dict.fromkeys(p for p in candidates if is_run(p)))
    if len(found) > 1:
        raise DlcliError(f"{name} names {len(found)} runs under {root}: "
                         f"{', '.join(map(str, found))}; give the one you mean by its path")
    if not found:
        raise DlcliError(f"no run {name!s}: not a folder here, nor a run under {root} "
                         "(`dlcli runs` lists them)")
    return found[0]


# ---- comparing ----------------------------------------------------------------------

def flatten(config: dict, prefix: str = "") -> dict:
    """Nested keys as dotted names: {"provenance": {"device": ...}} -> "provenance.device"."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def side_by_side(dicts: list[dict], skip=()) -> dict[str, list]:
    """Every key of the dicts with its value in each (None where one lacks it), kept only
    where the values differ."""
    keys = [k for k in dict.fromkeys(k for d in dicts for k in d) if k not in skip]
    rows = {k: [d.get(k) for d in dicts] for k in keys}
    return {k: values for k, values in rows.items()
            if len({json.dumps(v, sort_keys=True, default=str) for v in values}) > 1}


def compare(runs: list[Run]) -> dict:
    """The configs' differences and the final metrics, run by run, JSON-ready."""
    final = [r.final_metrics for r in runs]
    metrics = list(dict.fromkeys(k for m in final for k in m))
    return {
        "runs": [r.summary() for r in runs],
        "config": side_by_side([flatten(r.config) for r in runs], skip=NOT_COMPARED),
        "final": {k: [m.get(k) for m in final] for k in metrics},
    }


# ---- showing ------------------------------------------------------------------------

def shown(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, dict, bool)):
        return json.dumps(value)
    return str(value)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


STATE_STYLE = {"finished": "green", "running": "cyan", "interrupted": "yellow", "diverged": "red"}


def stdout_console():
    """Results go to stdout; into a pipe or a file, rows are kept whole (for grep and awk)
    rather than folded to 80 columns."""
    from rich.console import Console

    console = Console(soft_wrap=True, highlight=False)
    return console if console.is_terminal else Console(soft_wrap=True, highlight=False, width=10_000)


def styled_state(state: str) -> str:
    return f"[{STATE_STYLE.get(state, 'white')}]{state}[/]"


def best_cell(summary: dict) -> str:
    return f"{summary['monitor']} {summary['best']:.4g}" if summary["best"] is not None else "—"


def render_list(runs: list[Run]) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table("model", "dataset", "started", "epochs", "wall", "state", "best", box=None)
    table.add_column("path", overflow="fold")  # folded on a narrow terminal, never cut short
    noted = any(r.notes for r in runs)
    if noted:
        table.add_column("note")
    for run in runs:
        s = run.summary()
        started = s["started"][:16].replace("T", " ") if s["started"] else "—"
        row = [escape(s["model"]), escape(s["dataset"]), started,
               f"{s['epochs']}/{shown(s['epochs_planned'])}", duration(s["seconds"]),
               styled_state(s["state"]), best_cell(s), escape(s["path"])]
        table.add_row(*row, *([escape("; ".join(s["notes"]))] if noted else []))
    stdout_console().print(table)


def render_show(run: Run) -> None:
    from rich.markup import escape
    from rich.table import Table

    s = run.summary()
    c = stdout_console()
    c.print(f"[bold]{escape(s['path'])}[/bold]  {escape(s['model'])} on {escape(s['dataset'])}  "
            f"{styled_state(s['state'])}  epoch {s['epochs']} of {shown(s['epochs_planned'])}  "
            f"{duration(s['seconds'])}  best {best_cell(s)}")
    for note in s["notes"]:
        c.print(f"[yellow]note:[/yellow] {escape(note)}")
    if run.config:
        c.print(escape(yaml.safe_dump(run.config, sort_keys=False).rstrip()))
    history = run.epoch_records
    if not history:
        c.print("no epoch finished yet: metrics.jsonl holds no epoch record")
        return
    keys = list(dict.fromkeys(k for r in history for k in r if k != "kind"))
    table = Table(*map(escape, keys), box=None)
    for r in history:
        table.add_row(*(shown(r.get(k)) for k in keys))
    c.print(table)


def render_compare(result: dict) -> None:
    from rich.markup import escape
    from rich.table import Table

    names = [Path(s["path"]).name for s in result["runs"]]
    if len(set(names)) < len(names):  # same folder names under two models: say which
        names = [s["path"] for s in result["runs"]]
    c = stdout_console()
    overview = Table("", *map(escape, names), box=None)
    for label, key in (("model", "model"), ("dataset", "dataset"), ("state", "state")):
        overview.add_row(label, *(escape(str(s[key])) for s in result["runs"]))
    overview.add_row("epochs", *(f"{s['epochs']}/{shown(s['epochs_planned'])}" for s in result["runs"]))
    overview.add_row("wall", *(duration(s["seconds"]) for s in result["runs"]))
    overview.add_row("best", *(best_cell(s) for s in result["runs"]))
    c.print(overview)
    if result["config"]:
        c.print("\n[bold]config differences[/bold]")
        table = Table("key", *map(escape, names), box=None)
        for key, values in result["config"].items():
            table.add_row(escape(key), *(escape(shown(v)) for v in values))
        c.print(table)
    else:
        c.print("\nthe configs are the same")
    if result["final"]:
        c.print("\n[bold]final metrics[/bold] (the last epoch of each)")
        table = Table("metric", *map(escape, names), box=None)
        for key, values in result["final"].items():
            table.add_row(escape(key), *(shown(v) for v in values))
        c.print(table)
