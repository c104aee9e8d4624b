"""The disentanglement metrics on constructed codes whose answers are known: a code that
is the factors scores as high as 20 bins allow, a rotation of it scores low, a constant
code scores 0, and the MIG does not depend on the order of the points."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from dlcli.disentanglement import (
    FactorData,
    discretize,
    entropy,
    factor_vae_score,
    latent_factors,
    mig,
    mig_from_codes,
    mutual_information,
    plot_mutual_information,
)

SIZES = [3, 6, 10, 16, 16]  # the small shapes grid: every factor fits in 20 bins
NAMES = ["shape", "scale", "orientation", "x", "y"]


def grid(sizes=SIZES) -> torch.Tensor:
    """Every combination of factor values, in mixed-radix order (the last fastest)."""
    return torch.cartesian_prod(*[torch.arange(n) for n in sizes])


def factor_data(sizes=SIZES) -> FactorData:
    """'Images' that are their factor values, so an encoder can be any function of them."""
    factors = grid(sizes)
    return FactorData(factors.double(), factors, NAMES[:len(sizes)], list(sizes))


def standardised(factors: torch.Tensor) -> torch.Tensor:
    f = factors.double()
    return (f - f.mean(0)) / f.std(0)


def rotation(n: int, seed: int = 0) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed),
                                       dtype=torch.float64))
    return q


# Every unit an equal mix of every factor, with its own signs (orthogonal rows).
MIXED = torch.tensor([[1, 1, 1, 1, 1], [1, -1, 1, -1, 1], [1, 1, -1, -1, 1], [1, -1, -1, 1, -1],
                      [1, 1, 1, -1, -1]], dtype=torch.float64)


def sampled(points=10_000, sizes=SIZES, seed=1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(n, (points,), generator=g) for n in sizes], 1)


def test_bins_as_numpy_histogram_and_digitize():
    codes = torch.randn(1000, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    codes[:, 3] = 0.7  # a constant unit
    binned = discretize(codes)
    for j in range(4):
        x = codes[:, j].numpy()
        reference = np.digitize(x, np.histogram(x, 20)[1][:-1]) - 1  # numpy counts from 1
        assert np.array_equal(binned[:, j].numpy(), reference)
    assert binned[:, 3].unique().tolist() == [binned[0, 3].item()]


def test_mutual_information_and_entropy_in_nats():
    x = torch.arange(12) % 4  # uniform over 4 values
    y = torch.arange(12) % 3  # independent of x (12 = lcm)
    both = torch.stack([x, y], 1)
    mi = mutual_information(both, both)
    assert mi[0, 0] == pytest.approx(math.log(4)) and mi[1, 1] == pytest.approx(math.log(3))
    assert mi[0, 1] == pytest.approx(0, abs=1e-12)
    assert torch.allclose(entropy(both), torch.tensor([math.log(4), math.log(3)], dtype=torch.float64))


def test_a_perfectly_disentangled_code_scores_as_high_as_the_binning_allows():
    factors = sampled()
    score, normalised = mig_from_codes(standardised(factors), factors)
    # each unit holds its factor whole (<= 20 values: the bins lose nothing); the gap is
    # short of 1 only by the chance information of independent units in 10,000 points
    assert torch.allclose(normalised.diagonal(), torch.ones(5, dtype=torch.float64))
    assert 0.98 < score < 1
    # 32 and 40 values in 20 bins: each unit keeps what its bins can hold, no more
    full = sampled(sizes=[3, 6, 40, 32, 32])
    score, normalised = mig_from_codes(standardised(full), full)
    binned = discretize(full.double())
    kept = entropy(binned) / entropy(full)
    assert torch.allclose(normalised.diagonal(), kept) and kept[2:].max() < 0.95
    assert score == pytest.approx(float(kept.mean()), abs=0.01)


def test_an_entangled_rotation_scores_low_and_a_constant_code_zero():
    factors = sampled()
    codes = standardised(factors) @ rotation(5)
    score, _ = mig_from_codes(codes, factors)
    assert score < 0.2
    score, _ = mig_from_codes(standardised(factors) @ MIXED.T, factors)
    assert score < 0.05
    score, normalised = mig_from_codes(torch.full((10_000, 5), 0.3, dtype=torch.float64), factors)
    assert score == 0 and normalised.abs().max() == 0


def test_one_factor_in_two_units_has_no_gap():
    factors = sampled()
    codes = standardised(factors)
    codes = torch.cat([codes, codes[:, :1]], 1)  # the shape twice
    _, normalised = mig_from_codes(codes, factors)
    score, _ = mig_from_codes(codes, factors)
    assert normalised[0, 0] == normalised[5, 0] == pytest.approx(1)
    assert score == pytest.approx(0.8, abs=0.01)  # shape's gap 0, the four others' 1


def test_the_mig_does_not_depend_on_the_order_of_the_points():
    factors = sampled()
    codes = standardised(factors) @ rotation(5, seed=3) + 0.1 * torch.randn(10_000, 5, dtype=torch.float64)
    score, normalised = mig_from_codes(codes, factors)
    for seed in range(3):
        order = torch.randperm(10_000, generator=torch.Generator().manual_seed(seed))
        again, normalised_again = mig_from_codes(codes[order], factors[order])
        assert again == score and torch.equal(normalised_again, normalised)


def test_mig_samples_the_factor_grid():
    data = factor_data()
    perfect, _ = mig(lambda x, _: x, data)
    entangled, _ = mig(lambda x, _: standardised(x) @ rotation(5), data)
    assert perfect > 0.98 and entangled < 0.2
    assert mig(lambda x, _: x, data)[0] == perfect  # seeded: the same points every time


def test_factor_vae_score_of_known_codes():
    data = factor_data()
    quick = dict(train_votes=500, eval_votes=300, variance_points=2000)
    perfect = factor_vae_score(lambda x, _: x, data, **quick)
    assert perfect == {"eval_accuracy": 1.0, "train_accuracy": 1.0, "num_active_dims": 5}
    # a rotation keeps some unit closest to each factor: the metric is lenient with it
    rotated = factor_vae_score(lambda x, _: standardised(x) @ rotation(5), data, **quick)
    assert 0.5 < rotated["eval_accuracy"] < 0.95
    # every unit an equal mix: holding any factor fixed quiets every unit alike (chance: 1/5)
    mixed = factor_vae_score(lambda x, _: standardised(x) @ MIXED.T, data, **quick)
    assert mixed["eval_accuracy"] < 0.4
    # a collapsed unit (std < 0.05) is pruned: it would win every vote with variance 0
    collapsed = factor_vae_score(lambda x, _: torch.cat([x, 0.01 * x[:, :1]], 1), data, **quick)
    assert collapsed["num_active_dims"] == 5 and collapsed["eval_accuracy"] == 1.0
    constant = factor_vae_score(lambda x, _: torch.zeros(len(x), 4), data, **quick)
    assert constant == {"eval_accuracy": 0.0, "train_accuracy": 0.0, "num_active_dims": 0}


def test_factor_data_finds_each_combination():
    data = factor_data([2, 3, 4])
    factors = torch.tensor([[1, 2, 3], [0, 0, 0], [1, 0, 2]])
    assert torch.equal(data.observations(factors)[0], factors.double())
    with pytest.raises(ValueError, match="every combination"):
        FactorData(torch.zeros(5), grid([2, 3])[:5], ["a", "b"], [2, 3])


def test_latent_factors_name_what_each_active_unit_carries(tmp_path):
    factors = sampled()
    codes = torch.cat([standardised(factors)[:, [3, 0]], torch.zeros(10_000, 1, dtype=torch.float64)], 1)
    _, normalised = mig_from_codes(codes, factors)
    table = latent_factors(normalised, NAMES, torch.tensor([True, True, False]))
    assert table == [{"unit": 0, "factor": "x", "mi": 1.0}, {"unit": 1, "factor": "shape", "mi": 1.0}]
    plot_mutual_information(normalised, NAMES, tmp_path / "mi.png")
    assert (tmp_path / "mi.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob("*.tmp"))  # written atomically: no temporary left


# ---- in training, evaluate and the traversal ---------------------------------------------

@pytest.fixture
def shapes_vae(monkeypatch):
    """A tiny beta-vae set up on the small shapes grid at 32 px, trained one step."""
    from dlcli.config import resolve_config
    from dlcli.registry import get_spec

    config = resolve_config("beta-vae", None, ["dataset=shapes", "shapes_grid=small",
                                               "image_size=32", "hidden=[16]", "latent=3",
                                               "val_size=500"], epochs=1, batch_size=64)
    spec = get_spec("beta-vae")
    torch.manual_seed(0)
    task = spec.load_task()(spec, config, torch.device("cpu"))
    task.setup_data()
    task.train_step(task.train_batches(0)[0])
    task.train_mode(False)
    return task


def test_validation_measures_the_mig_and_the_checkpoint_keeps_each_units_factor(shapes_vae, tmp_path):
    from dlcli.checkpoint import load_checkpoint, save_checkpoint

    task = shapes_vae
    logs = task.validate()
    assert 0 <= logs["val_mig"] <= 1
    assert len(task.unit_factors) == 3 and all(f in NAMES for f, _ in task.unit_factors)
    path = save_checkpoint(tmp_path / "m.safetensors", model="beta-vae", config=task.config,
                           modules=task.modules, extra=task.checkpoint_extra())
    ckpt = load_checkpoint(path)
    loaded = task.spec.load_task().from_checkpoint(task.spec, ckpt, torch.device("cpu"))
    assert loaded.unit_factors == task.unit_factors  # sampling needs no data
    rows = loaded.captions(27, grid="traverse").rows
    factor, mi = task.unit_factors[loaded.traversed_units(27)[0]]
    assert rows[0].endswith(f": {factor} (MI {mi:.2f})") and rows[0].startswith("z")


def test_a_damaged_unit_factor_table_is_refused(shapes_vae):
    from dlcli.errors import DlcliError
    from dlcli.tasks.vae import read_unit_factors

    assert read_unit_factors({}, 3) is None
    for bad in ('[["x", 0.5]]', '{"a": 1}', "[[1, 2], [3, 4], [5, 6]]", "not json",
                '[["x", NaN], ["y", 0.1], ["x", 0.2]]'):
        with pytest.raises(DlcliError, match="latent_factors metadata is not what dlcli writes"):
            read_unit_factors({"latent_factors": bad}, 3)


def test_evaluate_adds_the_disentanglement_metrics(shapes_vae, monkeypatch):
    import functools

    import dlcli.disentanglement as dis

    quick = functools.partial(dis.factor_vae_score, train_votes=200, eval_votes=100,
                              variance_points=1000)
    monkeypatch.setattr(dis, "factor_vae_score", quick)
    m = shapes_vae.evaluate(iwae_k=2)
    assert 0 <= m["mig"] <= 1 and 0 <= m["factor_vae_score"] <= 1
    assert m["mutual_information"]["factors"] == NAMES
    assert len(m["mutual_information"]["units"]) == 3
    active = [j for j, kl in enumerate(m["kl_per_unit"]) if kl > 0.01]
    assert [row["unit"] for row in m["latent_factors"]] == active
    for row in m["latent_factors"]:
        assert row["mi"] == max(m["mutual_information"]["units"][row["unit"]])


@pytest.mark.slow
def test_train_evaluate_plot_and_traverse_end_to_end(cli, isolated):
    proc = cli("train", "beta-vae", "--dataset", "shapes", "--set", "shapes_grid=small",
               "--set", "image_size=32", "--set", "hidden=[64]", "--set", "latent=4",
               "--epochs", "1", "--threads", "1", "--run-dir", "run", check=0)
    ckpt = proc.stdout.strip().splitlines()[-1]
    proc = cli("evaluate", ckpt, "--json", "--iwae-k", "2", "--plot", "mi.png", check=0)
    m = json.loads(proc.stdout)
    assert {"mig", "factor_vae_score", "latent_factors"} <= m.keys()
    assert (isolated / "mi.png").read_bytes()[:4] == b"\x89PNG"
    cli("sample", "beta-vae", "--checkpoint", ckpt, "--grid", "traverse", "-o", "t.png", check=0)
    assert (isolated / "t.png").is_file()


@pytest.mark.slow
def test_the_beta_tcvae_shapes_preset_disentangles(cli, isolated):
    """The shipped preset (about 6 minutes on 2 cores): the best epoch's MIG clears 0.25, and
    x, y and scale each have a unit of their own."""
    proc = cli("train", "beta-tcvae", "--preset", "beta-tcvae-shapes", "--run-dir", "run",
               check=0)
    ckpt = proc.stdout.strip().splitlines()[-1]
    records = [json.loads(line) for line in (isolated / "run" / "metrics.jsonl").open()]
    epochs = [r for r in records if r.get("kind") == "epoch"]
    best = min(epochs, key=lambda r: r["val_loss"])
    assert best["val_mig"] >= 0.25
    proc = cli("evaluate", ckpt, "--json", "--iwae-k", "2", check=0)
    carried = {row["factor"] for row in json.loads(proc.stdout)["latent_factors"] if row["mi"] > 0.25}
    assert {"x", "y", "scale"} <= carried
