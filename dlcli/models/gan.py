"""Generative adversarial networks for images of any shape C x H x W: a generator G turns
noise z into an image, a discriminator D scores how real an image looks (a logit; sigmoid
gives D(x)).

    gan    MLP G and D (Goodfellow et al., 2014), P = C * H * W pixels
               G: z -> 128 -> 256 -> 512 -> 1024 -> P, tanh        (BatchNorm after the first)
               D: P -> 512 -> 256 -> 1                             (LeakyReLU 0.2)
                  (+ the batch's spread as a feature before the last layer: batch_std)
    dcgan  convolutional G and D, BatchNorm in both nets; which pair depends on the size:
           square images of 16, 32, 64, 128... pixels: the DCGAN of Radford et al. (2015)
               G: z -> 8w x 4 x 4 -> convT, BN, ReLU ... -> w x H/2 x W/2 -> convT -> C x H x W, tanh
               D: its mirror: strided convs with LeakyReLU 0.2 (BN but on the first), 8w x 4 x 4
                  -> a 4x4 conv to one logit; no pooling, no fully connected hidden layers
           other sides divisible by 4 (MNIST's 28): a compact pair with a 3x3 conv at each size
               G: z -> 2w x H/4 x W/4 -> conv, convT -> w x H/2 x W/2 -> conv, convT -> C x H x W
               D: C x H x W -> conv -> w x H/2 x W/2 -> conv, conv -> 2w x H/4 x W/4 -> 1
           (pack: D scores groups of images stacked as channels, PacGAN)
    cgan   the MLP pair, each also fed the label as a one-hot vector (Mirza & Osindero, 2014);
           D also projects its features on a learned embedding of the label (Miyato & Koyama)

The unconditional Ds can also classify what they see (heads > 0): a linear head on the last
features gives class logits for each image, beside the real/fake logit (judge()). The task
trains it to read the categorical code G drew an image from (InfoGAN, Chen et al., 2016).

With `clusters`, G reads a one-hot group of the training images with its noise, and every D
is conditioned on that group as the cgan's is on the label: the projection term
<embed(group), features> (Miyato & Koyama, 2018) is added to its logit, so D judges whether
an image is a real member of the group it comes with.

D's normalisation (d_norm): "batch" (Radford et al.'s BatchNorm, dcgan only), "spectral"
(every weight divided by its largest singular value, Miyato et al., 2018: D becomes
1-Lipschitz per layer, so its gradients to G stay bounded without batch statistics), "none".

Images live in [-1, 1] inside the networks (tanh output); the task maps them to [0, 1].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dlcli.errors import DlcliError

D_NORMS = ("batch", "spectral", "none")


def with_label(x: torch.Tensor, y: torch.Tensor | None, classes: int) -> torch.Tensor:
    """Append the one-hot label to a batch of flat inputs (conditional nets), else pass."""
    return x if y is None else torch.cat([x, F.one_hot(y, classes).to(x.dtype)], 1)


class MLPGenerator(nn.Module):
    def __init__(self, shape: tuple[int, ...], latent: int, hidden: list[int], classes: int = 0):
        super().__init__()
        self.shape, self.classes = tuple(shape), classes
        layers, width = [], latent + classes
        for i, h in enumerate(hidden):
            # no BatchNorm on the first layer: it sees raw noise, already normalised
            layers += [nn.Linear(width, h)] + ([nn.BatchNorm1d(h)] if i else [])
            layers += [nn.LeakyReLU(0.2)]
            width = h
        self.net = nn.Sequential(*layers, nn.Linear(width, math.prod(shape)), nn.Tanh())

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(with_label(z, y, self.classes)).view(-1, *self.shape)


class Projection(nn.Embedding):
    """The conditional part of D's logit (Miyato & Koyama, 2018): <embed(y), h>, the inner
    product of D's last features h with a learned embedding of the condition y. For a
    packed D, h describes a group of `pack` images, each with its own y: their embeddings
    are summed. (An Embedding itself, so its one weight keeps the name cgan checkpoints
    give it.)"""

    def __init__(self, values: int, features: int, pack: int = 1):
        super().__init__(values, features)
        self.pack = pack

    def score(self, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = h.flatten(1)
        return (super().forward(y).view(len(h), self.pack, -1).sum(1) * h).sum(1)


def projection(values: int, features: int, pack: int = 1) -> Projection | None:
    return Projection(values, features, pack) if values else None


def projected(logit: torch.Tensor, project: Projection | None, h: torch.Tensor,
              y: torch.Tensor | None) -> torch.Tensor:
    """D's logit, plus the projection term when D is conditioned on y."""
    return logit if y is None else logit + project.score(h, y)


def class_head(features: int, heads: int, pack: int = 1) -> nn.Module | None:
    """Class logits for each of the `pack` images that `features` describe (heads > 0)."""
    return nn.Linear(features, pack * heads) if heads else None


def classified(head: nn.Module | None, h: torch.Tensor, pack: int = 1) -> torch.Tensor | None:
    """(images, heads) class logits from features h (one row per group of `pack` images)."""
    return None if head is None else head(h.flatten(1)).view(len(h) * pack, -1)


def leaky(dropout: float = 0.0) -> list[nn.Module]:
    """D's activation: LeakyReLU 0.2, then dropout when asked (d_dropout), which keeps D
    from memorising the training images as G's images approach them."""
    return [nn.LeakyReLU(0.2)] + ([nn.Dropout(dropout)] if dropout else [])


def minibatch_std(h: torch.Tensor) -> torch.Tensor:
    """Append how much the batch varies (the mean over features of the std over the batch)
    as one more feature (Karras et al., 2018): a batch of near-identical fakes shows it, so
    D can punish a generator that collapses onto a few modes."""
    spread = h.std(0, unbiased=False).mean().expand(len(h), 1)
    return torch.cat([h, spread], 1)


class MLPDiscriminator(nn.Module):
    def __init__(self, shape: tuple[int, ...], hidden: list[int], classes: int = 0,
                 dropout: float = 0.0, batch_std: bool = False, heads: int = 0):
        super().__init__()
        self.classes, self.batch_std = classes, batch_std
        self.per_sample = not batch_std  # each score depends on its own image alone
        layers, width = [], math.prod(shape) + classes
        for h in hidden:
            layers += [nn.Linear(width, h), *leaky(dropout)]
            width = h
        self.body = nn.Sequential(*layers)
        self.out = nn.Linear(width + batch_std, 1)
        # conditional: besides the one-hot input, a projection term that scores how well
        # the features match the label asked for
        self.project = projection(classes, width)
        self.classify = class_head(width, heads)

    def judge(self, x: torch.Tensor, y: torch.Tensor | None = None):
        """(real/fake logit, class logits or None) of each image."""
        h = self.body(with_label(x.flatten(1), y, self.classes))
        logit = self.out(minibatch_std(h) if self.batch_std else h).squeeze(1)
        return projected(logit, self.project, h, y), classified(self.classify, h)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.judge(x, y)[0]


class ConvGenerator(nn.Module):
    """The compact pair's G: project z to a map of a quarter the size, then two stride-2
    transposed convolutions up to full size, each after a 3x3 convolution that works at the
    current size; BatchNorm + ReLU everywhere but the output (Radford et al.'s guidelines)."""

    def __init__(self, shape: tuple[int, int, int], latent: int, width: int):
        super().__init__()
        colours, height, width_px = shape
        self.width = w = width
        self.map = (height // 4, width_px // 4)  # the projection's feature maps
        cells = 2 * w * math.prod(self.map)
        self.project = nn.Sequential(nn.Linear(latent, cells, bias=False),
                                     nn.BatchNorm1d(cells), nn.ReLU())
        self.up = nn.Sequential(
            nn.Conv2d(2 * w, 2 * w, 3, 1, 1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(),
            nn.ConvTranspose2d(2 * w, w, 4, 2, 1, bias=False),  # H/4 -> H/2
            nn.BatchNorm2d(w), nn.ReLU(),
            nn.Conv2d(w, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
            nn.ConvTranspose2d(w, colours, 4, 2, 1), nn.Tanh(),  # H/2 -> H
        )

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.up(self.project(z).view(-1, 2 * self.width, *self.map))


def pack_groups(x: torch.Tensor, pack: int) -> torch.Tensor:
    """(B, C, H, W) -> (B / pack, pack * C, H, W): each group of `pack` images as one."""
    return x.reshape(-1, pack * x.shape[1], *x.shape[2:])


def with_spread(h: torch.Tensor) -> torch.Tensor:
    """Append the batch's spread (mean over features of the std over the batch) as one more
    feature map: minibatch_std for convolutional features."""
    spread = h.std(0, unbiased=False).mean().expand(len(h), 1, *h.shape[2:])
    return torch.cat([h, spread], 1)


def batch_norm(channels: int, wanted: bool) -> nn.Module:
    return nn.BatchNorm2d(channels) if wanted else nn.Identity()


class ConvDiscriminator(nn.Module):
    """The compact pair's D: two stride-2 convolutions (no pooling) with LeakyReLU;
    BatchNorm on all but the input layer, then one linear logit (batch_std: the batch's
    spread as an extra map).

    pack > 1: D scores groups of `pack` images stacked as channels, one logit per group
    (PacGAN, Lin et al., 2018): a generator that draws few kinds of image makes groups that
    look alike, which real groups do not, so dropping modes is punished."""

    def __init__(self, shape: tuple[int, int, int], width: int, batch_std: bool = False,
                 pack: int = 1, norm: str = "batch", dropout: float = 0.0, heads: int = 0,
                 groups: int = 0):
        super().__init__()
        colours, height, width_px = shape
        self.batch_std, self.pack = batch_std, pack
        self.per_sample = norm != "batch" and not batch_std  # else a score depends on the batch
        w, bn = width, norm == "batch"
        self.body = nn.Sequential(
            nn.Conv2d(pack * colours, w, 4, 2, 1), *leaky(dropout),  # H -> H/2
            nn.Conv2d(w, w, 3, 1, 1, bias=not bn), batch_norm(w, bn), *leaky(dropout),
            nn.Conv2d(w, 2 * w, 4, 2, 1, bias=not bn),  # H/2 -> H/4
            batch_norm(2 * w, bn), *leaky(dropout),
        )
        cells = (height // 4) * (width_px // 4)
        self.out = nn.Linear((2 * w + batch_std) * cells, 1)
        self.classify = class_head(2 * w * cells, heads, pack)
        self.project = projection(groups, 2 * w * cells, pack)

    def judge(self, x: torch.Tensor, y: torch.Tensor | None = None):
        """(real/fake logit of each group, class logits of each image or None); y: each
        image's group, with `groups`."""
        h = self.body(pack_groups(x, self.pack))  # (B / pack) groups
        logit = self.out((with_spread(h) if self.batch_std else h).flatten(1)).squeeze(1)
        return projected(logit, self.project, h, y), classified(self.classify, h, self.pack)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.judge(x, y)[0]


class RadfordGenerator(nn.Module):
    """Radford et al.'s G: z as a 1x1 map, a 4x4 transposed convolution to 4 x 4 x (top
    width), then stride-2 transposed convolutions, each halving the channels and doubling
    the side, with BatchNorm and ReLU; the last one to C channels with tanh. The top width
    is w * 2^(doublings - 1): 8w at 64 pixels, as in the paper (1024 for w = 128)."""

    def __init__(self, shape: tuple[int, int, int], latent: int, width: int):
        super().__init__()
        colours, side = shape[0], shape[1]
        doublings = int(math.log2(side)) - 2  # 4 -> side
        w = width * 2 ** (doublings - 1)
        layers = [nn.ConvTranspose2d(latent, w, 4, 1, 0, bias=False), nn.BatchNorm2d(w), nn.ReLU()]
        for _ in range(doublings - 1):
            layers += [nn.ConvTranspose2d(w, w // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(w // 2),
                       nn.ReLU()]
            w //= 2
        self.net = nn.Sequential(*layers, nn.ConvTranspose2d(w, colours, 4, 2, 1, bias=False),
                                 nn.Tanh())

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(z.view(len(z), -1, 1, 1))


class RadfordDiscriminator(nn.Module):
    """The generator's mirror: stride-2 4x4 convolutions with LeakyReLU 0.2, each halving the
    side and doubling the channels, BatchNorm on all but the first, down to 4x4; a 4x4
    convolution makes the logit. pack and batch_std as in ConvDiscriminator."""

    def __init__(self, shape: tuple[int, int, int], width: int, batch_std: bool = False,
                 pack: int = 1, norm: str = "batch", dropout: float = 0.0, heads: int = 0,
                 groups: int = 0):
        super().__init__()
        colours, side = shape[0], shape[1]
        self.batch_std, self.pack = batch_std, pack
        self.per_sample = norm != "batch" and not batch_std  # else a score depends on the batch
        w, side, bn = width, side // 2, norm == "batch"
        layers = [nn.Conv2d(pack * colours, w, 4, 2, 1, bias=False), *leaky(dropout)]
        while side > 4:
            layers += [nn.Conv2d(w, 2 * w, 4, 2, 1, bias=not bn), batch_norm(2 * w, bn),
                       *leaky(dropout)]
            w, side = 2 * w, side // 2
        self.body = nn.Sequential(*layers)
        self.out = nn.Conv2d(w + batch_std, 1, 4, 1, 0, bias=False)
        self.classify = class_head(w * 4 * 4, heads, pack)
        self.project = projection(groups, w * 4 * 4, pack)

    def judge(self, x: torch.Tensor, y: torch.Tensor | None = None):
        """(real/fake logit of each group, class logits of each image or None); y: each
        image's group, with `groups`."""
        h = self.body(pack_groups(x, self.pack))
        logit = self.out(with_spread(h) if self.batch_std else h).flatten()
        return projected(logit, self.project, h, y), classified(self.classify, h, self.pack)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.judge(x, y)[0]


def dcgan_init(module: nn.Module) -> None:
    """Radford et al.: weights from N(0, 0.02), BatchNorm scales from N(1, 0.02); the
    projection's embedding too (at torch's N(0, 1), its term would swamp the logit)."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def takes_radford(shape) -> bool:
    """Square images whose side is a power of two, 16 or more: Radford et al.'s pair."""
    side = shape[1]
    return shape[1] == shape[2] and side >= 16 and side & (side - 1) == 0


def code_values(config: dict) -> int:
    """How many values G's categorical code takes: InfoGAN's `codes`, or the `clusters` of
    the training images (0: no code)."""
    return config.get("codes", 0) or config.get("clusters", 0)


def generator_input(config: dict) -> int:
    """What G reads: the noise z, then the one-hot categorical code (code_values)."""
    return config["latent_dim"] + code_values(config)


def build_dcgan(config: dict, data: dict) -> tuple[nn.Module, nn.Module]:
    """(generator, discriminator) for images of `data`'s shape: Radford et al.'s pair for
    square power-of-two sides, the compact pair for other sides divisible by 4 (28)."""
    shape, latent, width = tuple(data["shape"]), generator_input(config), config["width"]
    options = (config["batch_std"], config["pack"], config["d_norm"], config["d_dropout"],
               config.get("codes", 0), config.get("clusters", 0))  # InfoGAN heads; groups
    if takes_radford(shape):
        g, d = RadfordGenerator(shape, latent, width), RadfordDiscriminator(shape, width, *options)
    elif shape[1] % 4 == 0 and shape[2] % 4 == 0:
        g, d = ConvGenerator(shape, latent, width), ConvDiscriminator(shape, width, *options)
    else:
        raise DlcliError(f"dcgan takes square images of 16, 32, 64, 128... pixels, or sides "
                         f"divisible by 4 (28x28); these are {'x'.join(map(str, shape[1:]))}: "
                         "choose another image_size, or train gan")
    g.apply(dcgan_init)
    d.apply(dcgan_init)
    return g, normalised(d, config["d_norm"])


def normalised(d: nn.Module, norm: str) -> nn.Module:
    """D with spectral normalisation on every weight layer when norm is "spectral"."""
    if norm not in D_NORMS:
        raise DlcliError(f"unknown d_norm {norm!r}; choose one of: {', '.join(D_NORMS)}")
    if norm == "spectral":
        for m in list(d.modules()):
            if isinstance(m, (nn.Conv2d, nn.Linear, nn.Embedding)):
                nn.utils.parametrizations.spectral_norm(m)
    return d


def build_mlp(config: dict, data: dict, classes: int = 0) -> tuple[nn.Module, nn.Module]:
    """The MLP pair for images of any shape; conditional on `classes` labels when given."""
    shape = tuple(data["shape"])
    if config["d_norm"] == "batch":
        raise DlcliError("d_norm batch is for dcgan's convolutional D; the MLP D takes "
                         "spectral or none")
    # conditioned on the label (cgan) or on the group of the training images (clusters)
    d = MLPDiscriminator(shape, config["d_hidden"], classes or config.get("clusters", 0),
                         config["d_dropout"], config["batch_std"], config.get("codes", 0))
    return (MLPGenerator(shape, generator_input(config), config["g_hidden"], classes),
            normalised(d, config["d_norm"]))


def build_conditional_mlp(config: dict, data: dict) -> tuple[nn.Module, nn.Module]:
    return build_mlp(config, data, classes=len(data["classes"]))
