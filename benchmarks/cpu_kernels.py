"""The CPU kernels dlcli's Transformer replaces, timed against PyTorch's own on one thread.

  python benchmarks/cpu_kernels.py [--threads 1] [--rounds 30]

1. softmax over the last dimension, nanoseconds an element, by row length: PyTorch's
   kernel against softmax_over_keys (rows under 16 padded with -inf to 16);
2. one attention's weights, forward and backward (softmax, then the average of the
   values), for a Multi30k-sized batch of 12-key rows;
3. a dropout mask and its use on bf16 activations: one torch.rand number an element
   against drop()'s four numbers from each 64-bit random word.
"""

from __future__ import annotations

import argparse

import torch
from checkpoint_cost import median_seconds  # this folder is on sys.path when run as a script


def median_ms(fn, rounds: int) -> float:
    """The median of `rounds` timings of fn(), after one call to warm up."""
    fn()
    return median_seconds(fn, rounds) * 1000


def main() -> None:
    from dlcli.models.transformer import drop, softmax_over_keys

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    print("softmax, ns an element: width, torch, softmax_over_keys")
    for width in (4, 8, 12, 15, 16, 24, 32):
        x = torch.randn(2_000_000 // width, width)
        plain = median_ms(lambda: x.softmax(-1), args.rounds) / x.numel() * 1e6
        padded = median_ms(lambda: softmax_over_keys(x), args.rounds) / x.numel() * 1e6
        print(f"  {width:3d}  {plain:6.2f}  {padded:6.2f}")

    scores = torch.randn(315, 4, 13, 12, requires_grad=True)
    values, upstream = torch.randn(315, 4, 12, 32), torch.randn(315, 4, 13, 32)
    for name, softmax in (("torch", lambda s: s.softmax(-1)), ("softmax_over_keys", softmax_over_keys)):
        ms = median_ms(lambda: (softmax(scores) @ values).backward(upstream), args.rounds)
        print(f"attention weights over 12 keys, forward + backward, {name}: {ms:.2f} ms")

    x = torch.randn(315, 13, 128, dtype=torch.bfloat16)
    p = 0.2

    def rand_mask():
        keep = torch.rand(x.shape).ge_(p)
        return x * keep.to(x.dtype).mul_(1 / (1 - p))

    print(f"dropout of {tuple(x.shape)} bf16, torch.rand mask: {median_ms(rand_mask, args.rounds):.2f} ms, "
          f"drop(): {median_ms(lambda: drop(x, p), args.rounds):.2f} ms")


if __name__ == "__main__":
    main()
