"""Checks of `dlcli export` and `dlcli predict` on real data, measured side by side.

  python benchmarks/export.py ctranslate2 CKPT --data-dir DIR [--sentences N] [--rounds R] [--beam K]
      a Multi30k Transformer on the test_2016_flickr sources: dlcli's own batched decoder
      against CTranslate2 (float32 and int8 weights, exported by `dlcli export`), the
      three alternating, each round timed; prints the share of lines identical to dlcli's,
      sacreBLEU of each against the references, and sentences/s with the speed-up.
  python benchmarks/export.py predict CKPT --data-dir DIR [--images N]
      writes the first N MNIST test digits as PNG files, runs `dlcli predict` on them (paths
      on stdin) and `dlcli evaluate`, and compares: predict's answers against the
      classifier's on the same digits as tensors (they should agree on every image), its
      accuracy against evaluate's on the whole test set.

Set OMP_NUM_THREADS=1 on a crowded machine; both engines then get one thread.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dlcli.checkpoint import load_checkpoint  # noqa: E402
from dlcli.registry import get_spec  # noqa: E402


def cli(*args, stdin: str | None = None) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "dlcli", *map(str, args)], input=stdin,
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"dlcli {' '.join(map(str, args))} failed: {proc.stderr.strip()}")
    return proc.stdout


def bench_ctranslate2(args) -> dict:
    import sacrebleu

    from dlcli.ct2 import load_translator
    from dlcli.data.text import multi30k_corpus
    from dlcli.export import export

    ckpt = load_checkpoint(args.checkpoint, expect_model="transformer")
    spec = get_spec("transformer")
    task = spec.load_task().from_checkpoint(spec, ckpt, torch.device("cpu"))
    c = task.config
    sources, refs = multi30k_corpus(c["source_lang"], c["target_lang"], args.data_dir).splits["test"]
    sources, refs = sources[:args.sentences], refs[:args.sentences]
    tmp = Path(tempfile.mkdtemp(prefix="dlcli-ct2-bench-"))
    engines = {"dlcli": task.translator()}
    for name, quantization in (("ct2-float32", None), ("ct2-int8", "int8")):
        folder = export(ckpt.path, "ctranslate2", tmp / name, quantization=quantization)
        engines[name] = load_translator(folder, "cpu")
    times = {name: [] for name in engines}
    outputs = {}
    for _ in range(args.rounds):
        for name, translator in engines.items():
            start = time.perf_counter()
            hyps = translator.translate(sources, beam=args.beam)
            times[name].append(time.perf_counter() - start)
            outputs[name] = [h[0].text for h in hyps]
    base = outputs["dlcli"]
    rows = {}
    for name, out in outputs.items():
        best = min(times[name])
        rows[name] = {
            "identical_to_dlcli": sum(a == b for a, b in zip(out, base)) / len(base),
            "bleu": sacrebleu.corpus_bleu(out, [refs]).score,
            "bleu_lowercase": sacrebleu.corpus_bleu(out, [refs], lowercase=True).score,
            "seconds_best": best, "seconds_median": statistics.median(times[name]),
            "sentences_per_s": len(sources) / best,
            "speedup_vs_dlcli": min(times["dlcli"]) / best,
        }
    return {"sentences": len(sources), "beam": args.beam, "threads": torch.get_num_threads(),
            "rounds": args.rounds, "engines": rows}


def bench_predict(args) -> dict:
    from PIL import Image

    from dlcli.data.mnist import load_images

    ckpt = load_checkpoint(args.checkpoint)
    spec = get_spec(ckpt.model)
    task = spec.load_task().from_checkpoint(spec, ckpt, torch.device("cpu"))
    data = load_images(ckpt.config["dataset"], args.data_dir)
    x, y = data.test_x[:args.images], data.test_y[:args.images]
    folder = Path(tempfile.mkdtemp(prefix="dlcli-predict-bench-"))
    paths = []
    for i, image in enumerate(x[:, 0].numpy()):
        paths.append(folder / f"{i:05d}.png")
        Image.fromarray(image).save(paths[-1])
    start = time.perf_counter()
    lines = cli("predict", ckpt.path, "--json", stdin="\n".join(map(str, paths)) + "\n").splitlines()
    seconds = time.perf_counter() - start
    answers = [json.loads(line)["label"] for line in lines]
    direct = task.predict(x.float() / 255).argmax(1)
    evaluated = json.loads(cli("evaluate", ckpt.path, "--json", "--data-dir", args.data_dir))
    return {"images": len(paths), "answered": len(answers),
            "predict_accuracy": sum(a == b for a, b in zip(answers, y.tolist())) / len(paths),
            "same_as_tensor_predictions": sum(a == b for a, b in zip(answers, direct.tolist())),
            "tensor_accuracy_same_images": (direct == y).float().mean().item(),
            "evaluate_accuracy_10000": evaluated["accuracy"], "predict_seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    ct2 = sub.add_parser("ctranslate2")
    ct2.add_argument("checkpoint")
    ct2.add_argument("--data-dir", default=None)
    ct2.add_argument("--sentences", type=int, default=1000)
    ct2.add_argument("--rounds", type=int, default=3)
    ct2.add_argument("--beam", type=int, default=1)
    pred = sub.add_parser("predict")
    pred.add_argument("checkpoint")
    pred.add_argument("--data-dir", default=None)
    pred.add_argument("--images", type=int, default=1000)
    args = parser.parse_args()
    result = bench_ctranslate2(args) if args.what == "ctranslate2" else bench_predict(args)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
