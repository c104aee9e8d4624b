"""Variational autoencoders (Kingma & Welling, 2014): plain, conditional, beta.

    x (, y) -> encoder -> (mu, log sigma^2)          q(z | x, y) = N(mu, sigma^2)
    z = mu + sigma * eps,  eps ~ N(0, I)              the reparameterisation trick
    z (, y) -> decoder -> logits                     p(x | z, y) = Bernoulli(sigmoid(logits))

    -ELBO = E_q[-log p(x | z)] + KL(q(z | x) || N(0, I))        in nats per image
          =  BCE summed over the 784 pixels      + sum_j KL_j

The conditional VAE (Sohn et al., 2015) feeds the one-hot label to both networks, so
the label decides the digit and z is free to carry only the handwriting; optionally its
prior is learned per label, p(z | y) = N(m_y, s_y^2), and samples come from there. The beta-VAE
(Higgins et al., 2017) weights the KL by beta > 1, which squeezes the code into fewer,
more independent units; Burgess et al. (2018) instead pull the KL towards a capacity C
that grows during training: loss = recon + gamma * |KL - C|.

Both networks come as an MLP (`arch: mlp`) or a small convnet (`arch: conv`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

PIXELS = 28 * 28


def mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers with ReLU between them (none after the last)."""
    layers = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class ConvBody(nn.Module):
    """28x28 -> 14x14 -> 7x7 feature maps, flattened (the encoder's eyes)."""

    def __init__(self, channels: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, channels, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(channels, 2 * channels, 4, 2, 1), nn.ReLU(), nn.Flatten())
        self.out_features = 2 * channels * 7 * 7

    def forward(self, x):
        return self.net(x)


class ConvHead(nn.Module):
    """Flat features -> 7x7 maps -> 14x14 -> 28x28 pixel logits (the decoder's hand)."""

    def __init__(self, in_features: int, channels: int):
        super().__init__()
        self.channels = channels
        self.fc = nn.Linear(in_features, 2 * channels * 7 * 7)
        self.net = nn.Sequential(
            nn.ReLU(), nn.Unflatten(1, (2 * channels, 7, 7)),
            nn.ConvTranspose2d(2 * channels, channels, 4, 2, 1), nn.ReLU(),
            nn.ConvTranspose2d(channels, 1, 4, 2, 1), nn.Flatten())

    def forward(self, h):
        return self.net(self.fc(h))


class VAE(nn.Module):
    def __init__(self, latent: int = 20, hidden: list[int] = (400,), arch: str = "mlp",
                 channels: int = 32, classes: int = 0, class_prior: bool = False):
        super().__init__()
        self.latent, self.classes, self.arch = latent, classes, arch
        # A learned prior per class, p(z | y) = N(m_y, s_y^2) (Sohn et al.'s conditional
        # prior, here of the label): z may then keep what it knows about the digit, and a
        # sample drawn from p(z | y) lands where the codes of that digit live.
        self.prior = nn.Embedding(classes, 2 * latent) if class_prior and classes else None
        if self.prior is not None:
            nn.init.zeros_(self.prior.weight)  # starts as N(0, I)
        hidden = list(hidden)
        if arch == "conv":
            self.body = ConvBody(channels)
            seen = self.body.out_features
        else:
            self.body = nn.Flatten()
            seen = PIXELS
        # encoder: (features, label) -> hidden -> 2 * latent numbers (mu and log sigma^2)
        self.encoder = mlp([seen + classes] + hidden + [2 * latent])
        # decoder: (z, label) -> hidden, reversed -> pixel logits
        back = [latent + classes] + hidden[::-1]
        if arch == "conv":
            self.decoder = nn.Sequential(mlp(back), nn.ReLU(), ConvHead(back[-1], channels)) \
                if hidden else ConvHead(back[-1], channels)
        else:
            self.decoder = mlp(back + [PIXELS])

    def with_label(self, h: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        if not self.classes:
            return h
        return torch.cat([h, F.one_hot(y, self.classes).to(h.dtype)], 1)

    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None):
        """Images (N, 1, 28, 28) in [0, 1] -> mu, logvar of q(z | x, y), each (N, latent)."""
        stats = self.encoder(self.with_label(self.body(x), y))
        return stats.chunk(2, dim=1)

    def prior_stats(self, y: torch.Tensor | None):
        """(mu, logvar) of p(z | y) when the prior is learned per class, else (None, None):
        the standard normal."""
        return self.prior(y).chunk(2, dim=1) if self.prior is not None else (None, None)

    def kl(self, mu, logvar, y=None) -> torch.Tensor:
        """KL(q(z | x, y) || p(z | y)) per image and latent unit, (N, latent)."""
        return kl_per_dim(mu, logvar, *self.prior_stats(y))

    def from_standard(self, eps: torch.Tensor, y=None) -> torch.Tensor:
        """Standard-normal coordinates -> z under p(z | y) (as they are for N(0, I))."""
        mu, logvar = self.prior_stats(y)
        return eps if mu is None else mu + torch.exp(0.5 * logvar) * eps

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Codes (N, latent) -> pixel logits (N, 784); sigmoid gives the mean image."""
        return self.decoder(self.with_label(z, y))

    def images(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return torch.sigmoid(self.decode(z, y)).view(-1, 1, 28, 28)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, generator=None):
        """One pass: (logits, mu, logvar) with z drawn by the reparameterisation trick."""
        mu, logvar = self.encode(x, y)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        z = mu + torch.exp(0.5 * logvar) * eps
        return self.decode(z, y), mu, logvar


def reconstruction_nats(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """-log p(x | z) per image: binary cross-entropy summed over the pixels, (N,)."""
    return F.binary_cross_entropy_with_logits(logits, x.flatten(1), reduction="none").sum(1)


def kl_per_dim(mu, logvar, prior_mu=None, prior_logvar=None) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(m, s^2)) for each image and latent unit, (N, latent); for the
    standard normal prior 0.5 * (mu^2 + sigma^2 - log sigma^2 - 1) (Kingma & Welling, B)."""
    if prior_mu is None:
        return 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1)
    return 0.5 * (((mu - prior_mu).pow(2) + logvar.exp()) / prior_logvar.exp()
                  + prior_logvar - logvar - 1)


def log_normal(z: torch.Tensor, mu=None, logvar=None) -> torch.Tensor:
    """log N(z; mu, sigma^2) summed over the last axis (standard normal by default)."""
    if mu is None:
        return -0.5 * (z.pow(2) + math.log(2 * math.pi)).sum(-1)
    return -0.5 * ((z - mu).pow(2) / logvar.exp() + logvar + math.log(2 * math.pi)).sum(-1)


@torch.no_grad()
def iwae_nll(model: VAE, x: torch.Tensor, y=None, k: int = 100, generator=None) -> torch.Tensor:
    """-log p(x) estimated with k importance samples (Burda et al., 2016), (N,) nats:

        log p(x) >= log 1/k sum_i p(x | z_i) p(z_i) / q(z_i | x),   z_i ~ q(z | x)

    k = 1 is the ELBO; the bound tightens as k grows."""
    mu, logvar = model.encode(x, y)
    n, d = mu.shape
    eps = torch.randn((k, n, d), generator=generator, device=mu.device, dtype=mu.dtype)
    z = mu + torch.exp(0.5 * logvar) * eps  # (k, N, d)
    labels = None if y is None else y.repeat(k)
    logits = model.decode(z.reshape(k * n, d), labels)
    log_px_z = -reconstruction_nats(logits, x.repeat(k, 1, 1, 1)).view(k, n)
    log_w = log_px_z + log_normal(z, *model.prior_stats(y)) - log_normal(z, mu, logvar)
    return -(torch.logsumexp(log_w, 0) - math.log(k))
