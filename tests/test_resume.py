"""Resuming reproduces the uninterrupted run exactly (CPU), after an epoch or mid-epoch."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, run_cli
from safetensors.torch import load_file

ARGS = ["train", "mlp", "--set", "hidden=[32]", "--set", "dropout=0.2", "--batch-size", "32"]


def weights(path):
    return {k: v for k, v in load_file(str(path)).items() if k.startswith("model/")}


def assert_same(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_resume_after_epoch_equals_uninterrupted(tmp_path):
    # a per-epoch schedule: a cosine one depends on the total number of epochs, which differs
    args = ARGS + ["--set", "schedule=exponential"]
    run_cli(*args, "--epochs", "3", "--run-dir", tmp_path / "full", check=0)
    run_cli(*args, "--epochs", "1", "--run-dir", tmp_path / "part", check=0)
    resumed = run_cli(*args, "--epochs", "3", "--resume", tmp_path / "part" / "last.safetensors",
                      check=0)
    assert Path(resumed.stdout.strip()).parent == tmp_path / "part"
    assert_same(tmp_path / "full" / "last.safetensors", tmp_path / "part" / "last.safetensors")


# Ctrl-C; kill and timeout send SIGTERM, caught by the same handler (kept for `-m slow`)
@pytest.mark.parametrize("signum", [signal.SIGINT, pytest.param(signal.SIGTERM, marks=pytest.mark.slow)])
def test_ctrl_c_saves_and_resume_equals_uninterrupted(tmp_path, signum):
    args = ARGS + ["--epochs", "2", "--set", "hidden=[256, 256]"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DLCLI_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "dlcli", *args, "--run-dir", str(tmp_path / "cut")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    # interrupt as soon as the first epoch is logged: during its end-of-epoch work or early
    # in the second epoch; either way the resumed run must match the uninterrupted one
    metrics = tmp_path / "cut" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and '"kind": "epoch"' in metrics.read_text()):
        time.sleep(0.02)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, err
    assert "interrupted" in err and "--resume" in err and "Traceback" not in err
    last = tmp_path / "cut" / "last.safetensors"
    run_cli(*args, "--resume", last, check=0)
    run_cli(*args, "--run-dir", tmp_path / "full", check=0)
    assert_same(tmp_path / "full" / "last.safetensors", last)


def test_resume_rejects_other_model(tmp_path):
    run_cli("train", "perceptron", "--dataset", "and", "--run-dir", tmp_path / "p", check=0)
    proc = run_cli("train", "mlp", "--resume", tmp_path / "p" / "last.safetensors")
    assert proc.returncode == 2 and "perceptron checkpoint" in proc.stderr


def test_resume_remembers_the_data_dir(tmp_path, mnist_dir):
    data = tmp_path / "data"
    data.symlink_to(mnist_dir.resolve(), target_is_directory=True)
    args = ["train", "mlp", "--set", "hidden=[16]", "--batch-size", "512"]
    run_cli(*args, "--epochs", "1", "--data-dir", data, "--run-dir", tmp_path / "run", check=0)
    last = tmp_path / "run" / "last.safetensors"
    resumed = run_cli(*args, "--epochs", "2", "--resume", last, check=0)
    assert f"{data / 'mnist'} (--data-dir)" in " ".join(resumed.stderr.split())
    data.unlink()
    gone = run_cli(*args, "--epochs", "3", "--resume", last)
    assert gone.returncode == 2 and "--data-dir" in gone.stderr and "Traceback" not in gone.stderr


def test_resume_refuses_before_writing_anything(tmp_path):
    """A checkpoint without training state, or one that already has the epochs asked for,
    is refused before a run folder is claimed or a file written next to it."""
    xor = ["train", "mlp", "--dataset", "xor", "--set", "hidden=[4]"]
    run_cli(*xor, "--epochs", "2", "--run-dir", tmp_path / "run", check=0)
    last = tmp_path / "run" / "last.safetensors"
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run").iterdir()}
    done = run_cli(*xor, "--epochs", "2", "--resume", last, "--run-dir", tmp_path / "new")
    assert done.returncode == 2 and "trained 2 epochs already" in done.stderr
    assert done.stdout == "" and not (tmp_path / "new").exists()
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run").iterdir()} == before
    # with --nproc-per-node too: refused once, before torchrun starts
    ddp = run_cli(*xor, "--epochs", "1", "--resume", last, "--nproc-per-node", "2")
    assert ddp.returncode == 2 and ddp.stderr.count("error:") == 1 and "Traceback" not in ddp.stderr

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.yaml").write_text("my own file\n")
    run_cli("average", last, last, "-o", mine / "avg.safetensors", check=0)
    proc = run_cli(*xor, "--epochs", "3", "--resume", mine / "avg.safetensors")
    assert proc.returncode == 2 and "no training state" in proc.stderr
    assert (mine / "config.yaml").read_text() == "my own file\n"


def test_resume_of_a_checkpoint_kept_elsewhere_starts_a_new_run_folder(tmp_path, isolated):
    """Only a run folder is continued in place; a checkpoint copied into a folder of the
    user's own gets its continuation under runs/, leaving that folder alone."""
    xor = ["train", "mlp", "--dataset", "xor", "--set", "hidden=[4]"]
    run_cli(*xor, "--epochs", "1", "--run-dir", tmp_path / "run", check=0)
    mine = tmp_path / "mine"
    mine.mkdir()
    shutil.copy(tmp_path / "run" / "last.safetensors", mine / "model.safetensors")
    resumed = run_cli(*xor, "--epochs", "2", "--resume", mine / "model.safetensors", check=0)
    run = Path(resumed.stdout.strip()).parent
    assert run.parent.name == "mlp" and (run / "last.safetensors").is_file()
    assert sorted(p.name for p in mine.iterdir()) == ["model.safetensors"]
    # a run folder is continued in place
    again = run_cli(*xor, "--epochs", "3", "--resume", run / "last.safetensors", check=0)
    assert Path(again.stdout.strip()).parent == run


def test_a_mid_epoch_checkpoint_needs_a_later_epoch_budget():
    from types import SimpleNamespace

    from dlcli.errors import DlcliError
    from dlcli.train import check_resumable

    mid = SimpleNamespace(path="mid.safetensors", meta={"state": "..."}, epoch=1, batch=3)  # in epoch 2
    check_resumable(mid, 2)
    with pytest.raises(DlcliError, match="trained 1 epochs and part of the next already"):
        check_resumable(mid, 1)
