"""The GAN family (gan, dcgan, cgan): training through the one loop with two optimizers,
exact resume, the NaN guard, collapse warnings, sampling, evaluation and bad input.

Everything trains tiny networks on the bundled MNIST subset for a few dozen steps; the
quality checks against the peers live in benchmarks/gan.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dlcli.checkpoint import load_checkpoint, save_checkpoint
from dlcli.config import resolve_config
from dlcli.errors import TrainingFailed
from dlcli.registry import get_spec

TINY = {
    "gan": ["g_hidden=[32, 32]", "d_hidden=[32]", "latent_dim=8"],
    "cgan": ["g_hidden=[32, 32]", "d_hidden=[32]", "latent_dim=8"],
    "dcgan": ["width=4", "latent_dim=8"],
}


def tiny_config(model: str, epochs: int = 1, **extra) -> dict:
    sets = TINY[model] + [f"{k}={v}" for k, v in extra.items()]
    return resolve_config(model, None, sets, epochs=epochs, batch_size=1000)


def train_tiny(model: str, run_dir: Path, epochs: int = 1, resume=None, **extra) -> Path:
    from dlcli.train import train

    return train(get_spec(model), tiny_config(model, epochs, **extra), device="cpu",
                 run_dir=None if resume else run_dir, resume_path=resume)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny run per model, shared by the sampling tests."""
    root = tmp_path_factory.mktemp("gan-runs")
    return {m: train_tiny(m, root / m) for m in ("gan", "dcgan", "cgan")}


# ---- training -----------------------------------------------------------------------

@pytest.mark.parametrize("model", ["gan", "dcgan", "cgan"])
def test_training_writes_run_with_both_networks(trained, model):
    ckpt = load_checkpoint(trained[model], expect_model=model)
    run = trained[model].parent
    groups = ["clusters"] if model != "cgan" else []  # the presets' k-means groups
    assert sorted(ckpt.module_names()) == groups + ["discriminator", "generator", "generator_ema"]
    # both optimizers are in the resume state, each with Adam moments for every parameter
    optimizers = ckpt.state["task"]["optimizers"]
    assert set(optimizers) == {"generator", "discriminator"}
    assert all(len(o["state"]) > 0 for o in optimizers.values())
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    epoch = [r for r in records if r["kind"] == "epoch"][-1]  # the last line says how it ended
    for key in ("train_d_loss", "train_g_loss", "train_d_x", "train_d_g_z", "diversity"):
        assert np.isfinite(epoch[key]), key
    assert 0 < epoch["train_d_x"] < 1 and 0 < epoch["train_d_g_z"] < 1
    assert (run / "samples" / "epoch-001.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run / "curves.png").exists()
    # the EMA generator is an average, not a copy of the live weights
    live, avg = ckpt.state_dict("generator"), ckpt.state_dict("generator_ema")
    assert any(not torch.equal(live[k], avg[k]) for k in live if live[k].is_floating_point())


def test_ema_follows_the_generator_in_channels_last_memory():
    """Moving the conv nets to channels-last (bf16 on a CPU, any CUDA run) gives them new
    tensors; the EMA must average those, not the ones the task was built with."""
    from dlcli.runtime import use_fast_paths

    spec = get_spec("dcgan")
    task = spec.load_task()(spec, tiny_config("dcgan"), torch.device("cpu"))
    use_fast_paths(task.modules, torch.device("cpu"), "bf16")
    conv = next(m for m in task.generator.modules() if isinstance(m, torch.nn.ConvTranspose2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    before = {k: v.clone() for k, v in task.ema.state_dict().items()}
    with torch.no_grad():
        for p in task.generator.parameters():
            p.zero_()
    task.update_ema()  # the first update: decay 2/11, so the average moves 9/11 of the way
    after = task.ema.state_dict()
    for name, p in task.ema.named_parameters():
        assert torch.allclose(after[name], before[name] * 2 / 11, atol=1e-6), name


def test_ema_off_and_batch_std(tmp_path):
    ckpt = load_checkpoint(train_tiny("gan", tmp_path / "r", ema=0, batch_std="true", clusters=0))
    assert sorted(ckpt.module_names()) == ["discriminator", "generator"]
    # the minibatch-std feature is one more input of D's last layer
    assert ckpt.state_dict("discriminator")["out.weight"].shape == (1, 32 + 1)


def test_packed_discriminator_scores_groups():
    from dlcli.models.gan import build_dcgan

    config = tiny_config("dcgan", pack=4)
    _, d = build_dcgan(config, {"shape": [1, 28, 28], "classes": list("0123456789")})
    x = torch.rand(8, 1, 28, 28)
    assert d(x).shape == (2,)  # one logit per group of four
    swapped = x.clone()
    swapped[[0, 4]] = x[[4, 0]]  # the same images in other groups score otherwise
    d.train(False)
    assert not torch.allclose(d(swapped), d(x))


def test_pack_must_divide_the_batch(cli, tmp_path):
    proc = cli("train", "dcgan", "--set", "pack=3", "--batch-size", "64", "--run-dir", tmp_path / "r")
    assert proc.returncode == 2 and "pack" in proc.stderr and "64" in proc.stderr
    assert not (tmp_path / "r").exists()


# dcgan under bf16 also checks autocast state survives a resume; it is the slowest (`-m slow`)
@pytest.mark.parametrize("model,extra", [
    ("cgan", {}), ("gan", {"clusters": 5}),  # gan: its groups come back, not fitted again
    pytest.param("dcgan", {"precision": "bf16"}, marks=pytest.mark.slow)])
def test_resume_is_exact(tmp_path, model, extra):
    """2 epochs straight == 1 epoch + resume: both optimizers, the RNG stream and the EMA
    come back, and the fixed-noise grid does not disturb the global RNG. dcgan under bf16
    runs channels-last, whose Adam moments must come back in that layout too."""
    straight = load_checkpoint(train_tiny(model, tmp_path / "a", epochs=2, **extra))
    first = train_tiny(model, tmp_path / "b", epochs=1, **extra)
    resumed = load_checkpoint(train_tiny(model, tmp_path / "b", epochs=2, resume=first, **extra))
    assert resumed.epoch == straight.epoch == 2
    for name in straight.module_names():
        a, b = straight.state_dict(name), resumed.state_dict(name)
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_resume_steps_with_this_builds_optimizer_kernels(trained):
    """A checkpoint written by an unfused build (fused=None in its param_groups) resumes
    with the fused optimizers all the same, moments and all."""
    ckpt = load_checkpoint(trained["gan"])
    state = ckpt.state["task"]
    for opt in state["optimizers"].values():
        for group in opt["param_groups"]:
            group["fused"] = None
    spec = get_spec("gan")
    task = spec.load_task()(spec, ckpt.config, torch.device("cpu"))
    task.load_training_state(state)
    for key, opt in task.optimizers.items():
        assert all(g["fused"] is True for g in opt.param_groups), key
        saved = state["optimizers"][key]["state"][0]["exp_avg"]
        assert torch.equal(opt.state[opt.param_groups[0]["params"][0]]["exp_avg"], saved), key


def test_nan_stops_training_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    from dlcli.tasks.gan import GANTask

    real_step = GANTask.train_step
    calls = {"n": 0}

    def poisoned_step(self, batch):  # epoch 2 blows up: weights and loss become NaN
        calls["n"] += 1
        if calls["n"] > 15:  # 10 steps per epoch here
            with torch.no_grad():
                for p in self.generator.parameters():
                    p.fill_(float("nan"))
        return real_step(self, batch)

    monkeypatch.setattr(GANTask, "train_step", poisoned_step)
    with pytest.raises(TrainingFailed, match="became nan at epoch 2, step 16"):
        train_tiny("gan", tmp_path / "r", epochs=3)
    ckpt = load_checkpoint(tmp_path / "r" / "last.safetensors", expect_model="gan")
    assert ckpt.epoch == 1  # the checkpoint of the last good epoch survived
    for name in ckpt.module_names():
        assert all(torch.isfinite(t).all() for t in ckpt.state_dict(name).values())
    monkeypatch.undo()
    task = GANTask.from_checkpoint(get_spec("gan"), ckpt, torch.device("cpu"))
    images, _ = task.sample(8)
    assert torch.isfinite(images).all()


# ---- trouble warnings ---------------------------------------------------------------

def gan_task(model="gan", **extra):
    spec = get_spec(model)
    task = spec.load_task()(spec, tiny_config(model, **extra), torch.device("cpu"))
    task.setup_data()
    return task


def test_warns_when_discriminator_wins_every_batch(monkeypatch):
    import dlcli.tasks.gan as gan

    said = []
    monkeypatch.setattr(gan, "warn", said.append)
    task = gan_task(label_smoothing=0.1)
    for _ in range(gan.D_COLLAPSE_STEPS - 1):
        task.watch_discriminator(task.d_floor + 0.001)  # at the floor: D wins
    assert said == []
    task.watch_discriminator(task.d_floor + 0.5)  # one healthy step resets the streak
    for _ in range(gan.D_COLLAPSE_STEPS):
        task.watch_discriminator(task.d_floor + 0.001)
    assert len(said) == 1 and "discriminator wins" in said[0] and "--set" in said[0]


def test_warns_when_generator_collapses(monkeypatch):
    import dlcli.tasks.gan as gan

    said = []
    monkeypatch.setattr(gan, "warn", said.append)
    task = gan_task()
    varied = task.train_data.take(slice(100, 200))[0].float() / 255  # as varied as real digits
    monkeypatch.setattr(task, "fixed_samples", lambda: varied)
    assert task.validate()["diversity"] > 0.8 and said == []
    monkeypatch.undo()
    monkeypatch.setattr(gan, "warn", said.append)
    with torch.no_grad():  # every noise vector now makes the same image
        last = task.sampler.net[-2]
        last.weight.zero_()
    assert task.validate()["diversity"] < 0.01
    assert len(said) == 1 and "collapsed" in said[0]


def judge_run(folder: Path, accuracy: float | None) -> None:
    """runs/cnn/<folder>: an untrained cnn, as a finished run reaching `accuracy` on
    validation (None: a run stopped before its first epoch, no accuracy recorded)."""
    from dlcli.models.cnn import CNN

    config = resolve_config("cnn")
    done = {"epoch": config["epochs"], "metrics": {"val_accuracy": accuracy}} if accuracy else {}
    folder.mkdir(parents=True)
    save_checkpoint(folder / "best.safetensors", model="cnn", config=config,
                    modules={"model": CNN((1, 28, 28), 10).eval()}, **done)


def test_collapse_seen_by_a_trusted_judge_after_the_first_epoch(monkeypatch, tmp_path):
    """With a finished, accurate cnn run under ./runs, validate() also reports the label
    entropy of the fixed-noise samples; one class only is a collapse, said after warm-up."""
    import dlcli.tasks.gan as gan

    said = []
    monkeypatch.setattr(gan, "warn", said.append)
    judge_run(tmp_path / "runs" / "cnn" / "r1", accuracy=0.99)
    task = gan_task()
    with torch.no_grad():  # one image for every noise vector: one class
        task.sampler.net[-2].weight.zero_()
    metrics = task.validate()
    assert metrics["label_entropy"] == 0.0 and str(metrics["label_entropy"]) == "0.0"  # not -0.0
    assert said == []  # epoch 1: still warming up
    task.validate()
    assert len(said) == 1 and "0.00 bits" in said[0] and "-0.00" not in said[0]


@pytest.mark.parametrize("accuracy", [None, 0.5])
def test_no_collapse_warning_from_an_untrusted_judge(monkeypatch, tmp_path, accuracy):
    """An untrained or interrupted judge reads one digit everywhere: its label entropy is
    neither reported nor believed."""
    import dlcli.tasks.gan as gan

    said = []
    monkeypatch.setattr(gan, "warn", said.append)
    judge_run(tmp_path / "runs" / "cnn" / "r1", accuracy=accuracy)
    task = gan_task()
    varied = task.train_data.take(slice(100, 200))[0].float() / 255  # real digits: as varied as can be
    monkeypatch.setattr(task, "fixed_samples", lambda: varied)
    for _ in range(3):
        assert "label_entropy" not in task.validate()
    assert said == []


# ---- sampling -----------------------------------------------------------------------

def npy(proc) -> np.ndarray:
    import io

    assert proc.returncode == 0, proc.stderr
    return np.load(io.BytesIO(proc.stdout))


def sample_cli(cli, ckpt, model, *args):
    """`dlcli sample` writing to stdout, read back as bytes."""
    return cli("sample", model, "--checkpoint", ckpt, "-o", "-", *args, input=b"")


def test_sampling_builds_no_optimizer(trained):
    """An optimizer is for training; making the first one also imports torch._dynamo,
    which doubled the time of `dlcli sample`."""
    spec = get_spec("gan")
    task = spec.load_task().from_checkpoint(spec, load_checkpoint(trained["gan"]),
                                            torch.device("cpu"))
    assert task.optimizers == {} and task.schedulers == {}
    images, _ = task.sample(4)
    assert images.shape == (4, 1, 28, 28)


def test_same_seed_same_bytes(cli, trained):
    a = sample_cli(cli, trained["dcgan"], "dcgan", "--seed", "7")
    b = sample_cli(cli, trained["dcgan"], "dcgan", "--seed", "7")
    assert a.returncode == 0 and a.stdout[:8] == b"\x89PNG\r\n\x1a\n"
    assert a.stdout == b.stdout


@pytest.mark.slow
def test_same_seed_same_bytes_in_every_process(cli, trained):
    """MKL's first choice of tanh kernel raced between threads in about 5% of processes
    (see train.settle_vector_math); 40 processes would catch that with ~90% odds."""
    runs = [sample_cli(cli, trained["dcgan"], "dcgan", "--seed", "7") for _ in range(40)]
    assert all(r.returncode == 0 for r in runs)
    assert len({r.stdout for r in runs}) == 1


def test_npy_samples_shape_range_and_seed(cli, trained):
    x = npy(sample_cli(cli, trained["gan"], "gan", "-n", "5", "--format", "npy", "--seed", "1"))
    assert x.shape == (5, 1, 28, 28) and x.dtype == np.float32
    assert 0 <= x.min() and x.max() <= 1
    # the CLI seeds the global RNG with --seed; the same draw in-process gives the same
    # images, another seed other images
    from dlcli.tasks.gan import GANTask

    task = GANTask.from_checkpoint(get_spec("gan"), load_checkpoint(trained["gan"]),
                                   torch.device("cpu"))
    for seed, same in ((1, True), (2, False)):
        torch.manual_seed(seed)
        assert np.allclose(task.sample(5)[0].numpy(), x, atol=1e-6) == same


def test_cgan_label_rows_and_interpolation(trained):
    from dlcli.tasks.gan import GANTask

    ckpt = load_checkpoint(trained["cgan"])
    task = GANTask.from_checkpoint(get_spec("cgan"), ckpt, torch.device("cpu"))
    torch.manual_seed(0)
    images, per_row = task.sample(100, label="all")
    assert images.shape == (100, 1, 28, 28) and per_row == 10
    images, per_row = task.sample(16, label=3)
    assert images.shape == (16, 1, 28, 28) and per_row == 8
    # --label all --interpolate: one row per digit along one shared noise path, so the
    # first and last image of a row differ, and rows differ only by their label
    images, per_row = task.sample(100, label="all", interpolate=True)
    rows = images.view(10, 10, -1)
    assert per_row == 10 and not torch.equal(rows[0, 0], rows[0, -1])
    assert not torch.equal(rows[0], rows[1])
    task_gan = GANTask.from_checkpoint(get_spec("gan"), load_checkpoint(trained["gan"]),
                                       torch.device("cpu"))
    images, per_row = task_gan.sample(30, interpolate=True)
    assert images.shape == (30, 1, 28, 28) and per_row == 10
    # the ends of a row are independent draws, the middle lies between them
    row = images.view(3, 10, -1)[0]
    assert not torch.equal(row[0], row[-1])


# ---- bad input ----------------------------------------------------------------------

@pytest.mark.parametrize("args", [
    ["cgan", "--label", "10"],
    ["cgan", "--label", "-1"],
    ["cgan", "--label", "three"],
    ["gan", "--label", "3"],
    ["gan", "-n", "0"],
    ["dcgan", "-n", "-5"],
    ["gan", "--grid", "manifold"],
])
def test_bad_sample_input_exits_2_and_writes_nothing(cli, trained, tmp_path, args):
    model = args[0]
    proc = cli("sample", *args, "--checkpoint", trained[model])
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and len(proc.stderr.strip().splitlines()) <= 2
    assert "Traceback" not in proc.stderr
    assert proc.stdout == "" and not (tmp_path / "samples").exists()


def test_checkpoint_of_another_model_exits_2(cli, trained, tmp_path):
    proc = cli("sample", "cgan", "--checkpoint", trained["gan"])
    assert proc.returncode == 2 and "is a gan checkpoint, not cgan" in proc.stderr
    assert proc.stdout == "" and not (tmp_path / "samples").exists()


def test_train_rejects_unknown_and_mistyped_keys(cli, tmp_path):
    proc = cli("train", "dcgan", "--set", "g_hidden=[8]", "--run-dir", tmp_path / "r")
    assert proc.returncode == 2 and "unknown key 'g_hidden'" in proc.stderr
    proc = cli("train", "gan", "--set", "ema=fast", "--run-dir", tmp_path / "r")
    assert proc.returncode == 2 and "bad value for 'ema'" in proc.stderr
    assert not (tmp_path / "r").exists()


# ---- evaluation ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def judge(tmp_path_factory):
    """An untrained cnn saved as a checkpoint: enough to test the plumbing of evaluate."""
    from dlcli.models.cnn import CNN

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("judge") / "cnn.safetensors"
    config = resolve_config("cnn")
    return save_checkpoint(path, model="cnn", config=config,
                           modules={"model": CNN((1, 28, 28), 10).eval()})


def test_evaluate_json(cli, trained, judge):
    proc = cli("evaluate", trained["cgan"], "--json", "--classifier", judge, "--samples", "300")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(proc.stdout)
    assert metrics["cfid"] > 0 and np.isfinite(metrics["cfid"])
    assert 0 <= metrics["precision"] <= 1 and 0 <= metrics["recall"] <= 1
    assert 0 <= metrics["label_entropy"] <= np.log2(10) + 1e-9
    assert 0.1 <= metrics["confidence"] <= 1
    assert 0 <= metrics["label_accuracy"] <= 1


def test_evaluate_unconditional_and_without_judge(trained, judge):
    from dlcli.errors import DlcliError
    from dlcli.tasks.gan import GANTask

    task = GANTask.from_checkpoint(get_spec("gan"), load_checkpoint(trained["gan"]),
                                   torch.device("cpu"))
    metrics = task.evaluate(classifier=judge, samples=200)
    assert {"cfid", "label_entropy", "confidence"} <= set(metrics)
    assert "label_accuracy" not in metrics
    assert task.evaluate(classifier=judge, samples=200) == metrics  # fixed noise
    with pytest.raises(DlcliError, match="dlcli train cnn"):
        task.evaluate(samples=10)  # no --classifier and no cnn run under ./runs


# ---- the GAN literature's options: hinge loss, spectral norm, R1, precision/recall ------

@pytest.mark.parametrize("model", ["gan", "dcgan"])
def test_hinge_spectral_r1_train(tmp_path, model):
    ckpt = load_checkpoint(train_tiny(model, tmp_path / "r", loss="hinge", d_norm="spectral", r1=1.0))
    d = ckpt.state_dict("discriminator")
    assert any(k.endswith("parametrizations.weight.original") for k in d)  # spectral norm
    assert not any("running_mean" in k for k in d)  # and no BatchNorm in D
    records = [json.loads(line) for line in (ckpt.path.parent / "metrics.jsonl").read_text().splitlines()]
    assert np.isfinite([r["train_d_loss"] for r in records if r["kind"] == "epoch"]).all()


def test_spectral_norm_bounds_each_layer():
    from dlcli.models.gan import build_mlp

    _, d = build_mlp(tiny_config("gan", d_norm="spectral", clusters=0), {"shape": [1, 28, 28]})
    for _ in range(30):  # power iterations, one per training-mode forward
        d(torch.rand(4, 1, 28, 28))
    for layer in (m for m in d.modules() if isinstance(m, torch.nn.Linear)):
        assert torch.linalg.matrix_norm(layer.weight.detach(), 2).item() == pytest.approx(1.0, abs=0.05)


def test_r1_penalty_is_the_squared_input_gradient():
    from dlcli.tasks.gan import r1_penalty

    w = torch.randn(5)
    x = torch.randn(7, 5, requires_grad=True)
    logits = x @ w + (x ** 2).sum(1)  # grad_x = w + 2x
    expected = (w + 2 * x.detach()).pow(2).sum(1).mean()
    assert r1_penalty(logits, x).item() == pytest.approx(expected.item(), rel=1e-5)


def test_hinge_loss_values():
    from dlcli.tasks.gan import GANTask

    task = GANTask.__new__(GANTask)
    task.config = {"loss": "hinge"}
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-3.0, 0.0])
    # max(0, 1 - r): 0, 0.5 -> 0.25; max(0, 1 + f): 0, 1 -> 0.5
    assert task.discriminator_loss(real, fake).item() == pytest.approx(0.75)
    assert task.generator_loss(fake).item() == pytest.approx(1.5)


@pytest.mark.parametrize("sets,words", [
    (["loss=wasserstein"], ["loss", "hinge"]),
    (["d_norm=layer"], ["d_norm", "spectral"]),
    (["d_norm=batch"], ["d_norm", "dcgan"]),  # the MLP D has no BatchNorm to keep
    (["r1=-1"], ["r1"]),
    (["codes=10", "clusters=0"], ["codes", "classify"]),  # a code nothing ties to a kind of image
    (["classify=1"], ["classify", "codes"]),  # nothing to classify
    (["codes=1", "classify=1"], ["codes", "at least 2"]),
    (["codes=10", "classify=1"], ["codes", "clusters=0"]),  # the preset's groups are a code too
    (["codes=10", "clusters=10"], ["codes", "clusters"]),
    (["clusters=1"], ["clusters", "at least 2"]),
    (["clusters=20000"], ["clusters 20000", "10,000"]),  # more groups than training images
])
def test_bad_gan_options_exit_2(cli, tmp_path, sets, words):
    args = [a for s in sets for a in ("--set", s)]
    proc = cli("train", "gan", *args, "--epochs", "1", "--run-dir", tmp_path / "r")
    assert proc.returncode == 2, proc.stderr
    assert all(w in proc.stderr for w in words) and "Traceback" not in proc.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("model,norm", [("dcgan", "batch"), ("gan", "none")])
def test_checkpoints_from_before_the_options_read_as_trained(model, norm):
    from dlcli.config import config_against_schema

    later = ("loss", "d_norm", "r1", "codes", "clusters", "classify", "d_dropout")
    old = {k: v for k, v in tiny_config(model).items() if k not in later}
    read = config_against_schema(model, old)
    assert (read["loss"], read["d_norm"], read["r1"]) == ("nonsaturating", norm, 0.0)
    assert (read["codes"], read["clusters"], read["classify"]) == (0, 0, 0.0)


def test_precision_recall_tell_clean_from_varied():
    from dlcli.metrics import precision_recall

    g = torch.Generator().manual_seed(0)
    real = torch.randn(600, 4, generator=g)
    same = torch.randn(600, 4, generator=g)
    p, r = precision_recall(real, same)
    assert p > 0.9 and r > 0.9  # two draws of one distribution
    corner = real[real[:, 0] > 1]  # one region of the data, drawn again and again
    one_mode = corner[torch.arange(200) % len(corner)] + 0.01 * torch.randn(200, 4, generator=g)
    p, r = precision_recall(real, one_mode)
    assert p > 0.9 and r < 0.4  # realistic but few kinds
    messy = torch.randn(600, 4, generator=g) * 3
    p, r = precision_recall(real, messy)
    assert p < 0.5 and r > 0.7  # varied but mostly off the data
    assert precision_recall(real, real + 100) == (0.0, 0.0)


# ---- InfoGAN codes and the auxiliary classifier -----------------------------------------

@pytest.mark.parametrize("model", ["gan", "dcgan"])
def test_infogan_codes_reach_g_and_d_learns_to_read_them(model):
    task = gan_task(model, codes=4, clusters=0, classify=1.0, lr=0.002)
    z, code = task.noise(500, torch.Generator().manual_seed(0))
    latent = task.config["latent_dim"]
    assert z.shape == (500, latent + 4)
    assert torch.equal(z[:, latent:], torch.nn.functional.one_hot(code, 4).float())
    assert set(code.tolist()) == {0, 1, 2, 3}
    grid_codes = task.fixed_z[:, latent:].argmax(1).view(10, 10)  # the per-epoch grid: a row a code
    assert torch.equal(grid_codes, (torch.arange(10) % 4).unsqueeze(1).expand(10, 10))
    _, classes = task.discriminator.judge(torch.rand(8, 1, 28, 28))
    assert classes.shape == (8, 4)  # one row per image, packed or not
    batch = next(iter(task.train_batches(0)))
    first = task.train_step(batch)["g_misread"]
    for _ in range(40):
        last = task.train_step(batch)["g_misread"]
    assert first > 1.0 and last < 0.5 * first  # ln 4 = 1.39 at first: D and G learn the code


def test_truncation_scales_the_noise_not_the_code(monkeypatch):
    task = gan_task("gan", codes=3, clusters=0, classify=1.0, truncation=0.5)
    seen = []
    monkeypatch.setattr(task.generator, "forward", lambda z, y=None: seen.append(z) or
                        torch.zeros(len(z), 1, 28, 28))
    task.ema = None  # sample with the live generator, whose forward is watched
    z, _ = task.noise(6, torch.Generator().manual_seed(1))
    task.generate(z, None)
    latent = task.config["latent_dim"]
    assert torch.equal(seen[0][:, :latent], z[:, :latent] * 0.5)
    assert torch.equal(seen[0][:, latent:], z[:, latent:])
    seen.clear()
    task.sample(20, interpolate=True)  # two rows of 10: each keeps one code from end to end
    codes = seen[0][:, latent:].view(2, 10, 3)
    assert torch.equal(codes, codes[:, :1].expand(2, 10, 3))
    assert not torch.equal(seen[0][0, :latent], seen[0][9, :latent])  # the noise walks


def test_cgan_has_no_codes(cli, tmp_path):
    proc = cli("train", "cgan", "--set", "codes=10", "--epochs", "1", "--run-dir", tmp_path / "r")
    assert proc.returncode == 2 and "codes" in proc.stderr and "Traceback" not in proc.stderr


# ---- k-means groups as G's code (clusters) ------------------------------------------------

def test_kmeans_finds_separated_groups_whatever_their_order():
    from dlcli.tasks.gan import kmeans, nearest

    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    truth = torch.arange(400) % 4
    points = centres[truth] + 0.5 * torch.randn(400, 2, generator=g)
    groups = nearest(points, kmeans(points, 4, torch.Generator().manual_seed(1)))
    # the same partition as the truth, whatever each group's index
    assert all(len(set(groups[truth == t].tolist())) == 1 for t in range(4))
    assert len(set(groups.tolist())) == 4
    order = torch.randperm(400, generator=g)
    shuffled = nearest(points, kmeans(points[order], 4, torch.Generator().manual_seed(1)))
    assert all(len(set(shuffled[truth == t].tolist())) == 1 for t in range(4))
    # all points alike: k-means++ still seeds, and every point lands in one group
    same = nearest(torch.ones(50, 3), kmeans(torch.ones(50, 3), 5, torch.Generator().manual_seed(0)))
    assert len(set(same.tolist())) == 1


@pytest.mark.parametrize("model", ["gan", "dcgan"])
def test_clusters_give_g_the_groups_of_the_training_images(model):
    from dlcli.tasks.gan import cluster_view, nearest

    torch.manual_seed(0)
    task = gan_task(model, clusters=6, lr=0.002)
    latent = task.config["latent_dim"]
    batches = task.train_batches(0)  # fits the groups
    groups = task.clusters
    assert bool(groups.fitted) and int(groups.sizes.sum()) == len(task.train_data)
    images, _ = task.train_data.take(slice(0, 300))
    x, y = batches[0]
    # a training batch pairs each image with its group: the centroid nearest to it
    assert torch.equal(y, nearest(cluster_view(x).flatten(1), groups.centroids))
    assert torch.equal(task.cluster_of[task.train_data.rows[:300]],
                       nearest(cluster_view(images).flatten(1), groups.centroids))
    # codes are drawn as often as their group holds images
    z, code = task.noise(20000, torch.Generator().manual_seed(0))
    assert torch.equal(z[:, latent:], torch.nn.functional.one_hot(code, 6).float())
    share = torch.bincount(code, minlength=6) / 20000
    assert torch.allclose(share, groups.sizes / groups.sizes.sum(), atol=0.015)
    assert task.fixed_z.shape == (100, latent + 6)
    # D is conditioned on the group: it learns to score real images higher with their own
    # group than with another (judged as in training: on the batch's statistics)
    for _ in range(30):
        logs = task.train_step(batches[0])
    assert all(np.isfinite(v) for v in logs.values())
    with torch.no_grad():
        own, other = (task.discriminator(x * 2 - 1, g) for g in (y, (y + 1) % 6))
    assert own.mean() > other.mean() + 0.2


def test_projection_keeps_the_cgan_tensor_name(trained):
    """cgan checkpoints written before the groups name D's label embedding project.weight."""
    saved = load_checkpoint(trained["cgan"]).state_dict("discriminator")
    assert saved["project.weight"].shape == (10, 32)  # classes x D's last width (TINY)


def test_clusters_travel_with_the_checkpoint(cli, tmp_path):
    run = tmp_path / "r"
    tiny = [a for s in TINY["gan"] for a in ("--set", s)]
    proc = cli("train", "gan", "--epochs", "1", "--set", "clusters=7", *tiny, "--run-dir", run)
    assert proc.returncode == 0, proc.stderr
    assert "7 groups" in proc.stderr
    ckpt = load_checkpoint(run / "best.safetensors")
    saved = ckpt.state_dict("clusters")
    assert saved["centroids"].shape == (7, 784) and int(saved["sizes"].sum()) > 0
    out = tmp_path / "s.npy"
    assert cli("sample", "gan", "-c", run / "best.safetensors", "-n", "12", "-o", out).returncode == 0
    assert np.load(out).shape[0] == 12
