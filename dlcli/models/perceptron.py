"""Rosenblatt's perceptron (1958): a weighted sum plus a bias, thresholded.

    y = step(w . x + b)          step(s) = 1 if s > 0 else 0

Trained by the perceptron learning rule, not by gradients: for each example whose
output is wrong, move the weights towards it (or away from it),

    w <- w + lr * (t - y) * x    b <- b + lr * (t - y)

which finds a separating hyperplane in finitely many steps when one exists (Novikoff,
1962) and never settles when none does (xor). For ten digits, ten such units learn
one-vs-rest and the unit with the largest weighted sum names the class.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class Perceptron(nn.Module):
    def __init__(self, in_features: int, classes: int, averaged: bool = False):
        super().__init__()
        units = 1 if classes == 2 else classes  # two classes need one threshold unit
        self.classes = classes
        self.averaged = averaged
        self.register_buffer("weight", torch.zeros(units, in_features))
        self.register_buffer("bias", torch.zeros(units))
        # The averaged perceptron (Freund & Schapire, 1999) predicts with the mean of the
        # weights over all updates, which generalises better on data that is not separable.
        self.register_buffer("weight_sum", torch.zeros(units, in_features))
        self.register_buffer("bias_sum", torch.zeros(units))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))
        # Once an epoch passes without a mistake the last weights separate the data
        # exactly, and they, not the average, are the answer.
        self.register_buffer("converged", torch.zeros((), dtype=torch.bool))

    def weighted_sum(self, x: torch.Tensor, averaged: bool = False) -> torch.Tensor:
        w, b = self.weight, self.bias
        if averaged and self.updates > 0:
            w, b = self.weight_sum / self.updates, self.bias_sum / self.updates
        return x.flatten(1) @ w.T + b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores (N, classes); the prediction is their argmax."""
        use_average = self.averaged and not self.training and not bool(self.converged)
        s = self.weighted_sum(x, averaged=use_average)
        return torch.cat([-s, s], dim=1) if self.classes == 2 else s

    @torch.no_grad()
    def learn(self, x: torch.Tensor, y: torch.Tensor, lr: float) -> int:
        """One application of the learning rule to a batch; returns how many examples
        had at least one unit wrong (0 for every batch of an epoch = converged)."""
        x = x.flatten(1)
        if self.classes == 2:
            target = y.float().unsqueeze(1)
        else:
            target = nn.functional.one_hot(y, self.classes).float()
        output = (self.weighted_sum(x) > 0).float()  # the threshold
        error = target - output  # +1: should have fired, -1: should not have
        self.weight += lr * error.T @ x
        self.bias += lr * error.sum(0)
        self.weight_sum += self.weight
        self.bias_sum += self.bias
        self.updates += 1
        return int(error.abs().sum(1).gt(0).sum())


def build(config: dict, data: dict) -> Perceptron:
    """One threshold unit per class (one for two classes) over the flattened input."""
    return Perceptron(math.prod(data["shape"]), len(data["classes"]), averaged=config["averaged"])
