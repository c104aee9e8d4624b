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
It also times sampling (images/s) and reports peak memory, and how close each loop runs to
the machine's limit: the dense matrix-product peak of this CPU (float32 and bfloat16, the
best of a few sizes, measured in the same run with the same threads), each model's
training FLOPs per item (forward + backward of one step, counted by
torch.utils.flop_counter.FlopCounterMode: matrix products and convolutions, which is what
the peak measures), and from them the GFLOP/s achieved and its fraction of the peak of the
precision the products run in. The Transformer row compares
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

    flops_per_item = image_flops_per_item(task, precision)
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
           "baseline_kind": "DataLoader over per-sample ToTensor, plain torch.optim, float32",
           "flops_per_item": flops_per_item}
    if get_spec(model).samples:
        task.train_mode(False)
        t0, n = time.perf_counter(), 0
        with torch.no_grad():
            while time.perf_counter() - t0 < 1.0:
                images, _ = task.sample(256)
                n += len(images)
        row["sample_img_per_s"] = n / (time.perf_counter() - t0)
    return row


def matmul_peak(dtype: torch.dtype, sizes=(256, 512, 1024, 2048), seconds: float = 0.5) -> float:
    """GFLOP/s of square matrix products in `dtype`: the best of a few sizes, each run
    for about `seconds` after a warm-up (2 n^3 floating-point operations a product)."""
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        a @ b  # warm-up: oneDNN picks and caches its kernel
        k, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            a @ b
            k += 1
        best = max(best, 2 * n ** 3 * k / (time.perf_counter() - t0) / 1e9)
    return best


def counted_flops(step) -> int:
    """Floating-point operations torch's counter sees in step() (matmuls, convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def image_flops_per_item(task, precision: str) -> float:
    """Training FLOPs per image of one of the task's optimizer steps."""
    from dlcli.train import precision_context

    batch = task.train_batches(0)[0]

    def step():
        with precision_context(task.device, precision):
            task.train_step(batch)
    return counted_flops(step) / len(batch[0])


def transformer_flops_per_token() -> float:
    """Training FLOPs per token of dlcli's Transformer at benchmarks/transformer.py's size."""
    import transformer as tbench

    a = tbench.parser().parse_args(["throughput"])
    model = tbench.Transformer(a.vocab, a.d_model, a.heads, a.layers, a.layers, a.d_ff, 0.1,
                               tie_embeddings=False)
    (src, tgt), = tbench.make_batches(1, a.batch, a.vocab, a.min_len, a.max_len)
    tokens = int((src != tbench.text.PAD).sum() + (tgt[:, 1:] != tbench.text.PAD).sum())
    return counted_flops(lambda: model.loss(src, tgt[:, :-1], tgt[:, 1:], 0.1).backward()) / tokens


# which measured peak a precision's matrix products are held against
PEAK_OF = {"32": "float32", "bf16": "bfloat16", "bf16-matmul": "bfloat16"}


def add_efficiency(row: dict, flops_per_item: float, peaks: dict) -> None:
    row["gflop_per_item"] = flops_per_item / 1e9
    row["gflops"] = row["dlcli"] * flops_per_item / 1e9
    row["peak_gflops"] = peaks[PEAK_OF.get(row["precision"], "float32")]
    row["of_peak"] = row["gflops"] / row["peak_gflops"]


def bench_transformer() -> dict:
    import transformer as tbench  # benchmarks/transformer.py, beside this file

    with contextlib.redirect_stdout(sys.stderr):  # its per-round lines are progress
        rates = tbench.side_by_side()
    ratio = rates["dlcli"] / rates["baseline"]
    return {"model": "transformer", "unit": "tok/s", "precision": "32", "dlcli": rates["dlcli"],
            "dlcli_fp32": rates["dlcli"], "baseline": rates["baseline"], "ratio": ratio,
            "ratio_fp32": ratio, "flops_per_item": transformer_flops_per_token(),
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
    peaks = {"float32": matmul_peak(torch.float32), "bfloat16": matmul_peak(torch.bfloat16)}
    print(f"matmul peak: float32 {peaks['float32']:,.1f} GFLOP/s, bfloat16 "
          f"{peaks['bfloat16']:,.1f} GFLOP/s", file=sys.stderr)
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
        add_efficiency(row, row.pop("flops_per_item"), peaks)
        rows.append(row)
        print(f"{name}: {row['dlcli']:,.0f} vs {row['baseline']:,.0f} {row['unit']} "
              f"({row['ratio']:.2f}x)", file=sys.stderr)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with tempfile.TemporaryDirectory() as tmp:
        vae_mib = train_peak_memory("vae", args.data_dir, Path(tmp))
    header = (f"{'model':<12}{'precision':>10}{'dlcli':>10}{'fp32':>10}{'baseline':>10}"
              f"{'ratio':>8}{'fp32':>8}  {'unit':<6}{'sample img/s':>14}"
              f"{'MFLOP/item':>12}{'GFLOP/s':>9}{'of peak':>9}")
    print(f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, {time.strftime('%Y-%m-%d')}; ratio: dlcli as trained "
          "(the preset's precision) over the baseline, fp32: both in float32")
    print(header)
    for r in rows:
        sample = f"{r['sample_img_per_s']:>14,.0f}" if "sample_img_per_s" in r else f"{'':>14}"
        print(f"{r['model']:<12}{r['precision']:>10}{r['dlcli']:>10,.0f}{r['dlcli_fp32']:>10,.0f}"
              f"{r['baseline']:>10,.0f}{r['ratio']:>7.2f}x{r['ratio_fp32']:>7.2f}x  "
              f"{r['unit']:<6}{sample}{r['gflop_per_item'] * 1e3:>12,.2f}{r['gflops']:>9,.1f}"
              f"{r['of_peak']:>8.1%}")
    print(f"matmul peak, {torch.get_num_threads()} threads: float32 {peaks['float32']:,.1f} "
          f"GFLOP/s, bfloat16 {peaks['bfloat16']:,.1f} GFLOP/s (of peak: against the peak of "
          "the precision the products run in)")
    print(f"peak memory of this process: {peak_mib:,.0f} MiB; "
          f"of `dlcli train vae --epochs 1`: {vae_mib:,.0f} MiB")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"rows": rows, "peak_mib": peak_mib, "train_vae_peak_mib": vae_mib,
             "matmul_peak_gflops": peaks}, indent=2))


if __name__ == "__main__":
    main()
