"""The VAE family: the loss terms, training artefacts, evaluation, every sampling grid,
repeatable sampling, and bad input. Tiny networks on the bundled MNIST subset."""

from __future__ import annotations

import io
import json
import math

import pytest
import torch
from conftest import run_cli

TINY = ["--epochs", "1", "--set", "hidden=[64]", "--set", "val_size=1000",
        "--set", "batch_size=256"]


def train_tiny(root, model, *extra):
    """Train `model` for one epoch into root/model; return the checkpoint path."""
    env = {"XDG_CACHE_HOME": str(root / "cache")}  # the bundled subset, never a cached full set
    proc = run_cli("train", model, *TINY, *extra, "--run-dir", root / model, cwd=root, env=env,
                   check=0)
    return proc.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("vae-runs")
    return {
        "vae": train_tiny(root, "vae", "--set", "latent=6"),
        "cvae": train_tiny(root, "cvae", "--set", "latent=4"),
        "beta-vae": train_tiny(root, "beta-vae", "--set", "latent=6", "--set", "capacity=5.0"),
        "root": root,
    }


def load_task(path):
    import torch

    from dlcli.checkpoint import load_checkpoint
    from dlcli.registry import get_spec

    ckpt = load_checkpoint(path)
    spec = get_spec(ckpt.model)
    return spec.load_task().from_checkpoint(spec, ckpt, torch.device("cpu"))


# ---- the loss -------------------------------------------------------------------------

def test_loss_terms_match_their_definitions():
    import torch
    from torch.distributions import Bernoulli, Normal, kl_divergence

    from dlcli.models.vae import kl_per_dim, reconstruction_nats

    torch.manual_seed(0)
    mu, logvar = torch.randn(5, 3), torch.randn(5, 3)
    expected = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0))
    assert torch.allclose(kl_per_dim(mu, logvar), expected, atol=1e-5)
    assert kl_per_dim(torch.zeros(2, 3), torch.zeros(2, 3)).abs().max() == 0
    prior_mu, prior_logvar = torch.randn(5, 3), torch.randn(5, 3)  # a learned p(z | y)
    expected = kl_divergence(Normal(mu, (0.5 * logvar).exp()),
                             Normal(prior_mu, (0.5 * prior_logvar).exp()))
    assert torch.allclose(kl_per_dim(mu, logvar, prior_mu, prior_logvar), expected, atol=1e-5)

    logits, x = torch.randn(4, 784), torch.rand(4, 1, 28, 28)
    nats = -Bernoulli(logits=logits, validate_args=False).log_prob(x.flatten(1)).sum(1)
    assert torch.allclose(reconstruction_nats(logits, x), nats, rtol=1e-5)


def test_importance_weighting_tightens_the_bound():
    import torch

    from dlcli.models.vae import VAE, iwae_nll

    torch.manual_seed(0)
    model = VAE((1, 28, 28), latent=4, hidden=[32])
    x = torch.rand(64, 1, 28, 28).round()
    k1 = iwae_nll(model, x, k=1, generator=torch.Generator().manual_seed(1)).mean()
    k50 = iwae_nll(model, x, k=50, generator=torch.Generator().manual_seed(1)).mean()
    assert k50 < k1  # log-mean-exp of the weights >= mean of their logs


def test_capacity_ramps_linearly_and_replaces_beta():
    import torch

    from dlcli.config import resolve_config
    from dlcli.registry import get_spec
    from dlcli.tasks.vae import VAETask

    config = resolve_config("beta-vae", None, ["capacity=10.0", "gamma=2.0", "batch_size=10"],
                            epochs=4)
    task = VAETask(get_spec("beta-vae"), config, torch.device("cpu"))
    task.train_data = torch.zeros(100)  # 100 images: 10 steps an epoch
    task.steps = 20
    assert task.capacity() == pytest.approx(5.0)  # half of the 40 steps: half of C
    task.steps = 400
    assert task.capacity() == pytest.approx(10.0)  # then it stays at C
    recon, kl = torch.tensor(100.0), torch.tensor(7.0)
    assert float(task.objective(recon, kl)) == pytest.approx(100 + 2 * 3)


def test_kl_warmup_ramps_beta_and_free_bits_floor_each_unit():
    import torch

    from dlcli.config import resolve_config
    from dlcli.registry import get_spec
    from dlcli.tasks.vae import VAETask

    config = resolve_config("vae", None, ["kl_warmup=2.0", "free_bits=0.5", "batch_size=10"],
                            epochs=4)
    task = VAETask(get_spec("vae"), config, torch.device("cpu"))
    task.train_data = torch.zeros(100)  # 10 steps an epoch: the warm-up takes 20
    task.steps = 5
    assert task.kl_weight() == pytest.approx(0.25)
    task.steps = 60
    assert task.kl_weight() == pytest.approx(1.0)  # then it stays at beta
    kl = torch.tensor([0.1, 2.0], requires_grad=True)
    paid = task.kl_paid(kl)
    paid.backward()
    assert paid.item() == pytest.approx(0.5 + 2.0)
    assert kl.grad.tolist() == [0.0, 1.0]  # nothing pushes a unit below its free bits


def test_iwae_training_steps_on_the_tighter_bound():
    import torch

    from dlcli.config import resolve_config
    from dlcli.errors import DlcliError
    from dlcli.registry import get_spec
    from dlcli.tasks.vae import VAETask

    torch.manual_seed(0)
    config = resolve_config("vae", None, ["iwae_samples=8", "hidden=[16]", "latent=3",
                                          "schedule=cosine", "kl_warmup=0"], epochs=1)
    task = VAETask(get_spec("vae"), config, torch.device("cpu"))
    task.schedule.total_steps = 2
    x = torch.rand(16, 1, 28, 28).round()
    logs = task.train_step((x, torch.zeros(16, dtype=torch.long)))
    # -log mean w < -mean log w: the loss is the k-sample bound, not the ELBO of its draws
    assert logs["loss"] < logs["nelbo"] and logs["nelbo"] == pytest.approx(logs["recon"] + logs["kl"])
    task.train_step((x, torch.zeros(16, dtype=torch.long)))
    assert task.optimizers["model"].param_groups[0]["lr"] == pytest.approx(0.0)  # cosine's end
    beta = resolve_config("beta-vae", None, ["iwae_samples=8"])
    with pytest.raises(DlcliError, match="use it with beta=1"):
        VAETask(get_spec("beta-vae"), beta, torch.device("cpu"))


def test_checkpoints_from_before_the_training_options_train_as_they_did():
    from dlcli.config import config_against_schema, resolve_config

    old = {k: v for k, v in resolve_config("vae").items()
           if k not in ("schedule", "kl_warmup", "free_bits", "iwae_samples")}
    config = config_against_schema("vae", old)
    assert (config["schedule"], config["kl_warmup"], config["free_bits"],
            config["iwae_samples"]) == ("exponential", 0.0, 0.0, 1)


# ---- training and evaluation ----------------------------------------------------------

def test_training_writes_pictures_metrics_and_latent_kl(trained):
    from safetensors import safe_open

    run = trained["root"] / "vae"
    samples = sorted(p.name for p in (run / "samples").iterdir())
    assert samples == ["epoch-001.png", "recon-001.png"]
    assert (run / "samples" / "epoch-001.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run / "curves.png").is_file()
    epoch = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
             if '"epoch"' in line and json.loads(line)["kind"] == "epoch"][-1]
    assert epoch["val_loss"] == pytest.approx(epoch["val_recon"] + epoch["val_kl"])
    assert 50 < epoch["val_loss"] < 550  # nats per image: 784 * log 2 = 543 is a blank guess
    with safe_open(trained["vae"], "pt") as f:
        latent_kl = json.loads(f.metadata()["latent_kl"])
    assert len(latent_kl) == 6 and all(v >= 0 for v in latent_kl)


def test_capacity_is_logged(trained):
    run = trained["root"] / "beta-vae"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    epoch = [r for r in records if r["kind"] == "epoch"][-1]  # the last line says how it ended
    assert epoch["capacity"] == pytest.approx(5.0)  # the ramp spans the one epoch


def test_evaluate_reports_the_bounds(trained, cli):
    proc = cli("evaluate", trained["vae"], "--json", "--iwae-k", "4", check=0)
    m = json.loads(proc.stdout)
    assert {"nelbo", "recon", "kl", "iwae_nll", "active_units"} <= m.keys()
    assert m["nelbo"] == pytest.approx(m["recon"] + m["kl"])
    assert m["iwae_nll"] < m["nelbo"] + 1.0  # importance weighting only tightens (up to noise)
    assert 0 <= m["active_units"] <= 6
    assert m["active_units"] == sum(v > 0.01 for v in m["kl_per_unit"])
    # MNIST has no known factors of variation: no disentanglement keys, and no error
    assert not {"mig", "factor_vae_score", "latent_factors", "mutual_information"} & m.keys()


def test_plot_needs_data_with_factors(trained, cli, isolated):
    proc = cli("evaluate", trained["vae"], "--plot", "mi.png")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().startswith("error: --plot draws what each latent unit of a VAE "
                                          "carries about the data's known factors")
    proc = cli("evaluate", trained["vae"], "--plot", "mi.jpg")
    assert proc.returncode == 2 and "ending in .png" in proc.stderr
    assert not list(isolated.glob("mi.*"))


def test_cvae_label_accuracy_by_a_judge(trained, cli, isolated):
    judge = cli("train", "cnn", "--epochs", "1", "--set", "channels=[4,8]", "--set", "width=16",
                "--set", "val_size=1000", "--run-dir", isolated / "cnn", check=0)
    judge = judge.stdout.strip().splitlines()[-1]
    proc = cli("evaluate", trained["cvae"], "--json", "--iwae-k", "2", "--samples", "200",
               "--classifier", judge, check=0)
    m = json.loads(proc.stdout)
    assert 0 <= m["label_accuracy"] <= 1
    per_digit = m["label_accuracy_per_digit"]
    assert len(per_digit) == 10
    assert sum(per_digit) / 10 == pytest.approx(m["label_accuracy"])  # 20 samples per digit


# ---- sampling -------------------------------------------------------------------------

def test_same_seed_same_bytes(trained, cli):
    args = ("sample", "cvae", "--checkpoint", trained["cvae"], "--label", "7", "-n", "16",
            "-o", "-")
    first = run_cli(*args, "--seed", "5", input=b"", check=0).stdout
    again = run_cli(*args, "--seed", "5", input=b"", check=0).stdout
    other = run_cli(*args, "--seed", "6", input=b"", check=0).stdout
    assert first[:8] == b"\x89PNG\r\n\x1a\n"
    assert first == again
    assert first != other


def test_npy_output(trained, cli, isolated):
    import numpy as np

    proc = cli("sample", "vae", "--checkpoint", trained["vae"], "-n", "12", "--seed", "1",
               "--format", "npy", "-o", "x.npy", check=0)
    assert proc.stdout.strip() == "x.npy"
    images = np.load(io.BytesIO((isolated / "x.npy").read_bytes()))
    assert images.shape == (12, 1, 28, 28) and images.dtype == np.float32
    assert 0 <= images.min() and images.max() <= 1


def grid(task, n, **kw):
    import torch

    torch.manual_seed(0)
    with torch.no_grad():
        return task.sample(n, **kw)


def test_every_grid_of_every_model(trained):
    from dlcli.registry import get_spec

    for model in ("vae", "cvae", "beta-vae"):
        task = load_task(trained[model])
        for kind in get_spec(model).grids:
            images, nrow = grid(task, 16, grid=kind)
            assert images.shape[1:] == (1, 28, 28), (model, kind)
            assert 0 <= float(images.min()) and float(images.max()) <= 1
            assert 1 <= nrow <= len(images)
        images, nrow = grid(task, 16, interpolate=True)
        assert images.shape == (16, 1, 28, 28) and nrow == 4


def test_samples_follow_the_label(trained):
    task = load_task(trained["cvae"])
    images, nrow = grid(task, 30, label="all")
    assert len(images) == 30 and nrow == 3  # one row per digit, 3 each
    seven, _ = grid(task, 8, label=7)
    three, _ = grid(task, 8, label=3)
    assert not seven.allclose(three)


def test_manifold_sweeps_two_units(trained):
    task = load_task(trained["vae"])
    images, side = grid(task, 25, grid="manifold")
    assert side == 5 and len(images) == 25
    corners = images[[0, 4, 20, 24]]
    assert (corners[0] - corners[3]).abs().max() > 0.05  # the sweep changes the picture


def test_traverse_leaves_out_inactive_units(trained):
    task = load_task(trained["beta-vae"])
    images, steps = grid(task, 90, grid="traverse")
    active = [v for v in task.latent_kl if v > 0.01]
    assert steps == 9
    assert len(images) == steps * max(1, len(active))
    rows = images.view(-1, steps, 784)
    assert rows[0, 0].sub(rows[0, -1]).abs().max() > 0  # the top unit changes the image
    capped, _ = grid(task, 18, grid="traverse")
    assert len(capped) == min(2, max(1, len(active))) * steps


def test_recon_shows_test_digits_above_reconstructions(trained):
    import torch

    task = load_task(trained["cvae"])
    images, per_row = grid(task, 16, grid="recon", label=4)
    assert per_row == 4 and len(images) == 16
    odd, per_row = grid(task, 32, grid="recon")
    assert per_row == 6 and len(odd) == 24  # whole pairs of rows only
    originals, recons = images.view(2, 2, 4, 784)[:, 0], images.view(2, 2, 4, 784)[:, 1]
    pixels = originals * 255
    assert torch.allclose(pixels, pixels.round(), atol=1e-3)  # real digits, uint8 levels
    assert not torch.allclose(recons * 255, (recons * 255).round(), atol=1e-3)
    x, y = task.test_data.take(slice(None))
    fours = set(map(bytes, x[y == 4].flatten(1).numpy()))
    shown = (originals.reshape(-1, 784) * 255).round().to(torch.uint8).numpy()
    assert all(bytes(row) in fours for row in shown)


def test_recon_reads_test_digits_from_data_dir(trained, cli, isolated, tmp_path):
    ckpt = trained["vae"]
    proc = cli("sample", "vae", "--checkpoint", ckpt, "--grid", "recon", "-n", "8",
               "--data-dir", tmp_path / "missing", check=2)
    assert "--data-dir" in proc.stderr and "not a folder" in proc.stderr
    assert not list(isolated.glob("*.png"))
    (tmp_path / "mnist").mkdir()  # no IDX files there: the look-up goes on (bundled subset)
    proc = cli("sample", "vae", "--checkpoint", ckpt, "--grid", "recon", "-n", "8",
               "--data-dir", tmp_path, "-o", "r.png", check=0)
    assert (isolated / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---- bad input ------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["cvae", "--label", "10", "USE_CKPT"], "0-9, or 'all': 0, 1, 2"),
    (["cvae", "--label", "seven", "USE_CKPT"], "is not a class of mnist"),
    (["vae", "--label", "3"], "not conditional"),
    (["beta-vae", "--label", "all"], "not conditional"),
    (["cvae", "--grid", "traverse"], "choose one of"),
    (["beta-vae", "--grid", "manifold"], "choose one of"),
    (["vae", "-n", "0"], "between 1 and 100,000"),
    (["cvae", "-n", "-4"], "between 1 and 100,000"),
    (["vae", "-n", "100001"], "between 1 and 100,000"),
    (["cvae", "--grid", "manifold", "--label", "all", "USE_CKPT"], "--label NAME"),
])
def test_bad_input_exits_2_and_writes_nothing(trained, cli, isolated, args, message):
    if args[-1] == "USE_CKPT":
        args = args[:-1] + ["--checkpoint", trained["cvae"]]
    proc = cli("sample", *args, "-o", "out.png")
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]
    assert not list(isolated.glob("*.png")) and not (isolated / "samples").exists()


def test_output_name_must_match_the_format(trained, cli, isolated):
    for args in (["-o", "out.jpg"], ["-o", "out.png", "--format", "npy"]):
        proc = cli("sample", "vae", "--checkpoint", trained["vae"], *args)
        assert proc.returncode == 2 and "does not end in" in proc.stderr, args
    assert not list(isolated.glob("out.*"))
    (isolated / "folder").mkdir()
    proc = cli("sample", "vae", "--checkpoint", trained["vae"], "-o", "folder")
    assert proc.returncode == 2 and proc.stderr.strip() == "error: cannot write folder: Is a directory"
    assert not list((isolated / "folder").iterdir())  # no temporary file left behind


def test_default_sample_names_are_claimed(isolated):
    """Two samplers started in the same second must not both pick (and write) one name."""
    from dlcli.cli import _default_output

    first, second = _default_output("vae", "png"), _default_output("vae", "png")
    assert first != second and first.exists() and second.exists()


def test_new_keys_are_validated(cli):
    proc = cli("train", "vae", "--set", "arch=transformer", "--epochs", "1")
    assert proc.returncode == 2 and "mlp, conv" in proc.stderr
    proc = cli("train", "vae", "--set", "precision=fp8", "--epochs", "1")
    assert proc.returncode == 2 and "auto, 32, bf16" in proc.stderr
    proc = cli("train", "vae", "--set", "decoder=pixelcnn", "--epochs", "1")
    assert proc.returncode == 2 and "deconv, broadcast" in proc.stderr
    proc = cli("train", "vae", "--set", "decoder=broadcast", "--epochs", "1")  # arch mlp
    assert proc.returncode == 2 and "arch=conv" in proc.stderr
    proc = cli("train", "vae", "--set", "activation=gelu", "--epochs", "1")
    assert proc.returncode == 2 and "relu, silu" in proc.stderr


@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_activation_and_float32_outputs_under_bf16_autocast(arch):
    """`activation` sets every non-linearity of both networks; the layers that give the
    pixel logits and (mu, log sigma^2) compute in float32 under bfloat16 autocast, so the
    likelihood is not rounded to bfloat16, while the layers between run in bfloat16."""
    from dlcli.models.vae import VAE

    model = VAE((1, 28, 28), 3, [16], arch, 4, activation="silu")
    kinds = {type(m) for m in model.modules()}
    assert torch.nn.SiLU in kinds and torch.nn.ReLU not in kinds
    inner = []
    model.encoder[0].register_forward_hook(lambda m, i, out: inner.append(out.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, mu, logvar = model(torch.rand(2, 1, 28, 28))
    assert logits.dtype == mu.dtype == logvar.dtype == torch.float32
    assert inner == [torch.bfloat16]
    # the same tensors, under the same names, as with plain layers: checkpoints load as before
    plain = VAE((1, 28, 28), 3, [16], arch, 4)
    assert {k: v.shape for k, v in plain.state_dict().items()} == \
        {k: v.shape for k, v in model.state_dict().items()}


@pytest.mark.parametrize("side", [28, 32, 64])
def test_broadcast_decoder_gives_every_cell_the_code_and_its_place(side):
    """The spatial broadcast decoder (Watters et al., 2019): the code at every cell of the
    smallest map beside the cell's x and y in [-1, 1]; the coordinates are not weights, so
    the checkpoint holds the same tensors whatever the image size of the run."""
    from dlcli.models.vae import VAE, BroadcastHead

    model = VAE((1, side, side), 3, [16], "conv", 4, decoder="broadcast")
    assert isinstance(model.decoder, BroadcastHead)
    assert "coords" not in " ".join(model.state_dict())
    cells = side // 4 if side < 64 else 8
    coords = model.decoder.coords
    assert coords.shape == (1, 2, cells, cells)
    assert torch.equal(coords[0, 0, 0], torch.linspace(-1, 1, cells))  # x along a row
    assert torch.equal(coords[0, 1, :, 0], torch.linspace(-1, 1, cells))  # y down a column
    logits, mu, _ = model(torch.rand(5, 1, side, side))
    assert logits.shape == (5, side * side) and mu.shape == (5, 3)
    # each unit of the code reaches the image, through the convolutions over every cell
    z = torch.zeros(1, 3, requires_grad=True)
    model.decode(z).sum().backward()
    assert (z.grad.abs() > 0).all()


def test_conv_variant_trains_a_step():
    import torch

    from dlcli.config import resolve_config
    from dlcli.registry import get_spec
    from dlcli.tasks.vae import VAETask

    for model, decoder in (("vae", "deconv"), ("cvae", "deconv"), ("vae", "broadcast"),
                           ("cvae", "broadcast")):
        config = resolve_config(model, "vae-conv" if model == "vae" else None,
                                ["arch=conv", "channels=4", "hidden=[16]", "latent=3",
                                 f"decoder={decoder}"])
        task = VAETask(get_spec(model), config, torch.device("cpu"))
        task.train_data = torch.zeros(8)  # one step an epoch, for the KL warm-up's clock
        x = torch.rand(8, 1, 28, 28)
        logs = task.train_step((x, torch.arange(8) % 10))
        assert math.isfinite(logs["loss"]) and logs["nelbo"] > 0
        images, _ = task.sample(4)
        assert images.shape == (4, 1, 28, 28)


def test_epoch_images_draws_that_many_afresh_each_epoch():
    """`epoch_images` cuts an epoch to that many images, a different draw each epoch, and
    the step-counted schedules (KL warm-up, cosine) count the shorter epochs."""
    from dlcli.config import resolve_config
    from dlcli.registry import get_spec

    spec = get_spec("vae")
    config = resolve_config("vae", None, ["epoch_images=300", "hidden=[16]", "latent=2"],
                            epochs=4, batch_size=64)
    task = spec.load_task()(spec, config, torch.device("cpu"))
    task.build_optimizers()
    task.setup_data()
    seen = [torch.cat([x.flatten(1) for x, _ in task.train_batches(epoch)]) for epoch in (0, 1)]
    assert [len(s) for s in seen] == [300, 300] and len(task.train_batches(0)) == 5
    assert not torch.equal(seen[0], seen[1])
    assert task.steps_per_epoch() == 5 and task.schedule.total_steps == 20
    assert task.epoch_images() == 300 < len(task.train_data)
    config["epoch_images"] = 0  # the whole split
    assert task.epoch_images() == len(task.train_data)
