"""The benchmark suite: every model family's training loop against the tutorial way.

For each image model the same Task (network, loss, optimizer step: what `dlcli train`
runs) is fed in turn, time-shared chunk by chunk in one process so the load of a
shared machine falls on every side alike:
  dlcli      the in-memory uint8 tensor, batched by indexing (dlcli's own path), under
             the preset's precision (`auto`, where the CPU multiplies bfloat16 natively:
             bf16 autocast for the conv nets, bf16 matrix products for the others);
  fp32       the same in float32 (only when the preset trains in another precision);
  baseline   the same network, loss and batch size trained the way the common tutorials
             do: a torch DataLoader over torchvision-style MNIST items (one PIL image at a
             time through ToTensor, benchmarks/tutorial_data.py), each optimizer built
             plainly as `torch.optim.Adam(model.parameters(), ...)`, float32.
It also times sampling (images/s) and reports peak memory. The Transformer row compares
dlcli's Transformer with torch.nn.Transformer of the same size on the same batches
(benchmarks/transformer.py has the details) when that module is present.

Usage:  python benchmarks/suite.py [--data-dir ../shared/data] [--seconds 6] [--json out.json]
        [--models mlp,cnn,vae,gan,...]
Prints a table to stdout (and JSON with --json). Runs in a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tutorial_data import TutorialMNIST  # noqa: E402  (benchmarks/, beside this file)

from dlcli.config import resolve_config  # noqa: E402
from dlcli.registry import get_spec, list_models  # noqa: E402


def build_task(model: str, data_dir, overrides=(), tutorial: bool = False, data_from=None):
    """The task as `dlcli train` builds it on this CPU (with `--set` overrides, say
    precision=32), and the precision it trains in; `data_from`: another task of the same
    model whose training images it shares instead of loading them again.

    tutorial: the same network, loss and batch as a tutorial trains them instead: float32,
    the default memory layout, and each optimizer as `torch.optim.Adam(model.parameters(),
    lr=...)` makes it, whose CPU default steps the tensors one by one in Python."""
    from dlcli.train import apply_precision

    spec = get_spec(model)
    config = resolve_config(model, None, overrides)
    device = torch.device("cpu")
    task = spec.load_task()(spec, config, device, data_dir)
    if tutorial:
        precision = "32"
        task.optimizers = {k: tutorial_optimizer(o) for k, o in task.optimizers.items()}
        # the task's schedule still drives the optimizer it was built with, which never
        # steps now; the rate does not matter for timing, torch's warning about it neither
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
    else:
        precision = apply_precision(task)
    if data_from is None:
        task.setup_data()
    else:
        task.train_data = data_from.train_data
    task.train_mode(True)
    return task, precision


def tutorial_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The same optimizer and settings, made the plain way (neither fused nor foreach)."""
    kind = type(optimizer)
    accepted = inspect.signature(kind).parameters
    settings = {k: v for k, v in optimizer.defaults.items()
                if k in accepted and k not in ("fused", "foreach")}
    return kind(optimizer.param_groups[0]["params"], **settings)


def endless(make_iter):
    while True:
        yield from make_iter()


def time_shared(sides: dict, seconds: float, chunk: int = 5) -> dict:
    """Run chunk steps of each side in turn until every side has had `seconds` of wall time."""
    spent = {k: 0.0 for k in sides}
    items = {k: 0 for k in sides}
    while min(spent.values()) < seconds:
        name = min(spent, key=spent.get)
        t0 = time.perf_counter()
        items[name] += sides[name](chunk)
        spent[name] += time.perf_counter() - t0
    return {k: items[k] / spent[k] for k in sides}


def bench_image_model(model: str, data_dir, seconds: float) -> dict:
    """Three sides, time-shared: dlcli as `dlcli train` runs it (the preset's precision),
    dlcli in float32, and the same network trained the tutorial way."""
    from dlcli.train import precision_context

    task, precision = build_task(model, data_dir)
    tutorial, _ = build_task(model, data_dir, tutorial=True, data_from=task)
    # float32 as `dlcli train --precision 32` runs it: its own task, in the plain layout
    plain = (build_task(model, data_dir, ["precision=32"], data_from=task)[0]
             if precision != "32" else None)
    bs = task.config["batch_size"]
    ours = endless(lambda: iter(task.train_batches(0)))
    loader = torch.utils.data.DataLoader(TutorialMNIST(*tutorial.train_data.take(slice(None))), batch_size=bs,
                                         shuffle=True, drop_last=task.drop_last)
    theirs = endless(lambda: iter(loader))

    def steps(trainee, source, precision="32"):
        def run(k):
            n = 0
            for _ in range(k):
                batch = next(source)
                with precision_context(trainee.device, precision):
                    trainee.train_step(batch)
                n += len(batch[0])
            return n
        return run

    sides = {"dlcli": steps(task, ours, precision), "baseline": steps(tutorial, theirs)}
    if plain is not None:
        sides["dlcli_fp32"] = steps(plain, endless(lambda: iter(plain.train_batches(0))))
    for side in sides.values():
        side(1)  # warm every path up
    rates = time_shared(sides, seconds)
    fp32 = rates.get("dlcli_fp32", rates["dlcli"])
    row = {"model": model, "unit": "img/s", "batch": bs, "precision": precision,
           "dlcli": rates["dlcli"], "dlcli_fp32": fp32, "baseline": rates["baseline"],
           "ratio": rates["dlcli"] / rates["baseline"], "ratio_fp32": fp32 / rates["baseline"],
           "baseline_kind": "DataLoader over per-sample ToTensor, plain torch.optim, float32"}
    if get_spec(model).samples:
        task.train_mode(False)
        t0, n = time.perf_counter(), 0
        with torch.no_grad():
            while time.perf_counter() - t0 < 1.0:
                images, _ = task.sample(256)
                n += len(images)
        row["sample_img_per_s"] = n / (time.perf_counter() - t0)
    return row


def bench_transformer() -> dict:
    import transformer as tbench  # benchmarks/transformer.py, beside this file

    with contextlib.redirect_stdout(sys.stderr):  # its per-round lines are progress
        rates = tbench.side_by_side()
    ratio = rates["dlcli"] / rates["baseline"]
    return {"model": "transformer", "unit": "tok/s", "precision": "32", "dlcli": rates["dlcli"],
            "dlcli_fp32": rates["dlcli"], "baseline": rates["baseline"], "ratio": ratio,
            "ratio_fp32": ratio,
            "baseline_kind": "torch.nn.Transformer, same size and batches"}


PEAK = """
import re, sys
from dlcli.cli import main
try:
    main(sys.argv[1:])
except SystemExit as e:
    assert not e.code, e.code
status = open("/proc/self/status").read()
print(int(re.search(r"VmHWM:\\s+(\\d+)", status).group(1)) / 1024, file=sys.stderr)
"""


def train_peak_memory(model: str, data_dir, tmp: Path) -> float:
    """Peak resident memory (MiB) of a whole `dlcli train MODEL --epochs 1` process, read
    from the process itself (VmHWM): getrusage's figure for a child would include the
    memory of this process at the fork."""
    cmd = [sys.executable, "-c", PEAK, "train", model, "--epochs", "1", "--run-dir", str(tmp / model)]
    if data_dir:
        cmd += ["--data-dir", str(data_dir)]
    proc = subprocess.run(cmd, check=True, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    return float(proc.stderr.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--seconds", type=float, default=6.0, help="per side, per model")
    parser.add_argument("--models", default=None, help="comma-separated (default: all)")
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    torch.manual_seed(0)
    names = args.models.split(",") if args.models else [s.name for s in list_models()]
    rows = []
    for name in names:
        spec = get_spec(name)
        t0 = time.perf_counter()
        if spec.family == "seq2seq":
            row = bench_transformer()
        elif spec.name == "perceptron":
            continue  # no optimizer step to compare: the rule is a matrix update
        else:
            row = bench_image_model(name, args.data_dir, args.seconds)
        row["bench_seconds"] = time.perf_counter() - t0
        rows.append(row)
        print(f"{name}: {row['dlcli']:,.0f} vs {row['baseline']:,.0f} {row['unit']} "
              f"({row['ratio']:.2f}x)", file=sys.stderr)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with tempfile.TemporaryDirectory() as tmp:
        vae_mib = train_peak_memory("vae", args.data_dir, Path(tmp))
    header = (f"{'model':<12}{'precision':>10}{'dlcli':>10}{'fp32':>10}{'baseline':>10}"
              f"{'ratio':>8}{'fp32':>8}  {'unit':<6}{'sample img/s':>14}")
    print(f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, {time.strftime('%Y-%m-%d')}; ratio: dlcli as trained "
          "(the preset's precision) over the baseline, fp32: both in float32")
    print(header)
    for r in rows:
        sample = f"{r['sample_img_per_s']:>14,.0f}" if "sample_img_per_s" in r else f"{'':>14}"
        print(f"{r['model']:<12}{r['precision']:>10}{r['dlcli']:>10,.0f}{r['dlcli_fp32']:>10,.0f}"
              f"{r['baseline']:>10,.0f}{r['ratio']:>7.2f}x{r['ratio_fp32']:>7.2f}x  "
              f"{r['unit']:<6}{sample}")
    print(f"peak memory of this process: {peak_mib:,.0f} MiB; "
          f"of `dlcli train vae --epochs 1`: {vae_mib:,.0f} MiB")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"rows": rows, "peak_mib": peak_mib, "train_vae_peak_mib": vae_mib}, indent=2))


if __name__ == "__main__":
    main()
