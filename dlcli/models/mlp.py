"""A multilayer perceptron trained by backpropagation, with optional Batch Normalization.

Batch Normalization (Ioffe & Szegedy, 2015) normalises each hidden unit over the batch
and then rescales it with learned gamma and beta:

    BN(h; gamma, beta) = beta + gamma * (h - E[h]) / sqrt(Var[h] + eps)

During training E and Var are the batch's own statistics; for inference, running
averages collected during training take their place. Keeping every layer's input
distribution steady lets the network train at learning rates that break it otherwise.
"""

from __future__ import annotations

import torch
from torch import nn


class BatchNorm(nn.Module):
    """BN over the batch (and any spatial axes) for each feature/channel in dim 1."""

    def __init__(self, features: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.gamma = nn.Parameter(torch.ones(features))
        self.beta = nn.Parameter(torch.zeros(features))
        self.register_buffer("running_mean", torch.zeros(features))
        self.register_buffer("running_var", torch.ones(features))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        axes = [0] + list(range(2, h.dim()))  # everything but the feature axis
        shape = [1, -1] + [1] * (h.dim() - 2)
        if self.training:
            mean = h.mean(axes)
            var = h.var(axes, unbiased=False)
            with torch.no_grad():
                n = h.numel() / h.shape[1]
                # (float() because under autocast the statistics may be bfloat16)
                self.running_mean.lerp_(mean.float(), self.momentum)
                self.running_var.lerp_(var.float() * n / max(n - 1, 1), self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        h_hat = (h - mean.view(shape)) / torch.sqrt(var.view(shape) + self.eps)
        return self.beta.view(shape) + self.gamma.view(shape) * h_hat


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
