"""Data parallel training on torch.distributed, the way torchrun launches it.

Under `torchrun --nproc-per-node N -m dlcli train ...` (or `dlcli train --nproc-per-node N`)
every process builds the same task; each trains on its own share of every epoch's batches
(batch i goes to rank i mod N, so --batch-size is per process), gradients are averaged
across processes just before every optimizer step (a step pre-hook, so tasks with two
optimizers, GANs, stay in sync without knowing about it), and BatchNorm statistics are
averaged before validation. Only rank 0 shows progress and writes files.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def restart_count() -> int:
    """How many times torchrun has restarted this worker after a failure (--max-restarts)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def init_from_env(device: torch.device) -> Dist:
    """Join the process group torchrun describes in the environment (no-op when alone)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        store, rank, world = next(dist.rendezvous("env://"))
        # torchrun keeps its key-value store when it restarts the workers (--max-restarts):
        # under the same keys, the new workers would read the dead ones' addresses and hang
        # connecting to them. Each attempt gets keys of its own.
        prefix = f"attempt-{restart_count()}/"
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank,
                                world_size=world, store=dist.PrefixStore(prefix, store))
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def local_device(device: torch.device, d: Dist) -> torch.device:
    if d.active and device.type == "cuda":
        torch.cuda.set_device(d.local_rank)
        return torch.device("cuda", d.local_rank)
    return device


def _flat_all_reduce_mean(tensors: list[torch.Tensor], world: int) -> None:
    if not tensors:
        return
    flat = torch.cat([t.reshape(-1).float() for t in tensors])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view_as(t).to(t.dtype))
        offset += t.numel()


def any_rank(flag: bool, d: Dist) -> bool:
    """True on every rank when `flag` is true on any."""
    t = torch.tensor([float(flag)], device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def from_rank0(value: int, d: Dist) -> int:
    """Rank 0's `value` on every rank (rank 0 decides, say, which checkpoint to load)."""
    t = torch.tensor([value], dtype=torch.int64,
                     device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.broadcast(t, src=0)
    return int(t.item())


def barrier(d: Dist) -> None:
    if d.active:
        dist.barrier()


def average_gradients_before_steps(optimizers, d: Dist) -> None:
    def hook(optimizer, args, kwargs):
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        _flat_all_reduce_mean(grads, d.world)

    for opt in optimizers:
        opt.register_step_pre_hook(hook)


@torch.no_grad()
def join(task, d: Dist) -> None:
    """Before the first step: every rank starts from rank 0's weights, and each optimizer
    step averages the gradients across ranks first. Alone: nothing to do."""
    if d.active:
        broadcast_modules(list(task.modules.values()), d)
        average_gradients_before_steps(task.optimizers.values(), d)


def broadcast_modules(modules, d: Dist) -> None:
    """Start every rank from rank 0's weights."""
    for module in modules:
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)


@torch.no_grad()
def average_floating_state(modules, d: Dist) -> None:
    """Average float buffers (BN running statistics) and, for models trained without an
    optimizer (the perceptron rule), the weights themselves."""
    tensors = [t for m in modules for t in m.buffers() if t.is_floating_point()]
    tensors += [p.data for m in modules for p in m.parameters() if p.is_floating_point()]
    _flat_all_reduce_mean(tensors, d.world)


def shard(batches, d: Dist):
    """This rank's share of an epoch's batches (all of them in a single process)."""
    return Shard(batches, d) if d.active else batches


class Shard(Sequence):
    """Rank r's batches of an epoch: r, r+N, r+2N, ...; every rank gets as many."""

    def __init__(self, batches, d: Dist):
        self.batches, self.d = batches, d
        self.length = len(batches) // d.world

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        if not 0 <= i < self.length:
            raise IndexError(i)
        return self.batches[i * self.d.world + self.d.rank]
