"""A small LeNet-style convolutional classifier (LeCun et al., 1998) with BatchNorm.

    28x28 -> conv5x5(32) BN ReLU -> pool -> 14x14 -> conv5x5(64) BN ReLU -> pool -> 7x7
          -> linear(128) BN ReLU -> dropout -> linear(classes)

(In the code each ReLU follows its pool: max-pooling commutes with ReLU, and this way
the ReLU runs on a quarter of the values.)

Besides classifying, it is the judge of the generative models: its 128 penultimate
features give the Frechet distance of GAN samples, its predictions the label accuracy
of conditional samples.
"""

from __future__ import annotations

import torch
from torch import nn

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


class CNN(nn.Module):
    def __init__(self, classes: int = 10, channels: tuple[int, int] = (32, 64),
                 width: int = 128, dropout: float = 0.3):
        super().__init__()
        c1, c2 = channels
        self.conv = nn.Sequential(
            nn.Conv2d(1, c1, 5, padding=2, bias=False), nn.BatchNorm2d(c1), nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Conv2d(c1, c2, 5, padding=2, bias=False), nn.BatchNorm2d(c2), nn.MaxPool2d(2),
            nn.ReLU(),
        )
        self.fc = nn.Sequential(
            nn.Flatten(), nn.Linear(c2 * 7 * 7, width, bias=False), nn.BatchNorm1d(width),
            nn.ReLU(),
        )
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(width, classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features of images in [0, 1]."""
        return self.fc(self.conv((x - MNIST_MEAN) / MNIST_STD))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.dropout(self.features(x)))
