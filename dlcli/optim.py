"""Optimizers and learning-rate schedules from config keys, shared by the tasks."""

from __future__ import annotations

import math

import torch

from dlcli.errors import DlcliError

SCHEDULES = ("constant", "exponential", "cosine", "noam", "inverse_sqrt")


def make_optimizer(params, config: dict, **adam) -> torch.optim.Optimizer:
    """config['optimizer'] (adam | adamw | sgd) at config['lr']; `adam` passes betas/eps on.

    The fused implementations make one pass over each tensor per step; on a CPU the
    plain loop (a few kernels per tensor) took as long as the forward and backward passes
    of the small MNIST nets together."""
    name = config.get("optimizer", "adam")
    lr, wd = config["lr"], config.get("weight_decay", 0.0)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=config.get("momentum", 0.0),
                               weight_decay=wd, fused=True)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd, fused=True, **adam)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd, fused=True, **adam)
    raise DlcliError(f"unknown optimizer {name!r}; choose one of: adam, adamw, sgd")


class Schedule:
    """config['schedule']: constant; exponential (lr *= lr_decay after each epoch); cosine
    (per step, from lr down to 0 over the whole run); noam (per step, lr / sqrt(step) after
    the warm-up: "Attention Is All You Need", scaled so that it peaks at lr); inverse_sqrt
    (fairseq's inverse_square_root_schedule.py with --warmup-init-lr 0: the noam curve
    counted as fairseq counts, lr * n / warmup before update n + 1, then
    lr * sqrt(warmup / n); so the first update is taken at lr 0, as fairseq's at 1e-7). Per-step
    schedules first rise linearly over config['warmup'] steps (0 = none). `total_steps` is
    set once the data size is known; the scheduler itself is a plain LambdaLR, so it
    resumes like any other."""

    def __init__(self, optimizer, config: dict):
        self.kind = config.get("schedule", "constant")
        if self.kind not in SCHEDULES:
            raise DlcliError(f"unknown schedule {self.kind!r}; choose one of: {', '.join(SCHEDULES)}")
        self.decay = config.get("lr_decay", 1.0)
        self.warmup = max(0, int(config.get("warmup", 0)))
        self.total_steps = None
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self.factor)

    def factor(self, count: int) -> float:
        if self.kind == "exponential":
            return self.decay ** count  # counted in epochs
        if self.kind == "inverse_sqrt":  # n = count: updates done so far
            if count < self.warmup:
                return count / self.warmup
            return math.sqrt(self.warmup / count) if self.warmup else 1.0 / math.sqrt(max(count, 1))
        t = count + 1  # counted in steps from here on
        if self.warmup and t < self.warmup:
            return t / self.warmup
        if self.kind == "noam":
            return math.sqrt(self.warmup / t) if self.warmup else 1.0 / math.sqrt(t)
        if self.kind == "cosine" and self.total_steps:
            done = min(1.0, (t - self.warmup) / max(1, self.total_steps - self.warmup))
            return 0.5 * (1 + math.cos(math.pi * done))
        return 1.0

    def after_step(self) -> None:
        if self.kind != "exponential":
            self.scheduler.step()

    def after_epoch(self) -> None:
        if self.kind == "exponential":
            self.scheduler.step()
