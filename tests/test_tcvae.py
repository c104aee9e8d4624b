"""beta-TCVAE (Chen et al., 2018): the KL split into index-code mutual information, total
correlation and dimension-wise KL by minibatch-weighted sampling, checked on codes whose
answer is known; and its training step."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import run_cli

from dlcli.models.vae import kl_decomposition, kl_per_dim, log_normal

pytestmark = pytest.mark.usefixtures("one_thread")

N = 100_000  # the dataset size the estimator is told


def gaussian_codes(batch: int, correlation: float, sigma: float = 0.5, seed: int = 0):
    """Two-unit codes whose aggregate posterior is Gaussian: means drawn from N(0, C) with
    C's off-diagonal `correlation`, each image's posterior N(mean, sigma^2 I). Then
    q(z) = N(0, C + sigma^2 I), whose total correlation is known in closed form."""
    g = torch.Generator().manual_seed(seed)
    cov = torch.tensor([[1.0, correlation], [correlation, 1.0]])
    mu = torch.randn(batch, 2, generator=g) @ torch.linalg.cholesky(cov).T
    logvar = torch.full_like(mu, 2 * math.log(sigma))
    z = mu + sigma * torch.randn(mu.shape, generator=g)
    aggregate = cov + sigma ** 2 * torch.eye(2)
    true_tc = 0.5 * (aggregate.diagonal().log().sum() - torch.logdet(aggregate))
    return z, mu, logvar, float(true_tc)


def test_the_three_terms_sum_to_the_kl():
    z, mu, logvar, _ = gaussian_codes(400, 0.5)
    mi, tc, dwkl = kl_decomposition(z, mu, logvar, N)
    # exactly, draw by draw: the estimates of log q(z) and log prod_j q(z_j) cancel
    one_sample_kl = log_normal(z, mu, logvar) - log_normal(z)
    assert torch.allclose(mi + tc + dwkl, one_sample_kl, atol=1e-4)
    # and in expectation the analytic KL of the ELBO: mean over 50 draws of the codes
    sums = [sum(t.mean() for t in kl_decomposition(mu + 0.5 * torch.randn_like(mu), mu,
                                                   logvar, N)) for _ in range(50)]
    analytic = kl_per_dim(mu, logvar).sum(1).mean()
    assert float(torch.stack(sums).mean()) == pytest.approx(float(analytic), abs=0.03)


def test_total_correlation_of_independent_and_correlated_codes():
    # Overlapping posteriors: the estimates of log q(z) and log q(z_j) sit log N below the
    # truth (the 1/(N M) weights), so tc reads (latent - 1) log N above the true TC.
    offset = math.log(N)
    z, mu, logvar, true_tc = gaussian_codes(2000, 0.0)
    independent = float(kl_decomposition(z, mu, logvar, N)[1].mean()) - offset
    assert true_tc == 0 and independent == pytest.approx(0.0, abs=0.03)
    z, mu, logvar, true_tc = gaussian_codes(2000, 0.9)
    correlated = float(kl_decomposition(z, mu, logvar, N)[1].mean()) - offset
    assert true_tc == pytest.approx(0.365, abs=0.001)
    assert correlated == pytest.approx(true_tc, abs=0.05)
    assert correlated > independent + 0.3


def test_mutual_information_is_bounded_by_the_batch():
    """Codes so sharp that each image's own posterior dominates: log q(z_i) is its own
    density less log(N M), so mi is that constant, whatever the codes."""
    mu = torch.randn(64, 3) * 5
    logvar = torch.full_like(mu, math.log(1e-4))
    z = mu + 0.01 * torch.randn_like(mu)
    mi, _, _ = kl_decomposition(z, mu, logvar, N)
    assert torch.allclose(mi, torch.full_like(mi, math.log(N * 64)), atol=1e-3)


def test_train_step_and_the_logged_terms(tmp_path):
    """One epoch on the bundled MNIST subset: the logged terms are finite, the loss weighs
    tc by beta, and val_loss is the true -ELBO (recon + analytic KL)."""
    proc = run_cli("train", "beta-tcvae", "--epochs", "1", "--set", "hidden=[32]",
                   "--set", "latent=4", "--set", "val_size=500", "--set", "batch_size=128",
                   "--threads", "1", "--run-dir", tmp_path / "run", cwd=tmp_path,
                   env={"XDG_CACHE_HOME": str(tmp_path / "cache")}, check=0)
    assert proc.stdout.strip().endswith(".safetensors")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text()
               .splitlines()]
    steps = [r for r in records if "tc" in r]
    assert steps, records[:3]
    for r in steps:
        assert r["loss"] == pytest.approx(r["recon"] + r["mi"] + 6.0 * r["tc"] + r["dwkl"],
                                          rel=1e-4)
    epoch = [r for r in records if r["kind"] == "epoch"][-1]
    assert epoch["val_loss"] == pytest.approx(epoch["val_recon"] + epoch["val_kl"])
    assert 50 < epoch["val_loss"] < 550
