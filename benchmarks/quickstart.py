"""Is the README's first picture worth showing? Sevens that are sevens, in varied handwriting.

    python benchmarks/quickstart.py --classifier JUDGE.safetensors [--checkpoint CVAE] \
        [--data-dir ../shared/data]

Draws `-n` sevens exactly as the quickstart does (`dlcli sample cvae --label 7`, the
checkpoint's own sampling defaults) and reports:

- `sevens`: the share the cnn judge (`--classifier`, best trained on real MNIST) reads as 7;
- `spread`: the mean L2 distance between two of them (every pair, pixels in [0, 1]); 0 means
  one image copied, and real MNIST test sevens give about 8.5;
- with `--data-dir`, the same spread for the real test sevens, as the yardstick.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dlcli.tasks.classify import load_judge  # noqa: E402


def spread(images: torch.Tensor) -> float:
    """Mean L2 distance over all pairs of images (pixels in [0, 1])."""
    return float(torch.pdist(images.flatten(1).double()).mean())


def sevens(checkpoint: str | None, n: int, seed: int) -> torch.Tensor:
    """The quickstart's own command, as npy bytes through a pipe."""
    cmd = [sys.executable, "-m", "dlcli", "sample", "cvae", "--label", "7", "-n", str(n),
           "--seed", str(seed), "--format", "npy", "-o", "-"]
    if checkpoint:
        cmd += ["--checkpoint", checkpoint]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    data = subprocess.run(cmd, capture_output=True, check=True, env=env).stdout
    return torch.from_numpy(np.load(io.BytesIO(data)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classifier", required=True, help="cnn checkpoint that judges the digits")
    parser.add_argument("--checkpoint", help="cvae checkpoint (default: the newest run, as sample)")
    parser.add_argument("-n", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", help="real MNIST, for the test sevens' spread")
    args = parser.parse_args()

    images = sevens(args.checkpoint, args.n, args.seed)
    judge = load_judge(args.classifier)
    with torch.no_grad():
        read = judge.predict(images).argmax(1)
    report = {"samples": len(images), "sevens": float((read == 7).float().mean()),
              "spread": spread(images)}
    if args.data_dir:
        from dlcli.data.mnist import load_images

        real = load_images("mnist", args.data_dir)
        x = real.test_x[real.test_y == 7].float().div(255)
        report["real_test_sevens_spread"] = spread(x)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
