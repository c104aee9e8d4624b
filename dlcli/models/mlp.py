"""A multilayer perceptron trained by backpropagation, with optional Batch Normalization.

Batch Normalization (Ioffe & Szegedy, 2015) normalises each hidden unit over the batch
and then rescales it with learned gamma and beta:

    BN(h; gamma, beta) = beta + gamma * (h - E[h]) / sqrt(Var[h] + eps)

During training E and Var are the batch's own statistics; for inference, running
averages collected during training take their place. Keeping every layer's input
distribution steady lets the network train at learning rates that break it otherwise.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class BatchNorm(nn.Module):
    """BN over the batch (and any spatial axes) for each feature/channel in dim 1.

    In training, E[h] and Var[h] (biased) are the batch's own, and the running averages
    move towards them (the variance unbiased) by `momentum`; in evaluation the running
    averages stand in. PyTorch's batch_norm kernel computes exactly the formula above, in
    one pass forward and one back, where writing it out costs ten elementwise passes
    (a third of a training step of the MNIST MLP); tests/test_classifiers.py checks the
    two agree."""

    def __init__(self, features: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.gamma = nn.Parameter(torch.ones(features))
        self.beta = nn.Parameter(torch.zeros(features))
        self.register_buffer("running_mean", torch.zeros(features))
        self.register_buffer("running_var", torch.ones(features))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(h, self.running_mean, self.running_var, self.gamma, self.beta,
                            training=self.training, momentum=self.momentum, eps=self.eps)


class MLP(nn.Module):
    def __init__(self, in_features: int, hidden: list[int], classes: int,
                 batchnorm: bool = True, dropout: float = 0.0):
        super().__init__()
        layers = []
        width = in_features
        for size in hidden:
            # With BN after it, the linear layer's bias would be cancelled by -E[h].
            layers.append(nn.Linear(width, size, bias=not batchnorm))
            if batchnorm:
                layers.append(BatchNorm(size))
            layers.append(nn.ReLU())
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = size
        self.hidden = nn.Sequential(*layers)
        self.out = nn.Linear(width, classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.hidden(x.flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(x))


def build(config: dict, data: dict) -> MLP:
    """The MLP of a config over the flattened input (any C x H x W, or a truth table's row)."""
    return MLP(math.prod(data["shape"]), config["hidden"], len(data["classes"]),
               config["batchnorm"], config["dropout"])
