"""`dlcli translate`: decoding (greedy and beam search) and line-by-line streaming.

Both decoders run a whole batch of sentences at once and keep each decoder layer's
keys and values in a cache, so every step feeds only the newest token through the
decoder. Sentences are sorted by length before batching and put back in order after.
"""

from __future__ import annotations

import os
import select
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from dlcli.console import warn
from dlcli.data import text
from dlcli.errors import DlcliError

BATCH_TOKENS = 6000  # source tokens x beam per decoding batch
MAX_BATCH = 200  # sentences per batch
# A line is cut to this many characters per source position before it is tokenized: far
# more than any real sentence that fits the model, and the tokenizer's memory grows with
# the line (a 50 MB line took gigabytes) though only the first positions are used.
CHARS_PER_POSITION = 64


@dataclass
class Hypothesis:
    score: float  # log-probability / length penalty
    ids: list[int]
    text: str = ""


def length_penalty(length: int, alpha: float) -> float:
    """GNMT's ((5 + |Y|) / 6)^alpha: without it beam search prefers short outputs."""
    return ((5 + length) / 6) ** alpha


def next_log_probs(model, tokens, memory, src_mask, cache, step: int) -> torch.Tensor:
    """log p(next token) for the newest position of each row; never PAD or BOS."""
    states = model.decode(tokens[:, -1:], memory, src_mask, cache, offset=step)
    logp = model.generator(states[:, -1]).float().log_softmax(-1)
    logp[:, [text.PAD, text.BOS]] = float("-inf")
    return logp


@torch.no_grad()
def greedy(model, src, max_len: int, alpha: float) -> list[list[Hypothesis]]:
    memory, src_mask = model.encode(src)
    batch = src.shape[0]
    cache = model.new_cache()
    tokens = torch.full((batch, 1), text.BOS, dtype=torch.long, device=src.device)
    total = torch.zeros(batch, device=src.device)
    done = torch.zeros(batch, dtype=torch.bool, device=src.device)
    for step in range(max_len):
        best, nxt = next_log_probs(model, tokens, memory, src_mask, cache, step).max(-1)
        total += best.masked_fill(done, 0.0)
        nxt = nxt.masked_fill(done, text.PAD)
        tokens = torch.cat([tokens, nxt[:, None]], 1)
        done |= nxt == text.EOS
        if done.all():
            break
    out = []
    for row, score in zip(tokens[:, 1:].tolist(), total.tolist()):
        ids = row[:row.index(text.EOS)] if text.EOS in row else [t for t in row if t != text.PAD]
        out.append([Hypothesis(score / length_penalty(len(ids) + 1, alpha), ids)])
    return out


@torch.no_grad()
def beam_search(model, src, beam: int, max_len: int, alpha: float, n_best: int = 1):
    """Keep the `beam` best partial translations of each sentence. A hypothesis that emits
    EOS leaves the beam with its length-normalised score; a sentence is finished when it
    has `beam` such hypotheses and no live one can still beat the worst of them."""
    batch, k = src.shape[0], beam
    memory, src_mask = model.encode(src)
    memory, src_mask = memory.repeat_interleave(k, 0), src_mask.repeat_interleave(k, 0)
    cache = model.new_cache()
    tokens = torch.full((batch * k, 1), text.BOS, dtype=torch.long, device=src.device)
    scores = torch.full((batch, k), float("-inf"), device=src.device)
    scores[:, 0] = 0.0  # all beams start as the same empty hypothesis: keep one
    finished: list[list[Hypothesis]] = [[] for _ in range(batch)]
    done = [False] * batch
    rows = torch.arange(batch, device=src.device)[:, None] * k
    for step in range(max_len):
        logp = next_log_probs(model, tokens, memory, src_mask, cache, step)
        vocab = logp.shape[1]
        candidates = (scores.view(-1, 1) + logp).view(batch, k * vocab)
        top_scores, top_index = candidates.topk(2 * k, dim=1)
        origin, token = top_index // vocab, top_index % vocab
        ended = (token == text.EOS) & torch.isfinite(top_scores)
        ended[:, k:] = False  # only an EOS among the k best counts
        for b, r in ended.nonzero().tolist():
            ids = tokens[rows[b, 0] + origin[b, r], 1:].tolist()
            finished[b].append(Hypothesis(
                top_scores[b, r].item() / length_penalty(len(ids) + 1, alpha), ids))
        live = top_scores.masked_fill(token == text.EOS, float("-inf"))
        scores, pick = live.topk(k, dim=1)
        best_live = scores.max(1).values.tolist()
        for b in range(batch):
            hyps = finished[b]
            if done[b] or len(hyps) < k:
                continue
            hyps.sort(key=lambda h: -h.score)
            del hyps[k:]
            # raw log-probabilities only fall as a hypothesis grows: this is its best
            if best_live[b] / length_penalty(step + 2, alpha) <= hyps[-1].score:
                done[b] = True
        if all(done):
            break
        scores[torch.tensor(done, device=src.device)] = float("-inf")  # stop extending them
        index = (rows + origin.gather(1, pick)).view(-1)
        tokens = torch.cat([tokens[index], token.gather(1, pick).view(-1, 1)], 1)
        model.reorder_cache(cache, index)
    out = []
    for b in range(batch):
        hyps = finished[b]
        if len(hyps) < n_best:  # ran out of length: the live hypotheses count too
            for j in range(k):
                if torch.isfinite(scores[b, j]):
                    ids = tokens[rows[b, 0] + j, 1:].tolist()
                    score = scores[b, j].item() / length_penalty(len(ids), alpha)
                    hyps.append(Hypothesis(score, ids))
        out.append(sorted(hyps, key=lambda h: -h.score)[:n_best])
    return out


class Translator:
    def __init__(self, model, tokenizer, alpha: float = 0.6):
        self.model, self.tokenizer, self.alpha = model, tokenizer, alpha
        self.max_positions = model.max_positions
        self.warned_unknown = self.warned_long = False

    @property
    def max_source(self) -> int:
        return self.max_positions - 1

    @property
    def max_chars(self) -> int:
        """Characters of a line worth tokenizing: the rest could never fit the positions."""
        return CHARS_PER_POSITION * self.max_source

    def encode_sources(self, sentences: list[str], line_numbers=None) -> list[list[int]]:
        rows = []
        for i, sentence in enumerate(sentences):
            if len(sentence) > self.max_chars:
                if not self.warned_long:
                    line = line_numbers[i] if line_numbers else i + 1
                    warn(f"line {line}: more than {self.max_chars:,} characters; translating "
                         f"its first {self.max_chars:,} (further such lines are not reported)")
                    self.warned_long = True
                sentences = sentences[:i] + [sentence[:self.max_chars]] + sentences[i + 1:]
        encodings = self.tokenizer.encode_batch(sentences, add_special_tokens=False)
        for i, encoding in enumerate(encodings):
            ids = encoding.ids
            line = line_numbers[i] if line_numbers else i + 1
            if text.UNK in ids and not self.warned_unknown:
                unseen = sorted({sentences[i][a:b] for t, (a, b) in zip(ids, encoding.offsets)
                                 if t == text.UNK})
                warn(f"line {line}: {' '.join(unseen)} never seen in training, so left out of "
                     "the translation (said once)")
                self.warned_unknown = True
            if len(ids) > self.max_source - 1:
                warn(f"line {line}: {len(ids)} tokens, more than the model's "
                     f"{self.max_source - 1}; translating the first {self.max_source - 1}")
                ids = ids[:self.max_source - 1]
            rows.append(ids + [text.EOS])
        return rows

    @torch.no_grad()
    def translate(self, sentences: list[str], beam: int = 1, max_len: int | None = None,
                  n_best: int = 1, first_line: int = 1) -> list[list[Hypothesis]]:
        """n_best hypotheses per sentence, in input order; an empty sentence stays empty."""
        results: list[list[Hypothesis]] = [[Hypothesis(0.0, [])] * n_best for _ in sentences]
        todo = [i for i, s in enumerate(sentences) if s.strip()]
        rows = self.encode_sources([sentences[i] for i in todo], [first_line + i for i in todo])
        order = sorted(range(len(todo)), key=lambda j: len(rows[j]))
        start = 0
        while start < len(order):
            end = start + 1  # grow the batch while its padded size fits
            while (end < len(order) and end - start < MAX_BATCH
                   and (end - start + 1) * len(rows[order[end]]) * beam <= BATCH_TOKENS):
                end += 1
            chunk = order[start:end]
            found = self.search([rows[j] for j in chunk], beam, max_len, n_best)
            for j, hyps in zip(chunk, found):
                for h in hyps:
                    h.text = text.decode(self.tokenizer, [h.ids])[0]
                results[todo[j]] = hyps
            start = end
        return results

    def output_limit(self, source_length: int, max_len: int | None) -> int:
        """Longest translation in tokens: --max-len, else 1.5 x the source + 10; never past
        the model's last position."""
        return min(max_len or int(1.5 * source_length) + 10, self.max_positions - 1)

    @torch.no_grad()
    def search(self, rows: list[list[int]], beam: int, max_len: int | None,
               n_best: int) -> list[list[Hypothesis]]:
        """Decode one batch of encoded sources (each ending in EOS)."""
        self.model.train(False)
        src = torch.full((len(rows), max(map(len, rows))), text.PAD, dtype=torch.long)
        for r, row in enumerate(rows):
            src[r, :len(row)] = torch.tensor(row)
        src = src.to(next(self.model.parameters()).device)
        limit = self.output_limit(src.shape[1], max_len)
        if beam == 1:
            return greedy(self.model, src, limit, self.alpha)
        return beam_search(self.model, src, beam, limit, self.alpha, n_best)

    @torch.no_grad()
    def cross_attention(self, sentence: str, hyp: Hypothesis) -> torch.Tensor:
        """Cross-attention of the last decoder layer, (heads, target, source), for one
        sentence and its translation (teacher-forced)."""
        device = next(self.model.parameters()).device
        src = torch.tensor([self.encode_sources([sentence])[0]], device=device)
        tgt_in = torch.tensor([[text.BOS] + hyp.ids], device=device)
        attn = self.model.decoder[-1].cross_attn
        attn.keep_weights = True
        try:
            memory, mask = self.model.encode(src)
            self.model.decode(tgt_in, memory, mask)
            return attn.weights[0].float().cpu()
        finally:
            attn.keep_weights, attn.weights = False, None


def plot_attention(weights: torch.Tensor, src_tokens: list[str], tgt_tokens: list[str],
                   path) -> None:
    """Heatmaps of cross-attention, source tokens across and target tokens down: the mean
    over heads first, then each head, on one colour scale (the bar on the right). Each
    token gets a cell big enough to read its label (a 20-token sentence: ~1,600 px wide)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dlcli.checkpoint import atomic_write

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
def run_translate(spec, texts, *, checkpoint=None, beam: int = 4, max_len=None, n_best: int = 1,
                  attention=None, device: str = "auto", engine: str = "torch", out=print) -> None:
    from dlcli.checkpoint import load_checkpoint
    from dlcli.runs import resolve_checkpoint
    from dlcli.train import pick_device

    if attention is not None and (not texts or len(texts) != 1):
        raise DlcliError("--attention draws one sentence: pass exactly one TEXT argument")
    if engine == "ctranslate2":
        if attention is not None:
            raise DlcliError("--attention reads the PyTorch model's weights: use --engine torch")
        from dlcli.ct2 import load_translator

        # an exported CTranslate2 folder is taken as it is, not as a run folder
        exported = checkpoint is not None and Path(checkpoint).is_dir() and not any(
            (Path(checkpoint) / name).is_file() for name in ("best.safetensors", "last.safetensors"))
        translator = load_translator(Path(checkpoint) if exported
                                     else resolve_checkpoint(spec.name, checkpoint), device)
    else:
        ckpt = load_checkpoint(resolve_checkpoint(spec.name, checkpoint), expect_model=spec.name)
        task = spec.load_task().from_checkpoint(spec, ckpt, pick_device(device))
        translator = task.translator()

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
