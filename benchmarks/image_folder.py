"""A folder of many JPEGs through dlcli's image-folder path: decode rate, restart, memory.

Makes (once) a folder of N synthetic JPEGs at CelebA's size (178 x 218; coloured blobs on
gradients, written by worker processes) in one class subfolder, as CelebA is laid out for
ImageFolder, then reports, each measured in a fresh process:
  first decode   images/s of the first `load_image_data` (empty cache: headers read,
                 every image decoded to image_size by one worker process per core)
  second start   seconds to load the same folder again (the cache is memory-mapped), and
                 the whole process's wall time (Python and torch start-up included)
  batches        peak RssAnon (anonymous memory, the part that cannot be paged back to
                 the file) while iterating one epoch of shuffled batches, as training does
  feed           images/s in float batches of 128, no training: dlcli's cache against
                 torchvision's ImageFolder + DataLoader (when torchvision is installed)
With --train it also times `dlcli train dcgan --preset dcgan-64 --data DIR`'s network
fed by dlcli (its task's own batches) against the same network fed the way
pytorch/examples' DCGAN feeds it (torchvision ImageFolder with Resize + CenterCrop +
ToTensor, a DataLoader with 2 workers, float32, plain Adam), in alternating rounds in one
run. torchvision is needed only for that (a benchmark-only dependency).

Usage:  python benchmarks/image_folder.py [--out /tmp/dlcli-faces] [--n 100000]
        [--image-size 64] [--workers 2] [--feed-seconds 20] [--train] [--seconds 60]
        [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WIDTH, HEIGHT = 178, 218  # CelebA's aligned faces


def _one_picture(index: int):
    """A synthetic photo: a vertical gradient and a few soft-edged ellipses, seeded."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(index)
    top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    ramp = np.linspace(0, 1, HEIGHT)[:, None, None]
    pixels = (top * (1 - ramp) + bottom * ramp).repeat(WIDTH, axis=1).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 6))):
        x, y = rng.integers(0, WIDTH), rng.integers(0, HEIGHT)
        rx, ry = rng.integers(10, 60, 2)
        draw.ellipse((x - rx, y - ry, x + rx, y + ry), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    return image.filter(ImageFilter.GaussianBlur(1.5))


def _write_range(job) -> int:
    folder, start, stop = job
    for i in range(start, stop):
        _one_picture(i).save(Path(folder) / f"{i:06d}.jpg", quality=90)
    return stop - start


def make_folder(out: Path, n: int, workers: int) -> float:
    """Write n JPEGs into out/faces/ (kept when already there); returns seconds spent."""
    from multiprocessing import Pool

    faces = out / "faces"
    faces.mkdir(parents=True, exist_ok=True)
    have = sum(1 for _ in faces.glob("*.jpg"))
    if have == n:
        return 0.0
    if have:
        raise SystemExit(f"{faces} holds {have} JPEGs, not {n}: remove it or choose another --out")
    step = 500
    jobs = [(str(faces), i, min(n, i + step)) for i in range(0, n, step)]
    t0 = time.perf_counter()
    with Pool(workers) as pool:
        for done, _ in enumerate(pool.imap_unordered(_write_range, jobs), 1):
            print(f"\rwriting JPEGs: {min(n, done * step):,}/{n:,}", end="", file=sys.stderr)
    print(file=sys.stderr)
    return time.perf_counter() - t0


LOAD = """
import json, sys, time
t0 = time.perf_counter()
from dlcli.data.images import load_image_data
config = {"data": [sys.argv[1]], "image_size": int(sys.argv[2]), "seed": 0}
t1 = time.perf_counter()
data = load_image_data(config)
t2 = time.perf_counter()
result = {"images": len(data.images), "shape": list(data.shape), "import_s": t1 - t0, "load_s": t2 - t1}
if sys.argv[3] == "batches":  # one epoch of shuffled batches, as a training loop draws them
    import re, torch
    def anon():
        status = open("/proc/self/status").read()
        return int(re.search(r"RssAnon:\\s+(\\d+)", status).group(1)) / 1024
    peak, order, t3 = anon(), torch.randperm(len(data.train)), time.perf_counter()
    for start in range(0, len(order), 128):
        rows = data.train[order[start:start + 128]]
        batch = data.images[rows].float().div_(255)  # what a task's batch becomes
        peak = max(peak, anon())
    result.update(rss_anon_peak_mib=peak, epoch_s=time.perf_counter() - t3,
                  batches=(len(order) + 127) // 128)
print(json.dumps(result))
"""


def run_load(folder: Path, image_size: int, cache: Path, workers: int, mode: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XDG_CACHE_HOME": str(cache),
           "OMP_NUM_THREADS": str(workers)}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", LOAD, str(folder), str(image_size), mode],
                          env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"loading failed:\n{proc.stderr}")
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "process_s": wall}


def feed_side_by_side(folder: Path, image_size: int, seconds: float, workers: int) -> dict:
    """Images per second in float batches of 128, no training: dlcli's memory-mapped cache
    indexed per batch against pytorch/examples' ImageFolder + DataLoader (decoding every
    JPEG every epoch in `workers` processes). Each side gets `seconds` after its first batch."""
    import torch

    from dlcli.data.images import load_image_data

    try:
        from torchvision import datasets, transforms
    except ImportError:
        return {"feed": "skipped: torchvision is not installed (benchmark-only dependency)"}
    data = load_image_data({"data": [str(folder)], "image_size": image_size, "seed": 0})

    def ours():
        while True:
            order = data.train[torch.randperm(len(data.train))]
            for start in range(0, len(order), 128):
                yield data.images[order[start:start + 128]].float().div_(255)

    folder_set = datasets.ImageFolder(str(folder), transforms.Compose([
        transforms.Resize(image_size), transforms.CenterCrop(image_size), transforms.ToTensor()]))
    loader = torch.utils.data.DataLoader(folder_set, batch_size=128, shuffle=True,
                                         num_workers=workers, drop_last=True)

    def theirs():
        while True:
            for batch, _ in loader:
                yield batch

    rates = {}
    for name, source in (("dlcli", ours()), ("imagefolder", theirs())):
        next(source)  # the first batch: worker start-up is not the steady rate
        t0, n = time.perf_counter(), 0
        while time.perf_counter() - t0 < seconds:
            n += len(next(source))
        rates[name] = n / (time.perf_counter() - t0)
        source.close()
    return {"feed_img_per_s_dlcli": round(rates["dlcli"]),
            "feed_img_per_s_imagefolder": round(rates["imagefolder"]),
            "feed_ratio": round(rates["dlcli"] / rates["imagefolder"], 1)}


def train_side_by_side(folder: Path, preset: str, seconds: float, workers: int) -> dict:
    """Training images/s of the preset's network (dcgan-64): dlcli's own feed against
    ImageFolder + DataLoader, in alternating rounds (so a shared machine's load falls on
    both)."""
    import torch

    from dlcli.config import preset_path, preset_values, resolve_config
    from dlcli.data.images import load_image_data
    from dlcli.registry import get_spec
    from dlcli.train import apply_precision, precision_context

    try:
        from torchvision import datasets, transforms
    except ImportError:
        raise SystemExit("--train needs torchvision (a benchmark-only dependency): "
                         "pip install torchvision") from None
    sys.path.insert(0, str(Path(__file__).parent))
    from suite import tutorial_optimizer  # benchmarks/suite.py: the plain optimizer

    model = preset_values(preset_path(preset))["model"]
    spec = get_spec(model)
    config = resolve_config(model, preset, data=[str(folder)])
    channels, size, _ = load_image_data(config).shape  # what the network takes (cached)
    device = torch.device("cpu")

    def build(plain: bool):
        task = spec.load_task()(spec, config, device, None)
        if plain:
            task.optimizers = {k: tutorial_optimizer(o) for k, o in task.optimizers.items()}
            precision = "32"
        else:
            precision = apply_precision(task)
        task.setup_data()
        task.train_mode(True)
        return task, precision

    ours, precision = build(plain=False)
    theirs, _ = build(plain=True)
    batch = config["batch_size"]
    # pytorch/examples dcgan/main.py: dset.ImageFolder(root, transforms.Compose([Resize,
    # CenterCrop, ToTensor, Normalize(0.5, 0.5)])), DataLoader(shuffle=True, workers=2).
    # Normalize is left out: dlcli's tasks take [0, 1] pixels and scale inside.
    gray = [transforms.Grayscale()] if channels == 1 else []  # ImageFolder's loader gives RGB
    folder_set = datasets.ImageFolder(str(folder), transforms.Compose([
        *gray, transforms.Resize(size), transforms.CenterCrop(size), transforms.ToTensor()]))
    loader = torch.utils.data.DataLoader(folder_set, batch_size=batch, shuffle=True,
                                         num_workers=workers, drop_last=True,
                                         persistent_workers=True)

    def endless(make):
        while True:
            yield from make()

    feeds = {"dlcli": (ours, precision, endless(lambda: iter(ours.train_batches(0)))),
             "imagefolder": (theirs, "32", endless(lambda: iter(loader)))}
    spent, items = dict.fromkeys(feeds, 0.0), dict.fromkeys(feeds, 0)
    for task, precision, source in feeds.values():  # warm up: first batches, worker start
        with precision_context(device, precision):
            task.train_step(next(source))
    round_s = max(5.0, seconds / 4)
    while min(spent.values()) < seconds:
        name = min(spent, key=spent.get)
        task, precision, source = feeds[name]
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < round_s:
            batch = next(source)
            with precision_context(device, precision):
                task.train_step(batch)
            items[name] += len(batch[0])
        spent[name] += time.perf_counter() - t0
    rates = {k: items[k] / spent[k] for k in feeds}
    return {"train_img_per_s_dlcli": round(rates["dlcli"], 1),
            "train_img_per_s_imagefolder": round(rates["imagefolder"], 1),
            "train_ratio": round(rates["dlcli"] / rates["imagefolder"], 2), "precision": precision}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "dlcli-faces")
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--folder", type=Path, help="measure this folder instead of making one")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)),
                        help="processes for writing and decoding (default: every core)")
    parser.add_argument("--train", action="store_true", help="also time dcgan-64 training")
    parser.add_argument("--seconds", type=float, default=60.0, help="per side, with --train")
    parser.add_argument("--preset", default="dcgan-64", help="what --train trains")
    parser.add_argument("--feed-seconds", type=float, default=20.0,
                        help="per side, for the batches-only comparison")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args(argv)
    folder = args.folder or args.out / f"n{args.n}"
    written = 0.0 if args.folder else make_folder(folder, args.n, args.workers)
    result = {"folder": str(folder), "image_size": args.image_size, "workers": args.workers,
              "write_s": round(written, 1)}
    with tempfile.TemporaryDirectory() as cache:
        first = run_load(folder, args.image_size, Path(cache), args.workers, "load")
        second = run_load(folder, args.image_size, Path(cache), args.workers, "load")
        batches = run_load(folder, args.image_size, Path(cache), args.workers, "batches")
        result.update(
            first_decode_s=round(first["load_s"], 2),
            first_decode_img_per_s=round(first["images"] / first["load_s"]),
            second_load_s=round(second["load_s"], 3),
            second_process_s=round(second["process_s"], 2),
            rss_anon_peak_mib=round(batches["rss_anon_peak_mib"]),
            epoch_of_batches_s=round(batches["epoch_s"], 2),
            decoded=first["images"], shape=first["shape"])
        os.environ["XDG_CACHE_HOME"] = cache  # the cache the loads above made
        result.update(feed_side_by_side(folder, args.image_size, args.feed_seconds, args.workers))
        if args.train:
            result.update(train_side_by_side(folder, args.preset, args.seconds, args.workers))
    for key, value in result.items():
        print(f"{key:<28} {value}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
