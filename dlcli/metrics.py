"""Metrics for generated images, judged by a trained classifier (see tasks/classify.load_judge).

The judge is a cnn trained on the same data as the model it scores (same dataset, image
shape and classes).

- cfid: Frechet distance between Gaussians fitted to the judge's penultimate features of
  generated images and of real test images (FID, Heusel et al. 2017, with a classifier of
  the dataset in place of Inception).
- label_entropy: entropy in bits of the histogram of predicted labels (at most log2 of the
  number of classes, when every class appears equally often: 3.32 for ten; 0 when every
  sample is of the same class).
- confidence: mean top-class probability (are the samples recognisable as their class?).
- label_accuracy: for conditional models, how often the judge agrees with the label asked for.
"""

from __future__ import annotations

import torch


def gaussian_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    f = features.double()
    mean = f.mean(0)
    centred = f - mean
    return mean, centred.T @ centred / (len(f) - 1)


def frechet_distance(stats_a, stats_b) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)).

    Tr((S_a S_b)^(1/2)) is the sum of square roots of the eigenvalues of
    S_a^(1/2) S_b S_a^(1/2), which is symmetric, so eigvalsh keeps it real and stable."""
    (mu_a, s_a), (mu_b, s_b) = stats_a, stats_b
    vals, vecs = torch.linalg.eigh(s_a)
    root_a = vecs @ torch.diag(vals.clamp(min=0).sqrt()) @ vecs.T
    middle = torch.linalg.eigvalsh(root_a @ s_b @ root_a).clamp(min=0).sqrt().sum()
    return float((mu_a - mu_b).pow(2).sum() + torch.trace(s_a) + torch.trace(s_b) - 2 * middle)


@torch.no_grad()
def judge_outputs(judge, images: torch.Tensor, batch_size: int = 1000):
    """Penultimate features and class probabilities of images in [0, 1], batched."""
    feats, probs = [], []
    model = judge.model
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].to(judge.device).float()
        f = model.features(x)
        feats.append(f.cpu())
        probs.append(model.out(f).softmax(1).cpu())
    return torch.cat(feats), torch.cat(probs)


def label_entropy(counts: torch.Tensor) -> float:
    """Entropy in bits of a histogram of predicted labels (0.0, never -0.0, for one label)."""
    p = counts[counts > 0].double() / counts.sum()
    return max(0.0, float(-(p * p.log2()).sum()))


class RunningGaussian:
    """Mean and covariance of feature rows seen batch by batch, in float64 (Chan et al.'s
    pairwise update): the scores of a million samples need no more memory than of one batch."""

    def __init__(self):
        self.n, self.mean, self.scatter = 0, None, None

    def add(self, features: torch.Tensor) -> None:
        f = features.double()
        n, mean = len(f), f.mean(0)
        centred = f - mean
        scatter = centred.T @ centred
        if self.n == 0:
            self.n, self.mean, self.scatter = n, mean, scatter
            return
        total = self.n + n
        delta = mean - self.mean
        self.scatter = self.scatter + scatter + torch.outer(delta, delta) * (self.n * n / total)
        self.mean = self.mean + delta * (n / total)
        self.n = total

    def stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mean, self.scatter / (self.n - 1)


@torch.no_grad()
def knn_radii(points: torch.Tensor, k: int, chunk: int = 1000) -> torch.Tensor:
    """Distance from each point to its k-th nearest other point."""
    radii = [torch.cdist(points[i:i + chunk], points).kthvalue(k + 1, dim=1).values
             for i in range(0, len(points), chunk)]  # k + 1: the nearest is the point itself
    return torch.cat(radii)


@torch.no_grad()
def manifold_coverage(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor,
                      chunk: int = 1000) -> float:
    """The fraction of `points` inside at least one ball (centre, radius)."""
    inside = sum(int((torch.cdist(points[i:i + chunk], centres) <= radii).any(1).sum())
                 for i in range(0, len(points), chunk))
    return inside / len(points)


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall of Kynkäänniemi et al. (2019), on feature vectors.

    Each set's manifold is the union of balls around its points, each ball reaching to the
    point's k-th nearest neighbour in the same set. Precision: the fraction of fakes inside
    the real manifold (are the samples realistic?); recall: the fraction of reals inside
    the fake manifold (does the generator cover the data's variety?)."""
    real, fake = real.double(), fake.double()
    precision = manifold_coverage(fake, real, knn_radii(real, k))
    recall = manifold_coverage(real, fake, knn_radii(fake, k))
    return precision, recall


@torch.no_grad()
def score_samples(judge, fake_batches, real_batches) -> dict:
    """cfid, precision, recall, label_entropy, confidence (and label_accuracy when labels
    are given) of the generated images in `fake_batches`, an iterable of (images in [0, 1],
    labels or None), against the real images in `real_batches` (an iterable of image
    batches in [0, 1]). The judge's features are kept (a few hundred floats an image) for
    precision and recall; the images are scored one batch at a time and dropped."""
    fake, fake_features, real_features = RunningGaussian(), [], []
    hist = confidence = correct = asked = None
    for images, labels in fake_batches:
        for i in range(0, len(images), 1000):
            x = images[i:i + 1000].to(judge.device).float()
            features = judge.model.features(x)
            probs = judge.model.out(features).softmax(1).cpu()
            fake.add(features.cpu())
            fake_features.append(features.cpu())
            predicted = probs.argmax(1)
            classes = probs.shape[1]
            if hist is None:
                hist, confidence = torch.zeros(classes, dtype=torch.float64), 0.0
                correct, asked = torch.zeros(classes), torch.zeros(classes)
            hist += torch.bincount(predicted, minlength=classes).double()
            confidence += float(probs.max(1).values.double().sum())
            if labels is not None:
                y = labels[i:i + 1000].cpu()
                asked += torch.bincount(y, minlength=classes).float()
                correct += torch.bincount(y[predicted == y], minlength=classes).float()
    real = RunningGaussian()
    for images in [real_batches] if torch.is_tensor(real_batches) else real_batches:
        real_features.append(judge_outputs(judge, images)[0])
        real.add(real_features[-1])
    precision, recall = precision_recall(torch.cat(real_features), torch.cat(fake_features))
    out = {
        "cfid": frechet_distance(fake.stats(), real.stats()),
        "precision": precision,
        "recall": recall,
        "label_entropy": label_entropy(hist),
        "confidence": confidence / fake.n,
    }
    if asked.sum() > 0:
        out["label_accuracy"] = float(correct.sum() / asked.sum())
        out["label_accuracy_per_class"] = [
            float(c / a) if a > 0 else None for c, a in zip(correct, asked)]
    return out
