"""Hostile but realistic use: nothing lost, nothing silent. Checkpoints are checked before
they are trusted, outputs never replace what they should not, closed streams and huge
inputs are handled as Unix tools handle them."""

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import ROOT
from safetensors import safe_open
from safetensors.torch import save_file

from dlcli.cli import main
from dlcli.errors import DlcliError

pytestmark = pytest.mark.usefixtures("one_thread")

XOR = ["train", "mlp", "--dataset", "xor", "--set", "hidden=[4]"]


def dlcli(capsys, *args):
    """dlcli in this process (no interpreter start-up): (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return exit_.value.code, out, err


def one_line_error(result, *needles):
    code, out, err = result
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err and all(n in err for n in needles), err


@pytest.fixture
def xor_ckpt(capsys, tmp_path):
    code, out, err = dlcli(capsys, *XOR, "--epochs", "1", "--run-dir", tmp_path / "xor")
    assert code == 0, err
    return tmp_path / "xor" / "last.safetensors"


def forge(path, target, tensors=None, **meta):
    """A copy of checkpoint `path` at `target` with some tensors and metadata replaced."""
    with safe_open(str(path), framework="pt") as f:
        old_meta = f.metadata()
        old = {k: f.get_tensor(k) for k in f.keys()}
    save_file({**old, **(tensors or {})}, str(target), metadata={**old_meta, **meta})
    return target


# ---- 1. resuming an older checkpoint ---------------------------------------------------

def test_resume_from_an_older_checkpoint_keeps_the_newer_one(capsys, tmp_path):
    run = tmp_path / "run"
    assert dlcli(capsys, *XOR, "--epochs", "1", "--run-dir", run)[0] == 0
    shutil.copy(run / "last.safetensors", run / "epoch1.safetensors")
    with open(run / "metrics.jsonl", "a") as f:  # logged by a run killed before its save
        f.write(json.dumps({"kind": "epoch", "epoch": 2, "step": 10**6}) + "\n")
    code, out, err = dlcli(capsys, *XOR, "--epochs", "2", "--resume", run / "last.safetensors")
    assert code == 0 and Path(out.strip()).parent == run, err  # the newest: in place
    newer = (run / "last.safetensors").read_bytes()

    code, out, err = dlcli(capsys, *XOR, "--epochs", "3", "--resume", run / "epoch1.safetensors")
    assert code == 0, err
    assert Path(out.strip()).parent != run and "not the newest checkpoint" in err
    assert (run / "last.safetensors").read_bytes() == newer
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1, 2]  # one timeline


# ---- 3. one run folder, one run --------------------------------------------------------

def test_a_run_dir_is_claimed_by_one_run_only(tmp_path):
    from dlcli.runs import new_run_dir

    (tmp_path / "empty").mkdir()
    assert new_run_dir("mlp", tmp_path / "empty") == tmp_path / "empty"
    with pytest.raises(DlcliError, match="never overwritten"):
        new_run_dir("mlp", tmp_path / "empty")  # the second of two runs started together
    claimed = []

    def claim():
        try:
            claimed.append(new_run_dir("mlp", tmp_path / "race"))
        except DlcliError:
            pass

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(claimed) == 1


# ---- 4. outputs that must not replace other files -------------------------------------

def test_attention_and_sample_outputs_never_replace_other_files(capsys, tmp_path):
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"precious weights")
    one_line_error(dlcli(capsys, "translate", "hallo", "--attention", ckpt), ".png")
    notes = tmp_path / "notes.png"
    notes.write_bytes(b"not a picture")
    one_line_error(dlcli(capsys, "translate", "hallo", "--attention", notes), "not a PNG")
    one_line_error(dlcli(capsys, "sample", "gan", "-o", notes), "not a PNG")
    assert ckpt.read_bytes() == b"precious weights" and notes.read_bytes() == b"not a picture"


def test_a_length_penalty_that_is_no_penalty_is_refused(capsys):
    for alpha in ("-1", "nan", "inf"):
        one_line_error(dlcli(capsys, "translate", "hallo", "--length-penalty", alpha),
                       "--length-penalty must be a number from 0 up")


# ---- 6. checkpoints checked before they are trusted -----------------------------------

def test_non_finite_or_mistyped_weights_are_refused(capsys, tmp_path, xor_ckpt):
    with safe_open(str(xor_ckpt), framework="pt") as f:
        name = next(k for k in f.keys() if k.startswith("model/") and k.endswith("weight"))
        weight = f.get_tensor(name)
    nan = forge(xor_ckpt, tmp_path / "nan.safetensors",
                {name: weight.clone().fill_(float("nan"))})
    one_line_error(dlcli(capsys, "evaluate", nan), name, "NaN")
    int8 = forge(xor_ckpt, tmp_path / "int8.safetensors", {name: weight.to(torch.int8)})
    one_line_error(dlcli(capsys, "evaluate", int8), name, "int8")


def test_json_output_never_holds_nan(capsys, tmp_path, xor_ckpt):
    odd = forge(xor_ckpt, tmp_path / "odd.safetensors",
                metrics='{"val_loss": NaN, "val_accuracy": Infinity}')
    code, out, err = dlcli(capsys, "inspect", odd, "--json")

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    info = json.loads(out, parse_constant=refuse)
    assert code == 0 and info["metrics"] == {"val_loss": None, "val_accuracy": None}
    assert "metrics.val_loss" in err and "null" in err


# ---- 7. average only what means the same ----------------------------------------------

def test_average_refuses_checkpoints_that_mean_different_things(capsys, tmp_path, xor_ckpt):
    assert dlcli(capsys, "train", "mlp", "--dataset", "and", "--set", "hidden=[4]",
                 "--epochs", "1", "--run-dir", tmp_path / "and")[0] == 0
    one_line_error(dlcli(capsys, "average", xor_ckpt, tmp_path / "and" / "last.safetensors",
                         "-o", tmp_path / "avg.safetensors"), "dataset", "'and'", "'xor'")
    assert not (tmp_path / "avg.safetensors").exists()

    from dlcli.checkpointer import meaning_difference

    a = SimpleNamespace(config={"d_model": 8, "lr": 1.0}, meta={"tokenizer": "A"})
    assert meaning_difference(a, SimpleNamespace(config={"d_model": 8, "lr": 2.0},
                                                 meta={"tokenizer": "A"})) is None
    assert "tokenizer" in meaning_difference(a, SimpleNamespace(config=a.config,
                                                                meta={"tokenizer": "B"}))


# ---- 8. crafted metadata ---------------------------------------------------------------

def test_crafted_metadata_is_one_line_exit_2(capsys, tmp_path, xor_ckpt):
    config = json.loads(safe_open(str(xor_ckpt), framework="pt").metadata()["config"])

    def crafted(name, tensors=None, **meta):
        return forge(xor_ckpt, tmp_path / f"{name}.safetensors", tensors, **meta)

    deep = "[" * 100_000 + "]" * 100_000
    for key in ("config", "metrics", "state"):
        one_line_error(dlcli(capsys, "evaluate", crafted(f"deep-{key}", **{key: deep})), key)
    one_line_error(dlcli(capsys, "inspect", crafted("deep", metrics=deep)), "metrics")
    without_hidden = {k: v for k, v in config.items() if k != "hidden"}
    one_line_error(dlcli(capsys, "evaluate", crafted("missing", config=json.dumps(without_hidden))),
                   "'hidden'", "missing")
    one_line_error(dlcli(capsys, "evaluate", crafted("typed", config=json.dumps(
        {**config, "hidden": "wide"}))), "hidden")
    one_line_error(dlcli(capsys, "evaluate", crafted("relabelled", model="cnn")), "mlp")
    one_line_error(dlcli(capsys, "evaluate", crafted("newer", format="dlcli/2")),
                   "dlcli/2", "upgrade")
    one_line_error(dlcli(capsys, "evaluate", crafted("shape", config=json.dumps(
        {**config, "hidden": [5]}))), "model/model/", "shape")
    code, out, err = dlcli(capsys, *XOR, "--epochs", "3", "--resume",
                           crafted("state", state=json.dumps({"__dict__": [["batch", 0]]})))
    assert code == 2 and "training state" in err.strip().splitlines()[-1]
    assert not Path("runs").exists()  # refused before a run folder was claimed


def test_a_forged_tokenizer_is_refused_before_the_model_is_built(tmp_path):
    from dlcli.data.text import train_tokenizer
    from dlcli.tasks.seq2seq import EMBEDDING, Seq2SeqTask

    tokenizer = train_tokenizer(["eins zwei drei", "one two three"], 40).to_str()
    rows = len(json.loads(tokenizer)["model"]["vocab"])

    def ckpt(tok, vocab_rows):
        return SimpleNamespace(path="t.safetensors", meta={"tokenizer": tok},
                               tensors={f"model/model/{EMBEDDING}": torch.zeros(vocab_rows, 2)})

    Seq2SeqTask.check_checkpoint(ckpt(tokenizer, rows))
    with pytest.raises(DlcliError, match="not a valid tokenizer"):
        Seq2SeqTask.check_checkpoint(ckpt("{not json", rows))
    with pytest.raises(DlcliError, match=f"{rows:,} rows"):
        Seq2SeqTask.check_checkpoint(ckpt(tokenizer.replace('"vocab":{', '"vocab":{"huge":999999,'),
                                          rows))


# ---- 9. closed streams -----------------------------------------------------------------

def test_closed_stdout_is_said_once_before_any_work(tmp_path):
    args = " ".join([sys.executable, "-m", "dlcli", *XOR, "--epochs", "1", "--run-dir", "r"])
    proc = subprocess.run(["sh", "-c", f"{args} >&-"], capture_output=True, text=True,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2 and "stdout is closed" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "r").exists()


def test_a_reader_that_left_ends_dlcli_quietly():
    """`dlcli ... | head -1`: the pipe breaks; exit 141 (as a shell reports SIGPIPE), silent."""
    read, write = os.pipe()
    os.close(read)  # the reader is gone before dlcli writes
    proc = subprocess.run([sys.executable, "-m", "dlcli", "models", "--json"], stdout=write,
                          stderr=subprocess.PIPE, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    os.close(write)
    assert proc.returncode == 141 and proc.stderr == ""


# ---- 10, 11. memory that does not grow with the input ---------------------------------

def test_a_huge_stdin_line_is_cut_while_it_is_read():
    from dlcli.translate import stdin_batches

    read, write = os.pipe()
    line = "ä" * 3_000_000  # 6 MB of two-byte characters, no newline for a while

    def feed():
        with os.fdopen(write, "wb") as f:
            f.write(line.encode() + b"\nshort\n")

    feeder = threading.Thread(target=feed)
    feeder.start()
    with os.fdopen(read, "rb") as stream:
        lines = [x for batch in stdin_batches(stream, max_line_bytes=1001) for x in batch]
    feeder.join()
    assert lines == [("ä" * 500).encode(), b"short"]  # cut at a character boundary


def test_generated_samples_are_scored_in_batches():
    from dlcli.metrics import RunningGaussian, gaussian_stats, score_samples

    rows = torch.randn(2500, 6, dtype=torch.float64) * 3 + 1
    running = RunningGaussian()
    for i in range(0, len(rows), 700):
        running.add(rows[i:i + 700])
    for mine, whole in zip(running.stats(), gaussian_stats(rows)):
        assert torch.allclose(mine, whole)

    class Judge(torch.nn.Module):  # features: the pixels; classes: which half is brighter
        def features(self, x):
            return x.flatten(1)

        def out(self, f):
            return torch.stack([f[:, :2].sum(1), f[:, 2:].sum(1)], 1)

    judge = SimpleNamespace(model=Judge(), device="cpu")
    seen = []

    def batches():
        for i in range(5):
            images = torch.rand(400, 1, 2, 2)
            seen.append(i)
            yield images, torch.zeros(400, dtype=torch.long)

    scores = score_samples(judge, batches(), torch.rand(300, 1, 2, 2))
    assert seen == list(range(5)) and 0 <= scores["label_accuracy"] <= 1
    assert 0.5 <= scores["confidence"] <= 1 and scores["label_entropy"] <= 1


def test_evaluate_samples_are_capped(capsys):
    one_line_error(dlcli(capsys, "evaluate", "gan.safetensors", "--samples", "10000000"),
                   "at most")
