"""What a new user meets in the first hour: which data and checkpoint a command uses, bad
inputs that must fail fast, offline use. Most run the CLI in this process (torch imported
once) on tiny fake data."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from test_data import write_fake_mnist

from dlcli.checkpoint import save_checkpoint
from dlcli.cli import main


def invoke(capsys, *args) -> tuple[int, str, str]:
    """`dlcli ARGS` in this process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def fake_data(tmp_path):
    """A --data-dir with a tiny fashion-mnist (no SHA-256 to match): 200 training, 30 test images."""
    folder = tmp_path / "data"
    write_fake_mnist(folder / "fashion-mnist", n_train=200, n_test=30)
    return folder


def train(capsys, *args) -> Path:
    code, out, err = invoke(capsys, "train", *args, "--epochs", "1")
    assert code == 0, err
    return Path(out.strip().splitlines()[-1])


# ---- 1. evaluate scores the data the checkpoint was trained on -------------------------

def test_evaluate_uses_the_checkpoints_data_and_says_which(capsys, fake_data, one_thread):
    ckpt = train(capsys, "mlp", "--dataset", "fashion-mnist", "--data-dir", fake_data)
    code, out, err = invoke(capsys, "evaluate", ckpt, "--json")  # no --data-dir
    assert code == 0, err
    data = json.loads(out)["data"]
    assert data["dataset"] == "fashion-mnist" and data["split"] == "test"
    assert data["items"] == 30 and str(fake_data) in data["source"]
    assert "scoring fashion-mnist, test split, 30 items" in err


# ---- 5. cvae without a judge; the judge named in the JSON; 2. the pick announced ---------

def test_cvae_evaluate_without_judge_then_with_one(capsys, fake_data, one_thread):
    train(capsys, "cvae", "--dataset", "fashion-mnist", "--data-dir", fake_data)
    ckpt = Path("runs/cvae").glob("*/best.safetensors").__next__()
    code, out, err = invoke(capsys, "evaluate", ckpt, "--json", "--samples", "20", "--iwae-k", "2")
    assert code == 0, err
    metrics = json.loads(out)
    assert metrics["nelbo"] > 0 and "label_accuracy" not in metrics and "judge" not in metrics
    assert "label_accuracy, cfid and confidence skipped" in err

    judge = train(capsys, "cnn", "--dataset", "fashion-mnist", "--data-dir", fake_data)
    code, out, err = invoke(capsys, "evaluate", ckpt, "--json", "--samples", "20", "--iwae-k", "2")
    assert code == 0, err
    metrics = json.loads(out)
    assert "label_accuracy" in metrics and Path(metrics["judge"]) == judge
    assert f"using judge {judge} (run at epoch 1 of 1" in err

    code, out, err = invoke(capsys, "sample", "cvae", "--label", "7", "-n", "4", "-o", "x.png")
    assert code == 0, err
    assert f"using {ckpt} (run at epoch 1 of 1" in err and "trained only" in err  # 1 step


def fake_run(folder: Path, epoch: int, epochs: int, step: int, best: bool) -> None:
    """A run folder with checkpoints of a tiny module, as far as `epoch` of `epochs`."""
    folder.mkdir(parents=True)
    names = ["last.safetensors"] + (["best.safetensors"] if best else [])
    for name in names:
        save_checkpoint(folder / name, model="cvae", config={"epochs": epochs},
                        modules={"model": torch.nn.Linear(2, 2)}, epoch=epoch, step=step)


def test_the_newest_finished_run_is_preferred_and_an_interrupted_one_warned(capsys):
    from dlcli.runs import resolve_checkpoint

    fake_run(Path("runs/cvae/old"), epoch=5, epochs=5, step=500, best=True)
    time.sleep(0.01)
    fake_run(Path("runs/cvae/new"), epoch=0, epochs=5, step=40, best=False)  # Ctrl-C at step 40
    assert resolve_checkpoint("cvae") == Path("runs/cvae/old/best.safetensors")
    err = capsys.readouterr().err
    assert "using runs/cvae/old/best.safetensors (run at epoch 5 of 5, 500 steps" in err
    assert "warning" not in err

    for name in ("best.safetensors", "last.safetensors"):
        Path("runs/cvae/old", name).unlink()
    assert resolve_checkpoint("cvae") == Path("runs/cvae/new/last.safetensors")
    assert "stopped at epoch 0 of 5 (interrupted, or still training)" in capsys.readouterr().err


def test_a_run_hands_on_its_average_unless_it_trained_on_afterwards(capsys):
    """average_last asks for the mean of the last snapshots: that is the run's model, as
    fairseq's recipe evaluates it, unless training went on (--resume) after it was made."""
    from dlcli.runs import resolve_checkpoint

    run = Path("runs/cvae/run")
    fake_run(run, epoch=5, epochs=5, step=500, best=True)
    time.sleep(0.01)
    shutil.copyfile(run / "last.safetensors", run / "averaged.safetensors")
    assert resolve_checkpoint("cvae") == run / "averaged.safetensors"
    assert resolve_checkpoint("cvae", run) == run / "averaged.safetensors"
    time.sleep(0.01)
    shutil.copyfile(run / "best.safetensors", run / "last.safetensors")  # trained on
    assert resolve_checkpoint("cvae") == run / "best.safetensors"


# ---- 8. a YAML alias bomb --------------------------------------------------------------

BOMB = "model: mlp\na: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi"))


def test_an_alias_bomb_preset_is_refused_at_once(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BOMB)
    assert len(BOMB) < 1024 and BOMB.count("&") == 9
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "dlcli", "train", "mlp", "--preset", str(bomb)],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "expands to more than" in proc.stderr

    from dlcli.config import resolve_config
    from dlcli.errors import DlcliError

    start = time.perf_counter()
    with pytest.raises(DlcliError, match="expands to more than"):
        resolve_config("mlp", str(bomb))
    with pytest.raises(DlcliError, match="--set hidden: YAML expands"):
        resolve_config("mlp", None, ["hidden=&x [1, *x]"])  # an alias inside itself
    assert time.perf_counter() - start < 1


def test_ordinary_aliases_still_work(tmp_path):
    from dlcli.config import resolve_config

    preset = tmp_path / "p.yaml"
    preset.write_text("model: mlp\nhidden: &w [64, 32]\n")
    assert resolve_config("mlp", str(preset))["hidden"] == [64, 32]


# ---- 9. paths ------------------------------------------------------------------------

def test_inspect_and_evaluate_take_a_run_folder(capsys, fake_data, one_thread):
    ckpt = train(capsys, "mlp", "--dataset", "fashion-mnist", "--data-dir", fake_data)
    code, out, err = invoke(capsys, "inspect", ckpt.parent, "--json")
    assert code == 0, err
    assert json.loads(out)["path"] == str(ckpt) and f"reading {ckpt}" in err
    code, out, err = invoke(capsys, "inspect", fake_data)
    assert code == 2 and "without best.safetensors or last.safetensors" in err


def test_presets_copy_into_a_folder(capsys, tmp_path):
    code, out, err = invoke(capsys, "presets", "copy", "mlp", "mine/")
    assert code == 0, err
    assert Path(out.strip()) == Path("mine/mlp.yaml") and Path("mine/mlp.yaml").is_file()
    code, out, err = invoke(capsys, "presets", "copy", "cnn", "mine")  # an existing folder
    assert code == 0 and Path("mine/cnn.yaml").is_file()
    code, out, err = invoke(capsys, "presets", "copy", "cnn", "no/such/place/")
    assert code == 2 and "does not exist" in err and not Path("no").exists()


def test_sample_output_paths_and_sizes(capsys, fake_data, one_thread):
    train(capsys, "vae", "--dataset", "fashion-mnist", "--data-dir", fake_data)
    code, out, err = invoke(capsys, "sample", "vae", "-n", "4", "-o", "a/b/x.png")
    assert code == 2 and "folder a does not exist" in err and not Path("a").exists()
    code, out, err = invoke(capsys, "sample", "vae", "-n", "4", "-o", "new/x.png")  # one level
    assert code == 0 and Path("new/x.png").is_file()
    code, out, err = invoke(capsys, "sample", "vae", "-n", "100000", "-o", "big.png")
    assert code == 2 and "more than image viewers open" in err and not Path("big.png").exists()
    assert err.count("\n") - err.count("using ") - err.count("warning") == 1


def test_last_and_best_have_the_same_mode(capsys, fake_data, one_thread):
    ckpt = train(capsys, "mlp", "--dataset", "fashion-mnist", "--data-dir", fake_data)
    modes = {stat.S_IMODE((ckpt.parent / n).stat().st_mode)
             for n in ("last.safetensors", "best.safetensors")}
    assert len(modes) == 1


# ---- 10. offline: one line, and the failure remembered -----------------------------------

def test_offline_fallback_is_one_line_and_remembered(monkeypatch, capsys):
    from dlcli.data import mnist

    tried = []

    def unreachable(url, label):
        tried.append(url)
        raise OSError("Name or service not known")

    monkeypatch.setattr(mnist, "fetch", unreachable)
    mnist.load_images("mnist", allow_download=True)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "download failed" in lines[0] and "bundled MNIST subset" in lines[0]
    first = len(tried)
    assert first == len(mnist.MIRRORS["mnist"])

    mnist.load_images("mnist", allow_download=True)  # soon after: not tried again
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(tried) == first and len(lines) == 1 and "no download tried" in lines[0]

    marker = next(mnist.cache_dir().glob(".mnist-*"))
    old = time.time() - mnist.OFFLINE_TTL - 1
    os.utime(marker, (old, old))
    mnist.load_images("mnist", allow_download=True)  # the network may be back: try again
    assert len(tried) == 2 * first
