"""VAE benchmark: dlcli against the tutorial way of training the same VAE, side by side.

The yardstick is pytorch/examples `vae/main.py`: MLP 784-400-20, batch 128, Adam 1e-3,
MNIST read through `torchvision.datasets.MNIST` and a `DataLoader` with a per-sample
`ToTensor()` transform. The baseline here is our own re-implementation of that way of
training (no code taken from it): a map-style Dataset that turns each uint8 image into a
PIL image and then into a float tensor, a DataLoader batching 128 of them, sigmoid
outputs scored by `F.binary_cross_entropy` summed over the batch, Adam 1e-3, and the same
784-400-20 network (dlcli's own module, so only the way of training differs).

Both sides run in one process and are time-shared step by step: whichever has used less
CPU time so far goes next, so the load of a shared machine falls on both alike and the
ratios are fair even when the absolute figures move.

1. speed    images/s of the training loop alone: the tutorial way at batch 128, dlcli at
            batch 128 (the same network and batch) and dlcli's default `vae` preset.
2. quality  `dlcli train vae`'s default preset trains to the end (its validations and
            per-epoch pictures count as its time) while the tutorial way trains for the
            same seconds; then the test negative ELBO of both (nats/image, one z per
            image, the same fixed noise for both).

3. peer     (with --peer SCRIPT) whole-process runs of one epoch each, alternated: the
            real pytorch/examples script, given a torchvision stand-in on --peer-stubs
            (a folder with torchvision/ that serves $PEER_MNIST_DIR the way torchvision
            does: a PIL image per item, then ToTensor), and `dlcli train vae` at the
            tutorial setting (preset vae-tutorial) and at its default preset.

Usage (from the repo root; real MNIST is needed for the quality part):
    python benchmarks/vae.py --data-dir ../shared/data                 # both parts
    python benchmarks/vae.py --data-dir ../shared/data --only speed --seconds 20
    python benchmarks/vae.py --data-dir ../shared/data --only quality --set epochs=5
    python benchmarks/vae.py --data-dir ../shared/data --only peer \
        --peer /tmp/vae-peer/main.py --peer-stubs /tmp/vae-peer/stubs
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tutorial_data import TutorialMNIST  # noqa: E402  (benchmarks/, beside this file)

from dlcli.config import resolve_config  # noqa: E402
from dlcli.models.vae import VAE, kl_per_dim, reconstruction_nats  # noqa: E402
from dlcli.registry import get_spec  # noqa: E402
from dlcli.tasks.vae import VAETask  # noqa: E402

# ---- the tutorial way ----------------------------------------------------------------

def tutorial_training(images, labels, seed: int = 1):
    """Yields images done after each step; runs epochs forever."""
    torch.manual_seed(seed)
    model = VAE((1, 28, 28), latent=20, hidden=[400])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = torch.utils.data.DataLoader(TutorialMNIST(images, labels), batch_size=128,
                                         shuffle=True)
    tutorial_training.model = model
    for _ in itertools.count():
        model.train()
        for x, _ in loader:
            logits, mu, logvar = model(x)
            bce = F.binary_cross_entropy(torch.sigmoid(logits), x.view(-1, 784), reduction="sum")
            loss = bce + kl_per_dim(mu, logvar).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss.item()
            yield len(x)


# ---- the dlcli way -------------------------------------------------------------------

def dlcli_task(data_dir, overrides=()):
    from dlcli.train import apply_precision, seed_everything

    config = resolve_config("vae", None, overrides)
    seed_everything(config["seed"])
    task = VAETask(get_spec("vae"), config, torch.device("cpu"), data_dir)
    task.precision = apply_precision(task)  # the preset's, as `dlcli train` applies it
    task.setup_data()
    return task


def dlcli_training(task, run_dir=None, forever: bool = False):
    """What `dlcli train` does per step (and per epoch, unless `forever`)."""
    from dlcli.train import precision_context

    within = precision_context(task.device, task.precision)
    for epoch in itertools.count() if forever else range(task.config["epochs"]):
        task.train_mode(True)
        batches = task.train_batches(epoch)
        for i in range(len(batches)):
            batch = batches[i]
            with within:
                task.train_step(batch)
            yield len(batch[0])
        if not forever:
            task.train_mode(False)
            task.validate()
            task.end_of_epoch(epoch + 1, run_dir)
            yield 0


# ---- time sharing --------------------------------------------------------------------

class Runner:
    def __init__(self, name, steps):
        self.name, self.steps = name, steps
        self.seconds, self.images, self.done = 0.0, 0, False

    def step(self):
        t = time.perf_counter()
        try:
            self.images += next(self.steps)
        except StopIteration:
            self.done = True
        self.seconds += time.perf_counter() - t

    @property
    def rate(self):
        return self.images / max(self.seconds, 1e-9)


def timeshare(runners, budget=None):
    """Step the runner that has used least time until all are done or past `budget` s;
    with no budget, run until the first finishes, then bring the others level with it."""
    while True:
        live = [r for r in runners if not r.done and (budget is None or r.seconds < budget)]
        if budget is None and any(r.done for r in runners):
            goal = max(r.seconds for r in runners if r.done)
            live = [r for r in live if r.seconds < goal]
        if not live:
            return
        min(live, key=lambda r: r.seconds).step()


@torch.no_grad()
def test_nelbo(model, test_x) -> float:
    """-ELBO on the test set, nats/image, one z per image from a fixed generator."""
    model.eval()
    gen = torch.Generator().manual_seed(1234)
    total = 0.0
    for i in range(0, len(test_x), 1000):
        x = test_x[i:i + 1000].float().div(255)
        logits, mu, logvar = model(x, generator=gen)
        total += (reconstruction_nats(logits, x) + kl_per_dim(mu, logvar).sum(1)).sum().item()
    return total / len(test_x)


def peer_runs(args, rounds: int = 2) -> dict:
    """Alternate whole-process one-epoch runs; median wall seconds of each."""
    root = Path(__file__).resolve().parents[1]
    threads = {"OMP_NUM_THREADS": str(args.threads)} if args.threads else {}
    env = {**os.environ, **threads, "PYTHONPATH": str(root),
           "PEER_MNIST_DIR": str(Path(args.data_dir) / "mnist")}
    peer_env = {**env, "PYTHONPATH": args.peer_stubs}
    dlcli = [sys.executable, "-m", "dlcli", "train", "vae", "--epochs", "1",
             "--data-dir", args.data_dir]
    commands = {
        "pytorch/examples vae/main.py --epochs 1": (
            [sys.executable, args.peer, "--epochs", "1", "--log-interval", "100000"], peer_env),
        "dlcli train vae --preset vae-tutorial -e 1": (dlcli + ["--preset", "vae-tutorial"], env),
        "dlcli train vae -e 1 (default preset)": (dlcli, env),
    }
    seconds = {name: [] for name in commands}
    printed = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(rounds):
            for name, (command, command_env) in commands.items():
                t = time.perf_counter()
                proc = subprocess.run(command, cwd=tmp, env=command_env, capture_output=True,
                                      text=True, check=True)
                seconds[name].append(time.perf_counter() - t)
                found = re.findall(r"Test set loss: ([0-9.]+)|val_loss ([0-9.]+)",
                                   proc.stdout + proc.stderr)
                printed[name] = float(next(v for v in found[-1] if v)) if found else None
    base = statistics.median(seconds[next(iter(commands))])
    print(f"peer: whole-process wall seconds for one epoch, median of {rounds}, alternated")
    out = {}
    for name, times in seconds.items():
        median = statistics.median(times)
        loss = printed[name]
        print(f"  {name:<44} {median:6.1f} s   x{base / median:.2f}   "
              f"{'test' if 'examples' in name else 'val'} loss {loss}")
        out[name] = {"seconds": round(median, 2), "speedup": round(base / median, 3), "loss": loss}
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2]
                                                  / "shared" / "data"))
    parser.add_argument("--only", choices=["speed", "quality", "peer"])
    parser.add_argument("--peer", help="path of pytorch/examples vae/main.py (outside the repo)")
    parser.add_argument("--peer-stubs", help="folder holding a torchvision stand-in")
    parser.add_argument("--seconds", type=float, default=15.0,
                        help="speed part: training seconds for each side")
    parser.add_argument("--set", action="append", default=[],
                        help="quality part: override dlcli's default preset (key=value)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own "
                        "choice; on a machine busy with other work, 1 is much faster)")
    parser.add_argument("--json", action="store_true", help="print one JSON object at the end")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {"torch_threads": torch.get_num_threads()}

    if args.only in (None, "speed"):
        task128 = dlcli_task(args.data_dir, ["batch_size=128", "lr=0.001"])
        task = dlcli_task(args.data_dir)
        x, y = task.train_data.take(slice(None))
        runners = [Runner("tutorial way, batch 128", tutorial_training(x, y)),
                   Runner("dlcli, batch 128", dlcli_training(task128, forever=True)),
                   Runner(f"dlcli default preset (batch {task.config['batch_size']})",
                          dlcli_training(task, forever=True))]
        timeshare(runners, args.seconds)
        base = runners[0].rate
        print(f"speed: 784-400-20 VAE, {args.seconds:g} s of training each, time-shared")
        for r in runners:
            print(f"  {r.name:<34} {r.rate:>9,.0f} images/s   x{r.rate / base:.2f}")
        results["speed"] = {r.name: {"images_per_s": round(r.rate, 1),
                                     "ratio": round(r.rate / base, 3)} for r in runners}

    if args.only in (None, "quality"):
        task = dlcli_task(args.data_dir, args.set)
        x, y = task.train_data.take(slice(None))
        with tempfile.TemporaryDirectory() as run_dir:
            (Path(run_dir) / "samples").mkdir()
            ours = Runner(f"dlcli train vae ({task.config['epochs']} epochs, "
                          f"batch {task.config['batch_size']})",
                          dlcli_training(task, Path(run_dir)))
            theirs = Runner("tutorial way, same seconds", tutorial_training(x, y))
            timeshare([ours, theirs])
        test_x = task.test_data.take(slice(None))[0]
        ours_nelbo = test_nelbo(task.model, test_x)
        theirs_nelbo = test_nelbo(tutorial_training.model, test_x)
        print(f"quality: test -ELBO (nats/image) after {ours.seconds:.1f} s of training each")
        print(f"  {ours.name:<44} {ours_nelbo:7.2f}   {ours.images / len(x):5.2f} epochs")
        print(f"  {theirs.name:<44} {theirs_nelbo:7.2f}   {theirs.images / len(x):5.2f} epochs")
        results["quality"] = {
            "seconds": round(ours.seconds, 2),
            "dlcli": {"nelbo": round(ours_nelbo, 3), "epochs": ours.images / len(x)},
            "tutorial": {"nelbo": round(theirs_nelbo, 3), "epochs": theirs.images / len(x)},
        }
    if args.peer and args.only in (None, "peer"):
        results["peer"] = peer_runs(args)
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
