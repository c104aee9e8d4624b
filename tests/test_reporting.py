"""The reporting seam: metrics.jsonl's end record, TensorBoard and MLflow loggers (each
read back with its own library), missing extras, and the module boundaries.

Runs are a tiny MLP-layer GAN for one epoch on the bundled MNIST subset (100 steps of 100
images: two step records, one epoch record, one sample grid)."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import signal
from pathlib import Path

import pytest

from dlcli.config import resolve_config
from dlcli.errors import DlcliError, Interrupted, TrainingFailed
from dlcli.registry import get_spec

ROOT = Path(__file__).resolve().parents[1]
TINY_GAN = ["g_hidden=[16]", "d_hidden=[16]", "latent_dim=4"]
INSTALLED = [name for name in ("tensorboard", "mlflow") if importlib.util.find_spec(name)]


def train_tiny_gan(run_dir: Path, loggers=(), batch_size: int = 100, epochs: int = 1) -> Path:
    from dlcli.train import train

    config = resolve_config("gan", None, TINY_GAN, epochs=epochs, batch_size=batch_size,
                            logger=list(loggers) or None)
    return train(get_spec("gan"), config, device="cpu", run_dir=run_dir)


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory):
    """One run with every installed logger, in a folder of its own (./mlruns lands there)."""
    root = tmp_path_factory.mktemp("logged")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        train_tiny_gan(root / "run", INSTALLED)
    return root / "run"


def test_metrics_file_ends_with_how_the_run_ended(logged_run):
    kinds = [r["kind"] for r in records(logged_run)]
    assert kinds == ["start", "step", "step", "epoch", "end"]
    assert records(logged_run)[0] == {"kind": "start", "epochs": 1, "monitor": None}  # GANs keep the last
    end = records(logged_run)[-1]
    assert end["state"] == "finished" and end["epochs"] == 1 and end["step"] == 100
    assert end["checkpoint"].endswith("best.safetensors") and end["seconds"] > 0


def test_tensorboard_holds_every_scalar_of_metrics_jsonl_and_the_samples(logged_run):
    if "tensorboard" not in INSTALLED:
        pytest.skip('tensorboard is not installed (pip install "dlcli[tensorboard]")')
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logged_run / "tensorboard"),
                              size_guidance={"scalars": 0, "images": 0, "tensors": 0}).Reload()
    scalars = {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}
    expected = 0
    for record in records(logged_run)[1:-1]:  # the step and epoch records
        for key, value in record.items():
            if key not in ("kind", "epoch", "step") and isinstance(value, (int, float)):
                logged = scalars[f"{record['kind']}/{key}"][record["step"]]
                assert logged == pytest.approx(value, rel=1e-6, abs=1e-6), key
                expected += 1
    assert expected > 10
    (image,) = events.Images("samples/epoch")
    assert image.step == 100 and image.encoded_image_string[:8] == b"\x89PNG\r\n\x1a\n"
    # the same picture as samples/epoch-001.png
    from io import BytesIO

    from PIL import Image

    shown = Image.open(BytesIO(image.encoded_image_string))
    assert shown.size == Image.open(logged_run / "samples" / "epoch-001.png").size
    # the config as hyperparameters, with the final metrics
    hparams = events.PluginTagToContent("hparams")
    assert b"latent_dim" in hparams["_hparams_/session_start_info"]
    epoch = next(r for r in records(logged_run) if r["kind"] == "epoch")
    assert scalars["final/train_g_loss"][100] == pytest.approx(epoch["train_g_loss"], rel=1e-6)


def test_mlflow_store_holds_params_metrics_and_artifacts(logged_run):
    if "mlflow" not in INSTALLED:
        pytest.skip('mlflow is not installed (pip install "dlcli[mlflow]")')
    from mlflow.tracking import MlflowClient

    client = MlflowClient((logged_run.parent / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("dlcli/gan")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == logged_run.name
    assert run.data.params["latent_dim"] == "4" and run.data.params["g_hidden"] == "[16]"
    assert run.data.tags["dlcli.run_dir"] == str(logged_run) and "dlcli.data_sha256" in run.data.tags
    history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "d_loss")}
    step_records = [r for r in records(logged_run) if r["kind"] == "step"]
    assert history == pytest.approx({r["step"]: r["d_loss"] for r in step_records})
    epoch = next(r for r in records(logged_run) if r["kind"] == "epoch")
    assert run.data.metrics["train_g_loss"] == pytest.approx(epoch["train_g_loss"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "samples")}
    artifacts |= {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")}
    assert artifacts == {"samples/epoch-001.png", "checkpoints/best.safetensors"}


def test_a_missing_extra_is_one_line_naming_the_pip_command(monkeypatch, cli):
    from dlcli.reporters import check_loggers

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(DlcliError, match=r'--logger mlflow needs mlflow: pip install "dlcli\[mlflow\]"'):
        check_loggers(["mlflow"])
    proc = cli("train", "mlp", "--dataset", "xor", "--logger", "wandb")
    assert proc.returncode == 2
    assert "unknown logger 'wandb'; choose one of: tensorboard, mlflow" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not Path("runs").exists()


def test_end_record_says_diverged_and_interrupted(tmp_path, monkeypatch):
    import torch

    from dlcli.tasks.gan import GANTask

    real_step = GANTask.train_step
    steps = {"n": 0}

    def poisoned(self, batch):
        steps["n"] += 1
        if steps["n"] == 5:
            with torch.no_grad():
                for p in self.generator.parameters():
                    p.fill_(float("nan"))
        return real_step(self, batch)

    monkeypatch.setattr(GANTask, "train_step", poisoned)
    with pytest.raises(TrainingFailed):
        train_tiny_gan(tmp_path / "diverged", batch_size=1000)
    assert records(tmp_path / "diverged")[-1] == {
        "kind": "end", "state": "diverged", "epochs": 0, "step": 4, "seconds": pytest.approx(
            records(tmp_path / "diverged")[-1]["seconds"]), "checkpoint": None}

    def stopped(self, batch):  # a polite kill during step 3 of epoch 2
        steps["n"] += 1
        if steps["n"] == 13:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_step(self, batch)

    steps["n"] = 0
    monkeypatch.setattr(GANTask, "train_step", stopped)
    with pytest.raises(Interrupted):
        train_tiny_gan(tmp_path / "stopped", batch_size=1000, epochs=3)
    end = records(tmp_path / "stopped")[-1]
    assert (end["kind"], end["state"], end["epochs"], end["step"]) == ("end", "interrupted", 1, 13)
    assert end["checkpoint"].endswith("best.safetensors")


# ---- module boundaries ----------------------------------------------------------------

COMMANDS = {"dlcli.cli", "dlcli.inspect", "dlcli.average", "dlcli.translate"}
BELOW = ["dlcli/tasks", "dlcli/models", "dlcli/data", "dlcli/reporters", "dlcli/train.py",
         "dlcli/checkpoint.py", "dlcli/checkpointer.py", "dlcli/runtime.py", "dlcli/fileio.py",
         "dlcli/header.py"]


def imported_modules(path: Path) -> set[str]:
    """Every dlcli module a file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}  # from dlcli import cli
    return found


def test_nothing_below_the_commands_imports_a_command_module():
    files = [f for where in BELOW for f in
             (sorted((ROOT / where).rglob("*.py")) if (ROOT / where).is_dir() else [ROOT / where])]
    assert len(files) > 20
    offenders = {f"{f.relative_to(ROOT)} imports {m}" for f in files
                 for m in imported_modules(f) & COMMANDS}
    assert not offenders, sorted(offenders)


def test_the_loop_names_no_task_attribute_it_does_not_declare():
    source = (ROOT / "dlcli" / "train.py").read_text()
    assert "getattr(task" not in source
    fit = next(n for n in ast.walk(ast.parse(source))
               if isinstance(n, ast.FunctionDef) and n.name == "fit")
    assert fit.end_lineno - fit.lineno + 1 <= 60
    for family in ("gan", "vae", "transformer", "seq2seq", "perceptron", "classif"):
        assert family not in ast.get_source_segment(source, fit).lower(), family
