"""Everyday use: help with examples, completion, --dry-run, presets validate, the closing
summary and the provenance a run records."""

import json
import os
import re
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import ROOT, run_cli

from dlcli.cli import complete_dataset, complete_model, complete_preset, hoist_global_options


def test_help_has_examples_and_no_python_types():
    """Every command's --help ends with examples and labels values in plain words; it
    stays torch-free (train --help lists the models from the registry)."""
    commands = [["train"], ["sample"], ["translate"], ["inspect"], ["evaluate"], ["models"],
                ["average"], ["export"], ["predict"], ["presets", "copy"], ["presets", "validate"],
                ["runs"], ["runs", "list"], ["runs", "show"], ["runs", "compare"], ["datasets"], []]
    code = (
        "import contextlib, io, json, sys\n"
        "from dlcli.cli import main\n"
        f"pages = {{}}\n"
        f"for argv in {commands!r}:\n"
        "    buf = io.StringIO()\n"
        "    with contextlib.redirect_stdout(buf):\n"
        "        try:\n"
        "            main(argv + ['--help'])\n"
        "        except SystemExit as e:\n"
        "            assert e.code == 0, (argv, e.code)\n"
        "    pages[' '.join(argv)] = buf.getvalue()\n"
        "pages['torch imported'] = 'torch' in sys.modules\n"
        "print(json.dumps(pages))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    pages = json.loads(proc.stdout)
    assert pages.pop("torch imported") is False
    for name, page in pages.items():
        assert not re.search(r"<(bool|int|str|float|path|list\[\w+\])>", page, re.I), (name, page)
        if name:
            assert "Examples:" in page and f"dlcli {name.split()[0]}" in page.split("Examples:")[1], name
    train = pages["train"]
    for name in ("perceptron", "mlp", "cnn", "cvae", "dcgan", "transformer", "fashion-mnist", "multi30k"):
        assert name in train
    assert "INTEGER" in train and "KEY=VALUE" in train and "--dry-run" in train
    assert "--install-completion" in pages[""]


@pytest.mark.parametrize("argv, expected", [
    (["train", "mlp", "--threads", "1", "-e", "2"], ["--threads", "1", "train", "mlp", "-e", "2"]),
    (["train", "mlp", "--threads=2", "--debug"], ["--threads=2", "--debug", "train", "mlp"]),
    (["--threads", "1", "train", "mlp"], ["--threads", "1", "train", "mlp"]),
    (["translate", "--", "--threads"], ["translate", "--", "--threads"]),  # text after --
    (["--help"], ["--help"]),
])
def test_global_options_after_the_command_move_in_front(argv, expected):
    assert hoist_global_options(argv) == expected


def test_threads_after_the_command_works():
    assert run_cli("presets", "list", "--threads", "1", check=0).stdout.startswith("beta-tcvae")
    bad = run_cli("presets", "list", "--threads", "0", check=2)
    assert bad.stderr.strip() == "error: --threads must be positive, got 0"


def test_completion_callbacks_offer_registry_names():
    assert [name for name, _ in complete_model("c")] == ["cnn", "cvae", "cgan"]
    assert complete_dataset("f") == ["fashion-mnist"]
    assert {"mnist", "xor", "numbers", "multi30k"} <= set(complete_dataset(""))
    presets = dict(complete_preset("vae"))
    assert set(presets) == {"vae", "vae-conv", "vae-conv-64", "vae-shapes", "vae-tutorial"} \
        and all(presets.values())


def test_shell_completion_end_to_end():
    env = {"_DLCLI_COMPLETE": "complete_bash", "COMP_WORDS": "dlcli train cv", "COMP_CWORD": "2"}
    assert run_cli(env=env, check=0).stdout.split() == ["cvae"]
    env = {**env, "COMP_WORDS": "dlcli train mlp --preset transformer-m", "COMP_CWORD": "4"}
    assert sorted(run_cli(env=env, check=0).stdout.split()) == [
        "transformer-multi30k-de-en", "transformer-multi30k-de-en-tiny",
        "transformer-multi30k-en-de", "transformer-multi30k-en-de-tiny"]
    # the shell named, as Typer's guess from the parent processes depends on how the tests
    # were started (a `bash -c` may exec python in its place)
    shown = subprocess.run([sys.executable, "-m", "dlcli", "--show-completion", "bash"],
                           env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                           text=True, timeout=60)
    script = shown.stdout
    assert "_dlcli_completion" in script and "_DLCLI_COMPLETE=complete_bash" in script, shown.stderr


def test_dry_run_shows_config_sources_and_data(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("model: mlp\nbatchnorm: false\n")
    proc = run_cli("train", "mlp", "--dataset", "xor", "--preset", mine, "--set", "lr=0.05",
                   "--epochs", "2", "--dry-run", check=0)
    config = yaml.safe_load(proc.stdout)  # valid YAML: usable as a preset
    assert config["epochs"] == 2 and config["lr"] == 0.05 and config["batchnorm"] is False
    source = {line.split(":")[0]: line.rsplit("# ", 1)[1] for line in proc.stdout.splitlines()
              if not line.startswith("#")}
    assert source == {**source, "epochs": "--epochs", "lr": "--set", "batchnorm": "preset mine.yaml",
                      "dataset": "--dataset", "momentum": "default"}
    assert re.search(r"^# data: xor, truth table of xor \(sha256 [0-9a-f]{64}\)$", proc.stdout, re.M)
    assert not (tmp_path / "runs").exists()


def test_presets_validate(tmp_path):
    from dlcli.config import validate_preset
    from dlcli.errors import DlcliError

    good = tmp_path / "good.yaml"
    good.write_text("model: vae\nlatent: 8\nepochs: 3\n")
    assert run_cli("presets", "validate", good, check=0).stdout.strip() == f"{good}: a valid vae preset"
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: vae\nlatnet: 8\n")
    proc = run_cli("presets", "validate", bad, check=2)
    assert proc.stderr.startswith("error: unknown key 'latnet'") and len(proc.stderr.splitlines()) == 1
    for text, named in [("model: vae\nepochs: 0\n", "epochs must be"), ("model: vae\nlr: fast\n", "'lr'"),
                        ("latent: 8\n", "model: NAME"), ("model: vea\n", "'vea'")]:
        bad.write_text(text)
        with pytest.raises(DlcliError, match=re.escape(named)):
            validate_preset(bad)


def test_summary_and_provenance(tmp_path):
    proc = run_cli("train", "mlp", "--dataset", "xor", "--epochs", "2", "--set", "hidden=[8]",
                   check=0)
    run = tmp_path / "runs" / "mlp"
    run = next(run.iterdir())
    summary = proc.stderr[proc.stderr.index("done: 2 epochs in"):]
    assert re.search(r"best epoch [12]: val_loss [\d.e+-]+, val_accuracy 1\b", summary), summary
    assert f"wrote {run.relative_to(tmp_path)}/: best.safetensors, config.yaml, curves.png, " \
           "last.safetensors, metrics.jsonl" in summary

    provenance = yaml.safe_load((run / "config.yaml").read_text())["provenance"]
    assert provenance["command"] == "dlcli train mlp --dataset xor --epochs 2 --set 'hidden=[8]'"
    assert provenance["torch"] == str(torch.__version__) and provenance["device"] == "cpu"
    assert provenance["data"] == "truth table of xor" and provenance["precision"] == "32"
    assert re.fullmatch(r"[0-9a-f]{64}", provenance["data_sha256"])
    info = json.loads(run_cli("inspect", run / "best.safetensors", "--json", check=0).stdout)
    assert info["provenance"] == provenance
    assert "provenance: dlcli=" in run_cli("inspect", run / "best.safetensors", check=0).stdout
    # the run's config.yaml (provenance and all) works as a preset
    validated = run_cli("presets", "validate", run / "config.yaml", check=0).stdout
    assert validated.endswith("a valid mlp preset\n")


# ---- pictures ---------------------------------------------------------------------------

def _metrics(run, epochs: int):
    records = []
    for e in range(1, epochs + 1):
        records.append({"kind": "step", "epoch": e, "step": 50 * e, "loss": 1 / e})
        records.append({"kind": "epoch", "epoch": e, "step": 50 * e, "train_loss": 1 / e,
                        "val_loss": 1 / e + (e - 3) ** 2 / 100, "val_accuracy": 0.9,
                        "val_bleu": 30.0, "epoch_seconds": 1.0, "items_per_s": 9.0})
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.mark.parametrize("epochs", [1, 100])
def test_curves_one_panel_per_quantity(tmp_path, epochs):
    from PIL import Image

    from dlcli.reporters.curves import plot_metrics, quantity, unit_of

    _metrics(tmp_path / "run", epochs)
    plot_metrics(tmp_path / "run", monitor="val_loss")
    # loss, accuracy, bleu: three panels side by side, 440 px each at 100 dpi
    assert Image.open(tmp_path / "run" / "curves.png").size == (1320, 360)
    assert quantity("train_loss") == quantity("val_loss") == "loss"
    assert [unit_of(q) for q in ("loss", "nelbo", "label_entropy", "accuracy", "bleu")] == \
        ["nats", "nats", "bits", "%", "0-100"]


def test_attention_heatmap_is_readable(tmp_path):
    from PIL import Image

    from dlcli.translate import plot_attention

    tokens = [f"▁w{i}" for i in range(20)]
    weights = torch.rand(4, 20, 20).softmax(-1)
    plot_attention(weights, tokens, tokens, tmp_path / "a.png")
    width, height = Image.open(tmp_path / "a.png").size
    assert width >= 1000 and height >= 1000  # 5 panels (mean + 4 heads) of 20 x 20 cells


@pytest.fixture
def vae_task():
    from dlcli.config import resolve_config
    from dlcli.registry import get_spec

    def make(model, meta=None, **keys):
        spec = get_spec(model)
        config = resolve_config(model, overrides=[f"{k}={v}" for k, v in keys.items()])
        torch.manual_seed(0)
        return spec.load_task()(spec, config, torch.device("cpu"), meta=meta, trains=False)

    return make


def test_grid_captions_name_rows_and_units(vae_task):
    from dlcli.images import grid_png

    task = vae_task("vae", latent=4)
    task.latent_kl = [0.5, 0.001, 3.0, 1.25]  # unit 1 inactive
    images, nrow = task.sample(36, grid="traverse")
    words = task.captions(36, grid="traverse")
    assert words.rows == ["z2 (KL 3.00 nats)", "z3 (KL 1.25 nats)", "z0 (KL 0.50 nats)"]
    assert len(images) // nrow == len(words.rows)
    words = task.captions(64, grid="manifold")
    assert "z2 (KL 3.00 nats)" in words.above and "z3 (KL 1.25 nats)" in words.below

    task.setup_test_data()
    images, nrow = task.sample(32, grid="recon")
    words = task.captions(32, grid="recon")
    assert words.rows == ["input", "decoded"] * (len(images) // nrow // 2)
    plain, captioned = grid_png(images, nrow), grid_png(images, nrow, captions=words)
    assert plain != captioned and len(captioned) > len(plain)

    # a cvae of fashion-mnist, as a checkpoint describes it: no data needed to sample
    from dlcli.data.catalog import get_dataset

    clothes = get_dataset("fashion-mnist")
    fashion = vae_task("cvae", dataset="fashion-mnist", meta={"image_data": json.dumps({
        "dataset": clothes.name, "shape": list(clothes.shape), "classes": list(clothes.classes),
        "mean": [0.5], "std": [0.5]})})
    images, nrow = fashion.sample(20, label="all")
    rows = fashion.captions(20, label="all").rows
    assert len(images) // nrow == len(rows) == 10 and rows[9] == "ankle boot"
    assert fashion.captions(20, label=3) is None

