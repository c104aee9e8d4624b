"""The one training loop. Every model family trains through `fit`, driven by its Task."""

from __future__ import annotations

import contextlib
import json
import math
import random
import shutil
import signal
import threading
import time
from pathlib import Path

import torch
import yaml

from dlcli import distributed
from dlcli.checkpoint import atomic_write, load_checkpoint, save_checkpoint
from dlcli.config import PRECISIONS
from dlcli.console import console, notice, warn
from dlcli.distributed import Dist
from dlcli.errors import DlcliError, Interrupted, TrainingFailed

LOG_EVERY = 50  # steps between step records in metrics.jsonl


def pick_device(name: str = "auto") -> torch.device:
    """The device for --device NAME. Every command that runs torch calls this first, so it
    also settles the vector-math kernels (below) before any other work."""
    settle_vector_math()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DlcliError("--device cuda: no CUDA device here; use --device cpu or auto")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise DlcliError("--device mps: no Apple GPU here; use --device cpu or auto")
    if name not in ("cpu", "cuda", "mps"):
        raise DlcliError(f"unknown device {name!r}; choose one of: auto, cpu, cuda, mps")
    return torch.device(name)


def settle_vector_math() -> None:
    """MKL picks its vector-math kernels (tanh, exp, ...) at their first call. When that
    first call comes from two threads at once, one of them can keep a less accurate kernel
    for the rest of the process: we saw tanh off by 8e-6 on one thread's half of a batch
    in about 5% of `dlcli sample` processes, so one --seed gave two different pictures.
    One tiny call on this thread alone, before any parallel work, makes the choice once."""
    torch.tanh(torch.zeros(1))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"].to(torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.to(torch.uint8) for s in state["cuda"]])


class MetricsLog:
    """metrics.jsonl: one JSON object per line, appended and flushed as training goes."""

    def __init__(self, path: Path):
        self.path = path
        self.file = open(path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


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

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._handle) for s in self.signals}
        return self

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def _progress():
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("eta"),
        TimeRemainingColumn(), console=console, transient=True,
    )


def fit(task, run_dir: Path | None, resume=None, dist_info: Dist = Dist(),
        precision: str = "32", provenance: dict | None = None) -> Path | None:
    """Train `task` for config['epochs'] epochs in `run_dir`; return the checkpoint path.
    Under torch.distributed every rank calls this; only rank 0 (run_dir given) writes.
    `provenance` (versions, command, data, device) goes into config.yaml and checkpoints."""
    config = task.config
    spec = task.spec
    d = dist_info
    started = time.perf_counter()
    provenance = provenance or {}
    if d.main:
        run_dir = Path(run_dir)
        (run_dir / "samples").mkdir(parents=True, exist_ok=True)
        written = {**config, "provenance": provenance} if provenance else config
        atomic_write(run_dir / "config.yaml",
                     lambda tmp: Path(tmp).write_text(yaml.safe_dump(written, sort_keys=False)))
    autocast = precision_context(task.device, precision)
    if precision == "16-mixed":
        task.scaler = torch.amp.GradScaler("cuda")

    start_epoch, skip, global_step, best = 0, 0, 0, None
    if resume is not None:
        state = resume.state
        resume.load_into(task.modules)
        task.load_training_state(state["task"])
        set_rng_state(state["rng"])
        start_epoch, skip = resume.epoch, int(state["batch"])
        global_step, best = resume.step, state.get("best")
        notice(f"resuming {resume.path} at epoch {start_epoch + 1}, step {global_step}")
    modules = list(task.modules.values())
    stop = StopRequest()
    if d.active:
        distributed.broadcast_modules(modules, d)
        distributed.average_gradients_before_steps(task.optimizers.values(), d)
        if not d.main:
            with stop:
                return _follow(task, start_epoch, skip, d, autocast, stop)

    log = MetricsLog(run_dir / "metrics.jsonl")
    last, best_path = run_dir / "last.safetensors", run_dir / "best.safetensors"
    epochs = config["epochs"]
    metrics: dict = {}

    def save(epoch_done: int, batch: int) -> None:
        state = {"task": task.training_state(), "rng": rng_state(), "batch": batch, "best": best}
        # the data folder too, so that --resume finds the same data without --data-dir
        where = {"data_dir": str(Path(task.data_dir).absolute())} if task.data_dir else {}
        origin = {"provenance": json.dumps(provenance)} if provenance else {}
        save_checkpoint(last, model=spec.name, config=config, modules=task.modules,
                        epoch=epoch_done, step=global_step, metrics=metrics, state=state,
                        extra={**task.checkpoint_extra(), **where, **origin})

    epoch = start_epoch
    try:
        with stop, _progress() as progress:
            for epoch in range(start_epoch, epochs):
                task.train_mode(True)
                batches = task.train_batches(epoch)
                if d.active:
                    batches = distributed.Shard(batches, d)
                bar = progress.add_task(f"epoch {epoch + 1}/{epochs}", total=len(batches),
                                        completed=skip, info="")
                sums: dict[str, float] = {}
                items, t0, steps = 0, time.perf_counter(), 0
                for i in range(skip, len(batches)):
                    batch = batches[i]
                    with autocast:
                        logs = task.train_step(batch)
                    bad = [k for k, v in logs.items() if not math.isfinite(v)]
                    if bad:
                        raise TrainingFailed(
                            f"{bad[0]} became {logs[bad[0]]} at epoch {epoch + 1}, step "
                            f"{global_step + 1}; training stopped. "
                            + (f"The last good checkpoint is {last}" if last.exists() else
                               f"No checkpoint was written yet ({run_dir} holds the metrics)")
                            + "; try a lower --lr")
                    global_step += 1
                    steps += 1
                    items += task.batch_items(batch)
                    for k, v in logs.items():
                        sums[k] = sums.get(k, 0.0) + v
                    if global_step % LOG_EVERY == 0:
                        log.write({"kind": "step", "epoch": epoch + 1, "step": global_step, **logs})
                    if steps % 10 == 0 or i == len(batches) - 1:
                        rate = items / max(time.perf_counter() - t0, 1e-9)
                        shown = " ".join(f"{k} {v / steps:.4g}" for k, v in list(sums.items())[:3])
                        progress.update(bar, completed=i + 1,
                                        info=f"{shown} {rate:,.0f} {task.item_name}/s")
                    if i + 1 < len(batches) and stop.agreed(d):
                        save(epoch, i + 1)  # mid-epoch: a resume skips the batches seen
                        distributed.barrier(d)
                        raise Interrupted(last, stop.signum)
                seconds = time.perf_counter() - t0
                progress.remove_task(bar)
                skip = 0
                task.train_mode(False)
                if d.active:
                    distributed.average_floating_state(modules, d)
                metrics = {f"train_{k}": v / max(steps, 1) for k, v in sums.items()}
                metrics.update(task.validate())
                metrics.update(epoch_seconds=round(seconds, 3),
                               items_per_s=round(items / max(seconds, 1e-9), 1))
                log.write({"kind": "epoch", "epoch": epoch + 1, "step": global_step, **metrics})
                console.print(f"epoch {epoch + 1}/{epochs}  " + "  ".join(
                    f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, float)))
                task.end_of_epoch(epoch + 1, run_dir)
                improved = task.monitor is None or best is None or (
                    metrics.get(task.monitor, math.inf) < best)
                if improved and task.monitor is not None:
                    best = metrics.get(task.monitor)
                save(epoch + 1, 0)
                if improved:
                    atomic_write(best_path, lambda tmp: shutil.copyfile(last, tmp))
                plot_metrics(run_dir, task.monitor)
                if epoch + 1 < epochs and stop.agreed(d):
                    distributed.barrier(d)
                    raise Interrupted(last, stop.signum)
                if getattr(task, "done", False) and not d.active:
                    break
    finally:
        log.close()
    report = getattr(task, "report", None)
    message = report(epoch + 1) if report else None
    if message:
        console.print(message)
    console.print(summary(run_dir, epoch + 1 - start_epoch, time.perf_counter() - started,
                          task.monitor))
    return best_path if best_path.exists() else last


def summary(run_dir: Path, epochs_run: int, seconds: float, monitor: str | None = "val_loss") -> str:
    """The closing lines of a training run: epochs, wall time, the best epoch (as its
    checkpoint records it; the last one when nothing is monitored) with its validation
    metrics, and the files written."""
    from dlcli.inspect import read_header

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


def _follow(task, start_epoch: int, skip: int, d: Dist, autocast, stop) -> None:
    """The loop of ranks other than 0: the same steps on their own shard, no output; and
    the same agreement on when to stop (rank 0 saves, then every rank exits alike)."""
    for epoch in range(start_epoch, task.config["epochs"]):
        task.train_mode(True)
        batches = distributed.Shard(task.train_batches(epoch), d)
        for i in range(skip, len(batches)):
            with autocast:
                task.train_step(batches[i])
            if i + 1 < len(batches) and stop.agreed(d):
                distributed.barrier(d)  # rank 0 has saved
                raise Interrupted(None, stop.signum)
        skip = 0
        task.train_mode(False)
        distributed.average_floating_state(list(task.modules.values()), d)
        if epoch + 1 < task.config["epochs"] and stop.agreed(d):
            distributed.barrier(d)
            raise Interrupted(None, stop.signum)
    return None


def resolve_precision(device: torch.device, precision: str, convolutional: bool = False) -> str:
    """--precision (or a preset's `precision` key):
      32           float32 throughout;
      bf16         autocast to bfloat16 (activations too);
      bf16-matmul  float32 tensors, but matrix products multiply in bfloat16 and add up in
                   float32 (oneDNN's AMX path on a CPU; like TF32 on NVIDIA GPUs): no
                   casts, so the MLP nets train faster this way than under autocast;
      16-mixed     autocast to float16 with a gradient scaler (CUDA only);
      auto         where the hardware multiplies bfloat16 natively (CPUs with AMX or
                   AVX512-BF16, recent GPUs): bf16 for conv nets and on GPUs, bf16-matmul
                   for the others on a CPU; else 32.
    Weights, optimizer state and every evaluation stay in float32."""
    precision = str(precision)
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "32"
        native = device.type == "cpu" and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        if not native:
            return "32"
        return "bf16" if convolutional else "bf16-matmul"
    if precision not in PRECISIONS:
        raise DlcliError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    if precision == "16-mixed" and device.type != "cuda":
        raise DlcliError("precision 16-mixed needs a CUDA device; use bf16 on CPU")
    return precision


class Bf16Matmuls:
    """The bf16-matmul precision: inside, float32 matrix products multiply in bfloat16."""

    def __enter__(self):
        self.before = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("medium")

    def __exit__(self, *exc):
        torch.set_float32_matmul_precision(self.before)


def precision_context(device: torch.device, precision: str):
    """What each training step runs inside (a reusable context manager)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "bf16-matmul":
        return Bf16Matmuls()
    if precision == "16-mixed":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def is_convolutional(modules: dict) -> bool:
    return any(isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))
               for module in modules.values() for m in module.modules())


def use_fast_paths(modules: dict, device: torch.device, precision: str) -> None:
    """TF32 matrix products on NVIDIA GPUs; channels-last memory for the conv nets there
    and under bf16 on a CPU, where oneDNN's bfloat16 convolutions run fastest that way
    (the cnn trains 1.5x faster). Neither changes a float32 CPU run."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    elif precision != "bf16":
        return
    if is_convolutional(modules):
        for module in modules.values():
            module.to(memory_format=torch.channels_last)


def apply_precision(task, precision: str | None = None) -> str:
    """Resolve `precision` (None: the config's, else 32) for the task's networks and device,
    and put the networks in the memory layout that runs fastest under it."""
    precision = resolve_precision(task.device, precision or task.config.get("precision", "32"),
                                  convolutional=is_convolutional(task.modules))
    use_fast_paths(task.modules, task.device, precision)
    return precision


def compile_modules(modules: dict) -> None:
    """--compile: compile each module's forward in place, so state-dict keys stay plain
    (torch.compile's wrapper would prefix them with `_orig_mod.`). Compilation happens at
    the first call; if it fails there, the module warns once and runs eagerly."""
    for name, module in modules.items():
        module.forward = _compiled_or_eager(name, module.forward)


def _compiled_or_eager(name: str, eager):
    compiled = torch.compile(eager)
    failed = []

    def forward(*args, **kwargs):
        if not failed:
            try:
                return compiled(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 -- any backend failure: fall back, say so
                failed.append(e)
                warn(f"--compile: {name} runs uncompiled ({type(e).__name__}: "
                     f"{str(e).strip().splitlines()[0] if str(e).strip() else ''})")
        return eager(*args, **kwargs)

    return forward


# The unit each quantity is measured in, by a word in its name (first match wins).
UNITS = (("entropy", "bits"), ("loss", "nats"), ("nelbo", "nats"), ("recon", "nats"),
         ("kl", "nats"), ("nll", "nats"), ("accuracy", "%"), ("exact_match", "%"),
         ("errors", "%"), ("bleu", "0-100"), ("chrf", "0-100"), ("ppl", "per token"),
         ("active_units", "latent units"), ("d_x", "probability"), ("d_g_z", "probability"))
PERCENT = ("accuracy", "exact_match", "errors")
TITLES = {"d_loss": "D loss", "g_loss": "G loss", "d_x": "D(x) on real images",
          "d_g_z": "D(G(z)) on generated images", "ppl": "perplexity", "bleu": "BLEU", "chrf": "chrF"}
NOT_PLOTTED = {"kind", "epoch", "step", "epoch_seconds", "items_per_s"}


def quantity(key: str) -> str:
    return key.removeprefix("train_").removeprefix("val_")


def unit_of(name: str) -> str:
    return next((unit for word, unit in UNITS if word in name), "")


def plot_metrics(run_dir: Path, monitor: str | None = None) -> None:
    """curves.png: one panel per quantity, titled with its unit; training (dashed, paler)
    and validation (solid) of a quantity in one colour, the steps within epochs
    faint behind; the best epoch by `monitor` (lower is better) marked in every panel."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
               if line.strip()]
    epochs = [r for r in records if r.get("kind") == "epoch"]
    if not epochs:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    keys = list(dict.fromkeys(k for r in epochs for k, v in r.items()
                              if k not in NOT_PLOTTED and isinstance(v, (int, float))))
    panels = list(dict.fromkeys(quantity(k) for k in keys))
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.0 * rows + 0.6), squeeze=False)
    scored = [r for r in epochs if isinstance(r.get(monitor), (int, float))]
    best = min(scored, key=lambda r: r[monitor]) if scored else None
    ends = {0: 0, **{r["epoch"]: r["step"] for r in epochs}}  # last step of each epoch
    last = epochs[-1]["epoch"]
    marker = "o" if len(epochs) <= 30 else None
    palette = plt.get_cmap("tab10").colors
    for i, (ax, name) in enumerate(zip(axes.flat, panels)):
        color = palette[i % 10]
        scale = 100 if name in PERCENT else 1
        # steps within epochs, at their fraction of the epoch
        steps = [(r["epoch"] - 1 + (r["step"] - ends.get(r["epoch"] - 1, 0))
                  / max(ends.get(r["epoch"], r["step"]) - ends.get(r["epoch"] - 1, 0), 1),
                  r[name] * scale)
                 for r in records if r.get("kind") == "step" and isinstance(r.get(name), (int, float))]
        if steps:
            ax.plot(*zip(*steps), color=color, alpha=0.18, linewidth=0.7)
        for key, alpha, style in ((f"train_{name}", 0.6, "--"), (name, 1.0, "-"), (f"val_{name}", 1.0, "-")):
            points = [(r["epoch"], r[key] * scale) for r in epochs if isinstance(r.get(key), (int, float))]
            if points:
                ax.plot(*zip(*points), color=color, alpha=alpha, linestyle=style, marker=marker,
                        markersize=4, linewidth=1.6)
        if best is not None:
            ax.axvline(best["epoch"], color="0.45", linestyle=":", linewidth=1.2)
            if quantity(monitor) == name and monitor in best:
                ax.plot(best["epoch"], best[monitor] * scale, "o", markersize=10, markerfacecolor="none",
                        markeredgecolor="black", markeredgewidth=1.4)
        unit = unit_of(name)
        ax.set_title(TITLES.get(name, name.replace("_", " ")) + (f"  ({unit})" if unit else ""),
                     fontsize=11)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.set_xlim(0, last + max(0.25, last / 50))  # from 0: the steps of epoch 1
        ax.set_xlabel("epoch")
        ax.margins(y=0.12)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    handles = [Line2D([], [], color="0.55", linestyle="--", marker=marker, label="training"),
               Line2D([], [], color="0.15", marker=marker, label="validation")]
    title = f"{run_dir.resolve().parent.name} / {run_dir.resolve().name}"
    if best is not None:
        handles.append(Line2D([], [], color="0.45", linestyle=":", label=f"best epoch ({monitor})"))
        title += f"  ·  best epoch {best['epoch']}: {monitor} {best[monitor]:.4g}"
    fig.suptitle(title, fontsize=12)
    # the legend sits between the title and the panels, never over the data
    fig.legend(handles=handles, loc="upper center", ncol=len(handles), frameon=False,
               bbox_to_anchor=(0.5, 1 - 0.35 / fig.get_figheight()), fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.6 / fig.get_figheight()))
    atomic_write(run_dir / "curves.png", lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


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

    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [line for line in lines if logged_at(line) <= step]
    if len(kept) != len(lines):
        atomic_write(path, lambda tmp: Path(tmp).write_text("".join(kept), encoding="utf-8"))


def train(spec, config: dict, *, device: str = "auto", data_dir=None, run_dir=None,
          resume_path=None, precision: str | None = None, compile: bool = False) -> Path | None:
    """Build the task, claim the run folder (rank 0), and fit. Returns the checkpoint path
    (None on ranks other than 0)."""
    from dlcli.runs import new_run_dir

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
    task, precision = prepare_task(spec, config, dev, data_dir, resume, precision)
    if compile:
        compile_modules(task.modules)
    where = f", {d.world} processes" if d.active else ""
    mixed = f", precision {precision}" if precision != "32" else ""
    n = torch.get_num_threads()
    threads = f" ({n} thread{'s' if n != 1 else ''})" if dev.type == "cpu" else ""
    notice(f"{spec.name} on {dataset_name(config)} ({getattr(task, 'data_source', '')}), "
           f"device {dev}{threads}{where}{mixed}")
    folder, provenance = None, None
    if d.main:
        provenance = run_provenance(task, precision)
        if resume is not None and run_dir is None and continues_its_run(resume):
            folder = resume.path.parent  # carry on in the run folder the checkpoint came from
            keep_metrics_until(folder / "metrics.jsonl", resume.step)
        else:  # --run-dir, a fresh run, or a checkpoint kept elsewhere: never write next to it
            folder = new_run_dir(spec.name, run_dir)
        notice(f"run folder: {folder}")
    try:
        return fit(task, folder, resume, d, precision, provenance)
    finally:
        if d.active and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def dataset_name(config: dict) -> str:
    if not config.get("data"):
        return config["dataset"]
    from dlcli.registry import get_spec

    return "your own text" if "text" in get_spec(config["model"]).data else "your own images"


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
    import platform
    import shlex
    import sys

    from dlcli import __version__

    dev = task.device
    device = f"cuda ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else str(dev)
    return {
        "dlcli": __version__, "torch": str(torch.__version__), "python": platform.python_version(),
        "command": shlex.join(["dlcli", *sys.argv[1:]]),
        "data": getattr(task, "data_source", ""), "data_sha256": task.data_sha256(),
        "device": device, "precision": precision,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
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
        + [f"# data: {dataset_name(config)}, {getattr(task, 'data_source', '')} "
           f"(sha256 {task.data_sha256()})",
           f"# device: {where}"])
