"""Truth tables as datasets: and, or, xor over two binary inputs."""

from __future__ import annotations

import torch

TABLES = {
    "and": [0, 0, 0, 1],
    "or": [0, 1, 1, 1],
    "xor": [0, 1, 1, 0],
}
INPUTS = [[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]]
LINEARLY_SEPARABLE = {"and", "or"}  # one line splits their 0s from their 1s; none splits xor's


def truth_table(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The four points of the table: x (4, 2) float, y (4,) long."""
    return torch.tensor(INPUTS), torch.tensor(TABLES[name])
