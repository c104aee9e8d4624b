"""Signals stop training cleanly: a checkpoint saved, the exit code a shell expects
(128 + the signal), nothing left running, and a resume that continues exactly."""

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, run_cli
from test_resume import assert_same

# Many small steps of a tiny net (xor: 2,000 rows an epoch, 250 steps of each rank): a
# signal sent at the first logged step (the 50th) lands mid-epoch, and well before the end.
TINY = ["--threads", "1", "train", "mlp", "--dataset", "xor", "--set", "hidden=[8]",
        "--set", "batchnorm=false",  # per-rank BatchNorm statistics are averaged at epoch ends only
        "--batch-size", "4", "--epochs", "2"]
DDP = ["--nproc-per-node", "2"]


def start(args, run_dir):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DLCLI_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "dlcli", *args, "--run-dir", str(run_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)  # its own process group, to find leftovers


def wait_for_first_step(run_dir, proc):
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and '"kind": "step"' in metrics.read_text():
            return
        time.sleep(0.02)
    raise AssertionError(f"no step logged: {proc.communicate()[1][-2000:]}")


def group_alive(pgid) -> list[str]:
    """Processes still in the process group, or anywhere with our run folder in their
    command line (torchrun's workers run in sessions of their own)."""
    left = subprocess.run(["ps", "-eo", "pgid=,args="], capture_output=True, text=True).stdout
    return [line for line in left.splitlines() if line.split(None, 1)[0] == str(pgid)]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("full") / "run"
    run_cli(*TINY, *DDP, "--run-dir", folder, check=0)
    return folder / "last.safetensors"


# SIGTERM takes the same path as SIGINT once caught; its run is kept for `-m slow`
@pytest.mark.parametrize("signum", [signal.SIGINT, pytest.param(signal.SIGTERM, marks=pytest.mark.slow)])
def test_signal_stops_every_worker_saves_and_resumes_exactly(tmp_path, signum, uninterrupted):
    run_dir = tmp_path / "cut"
    proc = start([*TINY, *DDP], run_dir)
    wait_for_first_step(run_dir, proc)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err
    assert "Traceback" not in err and "death signal" not in err, err
    assert err.count("interrupted: saved") == 1, err  # one line, from rank 0
    assert group_alive(proc.pid) == []
    workers = subprocess.run(["pgrep", "-f", str(run_dir)], capture_output=True, text=True)
    assert workers.stdout == "", "a worker outlived dlcli"
    last = run_dir / "last.safetensors"
    run_cli(*TINY, *DDP, "--resume", last, check=0)
    assert_same(uninterrupted, last)


def test_sighup_saves_like_sigterm(tmp_path):
    """A closed terminal (SIGHUP) stops training as SIGTERM does: saved, exit 129."""
    run_dir = tmp_path / "hup"
    proc = start(TINY, run_dir)
    wait_for_first_step(run_dir, proc)
    proc.send_signal(signal.SIGHUP)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 129, err
    assert "interrupted: saved" in err and (run_dir / "last.safetensors").is_file()
