"""Shared fixtures: run the CLI in a subprocess from this checkout, real MNIST when present."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def run_cli(*args, cwd=None, input=None, env=None, timeout=600, check=None):
    """`python -m dlcli ARGS` with this checkout first on the path; returns CompletedProcess
    (stdout as bytes when input is bytes or the output is binary, else text)."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "DLCLI_OFFLINE": "1",
                "COLUMNS": "120", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "dlcli", *map(str, args)], cwd=cwd,
                          input=input, capture_output=True, env=full_env, timeout=timeout,
                          text=not isinstance(input, bytes))
    if check is not None and proc.returncode != check:
        raise AssertionError(f"exit {proc.returncode} (wanted {check}) for dlcli {' '.join(map(str, args))}\n"
                             f"stdout: {proc.stdout!s:.2000}\nstderr: {proc.stderr!s:.4000}")
    return proc


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Every test runs in its own folder, with its own cache, offline."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("DLCLI_OFFLINE", "1")
    monkeypatch.delenv("DLCLI_DATA_DIR", raising=False)
    return tmp_path


@pytest.fixture
def mnist_dir():
    """The real MNIST files (../shared/data) when this machine has them, else skip."""
    if not (SHARED_DATA / "mnist" / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("real MNIST not available at ../shared/data (the bundled subset is tested elsewhere)")
    return SHARED_DATA


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from a second thread, and on a crowded machine thread
    barriers make them many times slower: one torch thread in this process."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
