"""Generative adversarial networks for 28x28 images: a generator G turns noise z into an
image, a discriminator D scores how real an image looks (a logit; sigmoid gives D(x)).

    gan    MLP G and D (Goodfellow et al., 2014)
               G: z -> 128 -> 256 -> 512 -> 1024 -> 784, tanh      (BatchNorm after the first)
               D: 784 -> 512 -> 256 -> 1                           (LeakyReLU 0.2)
                  (+ the batch's spread as a feature before the last layer: batch_std)
    dcgan  convolutional G and D (Radford et al., 2015), BatchNorm in both nets
               G: z -> 2C x 7 x 7 -> conv, convT -> C x 14 x 14 -> conv, convT -> 1 x 28 x 28, tanh
               D: 1 x 28 x 28 -> conv -> C x 14 x 14 -> conv, conv -> 2C x 7 x 7 -> 1
                  (pack: D scores groups of images stacked as channels, PacGAN)
    cgan   the MLP pair, each also fed the label as a one-hot vector (Mirza & Osindero, 2014);
           D also projects its features on a learned embedding of the label (Miyato & Koyama)

Images live in [-1, 1] inside the networks (tanh output); the task maps them to [0, 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IMAGE = (1, 28, 28)
PIXELS = 28 * 28


def with_label(x: torch.Tensor, y: torch.Tensor | None, classes: int) -> torch.Tensor:
    """Append the one-hot label to a batch of flat inputs (conditional nets), else pass."""
    return x if y is None else torch.cat([x, F.one_hot(y, classes).to(x.dtype)], 1)


class MLPGenerator(nn.Module):
    def __init__(self, latent: int, hidden: list[int], classes: int = 0):
        super().__init__()
        self.classes = classes
        layers, width = [], latent + classes
        for i, h in enumerate(hidden):
            # no BatchNorm on the first layer: it sees raw noise, already normalised
            layers += [nn.Linear(width, h)] + ([nn.BatchNorm1d(h)] if i else [])
            layers += [nn.LeakyReLU(0.2)]
            width = h
        self.net = nn.Sequential(*layers, nn.Linear(width, PIXELS), nn.Tanh())

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(with_label(z, y, self.classes)).view(-1, *IMAGE)


def minibatch_std(h: torch.Tensor) -> torch.Tensor:
    """Append how much the batch varies (the mean over features of the std over the batch)
    as one more feature (Karras et al., 2018): a batch of near-identical fakes shows it, so
    D can punish a generator that collapses onto a few modes."""
    spread = h.std(0, unbiased=False).mean().expand(len(h), 1)
    return torch.cat([h, spread], 1)


class MLPDiscriminator(nn.Module):
    def __init__(self, hidden: list[int], classes: int = 0, dropout: float = 0.0,
                 batch_std: bool = False):
        super().__init__()
        self.classes, self.batch_std = classes, batch_std
        self.per_sample = not batch_std  # each score depends on its own image alone
        layers, width = [], PIXELS + classes
        for h in hidden:
            layers += [nn.Linear(width, h), nn.LeakyReLU(0.2)]
            layers += [nn.Dropout(dropout)] if dropout else []
            width = h
        self.body = nn.Sequential(*layers)
        self.out = nn.Linear(width + batch_std, 1)
        # conditional: besides the one-hot input, a projection term <embed(y), h> (Miyato &
        # Koyama, 2018) that scores how well the features match the label asked for
        self.project = nn.Embedding(classes, width) if classes else None

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = self.body(with_label(x.flatten(1), y, self.classes))
        logit = self.out(minibatch_std(h) if self.batch_std else h).squeeze(1)
        return logit if y is None else logit + (self.project(y) * h).sum(1)


class ConvGenerator(nn.Module):
    """Project z to a 7x7 map, then two stride-2 transposed convolutions up to 28x28, each
    after a 3x3 convolution that works at the current size; BatchNorm + ReLU everywhere
    but the output (Radford et al.'s guidelines)."""

    def __init__(self, latent: int, width: int):
        super().__init__()
        self.width = w = width
        self.project = nn.Sequential(nn.Linear(latent, 2 * w * 7 * 7, bias=False),
                                     nn.BatchNorm1d(2 * w * 7 * 7), nn.ReLU())
        self.up = nn.Sequential(
            nn.Conv2d(2 * w, 2 * w, 3, 1, 1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(),
            nn.ConvTranspose2d(2 * w, w, 4, 2, 1, bias=False),  # 7 -> 14
            nn.BatchNorm2d(w), nn.ReLU(),
            nn.Conv2d(w, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
            nn.ConvTranspose2d(w, 1, 4, 2, 1), nn.Tanh(),  # 14 -> 28
        )

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.up(self.project(z).view(-1, 2 * self.width, 7, 7))


class ConvDiscriminator(nn.Module):
    """Two stride-2 convolutions (no pooling) with LeakyReLU; BatchNorm on all but the
    input layer, then one linear logit (batch_std: the batch's spread as an extra map).

    pack > 1: D scores groups of `pack` images stacked as channels, one logit per group
    (PacGAN, Lin et al., 2018): a generator that draws few kinds of digit makes groups that
    look alike, which real groups do not, so dropping modes is punished."""

    def __init__(self, width: int, batch_std: bool = False, pack: int = 1):
        super().__init__()
        self.batch_std, self.pack = batch_std, pack
        self.per_sample = False  # BatchNorm: a score depends on the whole batch
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(pack, w, 4, 2, 1), nn.LeakyReLU(0.2),  # 28 -> 14
            nn.Conv2d(w, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.LeakyReLU(0.2),
            nn.Conv2d(w, 2 * w, 4, 2, 1, bias=False),  # 14 -> 7
            nn.BatchNorm2d(2 * w), nn.LeakyReLU(0.2),
        )
        self.out = nn.Linear((2 * w + batch_std) * 7 * 7, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = self.body(x.reshape(-1, self.pack, *x.shape[2:]))  # (B / pack) groups
        if self.batch_std:
            spread = h.std(0, unbiased=False).mean().expand(len(h), 1, 7, 7)
            h = torch.cat([h, spread], 1)
        return self.out(h.flatten(1)).squeeze(1)


def dcgan_init(module: nn.Module) -> None:
    """Radford et al.: weights from N(0, 0.02), BatchNorm scales from N(1, 0.02)."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def build_gan(name: str, config: dict, classes: int = 10) -> tuple[nn.Module, nn.Module]:
    """(generator, discriminator) for a model name and its config."""
    latent = config["latent_dim"]
    if name == "dcgan":
        g = ConvGenerator(latent, config["width"])
        d = ConvDiscriminator(config["width"], config["batch_std"], config["pack"])
        g.apply(dcgan_init)
        d.apply(dcgan_init)
        return g, d
    cond = classes if name == "cgan" else 0
    return (MLPGenerator(latent, config["g_hidden"], cond),
            MLPDiscriminator(config["d_hidden"], cond, config["d_dropout"], config["batch_std"]))
