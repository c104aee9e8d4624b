"""Runs that survive: checkpoints between epoch ends (checkpoint_every), `--resume auto`
after a SIGKILL, torchrun restarting a killed worker, two torchrun "nodes" on this
machine, and a checkpoint write that fails. Every resumed run must end bit-equal to the
same run never stopped."""

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time

import pytest
import yaml
from conftest import ROOT, run_cli
from test_resume import assert_same
from test_signals import DDP, TINY, start

from dlcli.checkpoint import load_checkpoint
from dlcli.runs import newest_resumable

# a checkpoint every 50 optimizer steps: several inside each epoch of TINY (250 steps a
# rank, 500 alone), so a kill finds one mid-epoch
EVERY = [*TINY, "--set", "checkpoint_every=50"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "DLCLI_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def alone(tmp_path_factory):
    """TINY in one process, never stopped."""
    folder = tmp_path_factory.mktemp("alone") / "run"
    run_cli(*EVERY, "--run-dir", folder, check=0)
    return folder / "last.safetensors"


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """TINY in two processes of one node, never stopped."""
    folder = tmp_path_factory.mktemp("ddp") / "run"
    run_cli(*EVERY, *DDP, "--run-dir", folder, check=0)
    return folder / "last.safetensors"


def wait_for_mid_epoch_checkpoint(run_dir, proc, timeout=120):
    """Until last.safetensors holds a position inside an epoch (written by checkpoint_every)."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        path = run_dir / "last.safetensors"
        try:
            if path.exists() and load_checkpoint(path, tensors=False).batch > 0:
                return
        except Exception:  # noqa: BLE001 -- replaced while we read it: look again
            pass
        time.sleep(0.02)
    raise AssertionError(f"no mid-epoch checkpoint: {proc.communicate()[1][-2000:]}")


def assert_nothing_half_written(run_dir):
    """Every file a reader would open is whole: checkpoints load, config.yaml parses,
    metrics.jsonl holds whole records (a kill may tear its last line, which resume drops).
    Only atomic_write's hidden temporary files may be partial; resume removes them."""
    for path in run_dir.rglob("*"):
        if path.is_dir() or path.name.startswith("."):
            continue
        if path.suffix == ".safetensors":
            load_checkpoint(path)
        elif path.name == "config.yaml":
            assert isinstance(yaml.safe_load(path.read_text()), (dict, type(None))), path
        elif path.name == "metrics.jsonl":
            lines = path.read_text().splitlines(keepends=True)
            for line in lines[:-1] + [x for x in lines[-1:] if x.endswith("\n")]:
                json.loads(line)
        elif path.suffix == ".png":
            assert path.read_bytes().startswith(b"\x89PNG") and path.read_bytes()[-8:-4] == b"IEND"


def test_checkpoint_every_bad_value_is_one_line():
    proc = run_cli(*TINY, "--set", "checkpoint_every=10 minutes", "--run-dir", "x", check=2)
    assert proc.stderr.count("\n") == 1 and "checkpoint_every" in proc.stderr


def test_resume_auto_without_a_run_folder_is_refused():
    proc = run_cli(*TINY, "--resume", "auto", check=2)
    assert "--run-dir" in proc.stderr and proc.stderr.count("\n") == 1


def test_sigkill_then_resume_auto_is_exact(tmp_path, alone):
    run_dir = tmp_path / "cut"
    proc = start(EVERY, run_dir)
    wait_for_mid_epoch_checkpoint(run_dir, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    at = load_checkpoint(run_dir / "last.safetensors", tensors=False)
    done = run_cli(*EVERY, "--run-dir", run_dir, "--resume", "auto", check=0)
    assert f"at epoch {at.epoch + 1}, step {at.step}" in done.stderr
    assert_same(alone, run_dir / "last.safetensors")
    # the records of steps past the checkpoint were dropped, then written anew: once each
    steps = [json.loads(x)["step"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()
             if json.loads(x)["kind"] == "step"]
    assert steps == sorted(set(steps))
    again = run_cli(*EVERY, "--run-dir", run_dir, "--resume", "auto", check=0)  # a requeue
    assert "trained its 2 epochs already" in again.stderr


def kill_at_random_times(run_dir, kills, seed):
    rng = random.Random(seed)
    for k in range(kills):
        args = EVERY if k == 0 else [*EVERY, "--resume", "auto"]
        proc = start(args, run_dir)
        time.sleep(rng.uniform(0.3, 6.0))  # from inside the imports to past the end
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        if run_dir.exists():
            assert_nothing_half_written(run_dir)
            newest = newest_resumable(run_dir)
            if newest is not None:
                load_checkpoint(newest).state  # noqa: B018 -- loads whole, training state too
    run_cli(*EVERY, "--run-dir", run_dir, "--resume", "auto", check=0)
    assert not list(run_dir.rglob(".*.tmp"))
    assert_nothing_half_written(run_dir)


def test_three_kills_at_random_times(tmp_path, alone):
    kill_at_random_times(tmp_path / "run", 3, seed=3)
    assert_same(alone, tmp_path / "run" / "last.safetensors")


@pytest.mark.slow
def test_twenty_kills_at_random_times(tmp_path, alone):
    kill_at_random_times(tmp_path / "run", 20, seed=20)
    assert_same(alone, tmp_path / "run" / "last.safetensors")


def torchrun(*launcher, dlcli_args):
    return subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", *launcher, "-m", "dlcli", *dlcli_args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
        start_new_session=True)


def rank_of(pid: str) -> int:
    environ = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
    return int(next(v for v in environ if v.startswith(b"RANK="))[5:])


# rank 0 writes the checkpoints (killed, maybe mid-write); killed rank 1 leaves rank 0 to
# be stopped by torchrun (SIGTERM) while its peer is gone
@pytest.mark.parametrize("victim", [0, pytest.param(1, marks=pytest.mark.slow)])
def test_torchrun_restarts_a_killed_worker_and_ends_exact(tmp_path, two_ranks, victim):
    run_dir = tmp_path / "elastic"
    proc = torchrun("--standalone", "--nproc-per-node", "2", "--max-restarts", "1",
                    dlcli_args=[*EVERY, "--run-dir", str(run_dir)])
    wait_for_mid_epoch_checkpoint(run_dir, proc)
    workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                             text=True).stdout.split()
    assert len(workers) == 2, workers
    os.kill(int(next(w for w in workers if rank_of(w) == victim)), signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "resuming" in err
    assert_same(two_ranks, run_dir / "last.safetensors")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_train_as_one_node_with_two_processes(tmp_path, two_ranks):
    run_dir = tmp_path / "two-nodes"
    endpoint = f"127.0.0.1:{free_port()}"
    nodes = [torchrun("--nnodes", "2", "--nproc-per-node", "1", "--node-rank", str(rank),
                      "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint,
                      "--rdzv-id", "two-nodes", dlcli_args=[*EVERY, "--run-dir", str(run_dir)])
             for rank in (0, 1)]
    for node in nodes:
        out, err = node.communicate(timeout=300)
        assert node.returncode == 0, err[-3000:]
    assert_same(two_ranks, run_dir / "last.safetensors")


def test_a_failed_checkpoint_write_keeps_the_last_and_training_goes_on(tmp_path, monkeypatch,
                                                                      capsys):
    """Disk full in the middle of training: the write fails, the previous last.safetensors
    stays whole, one warning line, training goes on; the final checkpoint must be written,
    and when it cannot be, the run stops with exit 1 and one line."""
    import errno

    import dlcli.checkpoint as checkpoint
    from dlcli.cli import main

    real, calls = checkpoint.save_file, []

    def disk_full(tensors, path, metadata=None):
        calls.append(path)
        if 3 <= len(calls) <= 5 or (failing_at_the_end and len(calls) > 8):
            with open(path, "wb") as f:  # a few bytes in, then no space left
                f.write(b"\0" * 10)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(tensors, path, metadata=metadata)

    monkeypatch.setattr(checkpoint, "save_file", disk_full)
    for failing_at_the_end, code in ((False, 0), (True, 1)):
        calls.clear()
        run_dir = tmp_path / f"exit-{code}"
        with pytest.raises(SystemExit) as exit_:
            main([*EVERY, "--run-dir", str(run_dir)])
        err = capsys.readouterr().err
        assert exit_.value.code == code, err
        assert not list(run_dir.glob(".*.tmp"))  # the torn temporary files were removed
        last = load_checkpoint(run_dir / "last.safetensors")  # whole, through every failure
        warned = [line for line in err.splitlines() if "not saved" in line]
        if code == 0:
            assert len(warned) == 1 and "No space left on device" in warned[0]
            assert "training goes on" in warned[0] and "written again" in err
            assert last.epoch == 2
        else:
            # a warning, the recovery, a warning again, and the final save's error
            assert len(warned) == 3 and warned[-1].startswith("error: "), err
            assert "is kept as it was" in warned[-1]
            assert last.step == 400  # the newest that could be written: call 8, step 8 x 50
