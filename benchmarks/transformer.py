"""Transformer benchmarks, each measured side by side in one process (ratios, not absolutes).

  python benchmarks/transformer.py throughput [--rounds 5] [--steps 5]
      training tokens/s (forward + backward + Adam step) of dlcli's Transformer and of
      torch.nn.Transformer of the same size on the same batches, alternating.
  python benchmarks/transformer.py decode CKPT SOURCE_FILE [--sentences N]
      greedy translation of SOURCE_FILE: dlcli's batched, cached decoder against decoding
      one sentence at a time with no cache (the whole prefix re-run every step).

Set OMP_NUM_THREADS=1 on a crowded machine: on 2 shared cores, thread barriers cost more
than the second thread gains.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dlcli.data import text  # noqa: E402
from dlcli.models.transformer import Transformer, sinusoidal_positions  # noqa: E402


class TorchTransformer(nn.Module):
    """torch.nn.Transformer with the same embeddings, positions and output layer."""

    def __init__(self, vocab, d_model, heads, layers, d_ff, dropout):
        super().__init__()
        self.d_model = d_model
        self.src_embed = nn.Embedding(vocab, d_model, padding_idx=text.PAD)
        self.tgt_embed = nn.Embedding(vocab, d_model, padding_idx=text.PAD)
        self.register_buffer("positions", sinusoidal_positions(256, d_model), persistent=False)
        self.dropout = nn.Dropout(dropout)
        self.transformer = nn.Transformer(d_model, heads, layers, layers, d_ff, dropout,
                                          batch_first=True)
        self.generator = nn.Linear(d_model, vocab, bias=False)

    def embed(self, table, tokens):
        x = table(tokens) * math.sqrt(self.d_model)
        return self.dropout(x + self.positions[:tokens.shape[1]])

    def loss(self, src, tgt_in, tgt_out, label_smoothing=0.0):
        t = tgt_in.shape[1]  # boolean masks throughout (True = masked), as torch expects
        causal = torch.ones(t, t, dtype=torch.bool).triu(1)
        src_pad, tgt_pad = src == text.PAD, tgt_in == text.PAD
        h = self.transformer(self.embed(self.src_embed, src), self.embed(self.tgt_embed, tgt_in),
                             tgt_mask=causal, src_key_padding_mask=src_pad,
                             tgt_key_padding_mask=tgt_pad, memory_key_padding_mask=src_pad,
                             tgt_is_causal=True)
        logits = self.generator(h)
        return F.cross_entropy(logits.flatten(0, 1), tgt_out.flatten(), ignore_index=text.PAD,
                               label_smoothing=label_smoothing)


def make_batches(n, batch, vocab, lo, hi, seed=0):
    """Batches of `batch` sentence pairs, lengths between lo and hi, padded per batch."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        src_len = torch.randint(lo, hi + 1, (batch,), generator=g)
        tgt_len = torch.randint(lo, hi + 1, (batch,), generator=g)
        src = torch.randint(4, vocab, (batch, int(src_len.max())), generator=g)
        tgt = torch.randint(4, vocab, (batch, int(tgt_len.max()) + 1), generator=g)
        src[torch.arange(src.shape[1]) >= src_len[:, None]] = text.PAD
        tgt[:, 0] = text.BOS
        tgt[torch.arange(tgt.shape[1]) > tgt_len[:, None]] = text.PAD
        out.append((src, tgt))
    return out


def throughput(args):
    vocab, d, heads, layers, d_ff = args.vocab, args.d_model, args.heads, args.layers, args.d_ff
    torch.manual_seed(0)
    models = {
        "torch.nn.Transformer": TorchTransformer(vocab, d, heads, layers, d_ff, 0.1),
        "dlcli": Transformer(vocab, d, heads, layers, layers, d_ff, 0.1, tie_embeddings=False),
    }
    if args.tied:
        models["dlcli (tied embeddings)"] = Transformer(vocab, d, heads, layers, layers, d_ff, 0.1,
                                                        tie_embeddings=True)
    opts = {k: torch.optim.Adam(m.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-9)
            for k, m in models.items()}
    batches = make_batches(args.steps, args.batch, vocab, args.min_len, args.max_len)
    tokens = sum(int((s != text.PAD).sum() + (t[:, 1:] != text.PAD).sum()) for s, t in batches)

    def run(name):
        model, opt = models[name], opts[name]
        model.train()
        t0 = time.perf_counter()
        for src, tgt in batches:
            loss = model.loss(src, tgt[:, :-1], tgt[:, 1:], 0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return tokens / (time.perf_counter() - t0)

    for name in models:  # warm-up, not timed
        run(name)
    rates = {name: [] for name in models}
    for r in range(args.rounds):
        for name in models:
            rates[name].append(run(name))
        print(f"round {r + 1}: " + "  ".join(f"{k} {v[-1]:,.0f} tok/s" for k, v in rates.items()),
              flush=True)
    base = statistics.median(rates["torch.nn.Transformer"])
    params = {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()}
    print(f"\nd_model {d}, {heads} heads, {layers}+{layers} layers, FFN {d_ff}, vocab {vocab}, "
          f"batch {args.batch} x ({args.min_len}-{args.max_len} + {args.min_len}-{args.max_len}) "
          f"tokens, {torch.get_num_threads()} thread(s)")
    medians = {}
    for name, r in rates.items():
        medians[name] = statistics.median(r)
        print(f"{name:<26} {params[name]:>10,} params  median {medians[name]:>8,.0f} tok/s  "
              f"ratio {medians[name] / base:.2f}")
    return medians


def side_by_side(rounds: int = 3, steps: int = 3) -> dict:
    """The throughput comparison at the default size, for benchmarks/suite.py."""
    medians = throughput(parser().parse_args(["throughput", "--rounds", str(rounds),
                                              "--steps", str(steps)]))
    return {"dlcli": medians["dlcli"], "baseline": medians["torch.nn.Transformer"]}


@torch.no_grad()
def decode(args):
    from dlcli.checkpoint import load_checkpoint
    from dlcli.registry import get_spec

    spec = get_spec("transformer")
    ckpt = load_checkpoint(args.checkpoint)
    task = spec.load_task().from_checkpoint(spec, ckpt, torch.device("cpu"))
    translator = task.translator()
    model = translator.model
    lines = text._read_text(Path(args.source))[:args.sentences]

    t0 = time.perf_counter()
    batched = [h[0].text for h in translator.translate(lines, beam=1)]
    fast = time.perf_counter() - t0
    print(f"batched + cached greedy: {len(lines)} sentences in {fast:.1f} s", flush=True)

    t0 = time.perf_counter()
    slow_out = []
    for row in translator.encode_sources(lines):
        src = torch.tensor([row])
        memory, mask = model.encode(src)
        ys = torch.tensor([[text.BOS]])
        for _ in range(int(1.5 * len(row)) + 10):  # the whole prefix, every step
            logits = model.generator(model.decode(ys, memory, mask)[:, -1])
            logits[:, [text.PAD, text.BOS]] = float("-inf")
            nxt = logits.argmax(-1, keepdim=True)
            if nxt.item() == text.EOS:
                break
            ys = torch.cat([ys, nxt], 1)
        slow_out.append(text.decode(translator.tokenizer, [ys[0, 1:].tolist()])[0])
    slow = time.perf_counter() - t0
    same = sum(a == b for a, b in zip(batched, slow_out))
    print(f"one at a time, no cache: {len(lines)} sentences in {slow:.1f} s")
    print(f"speed-up {slow / fast:.2f}x; identical outputs {same}/{len(lines)}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("--rounds", type=int, default=5)
    t.add_argument("--steps", type=int, default=5)
    t.add_argument("--batch", type=int, default=128)
    t.add_argument("--min-len", type=int, default=12)
    t.add_argument("--max-len", type=int, default=20)
    t.add_argument("--vocab", type=int, default=8000)
    t.add_argument("--d-model", type=int, default=256)
    t.add_argument("--heads", type=int, default=8)
    t.add_argument("--layers", type=int, default=3)
    t.add_argument("--d-ff", type=int, default=512)
    t.add_argument("--tied", action="store_true", help="also time tied embeddings")
    d = sub.add_parser("decode")
    d.add_argument("checkpoint")
    d.add_argument("source")
    d.add_argument("--sentences", type=int, default=1000)
    return p


def main():
    args = parser().parse_args()
    throughput(args) if args.what == "throughput" else decode(args)


if __name__ == "__main__":
    main()
