"""Perceptron, MLP, CNN through the real CLI, on truth tables and the bundled MNIST subset."""

import json
from pathlib import Path

import pytest
from conftest import run_cli


def test_perceptron_learns_and_or(tmp_path):
    for table in ("and", "or"):
        proc = run_cli("train", "perceptron", "--dataset", table, check=0)
        assert "converged" in proc.stderr and "did not converge" not in proc.stderr
        ckpt = proc.stdout.strip().splitlines()[-1]
        metrics = json.loads(run_cli("evaluate", ckpt, "--json", check=0).stdout)
        assert metrics["accuracy"] == 1.0


def test_perceptron_honestly_fails_on_xor():
    proc = run_cli("train", "perceptron", "--dataset", "xor", "--epochs", "3", check=0)
    assert "did not converge" in proc.stderr and "not linearly separable" in proc.stderr
    ckpt = proc.stdout.strip().splitlines()[-1]
    metrics = json.loads(run_cli("evaluate", ckpt, "--json", check=0).stdout)
    assert metrics["accuracy"] <= 0.75


def test_perceptron_cut_short_on_separable_data_is_told_to_train_longer():
    proc = run_cli("train", "perceptron", "--dataset", "and", "--epochs", "1", check=0)
    err = " ".join(proc.stderr.split())
    assert "did not converge" in err and "not linearly separable" not in err
    assert "and is linearly separable" in err and "--epochs" in err


def test_mlp_learns_xor():
    proc = run_cli("train", "mlp", "--dataset", "xor", check=0)
    metrics = json.loads(run_cli("evaluate", proc.stdout.strip(), "--json", check=0).stdout)
    assert metrics["accuracy"] == 1.0


def test_batchnorm_is_the_formula():
    """BN(h) = beta + gamma (h - E[h]) / sqrt(Var[h] + eps) with the batch's statistics in
    training, the running averages (unbiased variance, moved by momentum) in evaluation."""
    import torch

    from dlcli.models.mlp import BatchNorm

    torch.manual_seed(0)
    bn = BatchNorm(5, eps=1e-3, momentum=0.25)
    with torch.no_grad():
        bn.gamma.uniform_(0.5, 2), bn.beta.normal_()
    h = torch.randn(16, 5) * 3 + 1
    mean, var = h.mean(0), h.var(0, unbiased=False)
    expected = bn.beta + bn.gamma * (h - mean) / torch.sqrt(var + 1e-3)
    assert torch.allclose(bn(h), expected, atol=1e-5)
    assert torch.allclose(bn.running_mean, 0.25 * mean, atol=1e-6)
    assert torch.allclose(bn.running_var, 0.75 + 0.25 * h.var(0, unbiased=True), atol=1e-5)
    bn.eval()
    frozen = bn.beta + bn.gamma * (h - bn.running_mean) / torch.sqrt(bn.running_var + 1e-3)
    assert torch.allclose(bn(h), frozen, atol=1e-5)
    # over the channels of an image batch: statistics over batch and both spatial axes
    bn.train()
    x = torch.randn(4, 5, 3, 3)
    m, v = x.mean((0, 2, 3), keepdim=True), x.var((0, 2, 3), unbiased=False, keepdim=True)
    g, b = bn.gamma.view(1, -1, 1, 1), bn.beta.view(1, -1, 1, 1)
    assert torch.allclose(bn(x), b + g * (x - m) / torch.sqrt(v + 1e-3), atol=1e-5)


def test_no_training_batch_of_one_image():
    """BatchNorm cannot normalise one value per feature: a last batch of one is left out."""
    import torch

    from dlcli.config import resolve_config
    from dlcli.registry import get_spec

    spec = get_spec("mlp")
    task = spec.load_task()(spec, resolve_config("mlp", None, ["hidden=[16]"]), torch.device("cpu"))
    task.setup_data()
    n = len(task.train_data)
    size = next(b for b in range(2, n) if n % b == 1)
    task.config["batch_size"] = size
    batches = task.train_batches(0)
    assert len(batches) == n // size and len(batches[len(batches) - 1][0]) == size
    task.train_step(batches[len(batches) - 1])
    other = next(b for b in range(size + 1, n) if n % b > 1)  # a remainder of 2 or more
    task.config["batch_size"] = other  # stays a batch of its own
    assert len(task.train_batches(0)) == -(-n // other)


def test_mlp_run_folder_checkpoint_inspect_evaluate(tmp_path):
    proc = run_cli("train", "mlp", "--epochs", "2", "--set", "hidden=[64]", check=0)
    ckpt = Path(proc.stdout.strip().splitlines()[-1])
    assert len(proc.stdout.strip().splitlines()) == 1  # stdout: the path and nothing else
    run = ckpt.parent
    assert run.parent == Path("runs/mlp") and ckpt.name == "best.safetensors"
    for name in ("config.yaml", "metrics.jsonl", "last.safetensors", "curves.png"):
        assert (run / name).is_file(), name
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in epochs if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2] and "val_accuracy" in epochs[-1]
    info = json.loads(run_cli("inspect", ckpt, "--json", check=0).stdout)
    assert info["model"] == "mlp" and info["config"]["hidden"] == [64]
    assert info["parameters"] == 784 * 64 + 64 * 2 + 64 * 10 + 10  # no bias before BN
    assert any(t["name"].startswith("model/model/") for t in info["tensors"])
    metrics = json.loads(run_cli("evaluate", ckpt, "--json", check=0).stdout)
    assert set(metrics) >= {"accuracy", "loss"} and metrics["accuracy"] > 0.85
    assert "best.safetensors" in run_cli("inspect", ckpt).stdout
    # a second run never reuses the folder
    second = run_cli("train", "mlp", "--epochs", "1", "--set", "hidden=[8]", check=0)
    assert Path(second.stdout.strip()).parent != run


def test_run_dir_must_be_new_or_empty(tmp_path):
    target = tmp_path / "myrun"
    run_cli("train", "mlp", "--dataset", "and", "--epochs", "1", "--run-dir", target, check=0)
    assert (target / "best.safetensors").is_file()
    again = run_cli("train", "mlp", "--dataset", "and", "--epochs", "1", "--run-dir", target)
    assert again.returncode == 2 and "not empty" in again.stderr


def test_perceptron_mnist_subset_beats_chance():
    proc = run_cli("train", "perceptron", "--epochs", "1", check=0)
    metrics = json.loads(run_cli("evaluate", proc.stdout.strip(), "--json", check=0).stdout)
    assert metrics["accuracy"] > 0.75


@pytest.mark.slow
def test_full_mnist_targets(mnist_dir):
    """Issue 2 targets on full MNIST (minutes): mlp 1 epoch >= 97%, BN beats no BN, cnn >= 99%."""
    def acc(*args):
        proc = run_cli("train", *args, "--data-dir", mnist_dir, check=0)
        out = run_cli("evaluate", proc.stdout.strip(), "--json", "--data-dir", mnist_dir, check=0)
        return json.loads(out.stdout)["accuracy"]

    with_bn = acc("mlp", "--epochs", "1")
    without_bn = acc("mlp", "--epochs", "1", "--set", "batchnorm=false")
    assert with_bn >= 0.97 and with_bn > without_bn + 0.01
    assert acc("perceptron") >= 0.85
    assert acc("cnn") >= 0.99


def test_bf16_precision_trains_on_cpu():
    proc = run_cli("train", "mlp", "--dataset", "xor", "--precision", "bf16", "--device", "cpu",
                   check=0)
    metrics = json.loads(run_cli("evaluate", proc.stdout.strip(), "--json", check=0).stdout)
    assert metrics["accuracy"] == 1.0
    bad = run_cli("train", "mlp", "--precision", "8")
    assert bad.returncode == 2 and "bf16" in bad.stderr


def test_bf16_matmul_precision_and_what_auto_picks():
    import torch

    from dlcli.runtime import Bf16Matmuls, cpu_multiplies_bf16, resolve_precision

    cpu = torch.device("cpu")
    native = cpu_multiplies_bf16()
    assert resolve_precision(cpu, "auto", convolutional=True) == ("bf16" if native else "32")
    assert resolve_precision(cpu, "auto") == ("bf16-matmul" if native else "32")
    a, b = torch.randn(64, 300), torch.randn(300, 50)
    exact = a @ b
    before = torch.get_float32_matmul_precision()
    with Bf16Matmuls():
        inside = a @ b
    assert torch.get_float32_matmul_precision() == before
    assert torch.equal(a @ b, exact) and inside.dtype == torch.float32
    # oneDNN chooses the kernel: with AMX the inputs are rounded to bfloat16 (the sums kept
    # in float32); without it the products stay as accurate as float32's. Either way, no
    # worse than bfloat16 inputs.
    rounded = a.bfloat16().float() @ b.bfloat16().float()
    error = (rounded - exact).abs().max()
    assert min((inside - rounded).abs().max(), (inside - exact).abs().max()) < error / 100
    proc = run_cli("train", "mlp", "--dataset", "xor", "--precision", "bf16-matmul", check=0)
    metrics = json.loads(run_cli("evaluate", proc.stdout.strip(), "--json", check=0).stdout)
    assert metrics["accuracy"] == 1.0


def test_bf16_on_a_cpu_without_bf16_arithmetic_warns(monkeypatch, capsys):
    import torch

    from dlcli import runtime

    cpu = torch.device("cpu")
    monkeypatch.setattr(runtime, "cpu_multiplies_bf16", lambda: False)
    assert runtime.resolve_precision(cpu, "auto") == "32"
    assert runtime.resolve_precision(cpu, "bf16") == "bf16"
    assert "emulated" in capsys.readouterr().err
    monkeypatch.setattr(runtime, "cpu_multiplies_bf16", lambda: True)
    assert runtime.resolve_precision(cpu, "bf16") == "bf16"
    assert runtime.resolve_precision(cpu, "32") == "32"
    assert capsys.readouterr().err == ""


def test_a_forward_after_a_step_sees_the_new_weights_under_bf16():
    """autocast caches bf16 copies of the weights for its whole region: Task.optimize must
    drop them, or G's step in a GAN would score its fakes with D's old weights."""
    import torch

    from dlcli.tasks.base import Task

    task = Task.__new__(Task)
    task.scaler = None
    layer = torch.nn.Linear(8, 8)
    opt = torch.optim.SGD(layer.parameters(), lr=1.0)
    x = torch.randn(4, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        before = layer(x)
        task.optimize(before.square().sum(), opt)
        after = layer(x)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        fresh = layer(x)
    assert not torch.equal(after, before)
    assert torch.equal(after, fresh)


def test_compile_falls_back_cleanly_when_the_backend_fails(monkeypatch, capsys):
    import torch

    from dlcli import runtime

    def broken_compile(fn, **kwargs):
        def run(*args, **kw):
            raise RuntimeError("no compiler here")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    layer = torch.nn.Linear(2, 1)
    runtime.compile_modules({"layer": layer})
    x = torch.ones(3, 2)
    assert torch.equal(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))
    layer(x)  # warns once, not per call
    assert capsys.readouterr().err.count("runs uncompiled") == 1
    assert list(layer.state_dict()) == ["weight", "bias"]  # plain keys, loadable anywhere


@pytest.mark.slow
def test_compile_really_compiles():
    proc = run_cli("train", "mlp", "--dataset", "and", "--epochs", "1", "--compile", check=0)
    assert "uncompiled" not in proc.stderr


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="float16 mixed precision needs CUDA")
def test_fp16_mixed_precision_on_cuda():
    proc = run_cli("train", "mlp", "--dataset", "xor", "--precision", "16-mixed", "--device", "cuda",
                   check=0)
    metrics = json.loads(run_cli("evaluate", proc.stdout.strip(), "--json", check=0).stdout)
    assert metrics["accuracy"] == 1.0


def test_fp16_mixed_precision_refused_on_cpu():
    proc = run_cli("train", "mlp", "--dataset", "xor", "--precision", "16-mixed", "--device", "cpu")
    assert proc.returncode == 2 and "CUDA" in proc.stderr
