"""`dlcli translate`: line-by-line streaming of text through a Translator
(models/decoding.py), n-best lists, and cross-attention pictures."""

from __future__ import annotations

import os
import select
import sys
from pathlib import Path

import torch

from dlcli.console import warn
from dlcli.data import text
from dlcli.errors import DlcliError
from dlcli.models.decoding import MAX_BATCH, Hypothesis


def plot_attention(weights: torch.Tensor, src_tokens: list[str], tgt_tokens: list[str],
                   path) -> None:
    """Heatmaps of cross-attention, source tokens across and target tokens down: the mean
    over heads first, then each head, on one colour scale (the bar on the right). Each
    token gets a cell big enough to read its label (a 20-token sentence: ~1,600 px wide)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dlcli.fileio import atomic_write

    panels = [("mean of the heads", weights.mean(0))]
    panels += [(f"head {h + 1}", w) for h, w in enumerate(weights)]
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    cell = 0.26  # inches per token: room for a 9-point label
    label = 0.09 * max(map(len, src_tokens + tgt_tokens)) + 0.4  # the longest token's label
    width = max(2.4, cell * len(src_tokens)) + label
    height = max(2.0, cell * len(tgt_tokens)) + label + 0.3
    fig, axes = plt.subplots(rows, cols, figsize=(cols * width + 1.2, rows * height + 0.6),
                             squeeze=False)
    vmax = float(weights.max()) or 1.0
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (title, w) in zip(axes.flat, panels):
        image = ax.imshow(w.numpy(), cmap="viridis", vmin=0, vmax=vmax, aspect="equal",
                          interpolation="nearest")
        ax.set_title(title, fontsize=11, fontweight="bold" if title.startswith("mean") else None)
        ax.set_xticks(range(len(src_tokens)), src_tokens, rotation=90, fontsize=9)
        ax.set_yticks(range(len(tgt_tokens)), tgt_tokens, fontsize=9)
        ax.tick_params(length=0)
    axes[0][0].set_xlabel("source", fontsize=10)
    axes[0][0].set_ylabel("translation", fontsize=10)
    fig.suptitle("cross-attention of the last decoder layer", fontsize=12)
    fig.tight_layout(rect=(0, 0, 1 - 1.0 / fig.get_figwidth(), 1))
    bar = fig.colorbar(image, ax=axes.ravel().tolist(), fraction=0.6 / fig.get_figwidth(), pad=0.01)
    bar.set_label("attention weight", fontsize=10)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


# ---- reading stdin --------------------------------------------------------------------

def stdin_batches(stream=None, max_lines: int = MAX_BATCH, max_line_bytes: int = 1 << 20):
    """Lists of lines from stdin: all the complete lines already there, without waiting
    for more, so a pipeline streams and an interactive user gets each line answered. A
    line is kept to its first max_line_bytes (at a character boundary), so memory stays
    flat however long a line is."""
    stream = stream or sys.stdin.buffer
    try:
        fd = stream.fileno()
        select.select([fd], [], [], 0)
    except (OSError, ValueError, AttributeError):  # not a selectable file: read it all
        lines = stream.read().splitlines()
        for i in range(0, len(lines), max_lines):
            yield lines[i:i + max_lines]
        return
    pending, eof, cut = bytearray(), False, False

    def take(chunk: bytes) -> None:
        nonlocal cut
        if cut:  # the rest of a line over budget: dropped up to its newline
            newline = chunk.find(b"\n")
            if newline < 0:
                return
            chunk, cut = chunk[newline:], False
        pending.extend(chunk)
        start = pending.rfind(b"\n") + 1
        if len(pending) - start > max_line_bytes:
            end = start + max_line_bytes
            while end > start and pending[end] & 0xC0 == 0x80:  # inside a UTF-8 character
                end -= 1
            del pending[end:]
            cut = True

    while not eof:
        chunk = os.read(fd, 1 << 16)  # blocks until something arrives
        eof = not chunk
        take(chunk)
        while not eof and pending.count(b"\n") < max_lines and select.select([fd], [], [], 0)[0]:
            chunk = os.read(fd, 1 << 16)
            eof = not chunk
            take(chunk)
        *lines, last = bytes(pending).split(b"\n")
        pending[:] = last
        if eof and last:  # a last line without a newline
            lines.append(last)
        for i in range(0, len(lines), max_lines):
            yield lines[i:i + max_lines]


class LineDecoder:
    """bytes -> str, replacing invalid UTF-8 and warning about it once."""

    def __init__(self):
        self.warned = False

    def __call__(self, raw: bytes, number: int) -> str:
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            line = raw.decode("utf-8", errors="replace")
            if not self.warned:
                warn(f"line {number}: bytes that are not UTF-8 replaced by U+FFFD "
                     "(further such lines are not reported)")
                self.warned = True
        return line.rstrip("\r")


# ---- the command ----------------------------------------------------------------------

@torch.no_grad()
def run_translate(spec, texts, *, checkpoint=None, beam: int | None = None,
                  length_penalty: float | None = None, max_len=None, n_best: int = 1,
                  attention=None, device: str = "auto", engine: str = "torch", out=print) -> None:
    """beam and length_penalty: None takes the checkpoint's (or the export's)."""
    from dlcli.checkpoint import load_checkpoint
    from dlcli.runs import resolve_checkpoint, run_checkpoint
    from dlcli.runtime import pick_device

    if attention is not None and (not texts or len(texts) != 1):
        raise DlcliError("--attention draws one sentence: pass exactly one TEXT argument")
    if engine == "ctranslate2":
        if attention is not None:
            raise DlcliError("--attention reads the PyTorch model's weights: use --engine torch")
        from dlcli.ct2 import load_translator

        # an exported CTranslate2 folder is taken as it is, not as a run folder
        exported = checkpoint is not None and Path(checkpoint).is_dir() \
            and run_checkpoint(Path(checkpoint)) is None
        translator = load_translator(Path(checkpoint) if exported
                                     else resolve_checkpoint(spec.name, checkpoint), device)
    else:
        ckpt = load_checkpoint(resolve_checkpoint(spec.name, checkpoint), expect_model=spec.name)
        task = spec.load_task().from_checkpoint(spec, ckpt, pick_device(device))
        translator = task.translator()
    if length_penalty is not None:
        translator.alpha = length_penalty
    chosen, beam = beam, beam or translator.beam
    if n_best > beam:
        raise DlcliError(f"--n-best {n_best} needs --beam of at least {n_best}"
                         + ("" if chosen else f" (the checkpoint's is {beam})"))

    if texts:
        batches = [[" ".join(t.splitlines()) for t in texts]]
    else:
        decode_line = LineDecoder()
        batches = ([decode_line(raw, number + i + 1) for i, raw in enumerate(lines)]
                   for number, lines in _numbered(stdin_batches(
                       max_line_bytes=4 * translator.max_chars + 4)))  # 4: UTF-8's widest
    index = 0
    for lines in batches:
        results = translator.translate(lines, beam=beam, max_len=max_len, n_best=n_best,
                                       first_line=index + 1)
        for hyps in results:
            if n_best == 1:
                out(hyps[0].text)
            else:
                for h in (hyps + [Hypothesis(float("-inf"), [])] * n_best)[:n_best]:
                    out(f"{index}\t{h.score:.4f}\t{h.text}")
            index += 1
    if attention is not None:
        hyp = results[0][0]
        weights = translator.cross_attention(lines[0], hyp)
        tok = translator.tokenizer
        src_tokens = [tok.id_to_token(i) for i in translator.encode_sources([lines[0]])[0]]
        tgt_tokens = [tok.id_to_token(i) for i in hyp.ids + [text.EOS]]
        plot_attention(weights, src_tokens, tgt_tokens, attention)
        from dlcli.console import notice

        notice(f"cross-attention heatmap: {attention}")


def _numbered(batches):
    """(lines before this batch, batch) pairs, for line numbers in warnings."""
    seen = 0
    for lines in batches:
        yield seen, lines
        seen += len(lines)
