"""`dlcli runs`: listing, showing and comparing past runs, their states, and damaged folders.

Real tiny runs where they are cheap (perceptron, xor mlp, a run stopped by SIGTERM while
it trains); synthetic folders (config.yaml, metrics.jsonl, header-only checkpoints) for
the states and damage that are expensive or slow to produce for real."""

from __future__ import annotations

import json
import os
import platform
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, run_cli

from dlcli.cli import main
from dlcli.runlog import Run, list_runs

TINY_MLP = ["--dataset", "xor", "--set", "hidden=[8]"]


def dlcli(capsys, *args):
    """`dlcli ARGS` in this process (the runs commands are quick): (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exited:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return exited.value.code, out, err


def write_checkpoint_header(path: Path, *, model: str, config: dict, epoch: int, step: int = 0,
                            metrics: dict | None = None, batch: int = 0) -> None:
    """A safetensors file with dlcli's metadata and no tensors: all `runs` reads of one."""
    meta = {"format": "dlcli/1", "model": model, "config": json.dumps(config),
            "epoch": str(epoch), "step": str(step), "metrics": json.dumps(metrics or {}),
            "state": json.dumps({"__dict__": [["batch", batch], ["rng", {"__tensor__": "state/rng"}]]})}
    header = json.dumps({"__metadata__": meta}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header)


def make_run(folder: Path, *, model: str = "mlp", epochs: int = 3, done: int | None = None,
             batch: int = 0, started: str = "2026-01-01T12:00:00+0000", records=None,
             end: dict | None = None, lr: float = 0.1, **provenance) -> Path:
    """A run folder as training leaves it: `done` epochs checkpointed (None: no checkpoint),
    an epoch record per epoch done unless `records` says otherwise, `end` as the last record."""
    folder.mkdir(parents=True)
    config = {"model": model, "dataset": "xor", "epochs": epochs, "lr": lr, "seed": 0}
    provenance = {"command": f"dlcli train {model}", "started": started, **provenance}
    (folder / "config.yaml").write_text(yaml.safe_dump({**config, "provenance": provenance},
                                                       sort_keys=False))
    if records is None:
        records = [{"kind": "epoch", "epoch": e, "step": 10 * e, "val_loss": 1.0 / e,
                    "val_accuracy": 0.5 + e / 100} for e in range(1, (done or 0) + 1)]
    lines = [json.dumps(r) + "\n" for r in records + ([end] if end else [])]
    (folder / "metrics.jsonl").write_text("".join(lines))
    if done is not None:
        metrics = {k: v for k, v in records[-1].items() if k != "kind"} if records else {}
        for name in ("last.safetensors", "best.safetensors"):
            write_checkpoint_header(folder / name, model=model, config=config, epoch=done,
                                    step=10 * done, metrics=metrics, batch=batch)
    return folder


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ---- real runs ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two finished runs under runs/: a 1-epoch perceptron, then a 2-epoch xor mlp."""
    where = tmp_path_factory.mktemp("trained")
    run_cli("--threads", "1", "train", "perceptron", "--dataset", "and", "--epochs", "1",
            cwd=where, check=0)
    time.sleep(1.1)  # run folders are named by the second they start
    run_cli("--threads", "1", "train", "mlp", *TINY_MLP, "--epochs", "2", cwd=where, check=0)
    return where


def test_list_shows_real_runs_newest_first(trained, monkeypatch, capsys):
    monkeypatch.chdir(trained)
    code, out, err = dlcli(capsys, "runs", "--json")
    assert code == 0, err
    rows = json.loads(out)
    assert [r["model"] for r in rows] == ["mlp", "perceptron"]
    mlp = rows[0]
    assert mlp["state"] == "finished" and (mlp["epochs"], mlp["epochs_planned"]) == (2, 2)
    assert mlp["dataset"] == "xor" and mlp["monitor"] == "val_loss"
    epochs = [json.loads(line) for line in (Path(mlp["path"]) / "metrics.jsonl").read_text().splitlines()]
    assert mlp["best"] == min(r["val_loss"] for r in epochs if r["kind"] == "epoch")
    assert mlp["pid"] != os.getpid() and mlp["hostname"] == platform.node()  # the writer's
    assert mlp["seconds"] is not None and 0 <= mlp["seconds"] < 120 and mlp["notes"] == []

    code, out, _ = dlcli(capsys, "runs")
    lines = out.splitlines()
    assert "model" in lines[0] and "best" in lines[0] and "path" in lines[0]
    assert "finished" in lines[1] and "2/2" in lines[1] and mlp["path"] in lines[1]
    assert f"val_loss {mlp['best']:.4g}" in lines[1]
    code, out, _ = dlcli(capsys, "runs", "--model", "perceptron", "--json")
    assert [r["model"] for r in json.loads(out)] == ["perceptron"]


def test_show_gives_config_and_history(trained, monkeypatch, capsys):
    monkeypatch.chdir(trained)
    run = next((trained / "runs" / "mlp").iterdir())
    code, out, err = dlcli(capsys, "runs", "show", run.name, "--json")  # a name under ./runs
    assert code == 0, err
    shown = json.loads(out)
    assert shown["config"] == yaml.safe_load((run / "config.yaml").read_text())
    assert "command" in shown["config"]["provenance"]
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert shown["history"] == [{k: v for k, v in r.items() if k != "kind"}
                                for r in logged if r["kind"] == "epoch"]
    code, out, _ = dlcli(capsys, "runs", "show", run)  # by its folder, as a table
    assert "hidden:" in out and "provenance:" in out
    header = next(line for line in out.splitlines() if "val_accuracy" in line)
    assert header.split()[:2] == ["epoch", "step"]


def test_compare_puts_differences_and_final_metrics_side_by_side(trained, monkeypatch, capsys):
    monkeypatch.chdir(trained)
    mlp = next((trained / "runs" / "mlp").iterdir())
    perceptron = next((trained / "runs" / "perceptron").iterdir())
    code, out, err = dlcli(capsys, "runs", "compare", mlp, perceptron, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["config"]["model"] == ["mlp", "perceptron"]
    assert result["config"]["epochs"] == [2, 1]
    assert result["config"]["hidden"] == [[8], None]  # a key one of them lacks
    assert "seed" not in result["config"]  # the same in both
    assert "provenance.started" not in result["config"]  # differs always, says nothing
    finals = [Run.read(p).epoch_records[-1] for p in (mlp, perceptron)]
    assert result["final"]["val_loss"] == [f["val_loss"] for f in finals]
    code, out, _ = dlcli(capsys, "runs", "compare", mlp, perceptron)
    assert "config differences" in out and "final metrics" in out
    assert any(line.split()[:3] == ["model", "mlp", "perceptron"] for line in out.splitlines())


def test_a_training_run_is_running_then_interrupted(tmp_path, capsys):
    """The writer's pid in provenance: alive while it trains; after SIGTERM, interrupted."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DLCLI_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "dlcli", "--threads", "1", "train", "mlp",
                             *TINY_MLP, "--epochs", "1000", "--run-dir", str(tmp_path / "long")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    metrics = tmp_path / "long" / "metrics.jsonl"
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (metrics.exists() and '"epoch"' in metrics.read_text()):
            time.sleep(0.05)
        (run,) = list_runs(tmp_path)
        assert run.state == "running" and run.provenance["pid"] == proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    code, out, _ = dlcli(capsys, "runs", "--root", tmp_path, "--json")
    (row,) = json.loads(out)
    assert row["state"] == "interrupted" and 1 <= row["epochs"] < 1000


@pytest.mark.slow
def test_a_real_divergence_before_the_first_checkpoint(tmp_path, capsys):
    run_cli("--threads", "1", "train", "mlp", *TINY_MLP, "--lr", "1e30", "--run-dir",
            tmp_path / "nan", check=1)
    code, out, _ = dlcli(capsys, "runs", "--root", tmp_path, "--json")
    assert [r["state"] for r in json.loads(out)] == ["diverged"]


# ---- states, from synthetic folders --------------------------------------------------

def state_of(folder: Path) -> str:
    return Run.read(folder).state


def test_the_end_record_says_the_state_and_wall_time(tmp_path):
    end = {"kind": "end", "state": "diverged", "epochs": 2, "seconds": 75.5}
    run = Run.read(make_run(tmp_path / "r", done=2, end=end))
    assert run.state == "diverged" and run.seconds == 75.5
    # the perceptron stops when it converges: finished although fewer epochs than planned
    early = {"kind": "end", "state": "finished", "epochs": 2, "seconds": 1.0}
    assert state_of(make_run(tmp_path / "converged", epochs=10, done=2, end=early)) == "finished"


def test_an_end_record_before_a_resume_is_not_the_last_word(tmp_path):
    end = {"kind": "end", "state": "interrupted", "epochs": 1, "seconds": 3.0}
    folder = make_run(tmp_path / "r", epochs=3, done=1, end=end, pid=os.getpid(),
                      hostname=platform.node(), started=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    assert state_of(folder) == "interrupted"
    # resumed in its folder: config.yaml is written anew, after metrics.jsonl
    later = time.time() + 5
    os.utime(folder / "config.yaml", (later, later))
    assert state_of(folder) == "running"


def test_states_inferred_without_an_end_record(tmp_path):
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    me = {"pid": os.getpid(), "hostname": platform.node()}
    assert state_of(make_run(tmp_path / "done", epochs=3, done=3)) == "finished"
    cut = Run.read(make_run(tmp_path / "cut", epochs=3, done=1, batch=7))
    assert cut.state == "interrupted" and cut.summary()["batch"] == 7
    assert state_of(make_run(tmp_path / "alive", done=1, started=now, **me)) == "running"
    assert state_of(make_run(tmp_path / "gone", done=1, started=now, pid=dead_pid(),
                             hostname=platform.node())) == "interrupted"
    # a pid alive now but younger than the run: the system reused it, the writer is gone
    assert state_of(make_run(tmp_path / "reused", done=1, started="2001-01-01T00:00:00+0000",
                             **me)) == "interrupted"
    assert state_of(make_run(tmp_path / "elsewhere", done=1, started=now, pid=os.getpid(),
                             hostname="another-host")) == "interrupted"
    # metrics but no checkpoint: a bad loss stopped it before epoch 1 ended
    assert state_of(make_run(tmp_path / "nan", records=[])) == "diverged"
    nan = [{"kind": "epoch", "epoch": 1, "step": 10, "val_loss": float("nan")}]
    assert state_of(make_run(tmp_path / "nan-logged", done=1, records=nan)) == "diverged"


def test_best_is_the_lowest_monitored_value_and_none_for_gans(tmp_path):
    records = [{"kind": "epoch", "epoch": e, "step": e, "val_loss": v}
               for e, v in enumerate([0.5, 0.2, 0.3], 1)]
    run = Run.read(make_run(tmp_path / "mlp", done=3, records=records))
    assert (run.monitor, run.best) == ("val_loss", 0.2)
    gan = Run.read(make_run(tmp_path / "gan", model="gan", done=1))
    assert gan.monitor is None and gan.best is None


def test_listing_a_hundred_runs_reads_headers_only_and_is_fast(tmp_path, capsys):
    for i in range(100):
        model = ("mlp", "vae", "gan", "cnn")[i % 4]
        make_run(tmp_path / model / f"2026010{i // 60}-{i % 60:02d}0000", model=model,
                 epochs=20, done=1 + i % 20, started=f"2026-01-01T00:{i // 60:02d}:{i % 60:02d}+0000")
    list_runs(tmp_path)  # the models' tasks imported once (and torch with them)
    t0 = time.perf_counter()
    code, out, err = dlcli(capsys, "runs", "--root", tmp_path, "--json")
    seconds = time.perf_counter() - t0
    rows = json.loads(out)
    assert code == 0 and len(rows) == 100, err
    assert [r["started"] for r in rows] == sorted((r["started"] for r in rows), reverse=True)
    assert seconds < 3, f"listing 100 runs took {seconds:.2f} s"
    code, out, _ = dlcli(capsys, "runs", "--root", tmp_path, "--model", "vae", "--json")
    assert {r["model"] for r in json.loads(out)} == {"vae"} and len(json.loads(out)) == 25


# ---- damaged folders and bad input -----------------------------------------------------

def test_a_truncated_last_line_is_tolerated_a_bad_line_noted(tmp_path):
    folder = make_run(tmp_path / "killed", done=2)
    with open(folder / "metrics.jsonl", "a") as f:
        f.write('{"kind": "step", "epoch": 3, "st')  # a write cut short by a kill
    run = Run.read(folder)
    assert len(run.epoch_records) == 2 and run.notes == []
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    (folder / "metrics.jsonl").write_text("\n".join([lines[0], "garbage", *lines[1:]]) + "\n")
    run = Run.read(folder)
    assert len(run.epoch_records) == 2 and run.notes == ["metrics.jsonl: 2 unreadable lines skipped"]


def test_damaged_runs_are_rows_with_a_note(tmp_path, capsys):
    bad_config = make_run(tmp_path / "mlp" / "bad-config", epochs=3, done=3)
    (bad_config / "config.yaml").write_text("epochs: [3\n  : :")
    bad_ckpt = make_run(tmp_path / "mlp" / "bad-ckpt", done=1, started="2026-01-02T00:00:00+0000")
    (bad_ckpt / "last.safetensors").write_bytes(b"\x00" * 5)
    not_dict = make_run(tmp_path / "mlp" / "list-metrics", done=1)
    (not_dict / "best.safetensors").write_bytes(struct.pack("<Q", 2) + b"[]")
    (tmp_path / "mlp" / "not-a-run").mkdir()  # an empty folder: skipped
    code, out, err = dlcli(capsys, "runs", "--root", tmp_path, "--json")
    assert code == 0 and "Traceback" not in err
    rows = {Path(r["path"]).name: r for r in json.loads(out)}
    assert set(rows) == {"bad-config", "bad-ckpt", "list-metrics"}
    # the checkpoint carries the config too: the run is still described
    assert rows["bad-config"]["notes"] == ["config.yaml unreadable"]
    assert rows["bad-config"]["state"] == "finished" and rows["bad-config"]["epochs_planned"] == 3
    assert rows["bad-ckpt"]["notes"] == ["last.safetensors unreadable"]
    assert rows["bad-ckpt"]["epochs"] == 1  # from best.safetensors
    assert rows["list-metrics"]["notes"] == ["best.safetensors unreadable"]
    code, out, _ = dlcli(capsys, "runs", "--root", tmp_path)
    assert code == 0 and "note" in out.splitlines()[0] and "config.yaml unreadable" in out


@pytest.mark.parametrize("args, says", [
    (["runs", "--root", "missing"], "--root missing: no such folder"),
    (["runs", "--model", "nope"], "unknown model 'nope'; choose one of:"),
    (["runs", "show", "nowhere"], "no run nowhere: not a folder here, nor a run under runs"),
    (["runs", "show", "plain"], "plain is not a run folder: it holds none of config.yaml"),
    (["runs", "show", "twice"], "twice names 2 runs under runs"),
    (["runs", "compare", "runs/mlp/twice"], "compare needs at least two runs"),
    (["runs", "compare", "runs/mlp/twice", "nowhere"], "no run nowhere"),
])
def test_what_the_user_named_wrongly_is_one_line_and_exit_2(isolated, capsys, args, says):
    make_run(isolated / "runs" / "mlp" / "twice", done=1)
    make_run(isolated / "runs" / "vae" / "twice", model="vae", done=1)
    (isolated / "plain").mkdir()
    code, out, err = dlcli(capsys, *args)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and says in err and len(err.splitlines()) == 1, err


def test_no_runs_yet_is_not_an_error(capsys):
    code, out, err = dlcli(capsys, "runs")
    assert code == 0 and out == "" and "no runs under runs" in err
    assert dlcli(capsys, "runs", "--json")[1] == "[]\n"


def test_run_options_before_the_subcommand_apply_to_it(tmp_path, capsys):
    make_run(tmp_path / "mlp" / "a", done=1)
    make_run(tmp_path / "mlp" / "b", done=2, lr=0.5)
    code, out, err = dlcli(capsys, "runs", "--root", tmp_path, "--json", "compare", "a", "b")
    assert code == 0, err
    assert json.loads(out)["config"]["lr"] == [0.1, 0.5]


def test_listing_runs_with_start_records_is_torch_free(tmp_path):
    """The start record names the monitored metric, so a listing needs no model task."""
    for model, monitor in (("mlp", "val_loss"), ("gan", None)):
        make_run(tmp_path / model / "20260101-120000", model=model, done=1,
                 records=[{"kind": "start", "epochs": 3, "monitor": monitor},
                          {"kind": "epoch", "epoch": 1, "step": 10, "val_loss": 0.25}])
    code = (
        "import contextlib, io, json, sys\n"
        "from dlcli.cli import main\n"
        "buf = io.StringIO()\n"
        "with contextlib.redirect_stdout(buf):\n"
        "    try:\n"
        f"        main(['runs', '--root', {str(tmp_path)!r}, '--json'])\n"
        "    except SystemExit as e:\n"
        "        assert not e.code, e.code\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'rows': json.loads(buf.getvalue())}))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["torch"] is False
    best = {r["model"]: (r["monitor"], r["best"]) for r in result["rows"]}
    assert best == {"mlp": ("val_loss", 0.25), "gan": (None, None)}
