"""How disentangled a code is, on data whose factors of variation are known (`shapes`).

The metrics are computed as disentanglement_lib computes them (Locatello et al., 2019,
"Challenging Common Assumptions in the Unsupervised Learning of Disentangled
Representations", https://github.com/google-research/disentanglement_lib: evaluation/
metrics/mig.py, factor_vae.py and utils.py, with the settings of its
unsupervised_study_v1 metric configs), so the numbers can stand beside the published ones.
The code of an image is the encoder's mean, mu(x), as there.

- `mig`, the Mutual Information Gap (Chen et al., 2018, "Isolating Sources of
  Disentanglement in VAEs", section 4.1): for each factor v_k, the mutual information
  I(z_j; v_k) of the two latent units that carry most about it; their gap, divided by the
  factor's entropy H(v_k); the mean over factors. 1: each factor is carried by one unit
  alone, wholly; 0: by none, or by two equally.
- `factor_vae_score` (Kim & Mnih, 2018, "Disentangling by Factorising", section 4): hold
  one factor fixed over a batch of images; the unit whose variance (relative to its
  variance over all the data) is least should be the one carrying that factor. A
  majority-vote classifier from that unit to the factor: its accuracy on fresh votes.
- `latent_factors`: for each active unit, the factor it carries most information about
  and that information over the factor's entropy (the normalised mutual information, in
  [0, 1]) - what the traversal pictures label their rows with.

Mutual information and entropy are in nats (sklearn's mutual_info_score, which
disentanglement_lib calls, uses the natural log); their ratio has no unit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

POINTS = 10_000  # mig.num_train; factor_vae_score.num_variance_estimate
BINS = 20  # discretizer.num_bins (histogram_discretizer)
VOTE_BATCH = 64  # factor_vae_score.batch_size: images per vote, one factor fixed
TRAIN_VOTES, EVAL_VOTES = 10_000, 5_000  # factor_vae_score.num_train, num_eval
PRUNE_STD = 0.05  # prune_dims.threshold: units whose code's std over the data is below it
SEED = 0  # evaluation.random_seed: the same factors drawn for every model
ENCODE_CHUNK = 1024  # images per encoder call


@dataclass
class FactorData:
    """Images with known factors, on a complete grid: every combination of factor values
    is an image (as dSprites, as `shapes`). Sampled as disentanglement_lib samples its
    ground-truth data: each factor uniformly and independently, then the image of those
    factor values."""
    images: object  # indexable by a tensor of rows: uint8 (n, C, H, W)
    factors: torch.Tensor  # (N, K) int64: each row's factor indices
    names: list[str]
    sizes: list[int]
    labels: torch.Tensor | None = None  # (N,) class labels, for encoders that take them

    def __post_init__(self):
        # the row of each combination of factor values, by the combination's mixed-radix index
        self.strides = torch.tensor([math.prod(self.sizes[k + 1:]) for k in range(len(self.sizes))])
        self.row_of = torch.full((math.prod(self.sizes),), -1, dtype=torch.long)
        self.row_of[self.factors @ self.strides] = torch.arange(len(self.factors))
        if (self.row_of < 0).any():
            raise ValueError("the data does not hold every combination of its factors")

    def sample_factors(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.stack([torch.randint(size, (n,), generator=generator) for size in self.sizes], 1)

    def observations(self, factors: torch.Tensor):
        """(images, labels) of these factor values; labels None when the data has none."""
        rows = self.row_of[factors @ self.strides]
        images = self.images[rows.to(self.images.device)]
        return images, (self.labels[rows.to(self.labels.device)]
                        if self.labels is not None else None)


def codes_of(encode, data: FactorData, factors: torch.Tensor) -> torch.Tensor:
    """The mean codes (n, units) of the images of `factors`, a chunk at a time;
    encode(images, labels) -> codes."""
    return torch.cat([encode(*data.observations(factors[i:i + ENCODE_CHUNK])).double().cpu()
                      for i in range(0, len(factors), ENCODE_CHUNK)])


# ---- mutual information between binned codes and factors --------------------------------

def discretize(codes: torch.Tensor, bins: int = BINS) -> torch.Tensor:
    """Each unit's values into `bins` equal-width bins over that unit's own min..max,
    as np.digitize(x, np.histogram(x, bins)[1][:-1]) does (utils._histogram_discretize):
    (n, units) float -> (n, units) bin indices 0 .. bins - 1, the maximum in the last bin.
    A constant unit falls into one bin."""
    low, high = codes.min(0).values, codes.max(0).values
    empty = low == high  # np.histogram widens an empty range to value +- 0.5
    low, high = torch.where(empty, low - 0.5, low), torch.where(empty, high + 0.5, high)
    edges = low + (high - low) * torch.linspace(0, 1, bins + 1, dtype=codes.dtype).view(-1, 1)
    inner = edges[1:-1].T.contiguous()  # (units, bins - 1): the edges after the first
    return torch.searchsorted(inner, codes.T.contiguous(), right=True).T


def mutual_information(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """I(a_i; b_k) in nats for every column i of a and k of b, from the counts of their
    joint values (sklearn.metrics.mutual_info_score): sum p(x, y) log(p(x, y) / p(x) p(y)).
    a: (n, I), b: (n, K) non-negative integers -> (I, K) float64. Counts are integers, so
    the result does not depend on the order of the n points."""
    n = len(a)
    out = torch.zeros(a.shape[1], b.shape[1], dtype=torch.float64)
    for i in range(a.shape[1]):
        x = a[:, i]
        nx = int(x.max()) + 1
        px = x.bincount(minlength=nx).double() / n
        for k in range(b.shape[1]):
            y = b[:, k]
            ny = int(y.max()) + 1
            py = y.bincount(minlength=ny).double() / n
            pxy = (x * ny + y).bincount(minlength=nx * ny).double().view(nx, ny) / n
            seen = pxy > 0
            out[i, k] = (pxy[seen] * (pxy[seen] / (px.view(-1, 1) * py.view(1, -1))[seen]).log()).sum()
    return out.clamp_min(0)  # rounding can leave -1e-17 where the truth is 0


def entropy(b: torch.Tensor) -> torch.Tensor:
    """H(b_k) in nats of each column: I(b_k; b_k), as utils.discrete_entropy computes it."""
    return torch.stack([mutual_information(b[:, k:k + 1], b[:, k:k + 1])[0, 0]
                        for k in range(b.shape[1])])


def mig_from_codes(codes: torch.Tensor, factors: torch.Tensor, bins: int = BINS):
    """The MIG of codes (n, units) of points with factors (n, K), and the normalised mutual
    information matrix I(z_j; v_k) / H(v_k), (units, K), it is computed from
    (mig.compute_mig: sort each factor's column, top minus second, over the entropy; mean)."""
    mi = mutual_information(discretize(codes, bins), factors)
    normalised = mi / entropy(factors).view(1, -1)
    if len(mi) < 2:  # one unit: the gap is to nothing
        return float(normalised.max(0).values.mean()), normalised
    top = normalised.topk(2, dim=0).values
    return float((top[0] - top[1]).mean()), normalised


def mig(encode, data: FactorData, points: int = POINTS, seed: int = SEED):
    """The Mutual Information Gap of `encode` (images -> mean codes) on `points` images of
    factors drawn at random (seeded): (score, normalised MI matrix (units, factors))."""
    factors = data.sample_factors(points, torch.Generator().manual_seed(seed))
    return mig_from_codes(codes_of(encode, data, factors), factors)


# ---- the FactorVAE metric ---------------------------------------------------------------

def factor_vae_score(encode, data: FactorData, seed: int = SEED, batch: int = VOTE_BATCH,
                     train_votes: int = TRAIN_VOTES, eval_votes: int = EVAL_VOTES,
                     variance_points: int = POINTS) -> dict:
    """Kim & Mnih's metric as factor_vae.compute_factor_vae computes it: the global
    variance of each unit over `variance_points` images (ddof 1); units whose std is below
    0.05 pruned (collapsed to the prior); each vote: a factor k at random, `batch` images
    sharing one value of it (the other factors random), the active unit of least variance
    over the batch divided by its global variance; the classifier gives each unit the
    factor it got most votes for (np.argmax: ties to the first), trained on `train_votes`
    votes; the score is its accuracy on `eval_votes` fresh ones (0 when no unit is active).
    Returns eval_accuracy, train_accuracy, num_active_dims."""
    gen = torch.Generator().manual_seed(seed)
    variances = codes_of(encode, data, data.sample_factors(variance_points, gen)).var(0)
    active = (variances.sqrt() >= PRUNE_STD).nonzero().view(-1)
    if not len(active):
        return {"eval_accuracy": 0.0, "train_accuracy": 0.0, "num_active_dims": 0}

    def votes(count: int) -> torch.Tensor:
        """(factors, units) counts: how often each factor, held fixed, picked each unit."""
        tally = torch.zeros(len(data.sizes), len(variances), dtype=torch.long)
        per_call = max(1, ENCODE_CHUNK // batch)  # votes encoded together
        for start in range(0, count, per_call):
            n = min(per_call, count - start)
            fixed = torch.randint(len(data.sizes), (n,), generator=gen)
            factors = data.sample_factors(n * batch, gen).view(n, batch, -1)
            held = factors[torch.arange(n), 0, fixed]  # each vote's first image's value
            factors[torch.arange(n), :, fixed] = held.view(-1, 1)
            codes = codes_of(encode, data, factors.view(n * batch, -1)).view(n, batch, -1)
            local = codes.var(1)[:, active] / variances[active]
            unit = active[local.argmin(1)]
            tally.index_put_((fixed, unit), torch.ones(n, dtype=torch.long), accumulate=True)
        return tally

    train = votes(train_votes)
    classifier = train.argmax(0)  # each unit's factor
    units = torch.arange(len(variances))

    def accuracy(tally: torch.Tensor) -> float:
        return float(tally[classifier, units].sum() / tally.sum())

    return {"eval_accuracy": accuracy(votes(eval_votes)), "train_accuracy": accuracy(train),
            "num_active_dims": len(active)}


# ---- what each unit carries -------------------------------------------------------------

def latent_factors(normalised: torch.Tensor, names: list[str], active) -> list[dict]:
    """For each active unit j (its index in `active`, a mask or indices), the factor it
    carries most information about, and I(z_j; v_k) / H(v_k) for it."""
    units = (torch.as_tensor(active).nonzero().view(-1).tolist()
             if torch.as_tensor(active).dtype == torch.bool else list(active))
    out = []
    for j in units:
        k = int(normalised[j].argmax())
        out.append({"unit": j, "factor": names[k], "mi": round(float(normalised[j, k]), 4)})
    return out


def unit_factors(normalised: torch.Tensor, names: list[str]) -> list[list]:
    """[factor, normalised MI] of every unit (what a checkpoint keeps for its pictures)."""
    return [[names[int(row.argmax())], round(float(row.max()), 4)] for row in normalised]


def disentanglement_metrics(encode, data: FactorData, active) -> dict:
    """What `evaluate` reports for an encoder on data with known factors: mig,
    factor_vae_score (and the units it kept), latent_factors of the `active` units, and
    the (units, factors) normalised mutual information they come from."""
    score, normalised = mig(encode, data)
    votes = factor_vae_score(encode, data)
    return {"mig": score, "factor_vae_score": votes["eval_accuracy"],
            "factor_vae_units": votes["num_active_dims"],
            "latent_factors": latent_factors(normalised, data.names, active),
            "mutual_information": {"factors": data.names, "units": [
                [round(v, 4) for v in row] for row in normalised.tolist()]}}


def plot_mutual_information(normalised: torch.Tensor, names: list[str], path, title: str = "",
                            units: list[int] | None = None) -> None:
    """A unit x factor heatmap of I(z_j; v_k) / H(v_k), the value written in each cell,
    written atomically to `path` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dlcli.fileio import atomic_write

    units = list(range(len(normalised))) if units is None else units
    values = normalised[units].numpy()
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2.4, 0.42 * len(units) + 1.6))
    image = ax.imshow(values, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(names)), names)
    ax.set_yticks(range(len(units)), [f"z{j}" for j in units])
    ax.set_xlabel("factor of variation")
    ax.set_ylabel("latent unit")
    for r, row in enumerate(values):
        for c, v in enumerate(row):
            ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=8,
                    color="black" if v > 0.6 else "white")
    fig.colorbar(image, ax=ax, label="I(z; factor) / H(factor)")
    ax.set_title(title or "mutual information of each unit with each factor", fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
