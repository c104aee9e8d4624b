"""Batching in-memory tensors by indexing: no DataLoader, no per-sample Python."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffle of epoch `epoch`: depends on (seed, epoch) only, so a resumed run
    sees exactly the order the uninterrupted run would have seen."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % 2**64)  # as torch wraps it
    return torch.randperm(n, generator=g)


class IndexBatches(Sequence):
    """Batches of rows of `tensors`, in the order of `order`, cut `batch_size` at a time.
    A `prepare` function turns the indexed rows into the batch (uint8 -> float, say)."""

    def __init__(self, tensors, batch_size: int, order: torch.Tensor, prepare=None,
                 drop_last: bool = False):
        self.tensors = tensors
        self.batch_size = batch_size
        self.order = order.to(tensors[0].device)
        self.prepare = prepare
        n = len(order)
        self.length = n // batch_size if drop_last else (n + batch_size - 1) // batch_size

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        if not 0 <= i < self.length:
            raise IndexError(i)
        idx = self.order[i * self.batch_size:(i + 1) * self.batch_size]
        rows = tuple(t[idx] for t in self.tensors)
        return self.prepare(*rows) if self.prepare else rows
