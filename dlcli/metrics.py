"""Metrics for generated images, judged by a trained classifier (see tasks/classify.load_judge).

- cfid: Frechet distance between Gaussians fitted to the judge's penultimate features of
  generated images and of real test images (FID, Heusel et al. 2017, with an MNIST
  classifier in place of Inception).
- label_entropy: entropy in bits of the histogram of predicted labels (log2 10 = 3.32
  when every digit appears equally often; 0 when every sample is the same digit).
- confidence: mean top-class probability (are the samples recognisable digits?).
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


def label_entropy(predicted: torch.Tensor, classes: int) -> float:
    """Entropy in bits of the histogram of predicted labels (0.0, never -0.0, for one label)."""
    hist = torch.bincount(predicted.cpu(), minlength=classes).double()
    p = hist[hist > 0] / hist.sum()
    return max(0.0, float(-(p * p.log2()).sum()))


def score_samples(judge, fake: torch.Tensor, real: torch.Tensor, labels=None) -> dict:
    """cfid, label_entropy, confidence (and label_accuracy when labels are given)."""
    fake_feats, fake_probs = judge_outputs(judge, fake)
    real_feats, _ = judge_outputs(judge, real)
    predicted = fake_probs.argmax(1)
    out = {
        "cfid": frechet_distance(gaussian_stats(fake_feats), gaussian_stats(real_feats)),
        "label_entropy": label_entropy(predicted, fake_probs.shape[1]),
        "confidence": float(fake_probs.max(1).values.mean()),
    }
    if labels is not None:
        labels = labels.cpu()
        out["label_accuracy"] = float((predicted == labels).double().mean())
        out["label_accuracy_per_class"] = [
            float((predicted[labels == c] == c).double().mean()) if (labels == c).any() else None
            for c in range(fake_probs.shape[1])
        ]
    return out
