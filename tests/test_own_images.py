"""Your own images end to end: a small RGB folder with three named classes trains the
conditional and unconditional image models, and sampling by class name gives RGB grids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli

CLASSES = ("blue circle", "green triangle", "red square")  # spaces, as users name folders
COLOURS = {"red square": (220, 30, 30), "green triangle": (30, 200, 40), "blue circle": (30, 60, 230)}


def draw(kind: str, rng, size: int = 40):
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), tuple(int(c) for c in rng.integers(0, 40, 3)))
    pen = ImageDraw.Draw(image)
    r = int(rng.integers(size // 5, size // 3))
    cx, cy = (int(v) for v in rng.integers(r, size - r, 2))
    box = (cx - r, cy - r, cx + r, cy + r)
    fill = COLOURS[kind]
    if kind == "red square":
        pen.rectangle(box, fill=fill)
    elif kind == "blue circle":
        pen.ellipse(box, fill=fill)
    else:
        pen.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return image


@pytest.fixture(scope="module")
def shapes_folder(tmp_path_factory):
    import numpy as np

    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("own") / "shapes"
    for kind in CLASSES:
        (root / kind).mkdir(parents=True)
        for i in range(24):
            draw(kind, rng).save(root / kind / f"{i:02d}.png")
    return root


def rgb_png(path: Path) -> tuple[str, tuple[int, int]]:
    from PIL import Image

    with Image.open(path) as image:
        return image.mode, image.size


QUICK = ["--epochs", "1", "--batch-size", "16", "--threads", "1", "--set", "image_size=32"]


@pytest.mark.parametrize("model", ["dcgan", "cgan", "cvae", "cnn"])
def test_an_rgb_folder_trains_and_samples_by_class_name(tmp_path, shapes_folder, model):
    run = tmp_path / "run"
    groups = ["--set", "clusters=4"] if model == "dcgan" else []  # 65 images: not the preset's 100
    run_cli("train", model, "--data", shapes_folder, *QUICK, *groups, "--run-dir", run, check=0)
    ckpt = run / "best.safetensors"
    if model == "cnn":
        scores = run_cli("evaluate", ckpt, "--json", check=0)
        assert '"accuracy"' in scores.stdout
        red = sorted((shapes_folder / "red square").glob("*.png"))[:2]
        answers = run_cli("predict", ckpt, *red, "--json", check=0).stdout.splitlines()
        assert len(answers) == 2 and all(json.loads(a)["class"] in CLASSES for a in answers)
        # prepared as the training images were: in colour, at the trained size
        from dlcli.predict import prepare

        x = prepare(red[0], (3, 32, 32), "center-crop")
        assert x.shape == (3, 32, 32) and (x[0] - x[2]).abs().max() > 0.5  # red is not blue
        return
    out = tmp_path / "grid.png"
    label = ["--label", "red square"] if model in ("cgan", "cvae") else []
    run_cli("sample", model, "--checkpoint", ckpt, *label, "-n", "16", "-o", out, check=0)
    assert rgb_png(out)[0] == "RGB"
    if label:
        every = tmp_path / "all.png"
        run_cli("sample", model, "--checkpoint", ckpt, "--label", "all", "-o", every, check=0)
        assert rgb_png(every)[0] == "RGB"
        wrong = run_cli("sample", model, "--checkpoint", ckpt, "--label", "purple blob")
        assert wrong.returncode == 2 and "red square" in wrong.stderr
        assert "Traceback" not in wrong.stderr
