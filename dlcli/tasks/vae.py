"""The VAE family (vae, cvae, beta-vae, beta-tcvae): train on the ELBO, measure it, draw its
pictures.

Training minimises recon + beta * KL (or recon + gamma * |KL - C| with the capacity
annealing of Burgess et al., 2018; or, for beta-tcvae, recon + MI + beta * TC + dim-wise
KL, BetaTCVAETask at the end); every number reported is in nats per image. Options
that buy a better likelihood, each a preset key (the first three off at 0, or 1):

    kl_warmup     beta rises linearly from 0 over this many epochs, so the decoder learns
                  to use z before the KL can switch units off (Sønderby et al., 2016;
                  Bowman et al., 2016)
    free_bits     each unit's KL (batch mean) is paid as max(free_bits, KL_j): below that
                  many nats a unit is free to carry information (Kingma et al., 2016, the
                  IAF paper, "free bits")
    iwae_samples  k > 1 trains on the importance-weighted bound log 1/k sum_i w_i instead
                  of the ELBO (Burda et al., 2016)
    schedule      exponential (lr *= lr_decay after each epoch) | cosine (per step, to 0)
                  | constant

The pictures need no data: the latent units' KL, measured at each validation, travels in
the checkpoint's metadata, so `sample --grid traverse|manifold` knows which units carry
information. Only `--grid recon` reads test images. On data whose factors of variation are
known (`shapes`), validation also measures the MIG, and the factor each unit carries
travels in the metadata too (`latent_factors`), to label the traversal's rows.
"""

from __future__ import annotations

import json
import math

import torch

from dlcli.console import notice
from dlcli.errors import DlcliError
from dlcli.optim import Schedule, make_optimizer
from dlcli.tasks.image import ImageTask, interpolation_path, labels_for, to_unit_float

ACTIVE_NATS = 0.01  # a latent unit whose average KL is below this carries no information
TRAVERSE_STEPS = 9  # -3 .. +3 in steps of 0.75, through 0
EVAL_SEED = 1234  # evaluation noise is fixed, so the same checkpoint gives the same numbers
FACTORS_KEY = "latent_factors"  # metadata: [factor, normalised MI] of each unit


class VAETask(ImageTask):
    losses = ("loss", "nelbo", "recon", "kl")

    def build_networks(self) -> None:
        self.conditional = self.spec.conditional
        self.model = self.spec.build(self.config, self.data_spec).to(self.device)
        self.modules = {"model": self.model}
        self.steps = 0  # optimizer steps so far: the clock of the capacity and KL ramps
        self.schedule = None  # made for training only
        # What each latent unit carries (mean KL, nats), from the last validation or checkpoint.
        self.latent_kl = json.loads(self.meta["latent_kl"]) if "latent_kl" in self.meta else None
        # The factor each unit carries most about, and how much (data with known factors).
        self.unit_factors = read_unit_factors(self.meta, self.config["latent"])

    def build_optimizers(self) -> None:
        self.optimizers = {"model": make_optimizer(self.model.parameters(), self.config)}
        self.schedule = Schedule(self.optimizers["model"], self.config)
        self.schedulers = {"model": self.schedule.scheduler}
        c = self.config
        if c["iwae_samples"] > 1 and (c["beta"] != 1 or c["capacity"] or c["free_bits"]):
            raise DlcliError("iwae_samples > 1 trains the importance-weighted bound, which has "
                             "no KL term of its own to weight: use it with beta=1, capacity=0, "
                             "free_bits=0")

    def setup_data(self) -> None:
        super().setup_data()
        if self.schedule is not None:  # the cosine schedule needs the run's length in steps
            self.schedule.total_steps = self.steps_per_epoch() * self.config["epochs"]

    # ---- training ---------------------------------------------------------------------
    def steps_per_epoch(self) -> int:
        return math.ceil(self.epoch_images() / self.config["batch_size"])

    def capacity(self) -> float:
        """Burgess et al.'s target KL, ramped linearly from 0 to `capacity` nats."""
        c = self.config
        ramp = (c["capacity_epochs"] or c["epochs"]) * self.steps_per_epoch()
        return c["capacity"] * min(1.0, self.steps / max(ramp, 1))

    def kl_weight(self) -> float:
        """beta, after the KL warm-up: linear from 0 over the first kl_warmup epochs."""
        c = self.config
        if not c["kl_warmup"]:
            return c["beta"]
        return c["beta"] * min(1.0, self.steps / (c["kl_warmup"] * self.steps_per_epoch()))

    def kl_paid(self, kl_per_unit: torch.Tensor) -> torch.Tensor:
        """The KL the objective charges, from each unit's batch-mean KL: all of it, or with
        free bits max(free_bits, KL_j) per unit (no gradient pushes a unit below it)."""
        if self.config["free_bits"]:
            return kl_per_unit.clamp(min=self.config["free_bits"]).sum()
        return kl_per_unit.sum()

    def objective(self, recon: torch.Tensor, kl: torch.Tensor) -> torch.Tensor:
        c = self.config
        if c["capacity"] > 0:
            return recon + c["gamma"] * (kl - self.capacity()).abs()
        return recon + self.kl_weight() * kl

    def labels(self, y: torch.Tensor):
        return y if self.conditional else None

    def batch_labels(self, batch):
        x, y = batch
        return x, self.labels(y)

    def train_step(self, batch) -> dict[str, float]:
        from dlcli.models.vae import reconstruction_nats

        x, y = self.batch_labels(batch)
        if self.config["iwae_samples"] > 1:
            return self.iwae_step(x, y)
        logits, mu, logvar = self.model(x, y)  # under the loop's autocast when precision asks
        recon = reconstruction_nats(logits.float(), x).mean()
        kl_per_unit = self.model.kl(mu.float(), logvar.float(), y).mean(0)
        loss = self.objective(recon, self.kl_paid(kl_per_unit))
        self.optimize(loss, self.optimizers["model"])
        self.after_step()
        recon, kl = recon.item(), kl_per_unit.sum().item()
        return {"loss": loss.item(), "nelbo": recon + kl, "recon": recon, "kl": kl}

    def iwae_step(self, x, y) -> dict[str, float]:
        """One step on the importance-weighted bound with k = iwae_samples draws per image
        (Burda et al., 2016); nelbo, recon and kl are means over the k draws (the KL a
        one-sample estimate, log q(z | x) - log p(z))."""
        from dlcli.models.vae import iwae_bound, log_weights

        log_px_z, log_pz_qz = log_weights(self.model, x, y, self.config["iwae_samples"])
        # the KL warm-up scales the prior-over-posterior part, as it scales the ELBO's KL
        loss = -iwae_bound(log_px_z + self.kl_weight() * log_pz_qz).mean()
        self.optimize(loss, self.optimizers["model"])
        self.after_step()
        recon, kl = -log_px_z.mean().item(), -log_pz_qz.mean().item()
        return {"loss": loss.item(), "nelbo": recon + kl, "recon": recon, "kl": kl}

    def after_step(self) -> None:
        self.steps += 1
        self.schedule.after_step()

    def training_state(self) -> dict:
        return {**super().training_state(), "steps": self.steps}

    def load_training_state(self, state: dict) -> None:
        super().load_training_state(state)
        self.steps = int(state.get("steps", 0))

    @torch.no_grad()
    def measure(self, batches) -> dict:
        """Test-style ELBO on `batches` (one z per image, fixed noise): nats per image,
        and the mean KL of each latent unit."""
        from dlcli.models.vae import reconstruction_nats

        gen = torch.Generator(self.device).manual_seed(EVAL_SEED)
        total, recon, kl_dims = 0, 0.0, 0.0
        for batch in batches:
            x, y = self.batch_labels(batch)
            logits, mu, logvar = self.model(x, y, generator=gen)
            recon += reconstruction_nats(logits, x).sum().item()
            kl_dims = kl_dims + self.model.kl(mu, logvar, y).sum(0)
            total += len(x)
        kl_dims = (kl_dims / total).cpu()
        kl = float(kl_dims.sum())
        return {"nelbo": recon / total + kl, "recon": recon / total, "kl": kl,
                "active_units": int((kl_dims > ACTIVE_NATS).sum()),
                "kl_per_unit": [round(float(v), 5) for v in kl_dims]}

    def validate(self) -> dict[str, float]:
        self.schedule.after_epoch()
        m = self.measure(self.eval_batches("val"))
        self.latent_kl = m["kl_per_unit"]
        out = {"val_loss": m["nelbo"], "val_recon": m["recon"], "val_kl": m["kl"],
               "val_active_units": float(m["active_units"])}
        if self.config.get("capacity", 0) > 0:  # beta-tcvae has no capacity
            out["capacity"] = self.capacity()
        if self.factor_data is not None:
            out["val_mig"] = self.measure_factors()
        return out

    def checkpoint_extra(self) -> dict[str, str]:
        kl = {"latent_kl": json.dumps(self.latent_kl)} if self.latent_kl else {}
        if self.unit_factors:
            kl[FACTORS_KEY] = json.dumps(self.unit_factors)
        return {**super().checkpoint_extra(), **kl}

    # ---- disentanglement (data with known factors) ------------------------------------
    @torch.no_grad()
    def mean_codes(self, images: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """The code of each image: the encoder's mean, mu(x), as disentanglement_lib takes it."""
        x = to_unit_float(images.to(self.device))[0]
        y = self.labels(labels.to(self.device)) if labels is not None else None
        return self.model.encode(x, y)[0].float()

    def measure_factors(self) -> float:
        """The MIG on the data's factors; each unit's factor is kept for the checkpoint."""
        from dlcli.disentanglement import mig, unit_factors

        score, normalised = mig(self.mean_codes, self.factor_data)
        self.unit_factors = unit_factors(normalised, self.factor_data.names)
        return score

    def end_of_epoch(self, epoch: int) -> dict:
        """samples/epoch-NNN.png from the same noise every epoch (so the grids show the
        model learning), and samples/recon-NNN.png: validation images over their
        reconstructions."""
        state = torch.get_rng_state()  # pictures must not move the training's random stream
        try:
            torch.manual_seed(self.config["seed"])
            n, label = (100, "all") if self.conditional else (64, None)
            samples, nrow = self.sample(n, label=label)
            pictures = {"epoch": (samples, nrow, self.captions(n, label))}
            recons, nrow = self.reconstructions(self.val_data or self.test_data, 32, 8)
            pictures["recon"] = (recons, nrow, self.recon_captions(len(recons) // nrow))
            return pictures
        finally:
            torch.set_rng_state(state)

    # ---- evaluation -------------------------------------------------------------------
    def evaluate(self, classifier=None, samples: int = 10000, iwae_k: int = 100, **_) -> dict:
        from dlcli.models.vae import iwae_nll
        from dlcli.tasks.classify import load_judge

        # looked up first: a bad --classifier fails before minutes of work
        judge = (load_judge(classifier, self.device, required=False, data=self.data_spec)
                 if self.conditional else None)
        self.setup_eval_data()
        m = self.measure(self.eval_batches("test"))
        gen = torch.Generator(self.device).manual_seed(EVAL_SEED)
        chunk = max(1, 20000 // iwae_k)  # images per IWAE pass: k * chunk decodes at once
        nll = 0.0
        for x, y in self.eval_batches("test", chunk):
            nll += iwae_nll(self.model, x, self.labels(y), iwae_k, gen).sum().item()
        out = {"nelbo": m["nelbo"], "recon": m["recon"], "kl": m["kl"],
               "iwae_nll": nll / len(self.test_data), "iwae_k": iwae_k,
               "active_units": m["active_units"], "latent": self.config["latent"],
               "kl_per_unit": m["kl_per_unit"]}
        if self.factor_data is not None:  # data with known factors (shapes)
            from dlcli.disentanglement import disentanglement_metrics

            active = torch.tensor(m["kl_per_unit"]) > ACTIVE_NATS
            out.update(disentanglement_metrics(self.mean_codes, self.factor_data, active))
        if judge is not None:
            out.update(self.judge_labels(judge, samples))
        elif self.conditional:
            notice("label_accuracy, cfid and confidence skipped: they need a cnn judge "
                   "(`dlcli train cnn`, or --classifier CKPT)")
        return out

    def judge_labels(self, judge, samples: int) -> dict:
        """Does the class drawn match the label asked for? The cnn judge decides, for
        samples at the configured temperature and, when that is not 1, at 1 too."""
        from dlcli.metrics import score_samples

        labels = torch.arange(samples, device=self.device) % self.classes
        out = {}
        for temperature in dict.fromkeys([self.config["temperature"], 1.0]):
            state = torch.get_rng_state()
            torch.manual_seed(EVAL_SEED)
            scores = score_samples(judge, ((self.decode_prior(labels[i:i + 1000],
                                                              temperature=temperature),
                                            labels[i:i + 1000])
                                           for i in range(0, samples, 1000)),
                                  (x for x, _ in self.eval_batches("test")))
            torch.set_rng_state(state)
            suffix = "" if not out else f"_temperature_{temperature:g}"
            out.update({f"label_accuracy{suffix}": scores["label_accuracy"],
                        f"label_accuracy_per_class{suffix}": scores["label_accuracy_per_class"],
                        # the name it had when every dataset was of digits
                        f"label_accuracy_per_digit{suffix}": scores["label_accuracy_per_class"],
                        f"cfid{suffix}": scores["cfid"],
                        f"confidence{suffix}": scores["confidence"]})
        return {**out, "temperature": self.config["temperature"],
                "judge": str(judge.checkpoint_path)}

    # ---- pictures ---------------------------------------------------------------------
    def decode_prior(self, labels=None, count: int | None = None,
                     temperature: float | None = None) -> torch.Tensor:
        """Images decoded from z ~ p(z | y): one per label (cvae), or `count` of them."""
        n = len(labels) if labels is not None else count
        if temperature is None:
            temperature = self.config["temperature"]
        eps = temperature * torch.randn(n, self.config["latent"])
        return self.decode_standard(eps, labels)

    def decode_standard(self, eps: torch.Tensor, labels=None) -> torch.Tensor:
        """Images from standard-normal coordinates of the prior (of each label's prior)."""
        z = self.model.from_standard(eps.to(self.device), labels)
        return self.model.images(z, labels)

    def sample(self, n: int, label=None, grid: str | None = None, interpolate: bool = False):
        grid = grid or "samples"
        self.model.train(False)
        if interpolate:
            return self.interpolations(n, label)
        if grid == "samples":
            if self.conditional:
                labels, nrow = labels_for(label, n, self.classes, self.device)
                return self.decode_prior(labels), nrow
            return self.decode_prior(count=n), math.ceil(math.sqrt(n))
        if grid == "manifold":
            return self.manifold(n, label)
        if grid == "traverse":
            return self.traverse(n)
        if grid == "recon":
            return self.recon_grid(n, label)
        raise DlcliError(f"{self.spec.name} has no --grid {grid!r}; "
                         f"choose one of: {', '.join(self.spec.grids)}")

    def captions(self, n: int, label=None, grid: str | None = None, interpolate: bool = False):
        """Which unit each row or axis sweeps (and its KL), which rows are the inputs."""
        from dlcli.images import Captions

        if interpolate or grid in (None, "samples"):
            return super().captions(n, label, grid, interpolate)
        if grid == "recon":
            per_row, pairs = self.recon_shape(n)
            return self.recon_captions(2 * pairs)
        if grid == "traverse":
            return Captions(rows=[self.unit_name(j) for j in self.traversed_units(n)],
                            below="each row: that unit from -3 to +3, the others fixed")
        if grid == "manifold":
            down, across = self.manifold_units()
            return Captions(above=f"down: {self.unit_name(down)}, +1.64 to -1.64",
                            below=f"across: {self.unit_name(across)}, -1.64 to +1.64")
        return None

    @staticmethod
    def recon_captions(rows: int):
        from dlcli.images import Captions

        return Captions(rows=["input", "decoded"] * (rows // 2),
                        below="each pair of rows: test images, then their reconstructions")

    def unit_name(self, j: int) -> str:
        """z3 (KL 2.10 nats); on data with known factors, z3: x (MI 0.71)."""
        if self.unit_factors:
            factor, mi = self.unit_factors[j]
            return f"z{j}: {factor} (MI {mi:.2f})"
        return f"z{j}" + (f" (KL {self.latent_kl[j]:.2f} nats)" if self.latent_kl else "")

    def networks(self) -> dict:
        from dlcli.export import Network, Port, Wrapped, image_port, label_port, noise_port

        m, latent = self.model, self.config["latent"]
        label = [label_port(self.classes)] if self.conditional else []
        eps = noise_port("z", latent, "standard-normal noise, the prior's coordinates (times "
                         "the temperature, 1 for the model's own prior)")
        decoder = Wrapped(lambda eps, *y: m.images(m.from_standard(eps, *y), *y), vae=m)
        encoder = Wrapped(lambda x, *y: tuple(m.encode(x, *y)), vae=m)
        code = "q(z | x) = N(mu, exp(logvar))"
        return {
            "decoder": Network(decoder, [eps] + label, [Port(
                "images", tuple(self.data_spec["shape"]), "the mean image, each pixel's "
                "intensity in [0, 1] (for MNIST the probability of ink: 0 black background, 1 "
                "white ink)")]),
            "encoder": Network(encoder, [image_port(shape=self.data_spec["shape"])] + label,
                               [Port("mu", (latent,), f"the code's mean: {code}"),
                                Port("logvar", (latent,), f"its log-variance: {code}")]),
        }

    def units_by_information(self) -> list[int]:
        """Latent units, most informative (largest KL) first; the active ones only, when
        the checkpoint knows which those are (always at least one)."""
        latent = self.config["latent"]
        if not self.latent_kl:
            return list(range(latent))
        order = sorted(range(latent), key=lambda j: -self.latent_kl[j])
        active = [j for j in order if self.latent_kl[j] > ACTIVE_NATS]
        return active or order[:1]

    def fixed_label(self, label, n: int) -> torch.Tensor | None:
        """One class for a whole picture: --label, else one drawn at random (seeded)."""
        if not self.conditional:
            return None
        if label == "all":
            raise DlcliError("this grid shows one class; pass --label NAME or an index (or "
                             "leave it out for a random one)")
        digit = int(torch.randint(self.classes, ())) if label is None else int(label)
        return torch.full((n,), digit, dtype=torch.long, device=self.device)

    def manifold(self, n: int, label=None):
        """A side x side grid: the two most informative units swept through the Gaussian's
        5%..95% quantiles, the rest at 0 (Kingma & Welling, figure 4)."""
        side = max(2, round(math.sqrt(n)))
        latent = self.config["latent"]
        rows, cols = self.manifold_units()
        q = torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0.05, 0.95, side))
        z = torch.zeros(side, side, latent)
        z[:, :, rows] = q.flip(0).view(side, 1)  # high values at the top
        z[:, :, cols] = q.view(1, side)
        labels = self.fixed_label(label, side * side)
        return self.decode_standard(z.view(-1, latent), labels), side

    def manifold_units(self) -> tuple[int, int]:
        """The units the manifold sweeps down and across: the two most informative."""
        latent = self.config["latent"]
        if latent < 2:
            raise DlcliError("--grid manifold needs a latent of at least 2 units")
        units = self.units_by_information()
        return tuple(units[:2]) if len(units) >= 2 else (units[0], (units[0] + 1) % latent)

    def traversed_units(self, n: int) -> list[int]:
        return self.units_by_information()[:max(1, n // TRAVERSE_STEPS)]

    def traverse(self, n: int):
        """One row per informative unit, most informative on top, swept from -3 to +3
        while the others keep the values of one random code (seeded), so every row starts
        from the same digit; inactive units (KL < 0.01 nats) are left out."""
        latent = self.config["latent"]
        units = self.traversed_units(n)
        z = torch.randn(latent).repeat(len(units), TRAVERSE_STEPS, 1)
        for row, j in enumerate(units):
            z[row, :, j] = torch.linspace(-3, 3, TRAVERSE_STEPS)
        return self.decode_standard(z.view(-1, latent)), TRAVERSE_STEPS

    def test_digits(self, count: int, label=None):
        """`count` test images chosen at random (seeded), of one class when label is given."""
        if not hasattr(self, "test_data"):
            self.setup_test_data()
        split = self.test_data
        pool = torch.arange(len(split), device=split.rows.device)
        if label is not None and label != "all":
            pool = pool[split.labels[split.rows] == int(label)]
        pick = pool[torch.randperm(len(pool))[:count].to(pool.device)]
        x, y = split.take(pick)
        return to_unit_float(x.to(self.device), y.to(self.device))

    def setup_test_data(self) -> None:
        self.setup_data()

    @torch.no_grad()
    def reconstructions(self, data, count: int, per_row: int):
        """Pairs of rows: `per_row` images of `data`, then the decoded means of their codes."""
        x, y = data.take(slice(0, count))
        x, y = to_unit_float(x.to(self.device), y.to(self.device))
        return self.pair_rows(x, y, per_row)

    def pair_rows(self, x, y, per_row: int):
        mu, _ = self.model.encode(x, self.labels(y))
        recon = self.model.images(mu, self.labels(y))
        rows = []
        for i in range(0, len(x), per_row):
            rows += [x[i:i + per_row], recon[i:i + per_row]]
        return torch.cat(rows), per_row

    def recon_grid(self, n: int, label=None):
        """Whole pairs of rows: about n images, half of them test images."""
        per_row, pairs = self.recon_shape(n)
        x, y = self.test_digits(pairs * per_row, label)
        return self.pair_rows(x, y, per_row)

    @staticmethod
    def recon_shape(n: int) -> tuple[int, int]:
        """Images per row and pairs of rows for about n images in a recon grid."""
        per_row = max(1, math.ceil(math.sqrt(n)))
        return per_row, max(1, n // (2 * per_row))

    def interpolations(self, n: int, label=None):
        """Rows morphing linearly from one prior sample to another (same label per row)."""
        steps = max(2, math.ceil(math.sqrt(n)))
        rows = max(1, n // steps)
        if self.conditional and label == "all":
            rows = self.classes
        latent = self.config["latent"]
        start, end = torch.randn(rows, latent), torch.randn(rows, latent)
        eps = interpolation_path(start, end, steps)
        labels = None
        if self.conditional:
            per_row, _ = labels_for(label, rows, self.classes, self.device) \
                if label != "all" else (torch.arange(self.classes, device=self.device), 0)
            labels = per_row.repeat_interleave(steps)
        return self.decode_standard(eps, labels), steps


def read_unit_factors(meta: dict, latent: int) -> list | None:
    """A checkpoint's [factor, normalised MI] per unit, refused unless it is what dlcli
    writes (the traversal's captions are built from it); None when it has none."""
    if FACTORS_KEY not in meta:
        return None
    try:
        table = json.loads(meta[FACTORS_KEY])
        ok = (isinstance(table, list) and len(table) == latent
              and all(isinstance(row, list) and len(row) == 2 and isinstance(row[0], str)
                      and len(row[0]) <= 64 and isinstance(row[1], (int, float))
                      and math.isfinite(row[1]) for row in table))
    except ValueError:
        ok = False
    if not ok:
        raise DlcliError(f"the checkpoint's {FACTORS_KEY} metadata is not what dlcli writes (a "
                         f"damaged or edited file): it must give [factor, MI] for each of the "
                         f"{latent} latent units")
    return table


class BetaTCVAETask(VAETask):
    """beta-TCVAE (Chen et al., 2018, "Isolating Sources of Disentanglement in VAEs"): the
    beta-VAE's network, trained on

        E[log p(x | z)] - alpha * I(z; n) - beta * TC(z) - gamma * sum_j KL(q(z_j) || p(z_j))

    with alpha = gamma = 1, so that beta penalises only the total correlation, the
    dependence between latent units, and leaves alone the information the code keeps about
    the image (which a beta on the whole KL also squeezes). The three terms are estimated
    on each minibatch by minibatch-weighted sampling over the N training images
    (dlcli.models.vae.kl_decomposition) and logged as mi, tc and dwkl; nelbo and kl stay
    the true -ELBO and its analytic KL, as for every VAE."""

    losses = VAETask.losses + ("mi", "tc", "dwkl")

    def train_step(self, batch) -> dict[str, float]:
        from dlcli.models.vae import kl_decomposition, reconstruction_nats

        x, _ = batch
        mu, logvar = self.model.encode(x)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)  # one code per image
        recon = reconstruction_nats(self.model.decode(z).float(), x).mean()
        z, mu, logvar = z.float(), mu.float(), logvar.float()
        mi, tc, dwkl = (term.mean() for term in
                        kl_decomposition(z, mu, logvar, dataset_size=len(self.train_data)))
        loss = recon + mi + self.config["beta"] * tc + dwkl
        self.optimize(loss, self.optimizers["model"])
        self.after_step()
        kl = self.model.kl(mu.detach(), logvar.detach()).sum(1).mean().item()  # analytic
        recon = recon.item()
        return {"loss": loss.item(), "nelbo": recon + kl, "recon": recon, "kl": kl,
                "mi": mi.item(), "tc": tc.item(), "dwkl": dwkl.item()}
