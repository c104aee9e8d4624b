"""CPU cost of one training update of a preset: user and system time, and page faults.

  python benchmarks/update_cost.py PRESET [--set KEY=VALUE]... [--precision 32] [--steps 8]
                                   [--threads 1] [--data-dir DIR]

Builds the task as `dlcli train` does, takes two updates to warm up, then times `--steps`
more (the same batches every run, so precisions compare like for like). CPU seconds stay
comparable on a shared machine; the wall time an update is printed too. The system seconds
and page faults show what paging memory in costs.
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import torch

from dlcli.config import resolve_config
from dlcli.registry import get_spec
from dlcli.runtime import pick_device, precision_context
from dlcli.train import prepare_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("preset")
    parser.add_argument("--set", action="append", default=[], dest="sets",
                        help="a preset key changed, as dlcli train --set takes it")
    parser.add_argument("--precision", default="32")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data-dir", default="../shared/data")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pick_device("cpu")
    config = resolve_config(get_spec_name(args.preset), args.preset, args.sets)
    spec = get_spec(config["model"])
    task, precision = prepare_task(spec, config, torch.device("cpu"), args.data_dir, None,
                                   args.precision)
    task.train_mode(True)
    batches = task.train_batches(0)
    autocast = precision_context(task.device, precision)
    for i in range(2 + args.steps):
        if i == 2:
            before, times = resource.getrusage(resource.RUSAGE_SELF), os.times()
            started = time.perf_counter()
        with autocast:
            task.train_step(batches[i])
    wall = time.perf_counter() - started
    after, end = resource.getrusage(resource.RUSAGE_SELF), os.times()
    n = args.steps
    faults = (after.ru_minflt - before.ru_minflt) / n
    name = " ".join([args.preset, *args.sets])
    print(f"{name} {precision}: user {(end.user - times.user) / n * 1000:.1f} ms, "
          f"system {(end.system - times.system) / n * 1000:.1f} ms, {faults:,.0f} page faults "
          f"({faults * 4096 / 2**20:,.0f} MiB) an update; wall {wall / n * 1000:.1f} ms an "
          f"update on {args.threads} thread(s); peak resident {after.ru_maxrss / 2**10:,.0f} MiB")


def get_spec_name(preset: str) -> str:
    from dlcli.config import preset_path, preset_values

    return str(preset_values(preset_path(preset))["model"])


if __name__ == "__main__":
    main()
