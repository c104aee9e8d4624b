"""`dlcli train transformer`, `translate`, `evaluate`, `average` end to end, on a tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import ROOT, run_cli

from dlcli.errors import DlcliError

# Tiny models gain nothing from a second thread, and on a crowded 2-core machine thread
# barriers make them many times slower: one thread each, in and out of process.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
TINY = ["--set", "train_size=300", "--set", "d_model=16", "--set", "heads=2",
        "--set", "encoder_layers=1", "--set", "decoder_layers=1", "--set", "d_ff=32",
        "--set", "val_translate=false", "--set", "beam=1", "--set", "max_len=24",
        "--set", "average_last=2", "--epochs", "2", "--seed", "0"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A two-epoch numbers model (it translates badly, but it translates)."""
    folder = tmp_path_factory.mktemp("tiny")
    proc = run_cli("train", "transformer", *TINY, "--run-dir", folder / "run", cwd=folder,
                   check=0, env=ONE_THREAD)
    ckpt = proc.stdout.strip().splitlines()[-1]
    return folder, ckpt


def test_training_writes_checkpoints_and_an_average(tiny):
    folder, ckpt = tiny
    run = folder / "run"
    assert ckpt == str(run / "averaged.safetensors")  # what average_last asked for
    epochs = sorted(p.name for p in run.glob("epoch-*"))
    assert epochs == ["epoch-001.safetensors", "epoch-002.safetensors"]
    assert (run / "averaged.safetensors").is_file()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1, 2]
    assert all("val_loss" in r for r in records if r["kind"] == "epoch")


def test_one_line_in_one_line_out(tiny):
    folder, ckpt = tiny
    lines = [b"1,234", b"", b"42", b"7 \xff\xfe not utf-8", b" ".join([b"9"] * 60),
             "☃ 东京".encode(), b"", b"12"]
    proc = run_cli("translate", "--checkpoint", ckpt, "--beam", "1", cwd=folder,
                   input=b"\n".join(lines) + b"\n", check=0, env=ONE_THREAD)
    out = proc.stdout.decode().split("\n")
    assert out[-1] == "" and len(out) - 1 == len(lines)
    assert out[1] == "" and out[6] == ""  # an empty line stays empty
    assert out[0] and out[2] and out[7]
    err = proc.stderr.decode()
    assert err.count("UTF-8") == 1 and "line 4" in err
    assert "line 5" in err and "first" in err  # the over-long line is truncated, not fatal
    assert err.count("never seen in training") == 1  # unknown characters: said once
    proc = run_cli("translate", "--checkpoint", ckpt, "--beam", "1", cwd=folder,
                   input="12 ☃\n".encode(), check=0, env=ONE_THREAD)
    assert proc.stdout.decode().count("\n") == 1
    assert "line 1: ☃ never seen in training" in " ".join(proc.stderr.decode().split())
    # no newline after the last line, and beam search: still one line each
    proc = run_cli("translate", "--checkpoint", ckpt, "--beam", "3", cwd=folder,
                   input=b"5\n\n6", check=0, env=ONE_THREAD)
    assert proc.stdout.decode().split("\n")[1] == "" and proc.stdout.decode().count("\n") == 3


def test_empty_stdin_gives_no_output(tiny):
    folder, ckpt = tiny
    proc = run_cli("translate", "--checkpoint", ckpt, cwd=folder, input=b"", check=0,
                   env=ONE_THREAD)
    assert proc.stdout == b""


def translate_here(*texts, **options) -> list[str]:
    """run_translate in this process (the subprocess tests above cover the command line)."""
    from dlcli.registry import get_spec
    from dlcli.translate import run_translate

    lines = []
    options = {"beam": 1, "max_len": None, "n_best": 1, "attention": None, "device": "cpu",
               **options}
    run_translate(get_spec("transformer"), list(texts) or None, out=lines.append, **options)
    return lines


def test_n_best_prints_index_score_text(tiny):
    folder, ckpt = tiny
    lines = translate_here("12", "3,001", checkpoint=folder / ckpt, beam=3, n_best=2)
    rows = [line.split("\t") for line in lines]
    assert [r[0] for r in rows] == ["0", "0", "1", "1"]
    assert all(len(r) == 3 and float(r[1]) <= 0 for r in rows)
    assert float(rows[0][1]) >= float(rows[1][1])


def test_beam_and_length_penalty_default_to_the_checkpoints(tiny):
    folder, ckpt = tiny  # trained with beam 1 (TINY)
    with pytest.raises(DlcliError, match="needs --beam of at least 2 .the checkpoint's is 1"):
        translate_here("12", checkpoint=folder / ckpt, beam=None, n_best=2)

    def scores(alpha):  # text -> score of the n-best lists of a few inputs
        lines = translate_here("12", "3,001", "45", checkpoint=folder / ckpt, beam=3, n_best=3,
                               length_penalty=alpha)
        return {(r[0], r[2]): float(r[1]) for r in (line.split("\t") for line in lines)}

    raw, scaled = scores(0.0), scores(2.0)
    shared = [k for k in raw if k in scaled and k[1]]
    assert shared
    for key in shared:  # a log-probability divided by ((5 + tokens + EOS) / 6)^2
        tokens = 6 * (raw[key] / scaled[key]) ** 0.5 - 5  # EOS counted
        assert tokens >= 1.9 and abs(tokens - round(tokens)) < 0.05, (key, tokens)


def test_translate_streams_line_by_line(tiny):
    """An interactive user gets each answer before typing (or closing) the next line."""
    folder, ckpt = tiny
    env = {"PYTHONPATH": str(ROOT), "DLCLI_OFFLINE": "1", **ONE_THREAD}
    proc = subprocess.Popen([sys.executable, "-m", "dlcli", "translate", "--checkpoint", ckpt],
                            cwd=folder, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env={**os.environ, **env})
    got = []
    reader = threading.Thread(target=lambda: got.append(proc.stdout.readline()))
    try:
        proc.stdin.write(b"12\n")
        proc.stdin.flush()
        reader.start()
        reader.join(timeout=60)
        assert got and got[0].endswith(b"\n"), "no answer while stdin was still open"
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)
    assert proc.returncode == 0


def test_attention_heatmap(tiny, tmp_path):
    folder, ckpt = tiny
    lines = translate_here("1,234", checkpoint=folder / ckpt, attention=tmp_path / "attn.png")
    assert len(lines) == 1
    assert (tmp_path / "attn.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_reports_translation_metrics(tiny):
    folder, ckpt = tiny
    proc = run_cli("evaluate", ckpt, "--json", cwd=folder, check=0, env=ONE_THREAD)
    metrics = json.loads(proc.stdout)
    for key in ("loss", "ppl", "bleu", "chrf", "exact_match", "bleu_lowercase"):
        assert isinstance(metrics[key], float)
    assert metrics["bleu_signature"].startswith("nrefs:1|case:mixed|")
    assert metrics["bleu_tokenized_lowercase"] is None  # numbers: not a tokenized corpus
    assert metrics["ppl"] == pytest.approx(2.718281828 ** metrics["loss"], rel=1e-6)
    assert 0 <= metrics["exact_match"] <= 1
    assert "writes lowercase" not in proc.stderr  # the numbers corpus keeps its case


def test_checkpoint_of_another_model_is_refused(tmp_path):
    import torch

    from dlcli.checkpoint import save_checkpoint
    from dlcli.errors import DlcliError

    save_checkpoint(tmp_path / "cnn.safetensors", model="cnn", config={},
                    modules={"model": torch.nn.Linear(2, 2)})
    with pytest.raises(DlcliError, match="cnn checkpoint"):
        translate_here("hallo", checkpoint=tmp_path / "cnn.safetensors")
    with pytest.raises(DlcliError, match="dlcli train transformer"):
        translate_here("hallo", checkpoint=None)  # no runs here at all


def test_own_tsv_corpus_trains(tmp_path):
    pairs = [(f"{i} Hund", f"{i} dog") for i in range(40)] + [("Katze", "cat")] * 5
    (tmp_path / "pairs.tsv").write_text("".join(f"{a}\t{b}\n" for a, b in pairs))
    proc = run_cli("train", "transformer", "--data", "pairs.tsv", *TINY[:-6], "--epochs", "1",
                   "--set", "vocab_size=60", cwd=tmp_path, check=0, env=ONE_THREAD)
    ckpt = Path(tmp_path, proc.stdout.strip().splitlines()[-1])
    assert ckpt.name.endswith(".safetensors")
    assert "pairs.tsv" in proc.stderr  # the data source is named in the log
    # evaluate finds the corpus from another folder; once it moves, --data says where
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run_cli("evaluate", ckpt, "--json", cwd=elsewhere, check=0, env=ONE_THREAD)
    (tmp_path / "pairs.tsv").rename(tmp_path / "moved.tsv")
    gone = run_cli("evaluate", ckpt, cwd=elsewhere, env=ONE_THREAD)
    assert gone.returncode == 2 and "pass --data" in gone.stderr
    run_cli("evaluate", ckpt, "--data", tmp_path / "moved.tsv", cwd=elsewhere, check=0, env=ONE_THREAD)


def test_malformed_tsv_is_a_clear_error(tmp_path):
    from dlcli.data.text import user_corpus
    from dlcli.errors import DlcliError

    (tmp_path / "bad.tsv").write_text("one\ttwo\nthree\n")
    with pytest.raises(DlcliError, match="line 2"):
        user_corpus([str(tmp_path / "bad.tsv")], 10, 0)


def test_own_text_holds_out_one_pair_at_least(tmp_path):
    from dlcli.data.text import user_corpus

    (tmp_path / "p.tsv").write_text("".join(f"{i} Hund\t{i} dog\n" for i in range(30)))
    corpus = user_corpus([str(tmp_path / "p.tsv")], 0, 0)  # --set val_size=0
    assert len(corpus.splits["val"][0]) == 1 and len(corpus.splits["train"][0]) == 29
