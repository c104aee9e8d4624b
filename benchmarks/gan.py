"""Side-by-side benchmarks of dlcli's GANs against eriklindernoren/PyTorch-GAN.

The peer's scripts are run unmodified from a folder outside this repo (PEER_DIR holds
gan/gan.py, dcgan/dcgan.py, cgan/cgan.py); torchvision does not install beside this
torch, so PEER_PATH must hold a stand-in `torchvision` package (datasets.MNIST as PIL
images, transforms Compose/Resize/ToTensor/Normalize, utils.save_image).

  speed    training images/s, the peer and dlcli in turns: dlcli at the peer's batch in
           float32, and dlcli at its default preset (its batch and precision):
           python benchmarks/gan.py speed --peer-dir PEER_DIR --peer-path PEER_PATH
  quality  our default preset and the peer trained at the same time for the same
           wall-clock (the peer is stopped when ours finishes), 10,000 samples of each
           scored by the same cnn judge (cfid, label_entropy, confidence):
           python benchmarks/gan.py quality gan --peer-dir ... --peer-path ... --judge CKPT

Run one benchmark at a time; set OMP_NUM_THREADS to the same value for both sides.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
# (our model, peer script, extra peer args) -- cgan also at 28x28, our image size
SPEED_CASES = [
    ("gan", "gan/gan.py", []),
    ("cgan", "cgan/cgan.py", ["--img_size", "28"]),
    ("cgan", "cgan/cgan.py", []),
    ("dcgan", "dcgan/dcgan.py", []),
]


def peer_env(peer_path: str) -> dict:
    return {**os.environ, "PYTHONPATH": peer_path, "PYTHONUNBUFFERED": "1"}


def time_peer(script: Path, args: list[str], peer_path: str, seconds: float) -> dict:
    """img/s of the peer's own loop, from the time stamps of its per-batch lines (after
    the first, so start-up and data loading are not counted)."""
    with tempfile.TemporaryDirectory() as work:
        # the script writes images/ and ../../data/ relative to its working folder
        cwd = Path(work) / "a" / "b"
        cwd.mkdir(parents=True)
        proc = subprocess.Popen([sys.executable, str(script), "--batch_size", "64", *args],
                                cwd=cwd, env=peer_env(peer_path), stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        stamps = []
        for line in proc.stdout:
            if line.startswith("[Epoch"):
                stamps.append(time.perf_counter())
                if stamps[-1] - stamps[0] >= seconds:
                    break
        proc.kill()
        proc.wait()
    if len(stamps) < 2:
        raise SystemExit(f"peer {script} printed no batches; is --peer-path right?")
    return {"img_per_s": (len(stamps) - 1) * 64 / (stamps[-1] - stamps[0]),
            "batches": len(stamps) - 1}


OURS = """
import sys, time, torch
from dlcli.config import resolve_config
from dlcli.registry import get_spec
from dlcli.train import apply_precision, precision_context, seed_everything
model, batch, precision, seconds, data = sys.argv[1:6]
spec = get_spec(model)
config = resolve_config(model, None, [], batch_size=int(batch) if batch != "preset" else None)
seed_everything(config["seed"])
task = spec.load_task()(spec, config, torch.device("cpu"), data or None)
precision = apply_precision(task, None if precision == "preset" else precision)
task.setup_data()
task.train_mode(True)
batches = task.train_batches(0)
with precision_context(task.device, precision):  # as dlcli/train.py wraps each step
    task.train_step(batches[0])  # warm-up, as the peer's first batch is not counted
start, images, i = time.perf_counter(), 0, 1
while time.perf_counter() - start < float(seconds):
    images += task.batch_items(batches[i])
    with precision_context(task.device, precision):
        task.train_step(batches[i])  # exactly what dlcli/train.py calls per batch
    i = i + 1 if i + 1 < len(batches) else 0
print(images / (time.perf_counter() - start), i, config["batch_size"], precision)
"""


def time_ours(model: str, batch: str, precision: str, seconds: float) -> dict:
    """img/s of dlcli's training step; batch and precision "preset" = the default preset's."""
    out = subprocess.run([sys.executable, "-c", OURS, model, batch, precision, str(seconds),
                          str(DATA)], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True)
    rate, steps, batch, precision = out.stdout.split()
    return {"img_per_s": float(rate), "batches": int(steps), "batch": int(batch),
            "precision": precision}


def speed(args) -> None:
    """Per model: the peer (batch 64, float32, its own DataLoader), dlcli at the peer's batch
    in float32 (the same arithmetic), and dlcli as `dlcli train` runs it by default (the
    preset's batch and precision), in turns so load changes hit every side alike."""
    peer_dir = Path(args.peer_dir)
    rows = []
    for model, script, extra in SPEED_CASES:
        if args.models and model not in args.models:
            continue
        runs = {"peer": [], "same": [], "preset": []}
        for _ in range(args.rounds):
            runs["peer"].append(time_peer(peer_dir / script, extra, args.peer_path, args.seconds))
            runs["same"].append(time_ours(model, "64", "32", args.seconds))
            runs["preset"].append(time_ours(model, "preset", "preset", args.seconds))
        rate = {k: statistics.median(r["img_per_s"] for r in v) for k, v in runs.items()}
        preset = runs["preset"][0]
        row = {"model": model, "peer": f"{script} {' '.join(extra)}".strip(),
               "peer_img_per_s": round(rate["peer"], 1),
               "dlcli_batch64_fp32_img_per_s": round(rate["same"], 1),
               "ratio_batch64_fp32": round(rate["same"] / rate["peer"], 2),
               "dlcli_preset": f"batch {preset['batch']}, precision {preset['precision']}",
               "dlcli_preset_img_per_s": round(rate["preset"], 1),
               "ratio_preset": round(rate["preset"] / rate["peer"], 2),
               "rounds": args.rounds, "threads": os.environ.get("OMP_NUM_THREADS", "default")}
        rows.append(row)
        print(json.dumps(row), flush=True)


# ---- quality at equal wall-clock ------------------------------------------------------

PEER_HARNESS = """
import json, os, signal, sys, time
import numpy as np, torch, torch.nn.functional as F
script, out = sys.argv[1], sys.argv[2]
class Stop(BaseException): pass
def stop(*_): raise Stop
signal.signal(signal.SIGUSR1, stop)
class Count:  # the peer prints a line per batch; count them, show none
    lines = 0
    def write(self, s):
        Count.lines += s.startswith("[Epoch"); return len(s)
    def flush(self): pass
real, sys.stdout = sys.stdout, Count()
sys.argv = [script, "--n_epochs", "200"]
ns = {"__name__": "__main__", "__file__": script}
start = time.perf_counter()
try:
    exec(compile(open(script).read(), script, "exec"), ns)
except Stop:
    pass
seconds, sys.stdout = time.perf_counter() - start, real
opt, G = ns["opt"], ns["generator"]
conditional = "n_classes" in vars(opt)
z = torch.randn(10000, opt.latent_dim, generator=torch.Generator().manual_seed(0))
labels = torch.arange(10000) % 10
for mode in ("train", "eval"):  # BatchNorm as the peer draws its pictures, and eval mode
    G.train(mode == "train")
    with torch.no_grad():
        x = torch.cat([G(*((z[i:i + 64],) + ((labels[i:i + 64],) if conditional else ())))
                       for i in range(0, 10000, 64)])
    x = (x + 1) / 2
    if x.shape[-1] != 28:
        x = F.interpolate(x, size=(28, 28), mode="bilinear", antialias=True)
    np.save(f"{out}-{mode}.npy", x.clamp(0, 1).numpy().astype("float32"))
print(json.dumps({"seconds": seconds, "images": Count.lines * opt.batch_size}))
"""


def score_npy(path: str, judge, real) -> dict:
    import numpy as np
    import torch

    from dlcli.metrics import score_samples

    scores = score_samples(judge, [(torch.from_numpy(np.load(path)), None)], real)
    return {k: round(v, 4) for k, v in scores.items()}


def quality(args) -> None:
    script = Path(args.peer_dir) / {"gan": "gan/gan.py", "dcgan": "dcgan/dcgan.py"}[args.model]
    work = Path(tempfile.mkdtemp(prefix=f"gan-quality-{args.model}-"))
    cwd = work / "a" / "b"
    cwd.mkdir(parents=True)
    peer = subprocess.Popen([sys.executable, "-c", PEER_HARNESS, str(script), str(work / "peer")],
                            cwd=cwd, env=peer_env(args.peer_path), stdout=subprocess.PIPE,
                            text=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "dlcli", "train", args.model, "--data-dir", str(DATA),
                    "--run-dir", str(work / "ours"), *args.train_args], cwd=ROOT, check=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL)
    ours_seconds = time.perf_counter() - start
    peer.send_signal(signal.SIGUSR1)  # the same wall-clock for the peer
    peer_run = json.loads(peer.communicate()[0].strip().splitlines()[-1])

    ours = json.loads(subprocess.run(
        [sys.executable, "-m", "dlcli", "evaluate", str(work / "ours" / "last.safetensors"),
         "--json", "--classifier", args.judge, "--data-dir", str(DATA)], cwd=ROOT, check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True).stdout)
    sys.path.insert(0, str(ROOT))
    from dlcli.data.mnist import load_images
    from dlcli.tasks.classify import load_judge

    judge = load_judge(args.judge)
    real = load_images("mnist", DATA).test_x.float() / 255
    result = {"model": args.model, "seconds": round(ours_seconds, 1), "run": str(work),
              "dlcli": {k: ours[k] for k in ("cfid", "label_entropy", "confidence")},
              "peer_images_seen": peer_run["images"]}
    for mode in ("train", "eval"):
        result[f"peer_{mode}_bn"] = score_npy(str(work / f"peer-{mode}.npy"), judge, real)
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--peer-dir", required=True)
    s.add_argument("--peer-path", required=True, help="folder with the torchvision stand-in")
    s.add_argument("--seconds", type=float, default=20)
    s.add_argument("--rounds", type=int, default=2)
    s.add_argument("--models", nargs="*")
    q = sub.add_parser("quality")
    q.add_argument("model", choices=["gan", "dcgan"])
    q.add_argument("--peer-dir", required=True)
    q.add_argument("--peer-path", required=True)
    q.add_argument("--judge", required=True, help="cnn checkpoint")
    q.add_argument("train_args", nargs="*", help="extra `dlcli train` options (after --)")
    args = parser.parse_args()
    speed(args) if args.command == "speed" else quality(args)


if __name__ == "__main__":
    main()
