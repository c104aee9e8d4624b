"""`dlcli predict`: a trained classifier's answer for image files.

Each image is made to look like the training data before the classifier sees it. A
classifier trained on a folder of your own images, or on colour images, gets each file
prepared exactly as its training images were (dlcli/data/decode.py: the same channels,
size and resize mode). One trained on a named single-channel dataset (MNIST's digits,
Fashion-MNIST's clothes) gets MNIST's recipe, so that a photo of a digit on paper works:

  * one grey channel in [0, 1] (colour is averaged; transparency is laid over white);
  * light ink on a dark background, as in MNIST: an image whose border is brighter than
    mid-grey (a dark digit on white paper) is inverted;
  * the training size: an image of that size already is taken as it is; any other is cut
    to its ink, its background lifted to 0 and its ink stretched to 1, scaled so its longer
    side spans 20 of the 28 pixels and placed with its centre of mass in the middle, the
    way MNIST's digits were made (LeCun et al.).

An image that cannot be read is reported on stderr and the others are still answered;
the exit status is then 2.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

import numpy as np
import torch

from dlcli.errors import DlcliError

BATCH = 256  # images per forward pass
DIGIT_BOX = 20  # MNIST digits fill a 20x20 box inside the 28x28 image
INK = 0.25  # brightness (after background removal) that counts as ink when cropping


class UnreadableImage(Exception):
    pass


@dataclass
class Prediction:
    image: str
    label: int
    name: str
    probability: float

    def line(self) -> str:
        return f"{self.image}\t{self.label}\t{self.name}\t{self.probability:.4f}"

    def json(self) -> str:
        return json.dumps({"image": self.image, "label": self.label, "class": self.name,
                           "probability": round(self.probability, 6)})


def read_grey(path) -> np.ndarray:
    """The image as float32 grey levels in [0, 1], (H, W)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            if "A" in image.getbands() or "transparency" in image.info:
                rgba = image.convert("RGBA")
                image = Image.new("RGBA", rgba.size, "white")
                image.alpha_composite(rgba)
            grey = image.convert("L")
    except FileNotFoundError:
        raise UnreadableImage("no such file") from None
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise UnreadableImage(f"not an image Pillow can read ({e})") from None
    return np.asarray(grey, dtype=np.float32) / 255


def border(x: np.ndarray) -> np.ndarray:
    return np.concatenate([x[0], x[-1], x[1:-1, 0], x[1:-1, -1]])


def light_on_dark(x: np.ndarray) -> np.ndarray:
    """Invert a dark-on-light image (its border brighter than mid-grey)."""
    return 1 - x if border(x).mean() > 0.5 else x


def centred_digit(x: np.ndarray, size: int) -> np.ndarray:
    """MNIST's recipe for an image of any size: background to 0, ink to 1, cut to the ink,
    longer side scaled to DIGIT_BOX/28 of `size`, centre of mass in the middle."""
    from PIL import Image

    background, top = float(np.median(border(x))), float(x.max())
    if top - background < 1e-3:  # a blank image: nothing to centre
        return np.zeros((size, size), np.float32)
    x = np.clip((x - background) / (top - background), 0, 1)
    rows, cols = np.nonzero(x > INK)
    x = x[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    box = max(1, round(size * DIGIT_BOX / 28))
    scale = box / max(x.shape)
    h, w = max(1, round(x.shape[0] * scale)), max(1, round(x.shape[1] * scale))
    digit = np.asarray(Image.fromarray(x).resize((w, h), Image.Resampling.LANCZOS), np.float32)
    digit = np.clip(digit, 0, 1)
    mass = digit.sum()
    cy = (digit.sum(1) * np.arange(h)).sum() / mass if mass else h / 2
    cx = (digit.sum(0) * np.arange(w)).sum() / mass if mass else w / 2
    top_row = int(np.clip(round(size / 2 - cy), 0, size - h))
    left = int(np.clip(round(size / 2 - cx), 0, size - w))
    out = np.zeros((size, size), np.float32)
    out[top_row:top_row + h, left:left + w] = digit
    return out


def prepare(path, shape: tuple[int, int, int], resize: str | None = None) -> torch.Tensor:
    """An image file as the classifier's input, (C, H, W) in [0, 1]: decoded as the
    training folder's images were when `resize` is given, else by MNIST's recipe."""
    channels, height, width = shape
    if resize is not None:
        from dlcli.data.decode import decode, why_unusable

        try:
            pixels = decode(str(path), height, width, channels, resize)
        except FileNotFoundError:
            raise UnreadableImage("no such file") from None
        except Exception as e:  # noqa: BLE001 -- whatever broke, the file is not usable
            raise UnreadableImage(why_unusable(e)) from None
        return torch.tensor(pixels, dtype=torch.float32).div_(255)
    x = light_on_dark(read_grey(path))
    if x.shape != (height, width):
        x = centred_digit(x, height) if height == width else _resized(x, height, width)
    return torch.from_numpy(np.ascontiguousarray(x)).expand(channels, height, width)


def _resized(x: np.ndarray, height: int, width: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(x).resize((width, height), Image.Resampling.LANCZOS),
                      np.float32).clip(0, 1)


def load_classifier(checkpoint, device: str = "auto"):
    from dlcli.checkpoint import load_checkpoint
    from dlcli.registry import get_spec, list_models
    from dlcli.runtime import pick_device
    from dlcli.tasks.classify import is_toy

    ckpt = load_checkpoint(checkpoint)
    spec = get_spec(ckpt.model)
    if spec.family != "classifier":
        names = ", ".join(s.name for s in list_models() if s.family == "classifier")
        raise DlcliError(f"{checkpoint} is a {ckpt.model} checkpoint; predict needs a "
                         f"classifier ({names}) trained on images")
    if is_toy(ckpt.config):
        raise DlcliError(f"{checkpoint} was trained on the {ckpt.config['dataset']} truth table, "
                         "not on images; predict needs a classifier trained on images")
    return spec.load_task().from_checkpoint(spec, ckpt, pick_device(device))


def predict_paths(task, paths: list[str]) -> tuple[list[Prediction | None], list[str]]:
    """A prediction per path (None where the image could not be read), and the errors."""
    network = task.networks()["classifier"]
    shape, names = network.inputs[0].shape, network.classes
    as_trained = task.config.get("data") or shape[0] == 3  # a folder's, or colour images
    resize = task.config.get("resize", "center-crop") if as_trained else None
    images, readable, errors = [], [], []
    for i, path in enumerate(paths):
        try:
            images.append(prepare(path, shape, resize))
            readable.append(i)
        except UnreadableImage as e:
            errors.append(f"{path}: {e}")
    results: list[Prediction | None] = [None] * len(paths)
    for start in range(0, len(images), BATCH):
        batch = torch.stack(images[start:start + BATCH]).to(task.device)
        probs = task.predict(batch).float().cpu()
        best, labels = probs.max(1)
        for j, (label, p) in enumerate(zip(labels.tolist(), best.tolist())):
            i = readable[start + j]
            results[i] = Prediction(paths[i], label, names[label], p)
    return results, errors


def run_predict(checkpoint, images: list[str], *, as_json: bool = False, device: str = "auto",
                out=print) -> None:
    task = load_classifier(checkpoint, device)
    if images:
        batches = [images]
    else:
        if sys.stdin.isatty():
            raise DlcliError("no IMAGE given: name image files, or pipe their paths on stdin "
                             "(one a line)")
        from dlcli.translate import stdin_batches

        batches = ([raw.decode("utf-8", "surrogateescape").rstrip("\r") for raw in lines]
                   for lines in stdin_batches(max_lines=BATCH))
    failed = total = 0
    for paths in batches:
        paths = [p for p in paths if p.strip()]
        results, errors = predict_paths(task, paths)
        for message in errors:
            print(f"error: {message}", file=sys.stderr, flush=True)
        for r in results:
            if r is not None:
                out(r.json() if as_json else r.line())
        failed, total = failed + len(errors), total + len(paths)
    if failed:
        raise DlcliError(f"{failed} of {total} image(s) could not be read (named above); "
                         "the others were answered")
