"""The command-line contract: fast paths without torch, streams, exit codes, presets."""

import json
import subprocess
import sys
import time

from conftest import ROOT, run_cli


def test_help_and_models_do_not_import_torch():
    code = (
        "import sys\n"
        "from dlcli.cli import main\n"
        "for argv in (['--help'], ['models', '--json'], ['presets', 'list'], ['--version']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0, (argv, e.code)\n"
        "heavy = [m for m in ('torch', 'numpy', 'matplotlib', 'safetensors') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout


def test_help_is_fast_compared_with_import_torch():
    def best_of(cmd, n=3):
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            subprocess.run(cmd, capture_output=True, cwd=ROOT, check=True)
            times.append(time.perf_counter() - t0)
        return min(times)

    help_time = best_of([sys.executable, "-m", "dlcli", "--help"])
    torch_time = best_of([sys.executable, "-c", "import torch"])
    assert help_time < 0.3 * torch_time, (help_time, torch_time)


def test_version_and_models_json():
    assert run_cli("--version", check=0).stdout.startswith("dlcli ")
    rows = json.loads(run_cli("models", "--json", check=0).stdout)
    names = {r["name"] for r in rows}
    assert {"perceptron", "mlp", "cnn", "vae", "cvae", "beta-vae", "gan", "dcgan", "cgan",
            "transformer"} <= names
    for r in rows:
        assert r["family"] and r["default_dataset"] and r["description"]


def test_presets_list_show_copy(tmp_path):
    listing = run_cli("presets", "list", check=0).stdout
    assert "mlp" in listing and "cnn" in listing
    shown = run_cli("presets", "show", "mlp", check=0).stdout
    assert "batchnorm:" in shown
    dest = tmp_path / "mine.yaml"
    assert run_cli("presets", "copy", "mlp", dest, check=0).stdout.strip() == str(dest)
    assert dest.read_text() == shown
    again = run_cli("presets", "copy", "mlp", dest, check=2)
    assert "exists" in again.stderr


def _one_line_error(proc, *needles):
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert 1 <= len(lines) <= 2, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr
    assert proc.stdout == ""


def test_bad_usage_is_one_line_exit_2(tmp_path):
    _one_line_error(run_cli("train", "nosuchmodel"), "nosuchmodel", "mlp")
    _one_line_error(run_cli("train", "mlp", "--dataset", "cifar"), "cifar", "mnist")
    _one_line_error(run_cli("train", "mlp", "--preset", "nosuch"), "nosuch")
    _one_line_error(run_cli("train", "mlp", "--set", "hiden=3"), "hiden", "hidden")
    _one_line_error(run_cli("train", "mlp", "--set", "batchnorm=maybe"), "batchnorm")
    _one_line_error(run_cli("train", "mlp", "--epochs", "0"), "epochs")
    _one_line_error(run_cli("train", "mlp", "--lr", "-1"), "lr")
    _one_line_error(run_cli("train", "mlp", "--batch-size", "-5"), "batch_size")
    _one_line_error(run_cli("train", "mlp", "--epochs", "x"), "epochs")
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1,\n")
    _one_line_error(run_cli("train", "mlp", "--preset", bad), "malformed YAML")
    other = tmp_path / "other.yaml"
    other.write_text("model: cnn\n")
    _one_line_error(run_cli("train", "mlp", "--preset", other), "cnn")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.safetensors"))
    _one_line_error(run_cli("sample", "vae", "--seed", str(2**64)), "--seed")
    _one_line_error(run_cli("evaluate", "x.safetensors", "--samples", "1"), "at least 2")
    # checked before torchrun starts: one line, not one per process plus torchrun's traceback
    _one_line_error(run_cli("train", "mlp", "--set", "nosuch=1", "--nproc-per-node", "2"), "nosuch")
    _one_line_error(run_cli("presets", "copy", "mlp", tmp_path / "no" / "x.yaml"), "No such file")
    bare = run_cli()  # no arguments: the help, and no empty "error:" line
    assert bare.returncode == 2 and "Usage" in bare.stdout and "error" not in bare.stderr


def test_bad_checkpoints(tmp_path):
    _one_line_error(run_cli("inspect", tmp_path / "missing.safetensors"), "not found")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"this is not a checkpoint at all")
    _one_line_error(run_cli("inspect", junk), "not a safetensors")
    _one_line_error(run_cli("evaluate", junk), "safetensors")
    _one_line_error(run_cli("sample", "vae", "--checkpoint", junk), "safetensors")
    _one_line_error(run_cli("sample", "vae"), "dlcli train vae")


def test_threads_option_reaches_torch():
    proc = run_cli("--threads", "1", "train", "mlp", "--dataset", "and", "--epochs", "1",
                   env={"OMP_NUM_THREADS": "2"}, check=0)
    assert "(1 thread)" in proc.stderr
    bad = run_cli("--threads", "0", "models")
    assert bad.returncode == 2 and "--threads" in bad.stderr
