"""Variational autoencoders (Kingma & Welling, 2014): plain, conditional, beta.

    x (, y) -> encoder -> (mu, log sigma^2)          q(z | x, y) = N(mu, sigma^2)
    z = mu + sigma * eps,  eps ~ N(0, I)              the reparameterisation trick
    z (, y) -> decoder -> logits                     p(x | z, y) = Bernoulli(sigmoid(logits))

    -ELBO = E_q[-log p(x | z)] + KL(q(z | x) || N(0, I))        in nats per image
          =  BCE summed over the C x H x W pixels + sum_j KL_j

The conditional VAE (Sohn et al., 2015) feeds the one-hot label to both networks, so
the label decides the digit and z is free to carry only the handwriting; optionally its
prior is learned per label, p(z | y) = N(m_y, s_y^2), and samples come from there. The beta-VAE
(Higgins et al., 2017) weights the KL by beta > 1, which squeezes the code into fewer,
more independent units; Burgess et al. (2018) instead pull the KL towards a capacity C
that grows during training: loss = recon + gamma * |KL - C|. The beta-TCVAE (Chen et al.,
2018) splits the KL into three parts and puts beta on the total correlation alone
(`kl_decomposition`, below).

Both networks come as an MLP (`arch: mlp`, any image shape) or a small convnet (`arch:
conv`): stride-2 4x4 convolutions halve the image while its longer side is more than 8
pixels and both sides are even, at least twice (28 -> 14 -> 7, 32 -> 16 -> 8, 64 -> 8 in
three), so it takes any sides divisible by 4. The conv decoder reaches the smallest maps by
a linear layer (`decoder: deconv`) or by spatial broadcast (`decoder: broadcast`,
BroadcastHead), then transposed convolutions double the side back to the image's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dlcli.errors import DlcliError, did_you_mean

SMALLEST_MAP = 8  # the conv encoder halves the image while its longer side is more than this
DECODERS = ("deconv", "broadcast")  # arch conv: a linear layer to the maps, or spatial broadcast
# between layers; SiLU (x * sigmoid(x), Elfwing et al. 2018) is smooth where ReLU has a kink
ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU}


class Float32Output:
    """A layer that computes in float32 even under bfloat16 autocast. The layers that give
    the pixel logits and (mu, log sigma^2) are where bfloat16's 8-bit mantissa costs the
    likelihood itself: each logit and code is rounded to about 3 significant digits. Both
    layers are small, so float32 there costs little time."""

    def forward(self, x):
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x.float())


class Float32Linear(Float32Output, nn.Linear):
    pass


class Float32ConvTranspose2d(Float32Output, nn.ConvTranspose2d):
    pass


def mlp(sizes: list[int], act=nn.ReLU, output=nn.Linear) -> nn.Sequential:
    """Linear layers with `act` between them (none after the last, an `output` layer)."""
    layers = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        last = i == len(sizes) - 2
        layers.append((output if last else nn.Linear)(a, b))
        if not last:
            layers.append(act())
    return nn.Sequential(*layers)


def conv_depth(shape) -> int:
    """How many stride-2 layers the conv networks use for images of this shape: two, then
    more while the maps stay even and larger than SMALLEST_MAP."""
    depth, height, width = 2, shape[1] // 4, shape[2] // 4
    while max(height, width) > SMALLEST_MAP and height % 2 == 0 and width % 2 == 0:
        depth, height, width = depth + 1, height // 2, width // 2
    return depth


def smallest_map(shape: tuple[int, int, int], channels: int) -> tuple[int, int, int]:
    """(channels, height, width) of the maps the conv body ends on and the decoder starts from."""
    depth = conv_depth(shape)
    return channels * 2 ** (depth - 1), shape[1] >> depth, shape[2] >> depth


class ConvBody(nn.Module):
    """C x H x W -> ... -> (channels * 2^(depth-1)) maps of H / 2^depth, flattened (the
    encoder's eyes); each stride-2 layer halves the side and doubles the channels."""

    def __init__(self, shape: tuple[int, int, int], channels: int, act=nn.ReLU):
        super().__init__()
        depth = conv_depth(shape)
        layers, width = [], shape[0]
        for i in range(depth):
            layers += [nn.Conv2d(width, channels * 2 ** i, 4, 2, 1), act()]
            width = channels * 2 ** i
        self.net = nn.Sequential(*layers, nn.Flatten())
        self.out_features = math.prod(smallest_map(shape, channels))

    def forward(self, x):
        return self.net(x)


def upsampling(shape: tuple[int, int, int], channels: int, act=nn.ReLU) -> nn.Sequential:
    """The smallest maps (the widest, activated) -> C x H x W pixel logits, flattened: the
    body's mirror, transposed convolutions doubling the side and halving the channels."""
    width, layers = smallest_map(shape, channels)[0], []
    for _ in range(conv_depth(shape) - 1):
        layers += [nn.ConvTranspose2d(width, width // 2, 4, 2, 1), act()]
        width //= 2
    return nn.Sequential(*layers, Float32ConvTranspose2d(width, shape[0], 4, 2, 1), nn.Flatten())


class ConvHead(nn.Module):
    """Flat features -> the smallest maps by a linear layer -> upsampling (the decoder's hand)."""

    def __init__(self, in_features: int, shape: tuple[int, int, int], channels: int,
                 act=nn.ReLU):
        super().__init__()
        maps = smallest_map(shape, channels)
        self.fc = nn.Linear(in_features, math.prod(maps))
        self.net = nn.Sequential(act(), nn.Unflatten(1, maps), *upsampling(shape, channels, act))

    def forward(self, h):
        return self.net(self.fc(h))


class BroadcastHead(nn.Module):
    """Codes -> pixel logits by spatial broadcast (Watters et al., 2019, "Spatial Broadcast
    Decoder: A Simple Architecture for Learning Disentangled Representations in VAEs"): the
    code is copied to every cell of the smallest map beside two channels holding the cell's
    own x and y in [-1, 1]; stride-1 convolutions read it there, then upsampling. A unit
    can say "the object is at x" with one value each cell compares with its coordinate,
    where a linear layer to the maps learns position as units that each paint a place, and
    the code comes out fragmented. Watters et al. broadcast to the full image; here to the
    smallest map, for CPU time."""

    def __init__(self, in_features: int, shape: tuple[int, int, int], channels: int,
                 act=nn.ReLU):
        super().__init__()
        width, height, across = smallest_map(shape, channels)
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, across),
                                indexing="ij")
        self.register_buffer("coords", torch.stack([xs, ys]).unsqueeze(0), persistent=False)
        self.net = nn.Sequential(nn.Conv2d(in_features + 2, width, 3, 1, 1), act(),
                                 nn.Conv2d(width, width, 3, 1, 1), act(),
                                 upsampling(shape, channels, act))

    def forward(self, z):
        height, width = self.coords.shape[2:]
        tiled = z[:, :, None, None].expand(-1, -1, height, width)
        places = self.coords.to(z.dtype).expand(z.shape[0], -1, -1, -1)
        return self.net(torch.cat([tiled, places], 1))


class VAE(nn.Module):
    def __init__(self, shape: tuple[int, int, int], latent: int = 20, hidden: list[int] = (400,),
                 arch: str = "mlp", channels: int = 32, classes: int = 0,
                 class_prior: bool = False, decoder: str = "deconv", activation: str = "relu"):
        super().__init__()
        self.shape, self.latent, self.classes, self.arch = tuple(shape), latent, classes, arch
        pixels = math.prod(shape)
        # A learned prior per class, p(z | y) = N(m_y, s_y^2) (Sohn et al.'s conditional
        # prior, here of the label): z may then keep what it knows about the digit, and a
        # sample drawn from p(z | y) lands where the codes of that digit live.
        self.prior = nn.Embedding(classes, 2 * latent) if class_prior and classes else None
        if self.prior is not None:
            nn.init.zeros_(self.prior.weight)  # starts as N(0, I)
        hidden, act = list(hidden), ACTIVATIONS[activation]
        if arch == "conv":
            self.body = ConvBody(shape, channels, act)
            seen = self.body.out_features
        else:
            self.body = nn.Flatten()
            seen = pixels
        # encoder: (features, label) -> hidden -> 2 * latent numbers (mu and log sigma^2)
        self.encoder = mlp([seen + classes] + hidden + [2 * latent], act, Float32Linear)
        # decoder: (z, label) -> hidden, reversed -> pixel logits
        back = [latent + classes] + hidden[::-1]
        if arch == "conv" and decoder == "broadcast":  # reads the code itself, no hidden layers
            self.decoder = BroadcastHead(latent + classes, shape, channels, act)
        elif arch == "conv":
            head = ConvHead(back[-1], shape, channels, act)
            self.decoder = nn.Sequential(mlp(back, act), act(), head) if hidden else head
        else:
            self.decoder = mlp(back + [pixels], act, Float32Linear)

    def with_label(self, h: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        if not self.classes:
            return h
        return torch.cat([h, F.one_hot(y, self.classes).to(h.dtype)], 1)

    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None):
        """Images (N, C, H, W) in [0, 1] -> mu, logvar of q(z | x, y), each (N, latent)."""
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
        """Codes (N, latent) -> pixel logits (N, C * H * W); sigmoid gives the mean image."""
        return self.decoder(self.with_label(z, y))

    def images(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return torch.sigmoid(self.decode(z, y)).view(-1, *self.shape)

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


def log_normal_per_unit(z: torch.Tensor, mu=None, logvar=None) -> torch.Tensor:
    """log N(z_j; mu_j, sigma_j^2) for each latent unit j, nothing summed (standard normal
    by default)."""
    if mu is None:
        return -0.5 * (z.pow(2) + math.log(2 * math.pi))
    return -0.5 * ((z - mu).pow(2) / logvar.exp() + logvar + math.log(2 * math.pi))


def log_normal(z: torch.Tensor, mu=None, logvar=None) -> torch.Tensor:
    """log N(z; mu, sigma^2) summed over the last axis (standard normal by default)."""
    return log_normal_per_unit(z, mu, logvar).sum(-1)


def log_weights(model: VAE, x: torch.Tensor, y=None, k: int = 1, generator=None):
    """The two parts of log w_i = log p(x | z_i) + [log p(z_i) - log q(z_i | x)] for k draws
    z_i ~ q(z | x) per image, each (k, N) (Burda et al., 2016, eq. 8): the reconstruction's
    log-likelihood and the prior-over-posterior term (minus a one-sample KL estimate)."""
    mu, logvar = model.encode(x, y)
    n, d = mu.shape
    eps = torch.randn((k, n, d), generator=generator, device=mu.device, dtype=mu.dtype)
    z = mu + torch.exp(0.5 * logvar) * eps  # (k, N, d)
    labels = None if y is None else y.repeat(k)
    logits = model.decode(z.reshape(k * n, d), labels).float()
    log_px_z = -reconstruction_nats(logits, x.repeat(k, 1, 1, 1)).view(k, n)
    z, mu, logvar = z.float(), mu.float(), logvar.float()
    prior = [None if s is None else s.float() for s in model.prior_stats(y)]
    return log_px_z, log_normal(z, *prior) - log_normal(z, mu, logvar)


def iwae_bound(log_w: torch.Tensor) -> torch.Tensor:
    """log 1/k sum_i w_i from (k, N) log-weights: a lower bound on log p(x) per image, (N,).
    k = 1 is the ELBO; the bound tightens as k grows."""
    return torch.logsumexp(log_w, 0) - math.log(len(log_w))


@torch.no_grad()
def iwae_nll(model: VAE, x: torch.Tensor, y=None, k: int = 100, generator=None) -> torch.Tensor:
    """-log p(x) estimated with k importance samples (Burda et al., 2016), (N,) nats:

        log p(x) >= log 1/k sum_i p(x | z_i) p(z_i) / q(z_i | x),   z_i ~ q(z | x)"""
    return -iwae_bound(sum(log_weights(model, x, y, k, generator)))


# ---- beta-TCVAE: the KL split in three (Chen et al., 2018) -----------------------------

def kl_decomposition(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
                     dataset_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ELBO's KL term split as in Chen et al. (2018), eq. 2, per image (three (M,) tensors):

        E_p(n) KL(q(z | n) || p(z))
          = KL(q(z, n) || q(z) p(n))                 index-code mutual information I(z; n)
          + KL(q(z) || prod_j q(z_j))                total correlation TC(z)
          + sum_j KL(q(z_j) || p(z_j))               dimension-wise KL

    where q(z) = 1/N sum_n q(z | n) is the aggregate posterior over the N training images.
    For z_i ~ q(z | n_i), the codes of a minibatch of M images, each term is
    E[log q(z|n)] - E[log q(z)], E[log q(z)] - E[log prod_j q(z_j)], and
    E[log prod_j q(z_j)] - E[log p(z)]; log q(z_i) is estimated by minibatch-weighted
    sampling (section 4.1, eq. 5 and appendix C.1):

        log q(z_i) ~= logsumexp_m log q(z_i | n_m) - log(N M)

    and each log q(z_ij) the same way with unit j alone. This is the "minibatch weighted
    sampling" branch of the authors' code (rtqichen/beta-tcvae, vae_quant.py, VAE.elbo,
    `not self.mss`: logsumexp over the batch minus math.log(batch_size * dataset_size)).
    The estimates of log q(z) cancel in the sum, so mi + tc + dwkl is exactly the
    one-sample KL estimate log q(z_i | n_i) - log p(z_i), whose mean is the analytic KL.

    N enters only through the constant log(N M), so it moves no gradient; it does move the
    values. Where the posteriors of the batch overlap, (1/M) sum_m q(z | n_m) already
    estimates q(z), and the estimates sit log N below it: tc then reads (latent - 1) log N
    above the true total correlation (0 for independent units) and dwkl latent * log N
    below, while mi is at most log(N M). Where one image's own posterior dominates the
    sum (sharp codes, many units), log q(z_i) ~= log q(z_i | n_i) - log(N M), and mi is
    that constant, with no gradient: this estimator's bias when N is much larger than M.

    z, mu, logvar: (M, latent); the standard normal prior p(z)."""
    batch = len(z)
    # log q(z_ij | n_m) for every code i of the batch under every image m's posterior, unit
    # by unit: (code i, image m, unit j)
    log_q_pairs = log_normal_per_unit(z[:, None], mu[None], logvar[None])
    log_norm = math.log(batch * dataset_size)
    log_q_z_given_n = log_normal_per_unit(z, mu, logvar).sum(1)  # its own image: log q(z_i | n_i)
    log_q_z = torch.logsumexp(log_q_pairs.sum(2), dim=1) - log_norm
    log_prod_q_zj = (torch.logsumexp(log_q_pairs, dim=1) - log_norm).sum(1)
    log_p_z = log_normal(z)

    mutual_information = log_q_z_given_n - log_q_z
    total_correlation = log_q_z - log_prod_q_zj
    dimension_wise_kl = log_prod_q_zj - log_p_z
    return mutual_information, total_correlation, dimension_wise_kl


def build(config: dict, data: dict, classes: int = 0) -> VAE:
    """The VAE of a config for images of `data`'s shape (conditional on `classes` labels)."""
    shape = tuple(data["shape"])
    if config["arch"] not in ("mlp", "conv"):
        raise DlcliError(f"unknown arch {config['arch']!r}; choose one of: mlp, conv")
    decoder, activation = config.get("decoder", "deconv"), config.get("activation", "relu")
    if decoder not in DECODERS:
        raise DlcliError(f"unknown decoder {decoder!r}; choose one of: {', '.join(DECODERS)}")
    if activation not in ACTIVATIONS:
        raise DlcliError(did_you_mean("activation", activation, ACTIVATIONS))
    if decoder == "broadcast" and config["arch"] != "conv":
        raise DlcliError("decoder broadcast draws with convolutions: use it with --set arch=conv")
    if config["latent"] < 1 or not config["hidden"] and config["arch"] == "mlp":
        raise DlcliError("latent must be at least 1 unit, and an mlp needs a hidden layer")
    if config["arch"] == "conv" and (shape[1] % 4 or shape[2] % 4):
        raise DlcliError(
            f"the conv VAE halves its images at least twice, so each side must divide by 4 "
            f"(28, 32, 64, ...); these are {'x'.join(map(str, shape[1:]))}: choose another "
            "image_size, or --set arch=mlp")
    return VAE(shape, config["latent"], config["hidden"], config["arch"], config["channels"],
               classes=classes, class_prior=config["class_prior"], decoder=decoder,
               activation=activation)


def build_conditional(config: dict, data: dict) -> VAE:
    return build(config, data, classes=len(data["classes"]))
