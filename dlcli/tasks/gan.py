"""GANs (gan, dcgan, cgan): two networks, two optimizers, one training loop.

Each step trains D to tell real from fake, then G to fool the freshly updated D. Options
from the preset:

  loss             nonsaturating: D minimises the cross-entropy of real vs fake, G maximises
                   log D(G(z)) (Goodfellow et al.: strong gradients early, when D rejects
                   every fake); hinge: D minimises max(0, 1 - D(x)) + max(0, 1 + D(G(z))),
                   G maximises D(G(z)) (Lim & Ye, 2017; Miyato et al., 2018): D stops
                   pushing on images it already scores beyond the margin
  label_smoothing  nonsaturating only: real images get target 1 - s (Salimans et al.)
  r1               weight gamma of the R1 penalty gamma/2 * E ||grad_x D(x)||^2 on real
                   images (Mescheder et al., 2018): D stays flat around the data, which
                   keeps the game from oscillating; 0 = off
  d_lr_scale       D's learning rate over G's: two time-scale updates (Heusel et al., 2017)
  codes, classify  InfoGAN (Chen et al., 2016; gan, dcgan): G also reads a one-hot code of
                   `codes` values drawn uniformly, and D's class head learns to read the
                   code back from G's image, G to make it readable (weight `classify`): each
                   code settles on one kind of image, so G draws fewer blends of kinds
  clusters         (gan, dcgan) G's one-hot code is a group of the training images:
                   k-means splits them into `clusters` groups before training, and D is
                   conditioned on the group as the cgan's D is on the label (each real
                   image with its own group, each fake with the group G was asked for).
                   Each group is a kind of image, so G learns one kind at a time, as a
                   cgan does, without labels (the self-conditioned GAN of Liu et al.,
                   2020, with the groups fitted once); codes are drawn as often as their
                   group holds training images
  ema              decay of an exponential moving average of G's weights, kept as its own
                   module "generator_ema"; sampling and evaluation use it (0 = off)

Trouble is reported, not hidden: a non-finite loss stops the loop (dlcli/train.py keeps the
last good checkpoint); a discriminator that wins every batch for many steps and a
generator whose fixed-noise samples stop varying are warned about, with a hint.
"""

from __future__ import annotations

import copy
import json
import math

import torch
import torch.nn.functional as F

from dlcli.console import notice, warn
from dlcli.errors import DlcliError
from dlcli.models.gan import code_values
from dlcli.optim import make_optimizer
from dlcli.tasks.image import ImageTask, interpolation_path, labels_for

D_COLLAPSE_STEPS = 200  # consecutive steps with D's loss at its floor before we warn
D_COLLAPSE_GAP = 0.01  # "at its floor": within this many nats of the smallest loss possible
GRID_ROWS = 10  # the fixed-noise grid: 10 x 10, or 10 of each class (a row each)
# The collapse warning needs evidence: a judge that reads digits well, enough samples for
# a histogram of ten classes, and a generator past its first epoch.
JUDGE_ACCURACY = 0.95
JUDGED_SAMPLES = 100
WARMUP_EPOCHS = 1
LOSSES = ("nonsaturating", "hinge")
KMEANS_POINTS = 20000  # training images k-means fits its groups on (then every one is assigned)
KMEANS_CHUNK = 8192  # images converted and assigned at a time: memory stays flat
KMEANS_SIDE = 32  # images are averaged down to at most this many pixels a side for k-means
INTERPOLATION_STEPS = 10  # images per --interpolate row


def binary_entropy(p: float) -> float:
    return 0.0 if p in (0.0, 1.0) else -(p * math.log(p) + (1 - p) * math.log(1 - p))


def r1_penalty(real_logit: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """E ||grad_x D(x)||^2 over the real images x, kept differentiable (create_graph) so
    that D's step also minimises it."""
    grad, = torch.autograd.grad(real_logit.float().sum(), x, create_graph=True)
    return grad.float().pow(2).flatten(1).sum(1).mean()


def cluster_view(images: torch.Tensor) -> torch.Tensor:
    """Images (uint8 or [0, 1]) as k-means sees them: one row of floats in [0, 1] each,
    averaged down to at most KMEANS_SIDE pixels a side (so large images cluster as fast as
    MNIST)."""
    x = images.float().div(255) if images.dtype == torch.uint8 else images.float()
    factor = math.ceil(max(x.shape[-2:]) / KMEANS_SIDE)
    return (F.avg_pool2d(x, factor, ceil_mode=True) if factor > 1 else x).flatten(1)


def nearest(points: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of each point's nearest centroid: argmin of |c|^2 - 2 p.c (|p|^2 is the same
    for every centroid), in chunks so that the distance matrix stays small."""
    squares = centroids.square().sum(1)
    return torch.cat([(squares - 2 * p @ centroids.T).argmin(1)
                      for p in points.split(KMEANS_CHUNK)])


def kmeans(points: torch.Tensor, k: int, generator: torch.Generator,
           iterations: int = 20) -> torch.Tensor:
    """k centroids of `points` (n, features): k-means++ seeding (Arthur & Vassilvitskii,
    2007: each next seed drawn with probability proportional to its squared distance from
    the nearest seed so far), then Lloyd's iterations. A group left empty keeps its centroid."""
    def pick(weights):
        return int(torch.multinomial(weights.cpu(), 1, generator=generator))

    centroids = points[[pick(torch.ones(len(points)))]]
    gap = (points - centroids[0]).square().sum(1)
    for _ in range(1, k):
        chosen = points[pick(gap if bool(gap.any()) else torch.ones(len(points)))]  # all alike
        centroids = torch.cat([centroids, chosen[None]])
        gap = torch.minimum(gap, (points - chosen).square().sum(1))
    for _ in range(iterations):
        groups = nearest(points, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, groups, points)
        counts = torch.bincount(groups, minlength=k)
        centroids = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], centroids)
    return centroids


class ClusterCodes(torch.nn.Module):
    """The groups of the training images (clusters): their centroids, as k-means sees the
    images (cluster_view), and how many images each holds (G's codes are drawn by it).
    Buffers, so that checkpoints keep them and a resumed run trains on the same groups."""

    def __init__(self, k: int, features: int):
        super().__init__()
        self.register_buffer("centroids", torch.zeros(k, features))
        self.register_buffer("sizes", torch.ones(k))  # uniform until fitted
        self.register_buffer("fitted", torch.tensor(False))


class GANTask(ImageTask):
    losses = ("d_loss", "g_loss")
    monitor = None  # no validation loss means anything for a GAN: best = last
    drop_last = True  # BatchNorm statistics of equal-sized batches

    def build_networks(self) -> None:
        cfg = self.config
        self.conditional = self.spec.conditional
        pack = cfg.get("pack", 1)
        if pack < 1 or cfg["batch_size"] % pack:
            raise DlcliError(f"pack must be a positive divisor of the batch size "
                             f"({cfg['batch_size']}), got {pack}")
        self.generator, self.discriminator = (
            m.to(self.device) for m in self.spec.build(cfg, self.data_spec))
        self.modules = {"generator": self.generator, "discriminator": self.discriminator}
        self.ema = None
        if cfg["ema"] > 0:
            self.ema = copy.deepcopy(self.generator).requires_grad_(False)
            self.modules["generator_ema"] = self.ema
            self.ema_pairs = None  # paired at the first update, see update_ema
        self.codes = code_values(cfg)
        self.clusters = None  # the k-means groups of the training images (`clusters`)
        if cfg.get("codes", 0) and cfg.get("clusters", 0):
            raise DlcliError("codes and clusters both give G its code: choose one (codes: "
                             "InfoGAN's, drawn uniformly; clusters: groups of the training "
                             "images; --set clusters=0 for InfoGAN's)")
        if bool(cfg.get("codes", 0)) != bool(cfg.get("classify", 0)):
            raise DlcliError("codes and classify go together (InfoGAN, gan and dcgan): codes "
                             "K gives G a code of K values, classify W > 0 weighs the loss "
                             "that ties each code to one kind of image")
        if cfg.get("clusters", 0):
            features = cluster_view(torch.zeros(1, *self.data_spec["shape"])).shape[1]
            self.clusters = ClusterCodes(cfg["clusters"], features).to(self.device)
            self.modules["clusters"] = self.clusters
            self.cluster_of = None  # each image's group, at the first epoch (see fit_clusters)
        if cfg["loss"] not in LOSSES:
            raise DlcliError(f"unknown loss {cfg['loss']!r}; choose one of: {', '.join(LOSSES)}")
        self.real_target = 1.0 - cfg["label_smoothing"]
        # The least loss D can reach: not 0 for cross-entropy against smoothed targets.
        self.d_floor = binary_entropy(self.real_target) if cfg["loss"] == "nonsaturating" else 0.0
        self.d_streak, self.d_warned, self.g_warned = 0, False, False
        self.validations = 0  # in this process: a resumed run warms up again
        # Fixed noise for the per-epoch grid, from its own generator: drawing it leaves the
        # global RNG stream (and so exact resume) untouched.
        self.draw_fixed_noise()
        n = len(self.fixed_z)
        self.fixed_y = (labels_for("all", n, self.classes, self.device)[0]
                        if self.conditional else None)
        self.ema_steps = 0

    def draw_fixed_noise(self) -> None:
        cfg = self.config
        g = torch.Generator().manual_seed(cfg["seed"] + 12345)
        n = GRID_ROWS * (self.classes if self.conditional else GRID_ROWS)
        self.fixed_z = self.noise(n, g)[0]
        if self.codes and self.clusters is None:  # a row per code, as the cgan's grid has a row per label
            row_code = torch.arange(n, device=self.device) // GRID_ROWS % self.codes
            self.fixed_z[:, cfg["latent_dim"]:] = F.one_hot(row_code, self.codes)

    def setup_data(self) -> None:
        super().setup_data()
        k = self.config.get("clusters", 0)
        if len(self.train_data) < k:
            raise DlcliError(f"clusters {k} needs at least {k} training images; "
                             f"{self.data_spec['dataset']} has {len(self.train_data):,}: "
                             "pass --set clusters=N with fewer groups, or 0 for none")

    def training_labels(self, split):
        """With clusters, a training image comes with its group, not its label."""
        if self.clusters is None:
            return split.labels
        if self.cluster_of is None:
            self.fit_clusters()
        return self.cluster_of

    def fit_clusters(self) -> None:
        """Group the training images by k-means (once: a resumed run has its groups in the
        checkpoint), then note each image's group, indexed as the images are."""
        split, k, groups = self.train_data, self.config["clusters"], self.clusters
        fresh = not bool(groups.fitted)
        if fresh:
            g = torch.Generator().manual_seed(self.config["seed"] + 271828)  # global RNG untouched
            picked = torch.randperm(len(split), generator=g)[:KMEANS_POINTS]
            points = cluster_view(split.images[split.rows[picked.to(split.rows.device)]])
            groups.centroids.copy_(kmeans(points.to(self.device), k, g))
        group_of = torch.zeros(len(split.images), dtype=torch.long, device=split.images.device)
        for rows in split.rows.split(KMEANS_CHUNK):
            view = cluster_view(split.images[rows]).to(self.device)
            group_of[rows] = nearest(view, groups.centroids).to(group_of.device)
        if fresh:
            groups.sizes.copy_(torch.bincount(group_of[split.rows], minlength=k))
            groups.fitted.fill_(True)
            notice(f"k-means: {len(split):,} training images in {k} groups, "
                   f"{int(groups.sizes.min())} to {int(groups.sizes.max())} images each")
        self.cluster_of = group_of
        self.draw_fixed_noise()  # its codes drawn by the groups' sizes

    def build_optimizers(self) -> None:
        cfg = self.config
        betas = (cfg["beta1"], cfg["beta2"])
        d_lr = cfg["lr"] * cfg["d_lr_scale"]
        self.optimizers = {
            "generator": make_optimizer(self.generator.parameters(), {"lr": cfg["lr"]}, betas=betas),
            "discriminator": make_optimizer(self.discriminator.parameters(), {"lr": d_lr}, betas=betas),
        }

    def noise(self, n: int, generator: torch.Generator | None = None):
        """(G's input for n images, their codes or None): standard-normal z (from
        `generator`, else the global RNG), then, with codes, a one-hot code drawn uniformly
        (InfoGAN) or as often as its group holds training images (clusters)."""
        device = generator.device if generator is not None else self.device
        z = torch.randn(n, self.config["latent_dim"], generator=generator, device=device)
        if not self.codes:
            return z.to(self.device), None
        if self.clusters is not None:
            code = torch.multinomial(self.clusters.sizes.to(device), n, replacement=True,
                                     generator=generator)
        else:
            code = torch.randint(self.codes, (n,), generator=generator, device=device)
        z = torch.cat([z, F.one_hot(code, self.codes).to(z.dtype)], 1)
        return z.to(self.device), code.to(self.device)

    @property
    def sampler(self) -> torch.nn.Module:
        return self.ema if self.ema is not None else self.generator

    # ---- training -----------------------------------------------------------------
    def train_step(self, batch) -> dict[str, float]:
        x, labels = batch  # labels: the groups, with clusters (training_labels)
        x = x * 2 - 1  # [0, 1] -> [-1, 1], the range of G's tanh
        y = labels if self.conditional else None
        G, D = self.generator, self.discriminator
        opt_g, opt_d = self.optimizers["generator"], self.optimizers["discriminator"]
        z, code = self.noise(len(x))
        fake = G(z, y)  # fakes of the same labels as the real batch (cgan)
        # what D is conditioned on: the label (cgan), else the group of each real image
        # (training_labels gave them) and the group each fake was asked for (clusters)
        real_y, fake_y = (labels, code) if self.clusters is not None else (y, y)

        # D: tell real from fake; G's graph is cut off by detach()
        r1 = self.config["r1"]
        if r1:
            x.requires_grad_(True)
        if D.per_sample:  # one pass over real and fake together: the same sums, faster
            logits, classes = D.judge(torch.cat([x, fake.detach()]),
                                      None if real_y is None else torch.cat([real_y, fake_y]))
            real_logit, fake_logit = logits.chunk(2)
            fake_class = None if classes is None else classes.chunk(2)[1]
        else:  # batch statistics (BatchNorm, batch_std) must see real and fake apart
            real_logit, (fake_logit, fake_class) = D(x, real_y), D.judge(fake.detach(), fake_y)
        d_loss = self.discriminator_loss(real_logit, fake_logit)
        classify = self.config.get("classify", 0)
        if classify:  # D's head learns to read the code G drew each fake from
            d_loss = d_loss + classify * F.cross_entropy(fake_class.float(), code)
        if r1:
            d_loss = d_loss + r1 / 2 * r1_penalty(real_logit, x)
        self.optimize(d_loss, opt_d)

        # G: fool the updated D; only G's weights need gradients, so D's weight gradients
        # are never computed
        gen_logit, gen_class = D.judge(fake, fake_y)
        g_loss = self.generator_loss(gen_logit)
        logs = {}
        if classify:  # G: images whose code D reads back
            misread = F.cross_entropy(gen_class.float(), code)
            g_loss = g_loss + classify * misread
            logs["g_misread"] = misread.item()
        self.optimize(g_loss, opt_g, inputs=list(G.parameters()))
        self.update_ema()

        d_loss = d_loss.item()
        self.watch_discriminator(d_loss)
        return {"d_loss": d_loss, "g_loss": g_loss.item(),
                "d_x": real_logit.detach().sigmoid().mean().item(),
                "d_g_z": fake_logit.detach().sigmoid().mean().item(), **logs}

    def discriminator_loss(self, real_logit: torch.Tensor, fake_logit: torch.Tensor) -> torch.Tensor:
        if self.config["loss"] == "hinge":
            return F.relu(1 - real_logit).mean() + F.relu(1 + fake_logit).mean()
        real = torch.full_like(real_logit, self.real_target)
        return (F.binary_cross_entropy_with_logits(real_logit, real)
                + F.binary_cross_entropy_with_logits(fake_logit, torch.zeros_like(fake_logit)))

    def generator_loss(self, gen_logit: torch.Tensor) -> torch.Tensor:
        if self.config["loss"] == "hinge":
            return -gen_logit.mean()
        return F.binary_cross_entropy_with_logits(gen_logit, torch.ones_like(gen_logit))

    @torch.no_grad()
    def update_ema(self) -> None:
        if self.ema is None:
            return
        # Warm-up: average over the steps so far until that exceeds `ema`, so the early
        # average is not dominated by the random initial weights.
        if self.ema_pairs is None:
            # each averaged tensor (weights and BatchNorm statistics) beside its live one;
            # paired here, not in build, as moving the modules to channels-last memory
            # (use_fast_paths) gives them new tensors
            live = self.generator.state_dict()
            pairs = [(avg, live[k]) for k, avg in self.ema.state_dict().items()]
            floats = [p for p in pairs if p[0].is_floating_point()]
            self.ema_pairs = ([a for a, _ in floats], [b for _, b in floats],
                              [p for p in pairs if not p[0].is_floating_point()])
        averages, lives, counts = self.ema_pairs
        self.ema_steps += 1
        decay = min(self.config["ema"], (1 + self.ema_steps) / (10 + self.ema_steps))
        torch._foreach_lerp_(averages, lives, 1 - decay)  # BatchNorm running stats too
        for avg, live in counts:
            avg.copy_(live)

    @torch.no_grad()
    def recalibrate_ema(self, batches: int = 20, size: int = 500) -> None:
        """Re-estimate the EMA generator's BatchNorm statistics from its own activations:
        averaged weights make activations that averaged running stats do not describe,
        and sampling with those skews the digits drawn (Yazici et al., 2019)."""
        norms = [m for m in self.ema.modules()
                 if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        if not norms:
            return
        g = torch.Generator().manual_seed(self.config["seed"] + 54321)  # global RNG untouched
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a plain average over the batches below
        self.ema.train()
        for _ in range(batches):
            z = self.noise(size, g)[0]
            # drawn even when unused, so every model's noise stream stays as it was
            y = torch.randint(max(self.classes, 1), (size,), generator=g).to(self.device)
            self.ema(z, y if self.conditional else None)
        for m in norms:
            m.momentum = 0.1
        self.ema.train(False)

    def training_state(self) -> dict:
        return {**super().training_state(), "ema_steps": self.ema_steps}

    def load_training_state(self, state: dict) -> None:
        super().load_training_state(state)
        self.ema_steps = int(state.get("ema_steps", 0))

    def watch_discriminator(self, d_loss: float) -> None:
        """Warn once when D's loss sits at its floor for many steps: G gets no signal."""
        self.d_streak = self.d_streak + 1 if d_loss - self.d_floor < D_COLLAPSE_GAP else 0
        if self.d_streak >= D_COLLAPSE_STEPS and not self.d_warned:
            self.d_warned = True
            warn(f"the discriminator wins every batch (loss within {D_COLLAPSE_GAP} of its "
                 f"minimum for {self.d_streak} steps): the generator gets no useful gradient. "
                 "Try a slower discriminator (--set d_lr_scale=0.5), --set label_smoothing=0.1, "
                 "or --set d_dropout=0.3")

    # ---- per epoch ----------------------------------------------------------------
    @torch.no_grad()
    def fixed_samples(self) -> torch.Tensor:
        self.sampler.train(False)
        return (self.sampler(self.fixed_z, self.fixed_y) + 1) / 2

    def validate(self) -> dict[str, float]:
        """How varied the fixed-noise samples are. `diversity`: their mean pairwise pixel
        distance over that of real images (1 = as varied as the data, 0 = one image).
        `label_entropy` (when a cnn judge of this dataset is under ./runs): the entropy
        in bits of the classes it sees in them (log2 of the classes when all are equally
        often drawn: 3.32 for ten)."""
        if self.ema is not None:
            self.recalibrate_ema()
        fake = self.fixed_samples()
        real = self.train_data.take(slice(0, len(fake)))[0].float().div(255)
        diversity = float(torch.pdist(fake.flatten(1)).mean() / torch.pdist(real.flatten(1)).mean())
        metrics = {"diversity": diversity}
        judge = self.training_judge()
        if judge is not None and len(fake) >= JUDGED_SAMPLES:
            from dlcli.metrics import judge_outputs, label_entropy

            predicted = judge_outputs(judge, fake)[1].argmax(1)
            metrics["label_entropy"] = label_entropy(torch.bincount(predicted))
        self.validations += 1
        few_classes = metrics.get("label_entropy", math.inf) < 1.5
        warmed_up = self.validations > WARMUP_EPOCHS  # a first epoch's samples are still noise
        if (diversity < 0.3 or few_classes) and warmed_up and not self.g_warned:
            self.g_warned = True
            seen = (f"its fixed-noise samples show {metrics['label_entropy']:.2f} bits of class "
                    f"variety ({math.log2(judge.classes):.2f} = all {judge.classes})"
                    if few_classes else
                    f"its fixed-noise samples vary {diversity:.2f}x as much as real images")
            warn(f"the generator may have collapsed: {seen} -- mode collapse, few or one "
                 "kind of image. Look at samples/; try --set ema=0.999, --set label_smoothing=0.1, a "
                 "lower --lr, or another --seed")
        return metrics

    def training_judge(self):
        """The newest cnn run under ./runs, if it is one to trust: trained on this data,
        to the end of its epochs, to JUDGE_ACCURACY on validation. Else None (an untrained
        judge sees one digit everywhere). Looked up once."""
        if not hasattr(self, "_judge"):
            from dlcli.checkpoint import read_metadata
            from dlcli.runs import newest_checkpoint, run_progress
            from dlcli.tasks.classify import load_judge

            self._judge = None
            path = newest_checkpoint("cnn")
            progress = run_progress(path.parent) if path else None
            if progress and progress[0] >= progress[1]:
                try:
                    meta = read_metadata(path)
                    accuracy = json.loads(meta["metrics"]).get("val_accuracy", 0.0)
                    if accuracy >= JUDGE_ACCURACY and self.classes:
                        self._judge = load_judge(path, self.device, data=self.data_spec)
                except (DlcliError, KeyError, ValueError):
                    pass
        return self._judge

    def end_of_epoch(self, epoch: int) -> dict:
        """samples/epoch-NNN.png: the same noise every epoch, so the grids show G learning."""
        return {"epoch": (self.fixed_samples(), GRID_ROWS, self.captions(GRID_ROWS * GRID_ROWS, "all"))}

    # ---- sampling and evaluation --------------------------------------------------
    @torch.no_grad()
    def generate(self, z: torch.Tensor, y: torch.Tensor | None, batch_size: int = 1000):
        """Images in [0, 1] from noise rows z (and labels y), in batches. z is scaled by
        the `truncation` key first: below 1 it trades variety for typical, cleaner digits
        (the truncation trick of Brock et al., 2019)."""
        t, noise = self.config.get("truncation", 1.0), self.config["latent_dim"]
        z = torch.cat([z[:, :noise] * t, z[:, noise:]], 1)  # the codes (InfoGAN) stay one-hot
        self.sampler.train(False)
        out = [self.sampler(z[i:i + batch_size], None if y is None else y[i:i + batch_size])
               for i in range(0, len(z), batch_size)]
        return (torch.cat(out) + 1) / 2

    def sample(self, n: int, label=None, grid: str | None = None, interpolate: bool = False):
        """(images (N, C, H, W) in [0, 1], images per row); z from the global RNG, which
        the CLI seeds with --seed."""
        if grid not in (None, "samples"):
            raise DlcliError(f"{self.spec.name} has no --grid {grid!r}; choose one of: samples")
        dev = self.device
        if interpolate:
            # rows walking a straight line between two noise vectors; --label all: one row
            # per digit, all along the same path, so only the style changes along a row
            rows = self.classes if label == "all" else max(1, n // INTERPOLATION_STEPS)
            ends = self.noise(2 * (1 if label == "all" else rows))[0]
            start, end = ends.view(2, -1, ends.shape[1])
            end[:, self.config["latent_dim"]:] = start[:, self.config["latent_dim"]:]  # a row keeps its code
            z = interpolation_path(start, end, INTERPOLATION_STEPS)
            z = z.repeat(rows, 1) if label == "all" else z
            y = None
            if self.conditional:
                y = (torch.arange(rows, device=dev) if label in (None, "all")
                     else torch.full((rows,), int(label), device=dev)) % self.classes
                y = y.repeat_interleave(INTERPOLATION_STEPS)
            return self.generate(z, y), INTERPOLATION_STEPS
        if self.conditional:
            y, per_row = labels_for(label, n, self.classes, dev)
        else:
            y, per_row = None, min(n, 8)
        return self.generate(self.noise(n if y is None else len(y))[0], y), per_row

    def networks(self) -> dict:
        from dlcli.export import Network, Wrapped, image_port, label_port, noise_port
        from dlcli.models.gan import generator_input

        G = self.sampler
        group = (" (a group of the training images; dlcli draws each as often as its share "
                 "of them)" if self.clusters is not None else "")
        z = noise_port("z", generator_input(self.config), "standard-normal noise (scaled "
                       "by less than 1 it gives cleaner, less varied images)" + (
                           f", then a one-hot code of {self.codes}{group}" if self.codes else ""))
        return {"generator": Network(Wrapped(lambda *inputs: (G(*inputs) + 1) / 2, generator=G),
                                     [z] + ([label_port(self.classes)] if self.conditional else []),
                                     [image_port(shape=self.data_spec["shape"])])}

    def evaluate(self, classifier=None, samples: int = 10000, **_) -> dict:
        """cfid, label_entropy, confidence (and label_accuracy for cgan) of `samples`
        generated images against the test set, judged by a cnn trained on the same data.
        Unlabeled data has no such judge: the metrics are skipped unless --classifier
        names one."""
        from dlcli.metrics import score_samples
        from dlcli.tasks.classify import load_judge

        if not self.classes and classifier is None:
            notice("cfid, label_entropy and confidence skipped: they need a cnn judge of this "
                   f"data, and {self.data_spec['dataset']} has no classes to train one on "
                   "(pass --classifier CKPT to use a judge of images of this shape)")
            self.setup_eval_data()
            return {"samples": 0}
        judge = load_judge(classifier, self.device, data=self.data_spec)
        self.setup_eval_data()
        g = torch.Generator().manual_seed(0)  # the same noise every evaluation

        def batches(size: int = 1000):  # made as they are scored: memory stays flat
            for start in range(0, samples, size):
                n = min(size, samples - start)
                z = self.noise(n, g)[0]
                y = ((torch.arange(start, start + n, device=self.device) % self.classes)
                     if self.conditional else None)
                yield self.generate(z, y), y

        real = (x for x, _ in self.eval_batches("test"))
        return {**score_samples(judge, batches(), real), "samples": samples,
                "judge": str(judge.checkpoint_path)}
