"""The dlcli command line. Parses, validates, prints; heavy modules load inside commands.

`dlcli --help`, `--version`, `models` and `presets` never import torch: this module
imports only typer, yaml and dlcli's torch-free modules (registry, config, errors).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer

from dlcli import __version__
from dlcli.errors import DlcliError, Interrupted
from dlcli.registry import all_datasets, get_spec, list_models

app = typer.Typer(
    name="dlcli", no_args_is_help=True, pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Train and sample the classic deep-learning models: perceptron, MLP, CNN, GANs, "
         "VAEs and the Transformer.",
)
presets_app = typer.Typer(help="The bundled YAML presets: list, show, copy, validate.",
                          no_args_is_help=False)
app.add_typer(presets_app, name="presets")
runs_app = typer.Typer(help="Past runs under ./runs: list them, show one, compare several.",
                       no_args_is_help=False)
app.add_typer(runs_app, name="runs")

STATE = {"debug": False}
MAX_SAMPLES = 100_000  # per `dlcli sample`: 300 MB of float32 pixels
MAX_EVAL_SAMPLES = 1_000_000  # per `dlcli evaluate`: scored in batches, so a matter of time


def _version(value: bool):
    if value:
        print(f"dlcli {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
    threads: Optional[int] = typer.Option(
        None, "--threads", help="CPU threads for torch (default: one per core). On a machine "
        "busy with other jobs, 1 is often much faster."),
):
    STATE["debug"] = debug
    if threads is not None:
        if threads < 1:
            raise DlcliError(f"--threads must be positive, got {threads}")
        # torch is imported later, inside the commands, and reads this when it starts
        os.environ["OMP_NUM_THREADS"] = str(threads)


def examples(*lines: str) -> str:
    """A command's help epilog: example command lines, one per line."""
    return "Examples:\n\n" + "\n\n".join(f"  {line}" for line in lines)


# Shell completion (`dlcli --install-completion`): names from the torch-free registry and presets.
def complete_model(incomplete: str):
    return [(s.name, s.description) for s in list_models() if s.name.startswith(incomplete)]


def complete_sampling_model(incomplete: str):
    return [(name, about) for name, about in complete_model(incomplete) if get_spec(name).samples]


def complete_dataset(incomplete: str):
    return [d for d in all_datasets() if d.startswith(incomplete)]


def complete_preset(incomplete: str):
    from dlcli.config import list_presets

    return [(p["name"], p["description"]) for p in list_presets() if p["name"].startswith(incomplete)]


class ReaderLeft(Exception):
    """stdout's reader has gone (`dlcli ... | head -1`). Not an OSError, which click
    would turn into a silent exit 1."""


def out(text: str | bytes) -> None:
    """A result on stdout (a line of text, or bytes as they are), flushed: pipelines read
    it as soon as it is there."""
    try:
        if isinstance(text, bytes):
            sys.stdout.buffer.write(text)
        else:
            sys.stdout.write(text + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        raise ReaderLeft() from None


# ---- models / presets ---------------------------------------------------------------

@app.command(epilog=examples("dlcli models", "dlcli models --json | jq -r '.[].name'"))
def models(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")):
    """List the models: name, family, default dataset, description."""
    rows = [{"name": s.name, "family": s.family, "default_dataset": s.default_dataset,
             "data": list(s.data), "datasets": list(s.datasets), "description": s.description,
             "conditional": s.conditional, "grids": list(s.grids)} for s in list_models()]
    if as_json:
        out(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("model", "family", "dataset", "description", box=None)
    for r in rows:
        table.add_row(r["name"], r["family"], r["default_dataset"], r["description"])
    Console(soft_wrap=True).print(table)


@app.command("datasets", epilog=examples("dlcli datasets", "dlcli datasets --json | jq -r '.[].name'",
                                         "dlcli datasets --data-dir ../shared/data"))
def datasets_command(
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Also look in this folder."),
):
    """List the datasets: kind, shape (C, H, W), classes, source, and where the files are here."""
    from dlcli.data.available import found_here
    from dlcli.data.catalog import list_datasets

    rows = [{"name": d.name, "kind": d.kind, "shape": list(d.shape), "classes": list(d.classes),
             "source": d.source, "found": found_here(d.name, data_dir) or None}
            for d in list_datasets()]
    if as_json:
        out(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("dataset", "kind", "shape", "classes", "found here", box=None)
    for r in rows:
        shape = "x".join(map(str, r["shape"]))
        if r["name"] == "folder":
            shape = "from the images"
        names = r["classes"][:3] + (["..."] if len(r["classes"]) > 3 else [])
        classes = f"{len(r['classes'])}: {', '.join(names)}" if r["classes"] else ""
        where = r["found"] or f"[dim]no; from {r['source']}[/dim]"  # where it would come from
        table.add_row(r["name"], r["kind"], shape, classes, where)
    Console(soft_wrap=True).print(table)


@presets_app.callback(invoke_without_command=True)
def presets_default(ctx: typer.Context):
    if ctx.invoked_subcommand is None:
        presets_list()


@presets_app.command("list", epilog=examples("dlcli presets list"))
def presets_list():
    """List the bundled presets."""
    from dlcli.config import list_presets

    for p in list_presets():
        out(f"{p['name']:<28} {p['model']:<12} {p['description']}")


@presets_app.command("show", epilog=examples("dlcli presets show mlp"))
def presets_show(name: str = typer.Argument(..., help="Preset name or YAML file.",
                                            autocompletion=complete_preset)):
    """Print a preset's YAML."""
    from dlcli.config import preset_path

    sys.stdout.write(preset_path(name).read_text(encoding="utf-8"))


@presets_app.command("copy", epilog=examples("dlcli presets copy mlp my-mlp.yaml",
                                             "dlcli train mlp --preset my-mlp.yaml"))
def presets_copy(name: str = typer.Argument(..., help="Preset name.", autocompletion=complete_preset),
                 dest: str = typer.Argument(..., help="File, or folder (DIR/) to copy to.")):
    """Copy a bundled preset to DEST, to edit and pass back with --preset FILE."""
    from dlcli.config import preset_path

    src = preset_path(name)
    folder = dest.endswith(("/", os.sep)) or Path(dest).is_dir()
    target = Path(dest) / src.name if folder else Path(dest)
    if folder:  # DIR/ names a folder: made if need be, inside an existing one
        _check_output_folder(target.parent)
        target.parent.mkdir(exist_ok=True)
    if target.exists():
        raise DlcliError(f"{target} exists; not overwriting it")
    target.write_text(src.read_text(encoding="utf-8"), encoding="utf-8")
    out(str(target))


@presets_app.command("validate", epilog=examples("dlcli presets validate my-mlp.yaml"))
def presets_validate(path: Path = typer.Argument(..., help="A preset YAML file (`model:` names its model).")):
    """Check a preset against its model's schema: known keys, types and ranges (exit 2 if not)."""
    from dlcli.config import validate_preset

    if not path.is_file():
        raise DlcliError(f"preset file not found: {path}")
    model, _ = validate_preset(path)
    out(f"{path}: a valid {model} preset")


# ---- train --------------------------------------------------------------------------

@app.command(epilog=examples(
    "dlcli train mlp --epochs 3 --data-dir ../shared/data",
    "dlcli train cvae --set latent=16 --dry-run    (show the config, train nothing)",
    "dlcli train vae --threads 1 --seed 3"))
def train(
    model: str = typer.Argument(..., help="One of: " + ", ".join(s.name for s in list_models()) + ".",
                                autocompletion=complete_model),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", autocompletion=complete_dataset,
                                          help="Default: the model's. One of: "
                                          + ", ".join(all_datasets()) + "."),
    preset: Optional[str] = typer.Option(None, "--preset", "-p", autocompletion=complete_preset,
                                         help="Preset name (`dlcli presets`) or YAML file."),
    set_: List[str] = typer.Option([], "--set", "-s", metavar="KEY=VALUE",
                                   help="Override a config key (repeatable)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", "-e",
                                         help="Passes over the data (default: the preset's)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", help="Items per step."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Learning rate (default: the preset's)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Same seed, same run (on a CPU)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or mps."),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="Run folder (new or empty)."),
    resume: Optional[str] = typer.Option(
        None, "--resume", help="Checkpoint to continue from, or `auto`: the newest checkpoint "
        "of --run-dir, or a fresh start there when it has none (implied on a torchrun restart)."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Folder with dataset subfolders."),
    data: List[Path] = typer.Option([], "--data", help="Your own data: a folder of images (image "
                                    "models; class subfolders = labels), or parallel text FILE.tsv "
                                    "or --data SRC --data TGT (transformer)."),
    precision: Optional[str] = typer.Option(
        None, "--precision",
        help="32; bf16 (autocast); bf16-matmul (float32, bfloat16 matrix products); 16-mixed "
             "(CUDA); auto (bf16 for conv nets, bf16-matmul for the rest, where native). "
             "Default: the preset's, else 32."),
    compile_: bool = typer.Option(False, "--compile", help="torch.compile the networks."),
    nproc_per_node: int = typer.Option(1, "--nproc-per-node",
                                       help="Data-parallel processes (launches torchrun)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved config, where each "
                                 "value came from, and the data; train nothing."),
    logger: List[str] = typer.Option([], "--logger", help="Also log to tensorboard (RUN/tensorboard) "
                                     "or mlflow (./mlruns, or $MLFLOW_TRACKING_URI); repeatable."),
):
    """Train a model. Progress goes to stderr; the checkpoint path is the last stdout line."""
    if nproc_per_node < 1:
        raise DlcliError(f"--nproc-per-node must be positive, got {nproc_per_node}")
    from dlcli.config import resumed_config, traced_config

    spec = get_spec(model)
    flags = dict(dataset=dataset, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                 data=[str(p.absolute()) for p in data] or None,  # evaluate works from anywhere
                 logger=logger or None)
    config, sources = traced_config(model, preset, set_, **flags)
    if config["dataset"] not in spec.datasets and not config.get("data"):
        raise DlcliError(f"{model} cannot train on {config['dataset']!r}; "
                         f"choose one of: {', '.join(spec.datasets)}")
    from dlcli import train as training
    from dlcli.checkpoint import checked_config, load_checkpoint
    from dlcli.console import notice
    from dlcli.reporters import check_loggers
    from dlcli.runs import resume_point, run_checkpoint

    resume, run_dir, auto = resume_point(model, resume, run_dir)
    if resume is not None:
        checkpoint = load_checkpoint(resume, expect_model=model, tensors=False)  # train() loads it
        given = {k for k in config if flags.get(k) is not None or preset
                 or any(s.startswith(k + "=") for s in set_)}
        config, sources = resumed_config(checked_config(checkpoint), config, sources, given,
                                         epochs, resume.name)
        if auto and checkpoint.epoch >= config["epochs"]:  # a requeued job that had finished
            notice(f"--resume auto: {run_dir} has trained its {checkpoint.epoch} epochs already")
            if os.environ.get("RANK", "0") == "0":
                out(str(run_checkpoint(run_dir)))
            return
        training.check_resumable(checkpoint, config["epochs"])
    check_loggers(config.get("logger", []))  # a missing extra is said before anything starts
    if dry_run:
        out(training.dry_run(spec, config, sources, device=device, data_dir=data_dir,
                             resume_path=resume, precision=precision))
        return
    if nproc_per_node > 1 and "WORLD_SIZE" not in os.environ:  # after the checks: one error, once
        _launch_torchrun(nproc_per_node)
    path = training.train(spec, config, device=device, data_dir=data_dir, run_dir=run_dir,
                          resume_path=resume, precision=precision, compile=compile_, auto=auto)
    if path is not None:  # rank 0 only
        out(str(path))


def _launch_torchrun(nproc: int) -> None:
    """Re-run this very command under torchrun's launcher with nproc workers, inside this
    process: a signal to dlcli (Ctrl-C, kill, `timeout`, a closed terminal) is then
    torchrun's, which passes it on to every worker and waits while they save and exit, so
    nothing outlives dlcli. It exits as a single process would: 128 + the signal number."""
    import logging

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    args = sys.argv[1:]
    for i, a in enumerate(args):
        if a == "--nproc-per-node":
            del args[i:i + 2]
            break
        if a.startswith("--nproc-per-node="):
            del args[i]
            break
    # the launcher's own notes on shutting the workers down: the workers speak for themselves
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("torch.distributed.elastic"):
            logging.getLogger(name).setLevel(logging.ERROR)
    launch = get_args_parser().parse_args(
        ["--standalone", f"--nproc-per-node={nproc}", "-m", "dlcli", *args])
    try:
        run(launch)
    except SignalException as e:
        raise typer.Exit(128 + int(e.sigval)) from None
    except ChildFailedError as e:  # each worker has printed its own error
        failure = e.failures.get(0) or e.get_first_failure()[1]
        code = failure.exitcode
        raise typer.Exit(128 - code if code < 0 else code) from None
    raise typer.Exit(0)


MAGIC = {"png": b"\x89PNG\r\n\x1a\n", "npy": b"\x93NUMPY"}  # how each format's files begin


def check_replaceable(path: Path, fmt: str, option: str) -> None:
    """An output file of `fmt` (png, npy) may replace only a file of that format: a typo
    must not overwrite a checkpoint."""
    if path.is_file() and path.stat().st_size > 0:  # an empty file holds nothing to lose
        try:
            with open(path, "rb") as f:
                head = f.read(len(MAGIC[fmt]))
        except OSError as e:
            raise DlcliError(f"{option} {path}: {e.strerror or e}") from None
        if head != MAGIC[fmt]:
            raise DlcliError(f"{option} {path} exists and is not a {fmt.upper()} file; not "
                             "overwriting it (remove it first, or choose another name)")


def json_out(value, indent=None) -> None:
    """JSON on stdout, strictly: a NaN or infinity (a metric that diverged) is written as
    null, with a warning naming it, since bare NaN is not JSON and breaks every parser."""
    bad = []

    def finite(v, where):
        if isinstance(v, float) and not math.isfinite(v):
            bad.append(where)
            return None
        if isinstance(v, dict):
            return {k: finite(x, f"{where}.{k}" if where else str(k)) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [finite(x, f"{where}[{i}]") for i, x in enumerate(v)]
        return v

    value = finite(value, "")
    if bad:
        from dlcli.console import warn

        warn(f"not a finite number, written as null: {', '.join(bad)}")
    out(json.dumps(value, indent=indent, allow_nan=False))


# ---- sample -------------------------------------------------------------------------

def _check_output_folder(folder: Path) -> None:
    """An output may go into a new folder, but only one made inside an existing folder: a
    typo must not plant a tree of folders (at /, say)."""
    if not folder.is_dir() and not folder.parent.is_dir():
        raise DlcliError(f"folder {folder.parent} does not exist; create it first, or choose "
                         "another place")


def _default_output(model: str, suffix: str) -> Path:
    folder = Path("samples")
    folder.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for i in range(1, 1000):
        path = folder / f"{model}-{stamp}{'' if i == 1 else f'-{i}'}.{suffix}"
        try:
            path.open("x").close()  # claim the name: two samplers in one second get two files
            return path
        except FileExistsError:
            continue
    raise DlcliError("could not find a free file name under samples/")


@app.command(epilog=examples("dlcli sample cvae --label all -o digits.png",
                             "dlcli sample vae --grid manifold --seed 0 -o - | display"))
def sample(
    model: str = typer.Argument(..., help="A model that makes pictures: "
                                + ", ".join(s.name for s in list_models() if s.samples) + ".",
                                autocompletion=complete_sampling_model),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", "-c",
                                              help="Default: newest run under ./runs."),
    n: Optional[int] = typer.Option(None, "-n", help="How many images (default 64; 10 per "
                                    "class for --label all)."),
    label: Optional[str] = typer.Option(None, "--label", "-l", help="A class: its name or index "
                                        "(7, cat, 'ankle boot'), or 'all' (one row each)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Same seed, same bytes."),
    grid: Optional[str] = typer.Option(None, "--grid", "-g", help="Picture kind (see `dlcli models`)."),
    interpolate: bool = typer.Option(False, "--interpolate", help="Rows morphing between samples."),
    output: Optional[str] = typer.Option(None, "-o", "--output", help="File, or - for stdout."),
    fmt: Optional[str] = typer.Option(None, "--format", "-f", help="png or npy."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Test images for --grid recon."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or mps."),
):
    """Generate images from a trained model; prints the file written (or writes bytes to -o -)."""
    spec = get_spec(model)
    if not spec.samples:
        raise DlcliError(f"{model} does not generate images; models that do: "
                         + ", ".join(s.name for s in _sampling_models()))
    if label is not None and not spec.conditional:
        conditional = ", ".join(s.name for s in _sampling_models() if s.conditional)
        raise DlcliError(f"{model} is not conditional, so --label does not apply; use {conditional}")
    if grid is not None and grid not in spec.grids:
        raise DlcliError(f"{model} has no --grid {grid!r}; choose one of: {', '.join(spec.grids)}")
    if n is not None and not 1 <= n <= MAX_SAMPLES:
        raise DlcliError(f"-n must be between 1 and {MAX_SAMPLES:,} images, got {n}")
    if seed is not None and not -2**63 <= seed < 2**63:
        raise DlcliError(f"--seed must fit in 64 bits (-2**63 to 2**63 - 1), got {seed}")
    suffix = Path(output).suffix.lower() if output and output != "-" else ""
    if fmt is None:
        fmt = "npy" if suffix == ".npy" else "png"
    if fmt not in ("png", "npy"):
        raise DlcliError(f"unknown --format {fmt!r}; choose one of: png, npy")
    if suffix and suffix != f".{fmt}":  # out.jpg holding PNG bytes would fool every viewer
        raise DlcliError(f"-o {output} does not end in .{fmt}, the format written; name it "
                         f"*.png or *.npy (or pass --format)")
    if output and output != "-":
        _check_output_folder(Path(output).parent)
        check_replaceable(Path(output), fmt, "-o")

    import torch

    from dlcli.checkpoint import load_checkpoint
    from dlcli.fileio import atomic_write
    from dlcli.images import encode
    from dlcli.runs import resolve_checkpoint
    from dlcli.runtime import pick_device

    ckpt = load_checkpoint(resolve_checkpoint(model, checkpoint), expect_model=model)
    task = spec.load_task().from_checkpoint(spec, ckpt, pick_device(device), data_dir)
    label = task.parse_label(label)  # a name or index of the checkpoint's classes
    torch.manual_seed(seed if seed is not None else int.from_bytes(os.urandom(4), "little"))
    count = n if n is not None else (10 * task.classes if label == "all" else 64)
    with torch.no_grad():
        images, nrow = task.sample(count, label=label, grid=grid or spec.grids[0],
                                   interpolate=interpolate)
    captions = task.captions(count, label=label, grid=grid or spec.grids[0],
                             interpolate=interpolate) if fmt == "png" else None
    data = encode(images, fmt, nrow, captions)
    if output == "-":
        out(data)
        return
    path = Path(output) if output else _default_output(model, fmt)
    try:
        atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
    except BaseException:
        if not output:  # the empty file that claimed the name
            path.unlink(missing_ok=True)
        raise
    out(str(path))


def _sampling_models():
    return [s for s in list_models() if s.samples]


# ---- translate ----------------------------------------------------------------------

@app.command(epilog=examples('dlcli translate "12,345"', "dlcli translate < digits.txt > words.txt",
                             'dlcli translate "12,345" --attention attention.png'))
def translate(
    text: List[str] = typer.Argument(None, help="Sentences to translate; none: read stdin."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", "-c",
                                              help="Default: newest run under ./runs."),
    beam: Optional[int] = typer.Option(None, "--beam", "-k", help="Beam width; 1 = greedy. "
                                       "Default: the checkpoint's `beam`."),
    length_penalty: Optional[float] = typer.Option(
        None, "--length-penalty", help="alpha of the beam's ((5 + length) / 6)^alpha. "
        "Default: the checkpoint's `length_penalty`."),
    max_len: Optional[int] = typer.Option(None, "--max-len", help="Longest output in tokens."),
    n_best: int = typer.Option(1, "--n-best", help="Print N hypotheses per input (TSV)."),
    attention: Optional[Path] = typer.Option(None, "--attention", help="Cross-attention heatmap PNG."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or mps."),
    engine: str = typer.Option("torch", "--engine", help="torch, or ctranslate2: --checkpoint "
                               "names a folder from `dlcli export --format ctranslate2` "
                               "(or a checkpoint, converted first)."),
):
    """Translate sentences with a trained Transformer: one output line per input line."""
    spec = get_spec("transformer")
    if (beam is not None and beam < 1) or n_best < 1 or (max_len is not None and max_len < 1):
        raise DlcliError("--beam, --n-best and --max-len must be positive")
    if length_penalty is not None and not 0 <= length_penalty < float("inf"):
        raise DlcliError(f"--length-penalty must be a number from 0 up, not {length_penalty}")
    if engine not in ("torch", "ctranslate2"):
        raise DlcliError(f"unknown --engine {engine!r}; choose one of: torch, ctranslate2")
    if attention is not None:
        if attention.suffix.lower() != ".png":
            raise DlcliError(f"--attention {attention} does not end in .png; the heatmap is "
                             "a PNG picture, name it *.png")
        check_replaceable(attention, "png", "--attention")
    try:
        from dlcli.translate import run_translate
    except ImportError:
        raise DlcliError("translate is not available yet: the transformer is not built in "
                         "this version") from None
    run_translate(spec, text or None, checkpoint=checkpoint, beam=beam,
                  length_penalty=length_penalty, max_len=max_len, n_best=n_best,
                  attention=attention, device=device, engine=engine, out=out)


@app.command(epilog=examples("dlcli average runs/transformer/*/epoch-*.safetensors -o averaged.safetensors"))
def average(
    checkpoints: List[Path] = typer.Argument(..., help="Checkpoints of one model to average."),
    output: Path = typer.Option(..., "-o", "--output", help="Where to write the average."),
):
    """Average the weights of several checkpoints of the same model (e.g. the last N epochs)."""
    if len(checkpoints) < 2:
        raise DlcliError("average needs at least two checkpoints")
    if output.exists():
        raise DlcliError(f"{output} exists; not overwriting it")
    from dlcli.checkpointer import average_checkpoints

    out(str(average_checkpoints(checkpoints, output)))


# ---- inspect / evaluate -------------------------------------------------------------

@app.command(epilog=examples("dlcli inspect runs/mlp/20260101-120000/best.safetensors",
                             "dlcli inspect CKPT --json | jq .provenance"))
def inspect(
    checkpoint: Path = typer.Argument(..., help="A .safetensors checkpoint, or a run folder."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
):
    """Show a checkpoint: metadata, config, parameter counts, tensors, file size."""
    from dlcli.inspect import describe, render
    from dlcli.runs import checkpoint_file

    info = describe(checkpoint_file(checkpoint))
    if as_json:
        json_out(info, indent=2)
    else:
        render(info)


@app.command(epilog=examples("dlcli evaluate runs/mlp/20260101-120000/best.safetensors",
                             "dlcli evaluate CKPT --json --classifier runs/cnn/NAME/best.safetensors"))
def evaluate(
    checkpoint: Path = typer.Argument(..., help="A .safetensors checkpoint, or a run folder."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    classifier: Optional[Path] = typer.Option(None, "--classifier",
                                              help="cnn checkpoint that judges generated images."),
    samples: int = typer.Option(10000, "--samples", help="Generated images to score (GANs, cvae)."),
    iwae_k: int = typer.Option(100, "--iwae-k", help="Importance samples for the IWAE bound (VAEs)."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Folder with dataset subfolders."),
    data: List[Path] = typer.Option([], "--data", help="The parallel text a transformer was "
                                    "trained on (train --data), where it is now."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or mps."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="PNG: each latent unit's mutual "
                                        "information with each factor (VAEs on shapes)."),
):
    """Test-set metrics for the checkpoint's model family."""
    if not 2 <= samples <= MAX_EVAL_SAMPLES or iwae_k < 1:  # a covariance needs two
        raise DlcliError(f"--samples must be at least 2 and at most {MAX_EVAL_SAMPLES:,}, "
                         "and --iwae-k at least 1")
    if plot is not None and plot.suffix.lower() != ".png":
        raise DlcliError(f"--plot writes a PNG picture: give a file name ending in .png, not {plot}")
    from dlcli.checkpoint import load_checkpoint
    from dlcli.runs import checkpoint_file
    from dlcli.runtime import pick_device

    ckpt = load_checkpoint(checkpoint_file(checkpoint))
    spec = get_spec(ckpt.model)
    dev = pick_device(device)
    # the data it was trained on, as --resume does, unless --data-dir says otherwise
    task = spec.load_task().from_checkpoint(spec, ckpt, dev, ckpt.data_dir(data_dir))
    if data:
        if not task.config.get("data"):
            raise DlcliError("--data is for a transformer trained on your own text (train --data)")
        task.config = {**task.config, "data": [str(p) for p in data]}
    if plot is not None:
        from dlcli.config import dataset_name
        from dlcli.data.catalog import get_dataset

        name = task.config.get("dataset")
        if not (hasattr(task, "measure_factors") and not task.config.get("data")
                and get_dataset(name).factors):
            raise DlcliError(f"--plot draws what each latent unit of a VAE carries about the "
                             f"data's known factors (dataset shapes); {ckpt.model} on "
                             f"{dataset_name(task.config)} has none to draw")
    metrics = task.evaluate(classifier=classifier, samples=samples, iwae_k=iwae_k)
    metrics["data"] = task.data_info()
    if plot is not None:
        import torch

        from dlcli.console import notice
        from dlcli.disentanglement import plot_mutual_information

        table = metrics["mutual_information"]
        units = [row["unit"] for row in metrics["latent_factors"]] or None  # the active ones
        plot_mutual_information(torch.tensor(table["units"]), table["factors"], plot,
                                f"{ckpt.model} on shapes, {metrics['data']['source']}: MIG "
                                f"{metrics['mig']:.3f}", units)
        notice(f"wrote {plot}")
    if as_json:
        json_out(metrics)
        return
    for k, v in metrics.items():
        if isinstance(v, dict):  # the data scored: said on stderr already
            continue
        out(f"{k:<16} {v:.4f}" if isinstance(v, float) else f"{k:<16} {v}")


# ---- runs ---------------------------------------------------------------------------

ROOT_HELP = "The folder that holds the runs (default ./runs)."


@runs_app.callback(invoke_without_command=True, epilog=examples(
    "dlcli runs", "dlcli runs --model mlp", "dlcli runs --json | jq -r '.[0].path'"))
def runs_default(
    ctx: typer.Context,
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Only the runs of this model.",
                                        autocompletion=complete_model),
    root: Optional[Path] = typer.Option(None, "--root", help=ROOT_HELP),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
):
    """Past runs, newest first: model, data, start, epochs, wall time, state, best metric."""
    ctx.obj = {"root": root, "json": as_json}  # `dlcli runs --root R show RUN` keeps them
    if ctx.invoked_subcommand is None:
        runs_list(model, root, as_json)


@runs_app.command("list", epilog=examples("dlcli runs list --model cvae",
                                          "dlcli runs list --root ~/old-runs --json"))
def runs_list(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Only the runs of this model.",
                                        autocompletion=complete_model),
    root: Optional[Path] = typer.Option(None, "--root", help=ROOT_HELP),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
):
    """Past runs, newest first (the same as `dlcli runs`)."""
    from dlcli.runlog import check_root, list_runs, render_list

    if model is not None:
        get_spec(model)  # an unknown name: the valid ones
    folder = check_root(root)
    runs = list_runs(folder, model)
    if as_json:
        json_out([r.summary() for r in runs], indent=2)
    elif runs:
        render_list(runs)
    else:
        from dlcli.console import notice

        which = f"{model} runs" if model else "runs"
        notice(f"no {which} under {folder}; `dlcli train MODEL` makes one")


def _runs_options(ctx: typer.Context, root: Optional[Path], as_json: bool):
    """--root and --json given to this command, else to `dlcli runs` before it."""
    given = ctx.obj or {}
    return root or given.get("root"), as_json or given.get("json", False)


@runs_app.command("show", epilog=examples("dlcli runs show runs/mlp/20260101-120000",
                                          "dlcli runs show 20260101-120000 --json | jq .history"))
def runs_show(
    ctx: typer.Context,
    run: str = typer.Argument(..., help="A run folder, or a run's name under --root."),
    root: Optional[Path] = typer.Option(None, "--root", help=ROOT_HELP),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
):
    """One run: its state, config (with provenance) and metrics, epoch by epoch."""
    from dlcli.runlog import Run, check_root, render_show, resolve_run

    root, as_json = _runs_options(ctx, root, as_json)
    found = Run.read(resolve_run(run, check_root(root)))
    if as_json:
        json_out({**found.summary(), "config": found.config,
                  "history": [{k: v for k, v in r.items() if k != "kind"} for r in found.epoch_records]},
                 indent=2)
    else:
        render_show(found)


@runs_app.command("compare", epilog=examples(
    "dlcli runs compare runs/mlp/20260101-120000 runs/mlp/20260102-090000",
    "dlcli runs compare runs/vae/* --json | jq .final"))
def runs_compare(
    ctx: typer.Context,
    runs: List[str] = typer.Argument(..., help="Two or more run folders, or names under --root."),
    root: Optional[Path] = typer.Option(None, "--root", help=ROOT_HELP),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
):
    """Runs side by side: the config keys that differ, and the final metrics."""
    from dlcli.runlog import Run, check_root, compare, render_compare, resolve_run

    if len(runs) < 2:
        raise DlcliError("compare needs at least two runs; `dlcli runs show RUN` shows one")
    root, as_json = _runs_options(ctx, root, as_json)
    folder = check_root(root)
    result = compare([Run.read(resolve_run(name, folder)) for name in runs])
    if as_json:
        json_out(result, indent=2)
    else:
        render_compare(result)


# ---- export / predict ---------------------------------------------------------------

@app.command("export", epilog=examples(
    "dlcli export runs/cgan/NAME/best.safetensors --format onnx",
    "dlcli export runs/vae/NAME/best.safetensors --format torchscript --part encoder",
    "dlcli export runs/mlp/NAME/last.safetensors --format safetensors",
    "dlcli export runs/transformer/NAME/best.safetensors --format ctranslate2 --quantize int8"))
def export_command(
    checkpoint: Path = typer.Argument(..., help="A .safetensors checkpoint."),
    fmt: str = typer.Option(..., "--format", "-f", help="onnx, torchscript, safetensors (the "
                            "weights without training state) or ctranslate2 (transformer)."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="File to write (a folder "
                                          "for ctranslate2); default: next to CKPT."),
    part: Optional[str] = typer.Option(None, "--part", help="Which network (onnx, torchscript): "
                                       "VAEs decoder (default) or encoder."),
    quantize: Optional[str] = typer.Option(None, "--quantize", help="ctranslate2 weights: int8, "
                                           "int8_float32, int16, float16, bfloat16, float32."),
):
    """Write a network for deployment, checked against PyTorch before it is kept; prints
    its path."""
    from dlcli.export import export

    out(str(export(checkpoint, fmt, output, part, quantize)))


@app.command(epilog=examples("dlcli predict runs/cnn/NAME/best.safetensors digit.png photo.jpg",
                             "ls *.png | dlcli predict runs/cnn/NAME/best.safetensors --json"))
def predict(
    checkpoint: Path = typer.Argument(..., help="A classifier checkpoint (perceptron, mlp, cnn)."),
    images: List[str] = typer.Argument(None, help="Image files (any format Pillow reads); none: "
                                       "paths from stdin, one a line."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per image."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or mps."),
):
    """Classify images: path, label, class name and probability, one line per image."""
    from dlcli.predict import run_predict

    run_predict(checkpoint, images or [], as_json=as_json, device=device, out=out)


# ---- entry point --------------------------------------------------------------------

GLOBAL_OPTIONS = {"--threads": 1, "--debug": 0}  # option -> how many values follow it


def hoist_global_options(args: list[str]) -> list[str]:
    """`dlcli train mlp --threads 1` means `dlcli --threads 1 train mlp`: global options
    given after the command move in front of it (up to a `--`, after which all is text)."""
    command = next((i for i, a in enumerate(args) if not a.startswith("-")
                    and (i == 0 or GLOBAL_OPTIONS.get(args[i - 1]) != 1)), None)
    if command is None:
        return args
    front, rest, i = args[:command], [], command
    while i < len(args):
        name = args[i].split("=", 1)[0]
        if args[i] == "--":
            rest += args[i:]
            break
        if name in GLOBAL_OPTIONS:
            takes = GLOBAL_OPTIONS[name] if "=" not in args[i] else 0
            front += args[i:i + 1 + takes]
            i += 1 + takes
        else:
            rest.append(args[i])
            i += 1
    return front + rest


PLAIN_TYPES = {"int": "INTEGER", "float": "FLOAT", "str": "TEXT", "Path": "PATH"}


def _plain_type(param, ctx) -> str:
    """What a help line shows for a value: an option's metavar, else a plain word
    (INTEGER, PATH, TEXT); nothing for flags and arguments (their name says it)."""
    if param.param_type_name == "argument" or getattr(param, "is_flag", False):
        return ""
    if param.metavar:
        return param.metavar
    inner = param.bare_type().removeprefix("list[").removesuffix("]")
    return PLAIN_TYPES.get(inner, inner.upper())


def plain_metavars(command) -> None:
    """Recent Typer labels values with Python types (<int>, <list[Path]>, and <bool> on
    flags, --help included): show plain words instead, and arguments by name (MODEL)."""
    for param in command.params:
        if param.param_type_name == "argument" and param.metavar is None:
            param.metavar = param.name.upper()
    for sub in getattr(command, "commands", {}).values():
        plain_metavars(sub)
    for cls in (typer.core.TyperOption, typer.core.TyperArgument):
        if hasattr(cls, "bare_type"):  # the Typer that shows Python types
            cls.display_type_rich = _plain_type


def main(argv=None) -> None:
    # Typer may vendor its own click: take the exception classes from what it raises.
    click_error = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
    command = typer.main.get_command(app)
    if sys.stdout is None:  # started with stdout closed (`>&-`): say so before any work
        print("error: stdout is closed, and dlcli writes its results there; redirect it to "
              "a file or /dev/null", file=sys.stderr)
        sys.exit(2)
    plain_metavars(command)
    args = hoist_global_options(sys.argv[1:] if argv is None else list(argv))
    try:
        code = command.main(args=args, prog_name="dlcli", standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except click_error as e:
        if STATE["debug"]:
            raise
        ctx = getattr(e, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        if e.format_message():  # empty when no arguments at all showed the help instead
            print(f"error: {e.format_message()}{hint}", file=sys.stderr)
        sys.exit(e.exit_code)
    except DlcliError as e:
        if STATE["debug"]:
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Interrupted as e:
        if e.path is not None:  # None: a worker whose rank 0 saved, and says so
            print(f"interrupted: saved {e.path}; continue with `--resume {e.path}`",
                  file=sys.stderr)
        sys.exit(e.exit_code)
    except ReaderLeft:
        # the reader left (`| head -1`): stop quietly, as `yes | head` does, and exit as a
        # process killed by SIGPIPE would; nothing more can be written
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)
    except Exception as e:  # the last line of defence: one line
        if STATE["debug"]:
            raise
        if isinstance(e, OSError) and e.filename is not None:  # a path that cannot be used
            print(f"error: {e.filename}: {e.strerror or e} (rerun with --debug for the traceback)",
                  file=sys.stderr)
            sys.exit(2)
        print(f"error: unexpected failure: {type(e).__name__}: {e} (rerun with --debug for "
              "the traceback)", file=sys.stderr)
        sys.exit(1)
