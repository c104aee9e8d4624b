"""Every command in README.md runs and gives what the README says it gives.

COMMANDS has one row per command line of the README's ```bash blocks, keyed by the line as
written there (a trailing `# comment` left out). A README command without a row, or a row
whose command left the README, fails `test_every_readme_command_has_a_row`: adding a
command to the README is adding one row here.

A row runs the README's line in bash (with this checkout's dlcli), or `run`, the same
command made small (fewer epochs, a smaller model) where the README's would take minutes;
`out` is a regex the stdout must match (what the README claims), `err` one for stderr.
The default suite runs the quick rows (about a dozen commands); rows marked `slow` run
under `pytest -m slow` (most with the README's own settings); a row with `skip` says why
it is not run here. The rows run in order, in one folder, so a
`sample` finds the run its `train` row made.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass

import pytest
from conftest import ROOT

CKPT = "$(ls -t runs/{model}/*/best.safetensors | head -1)"
TINY_TRANSFORMER = ("--set train_size=1000 --set d_model=32 --set heads=2 --set d_ff=64 "
                    "--set val_translate=false --epochs 1")
PATH_OUT = r"\.safetensors\n$"  # train: the last stdout line is the checkpoint path
PNG = r"\.png\n$"
WORDS = r"^[a-z -]+\n$"  # a translation of digits: number words


@dataclass
class Command:
    readme: str
    run: str | None = None  # what the test runs instead (made small)
    out: str | None = None  # regex the stdout must match
    err: str | None = None  # regex the stderr must match
    slow: bool = False
    skip: str | None = None


COMMANDS = [
    Command('pip install -e ".[dev]" && dlcli train cvae && dlcli sample cvae --label 7',
            run="dlcli train cvae --epochs 1 && dlcli sample cvae --label 7", out=PNG),
    Command("pytest", skip="the suite this file belongs to"),
    # Quickstart
    Command("dlcli models", out=r"cvae .*conditional VAE"),
    Command("dlcli train mlp --dataset mnist --epochs 1", out=PATH_OUT, err=r"epoch 1/1"),
    Command("ckpt=$(dlcli train cnn)", run="ckpt=$(dlcli train cnn --epochs 1) && echo $ckpt",
            out=PATH_OUT, slow=True),
    # quick: a classifier's checkpoint all the same, the mlp's of two rows up
    Command('dlcli evaluate "$ckpt" --json', run=f'dlcli evaluate "{CKPT.format(model="mlp")}" --json',
            out=r'"loss": .*"accuracy": '),
    Command('dlcli inspect "$ckpt"', run=f'dlcli inspect "{CKPT.format(model="mlp")}"',
            out=r"mlp"),
    Command("dlcli train gan --dataset mnist && dlcli sample gan -n 64 -o gan.png",
            run="dlcli train gan --dataset mnist --epochs 1 && dlcli sample gan -n 64 -o gan.png",
            out=r"\ngan\.png\n$", slow=True),
    Command("dlcli sample cvae --label all -o - > digits.png",
            run="dlcli sample cvae --label all -o - > digits.png && head -c 4 digits.png | od -c",
            out=r"211\s+P\s+N\s+G"),
    Command('dlcli train transformer && echo "12,345" | dlcli translate',
            run=f'dlcli train transformer {TINY_TRANSFORMER} && echo "12,345" | dlcli translate',
            out=PATH_OUT[:-3] + r"\n[a-z -]*\n$"),
    Command("dlcli presets copy mlp my.yaml && $EDITOR my.yaml && dlcli presets validate my.yaml",
            run="dlcli presets copy mlp my.yaml && true my.yaml && dlcli presets validate my.yaml",
            out=r"my\.yaml"),
    Command("dlcli train mlp --preset my.yaml", run="dlcli train mlp --preset my.yaml --epochs 1",
            out=PATH_OUT),
    # Train on your own images: tests/test_own_images.py trains on a generated RGB folder
    Command("dlcli train dcgan --preset dcgan-64 --data ~/pictures/faces",
            skip="needs a folder of your pictures; test_own_images.py trains dcgan on generated ones"),
    Command("dlcli train cnn --data ~/pictures/pets --set image_size=64",
            skip="needs a folder of your pictures; test_own_images.py trains cnn on generated ones"),
    Command('dlcli sample cvae --label "ankle boot"',
            skip="needs a Fashion-MNIST cvae; test_every_model.py samples by class name"),
    Command("dlcli datasets", out=r"cifar10 .*image"),
    # Data parallel
    Command("dlcli train vae --nproc-per-node 2", run="dlcli train vae --nproc-per-node 2 --epochs 1",
            out=PATH_OUT, slow=True),
    Command("torchrun --nproc-per-node 2 -m dlcli train gan", out=PATH_OUT, slow=True),
    Command("torchrun --nnodes 2 --rdzv-endpoint HOST:29500 ... -m dlcli train cnn",
            skip="needs two machines"),
    # Perceptron, MLP, CNN
    Command("dlcli train perceptron --dataset mnist", out=PATH_OUT, slow=True),
    Command("dlcli train perceptron --dataset xor", out=PATH_OUT, err=r"not linearly separable"),
    Command("dlcli train mlp --dataset xor", out=PATH_OUT, err=r"val_accuracy 1\b", slow=True),
    Command("dlcli train mlp --epochs 1 --lr 0.5 --set batchnorm=true", out=PATH_OUT, slow=True),
    Command("dlcli train mlp --epochs 1 --lr 0.5 --set batchnorm=false", out=PATH_OUT, slow=True),
    Command("dlcli train cnn", out=PATH_OUT, slow=True),
    # VAEs
    Command("dlcli train vae", run="dlcli train vae --epochs 1", out=PATH_OUT, slow=True),
    Command("dlcli sample vae -n 64", out=PNG, slow=True),
    Command("dlcli train cvae && dlcli sample cvae --label 7 -n 16", out=PNG, slow=True),
    Command("dlcli sample cvae --grid manifold --label 2", out=PNG),
    Command("dlcli train beta-vae && dlcli sample beta-vae --grid traverse",
            run="dlcli train beta-vae --epochs 1 && dlcli sample beta-vae --grid traverse",
            out=PNG, slow=True),
    Command("dlcli evaluate runs/cvae/RUN/best.safetensors --json",
            run=f'dlcli evaluate "{CKPT.format(model="cvae")}" --json --samples 500 --iwae-k 5',
            out=r'"nelbo": .*"iwae_nll": .*"label_accuracy": ', slow=True),
    # Disentanglement
    Command("dlcli train beta-vae --dataset shapes --set shapes_grid=small --set image_size=32",
            run="dlcli train beta-vae --dataset shapes --set shapes_grid=small --set image_size=32 "
                "--epochs 1", out=PATH_OUT, err=r"val_mig", slow=True),
    Command("dlcli evaluate runs/beta-vae/RUN/best.safetensors --json --plot mi.png",
            run=f'dlcli evaluate "{CKPT.format(model="beta-vae")}" --json --iwae-k 2 --plot mi.png '
                "&& head -c 4 mi.png | od -c",
            out=r'(?s)"mig": .*"factor_vae_score": .*"latent_factors": .*P   N   G', slow=True),
    Command("dlcli sample beta-vae --grid traverse", out=PNG, slow=True),
    Command("dlcli train beta-tcvae --preset beta-tcvae-shapes",
            run="dlcli train beta-tcvae --preset beta-tcvae-shapes --epochs 1 --set channels=4 "
                "--set hidden=[32]", out=PATH_OUT, slow=True),
    Command("dlcli evaluate runs/beta-tcvae/RUN/best.safetensors --json",
            run=f'dlcli evaluate "{CKPT.format(model="beta-tcvae")}" --json --iwae-k 2',
            out=r'"nelbo": .*"mig": .*"factor_vae_score": ', slow=True),
    Command("dlcli sample beta-tcvae --grid traverse -o traverse.png", out=PNG, slow=True),
    # GANs
    Command("dlcli train gan", out=PATH_OUT, slow=True),
    Command("dlcli train dcgan", out=PATH_OUT, slow=True),
    Command("dlcli train dcgan --preset dcgan-fast", out=PATH_OUT, slow=True),
    Command("dlcli train cgan", run="dlcli train cgan --epochs 1", out=PATH_OUT, slow=True),
    Command("dlcli sample cgan --label all -o digits.png", out=r"^digits\.png\n$", slow=True),
    Command("dlcli sample cgan --label 3 -n 16", out=PNG, slow=True),
    Command("dlcli sample gan --interpolate -n 50 --seed 3", out=PNG, slow=True),
    Command("dlcli evaluate runs/gan/RUN/best.safetensors --json",
            run=f'dlcli evaluate "{CKPT.format(model="gan")}" --json --samples 500',
            out=r'"cfid": .*"label_entropy": .*"confidence": ', slow=True),
    # Transformer
    Command("dlcli train transformer", out=PATH_OUT, slow=True),
    Command('dlcli translate "12,345"', out=r"^twelve thousand three hundred forty-five\n$",
            slow=True),
    Command("dlcli train transformer --preset transformer-multi30k-de-en --data-dir DIR",
            skip="33 minutes of training"),
    Command("dlcli train transformer --preset transformer-multi30k-en-de-tiny --data-dir DIR",
            skip="45 minutes of training"),
    Command("cat de.txt | dlcli translate --beam 1 > en.txt",
            skip="needs the Multi30k model of the row above"),
    Command('dlcli translate "Zwei Hunde spielen im Schnee." --attention attn.png',
            skip="needs the Multi30k model"),
    Command('dlcli translate "Ein Mann fährt Fahrrad." --beam 4 --n-best 2',
            skip="needs the Multi30k model"),
    Command("dlcli evaluate runs/transformer/RUN/best.safetensors --json",
            run=f'dlcli evaluate "{CKPT.format(model="transformer")}" --json',
            out=r'"bleu": .*"exact_match": ', slow=True),
    Command("dlcli average runs/transformer/RUN/epoch-*.safetensors -o avg.safetensors",
            run=f'dlcli train transformer {TINY_TRANSFORMER.replace("--epochs 1", "--epochs 2")} '
                "--set average_last=2 > /dev/null && dlcli average "
                "$(ls -td runs/transformer/*/ | head -1)epoch-*.safetensors -o avg.safetensors",
            out=r"^avg\.safetensors\n$", slow=True),
    Command("dlcli train transformer --data pairs.tsv",
            run="printf '%s\\t%s\\n' a b c d e f g h i j k l m n o p q r s t > pairs.tsv && "
                f"dlcli train transformer --data pairs.tsv {TINY_TRANSFORMER}", out=PATH_OUT, slow=True),
    # Export and predict: the same commands on small models in tests/test_export.py
    Command("pip install 'dlcli[export]'", skip="the dev extra installs it"),
    Command("dlcli export runs/cgan/RUN/best.safetensors --format onnx",
            skip="tests/test_export.py exports every image family to ONNX"),
    Command("dlcli export runs/vae/RUN/best.safetensors --format onnx --part encoder",
            skip="tests/test_export.py exports a VAE's encoder"),
    Command("dlcli export runs/cnn/RUN/best.safetensors --format torchscript",
            skip="tests/test_export.py exports TorchScript"),
    Command("dlcli export runs/vae/RUN/last.safetensors --format safetensors",
            skip="tests/test_export.py writes and evaluates a weights-only checkpoint"),
    Command("dlcli export runs/transformer/RUN/best.safetensors --format ctranslate2 --quantize int8",
            skip="tests/test_export.py converts a numbers Transformer to CTranslate2"),
    Command("dlcli translate --engine ctranslate2 --checkpoint runs/transformer/RUN/best-ctranslate2 "
            "--beam 4 < de.txt",
            skip="needs the Multi30k model; CTranslate2 decoding is in tests/test_export.py"),
    Command("dlcli predict runs/cnn/RUN/best.safetensors digit.jpg scan.png",
            skip="tests/test_export.py predicts digits from image files"),
    Command("ls photos/*.png | dlcli predict runs/cnn/RUN/best.safetensors --json",
            skip="tests/test_export.py predicts digits from image files"),
    # Benchmarks
    Command("python benchmarks/suite.py --data-dir ../shared/data", skip="minutes; a benchmark"),
    Command("python benchmarks/vae.py --data-dir ../shared/data", skip="minutes; a benchmark"),
    Command("python benchmarks/gan.py speed", skip="needs the peer's code from outside the repo"),
    Command("python benchmarks/transformer.py throughput", skip="minutes; a benchmark"),
    Command("python benchmarks/quickstart.py --classifier JUDGE.safetensors",
            skip="needs a cnn trained on real MNIST"),
]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.splitlines():
            command = re.split(r"\s{2,}#", line)[0].strip()
            if command:
                lines.append(command)
    return lines


def test_every_readme_command_has_a_row():
    readme, rows = readme_commands(), [c.readme for c in COMMANDS]
    assert [c for c in readme if c not in rows] == [], "README commands without a row in COMMANDS"
    assert [c for c in rows if c not in readme] == [], "rows of COMMANDS no longer in the README"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """One folder and cache for all rows, in order: a sample finds the train row's run."""
    folder = tmp_path_factory.mktemp("readme")
    bin_dir = folder / "bin"  # `dlcli` and `python` mean this checkout's, whatever is installed
    bin_dir.mkdir()
    (bin_dir / "dlcli").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m dlcli "$@"\n')
    (bin_dir / "dlcli").chmod(0o755)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DLCLI_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "XDG_CACHE_HOME": str(folder / "cache"), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    env.pop("DLCLI_DATA_DIR", None)
    return folder, env


def params():
    for c in COMMANDS:
        if c.skip:
            continue
        marks = [pytest.mark.slow] if c.slow else []
        yield pytest.param(c, id=c.readme[:60], marks=marks)


@pytest.mark.parametrize("command", params())
def test_readme_command(command: Command, workspace):
    folder, env = workspace
    line = command.run or command.readme
    proc = subprocess.run(["bash", "-c", f"set -eo pipefail; {line}"], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, f"{line}\nexit {proc.returncode}\n{proc.stderr[-3000:]}"
    if command.out:
        assert re.search(command.out, proc.stdout), f"{line}\nstdout: {proc.stdout[-2000:]}"
    if command.err:
        assert re.search(command.err, proc.stderr), f"{line}\nstderr: {proc.stderr[-2000:]}"


def test_ci_runs_the_readmes_two_commands():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert [line for line in ci if line and not line.startswith(("#", "set ", "cd "))] == \
        readme_commands()[:2]


@pytest.mark.slow
def test_the_quickstart_draws_varied_sevens(workspace, mnist_dir):
    """The README's first picture: at least 95% of 256 samples read as sevens by a cnn
    trained on real MNIST, and at least half the spread of real test sevens."""
    folder, env = workspace
    judge = subprocess.run(["dlcli", "train", "cnn", "--data-dir", str(mnist_dir)], cwd=folder,
                           env=env, capture_output=True, text=True, check=True).stdout.split()[-1]
    subprocess.run(["dlcli", "train", "cvae"], cwd=folder, env=env, capture_output=True, check=True)
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "quickstart.py"),
                           "--classifier", judge, "--data-dir", str(mnist_dir)], cwd=folder,
                          env=env, capture_output=True, text=True, check=True)
    report = json.loads(proc.stdout)
    assert report["sevens"] >= 0.95
    assert report["spread"] >= report["real_test_sevens_spread"] / 2
