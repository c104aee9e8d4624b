"""What `checkpoint_every` costs: the time of one mid-epoch save of last.safetensors (the
weights, optimizer moments, RNG states; written, fsynced and renamed) against the time
of the training steps between two saves.

Usage:  python benchmarks/checkpoint_cost.py [--models vae,transformer] [--data-dir DIR]
        [--every 10m] [--steps 30] [--saves 5]
Prints, per model: the median save and step times, and the share of training time the
saves take at --every (a duration, or a number of steps).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dlcli.checkpointer import Checkpointer  # noqa: E402
from dlcli.config import checkpoint_interval, resolve_config  # noqa: E402
from dlcli.registry import get_spec  # noqa: E402
from dlcli.train import precision_context, prepare_task  # noqa: E402


def median_seconds(action, times: int) -> float:
    spent = []
    for _ in range(times):
        t0 = time.perf_counter()
        action()
        spent.append(time.perf_counter() - t0)
    return statistics.median(spent)


def measure(model: str, data_dir, every: str, steps: int, saves: int) -> dict:
    spec = get_spec(model)
    config = resolve_config(model, None, [])
    task, precision = prepare_task(spec, config, torch.device("cpu"), data_dir, None, None)
    task.train_mode(True)
    batches = task.train_batches(0)
    position = iter(range(len(batches)))

    def step():
        with precision_context(task.device, precision):
            task.train_step(batches[next(position) % len(batches)])

    step()  # warm-up (and the optimizer state a save then holds)
    step_s = median_seconds(step, steps)
    with tempfile.TemporaryDirectory() as tmp:
        saver = Checkpointer(task, Path(tmp))
        save_s = median_seconds(lambda: saver.save(0, 1, 1), saves)
        size = (Path(tmp) / "last.safetensors").stat().st_size
    every_steps, every_seconds = checkpoint_interval(every)
    between = every_seconds if every_seconds is not None else every_steps * step_s
    return {"model": model, "step_ms": step_s * 1e3, "save_ms": save_s * 1e3,
            "checkpoint_mib": size / 2**20, "cost": save_s / (between + save_s)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vae,transformer")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--every", default="10m", help="checkpoint_every (default: its default)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--saves", type=int, default=5)
    args = parser.parse_args()
    print(f"# checkpoint_every={args.every}, {torch.get_num_threads()} thread(s)")
    print(f"{'model':<12}{'step ms':>10}{'save ms':>10}{'MiB':>8}{'cost':>10}")
    for model in args.models.split(","):
        r = measure(model, args.data_dir, args.every, args.steps, args.saves)
        print(f"{r['model']:<12}{r['step_ms']:>10.1f}{r['save_ms']:>10.1f}"
              f"{r['checkpoint_mib']:>8.2f}{r['cost']:>10.3%}")


if __name__ == "__main__":
    main()
