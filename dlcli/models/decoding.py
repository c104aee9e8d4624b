"""Decoding a trained Transformer (models/transformer.py): greedy and beam search over a
batch of sentences, and the Translator that batches, encodes and decodes text with them.

Both decoders run a whole batch of sentences at once and keep each decoder layer's
keys and values in a cache, so every step feeds only the newest token through the
decoder. Sentences are sorted by length before batching and put back in order after.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dlcli.console import warn
from dlcli.data import text

BATCH_TOKENS = 6000  # source tokens x beam per decoding batch
MAX_BATCH = 200  # sentences per batch
DEFAULT_BEAM = 4  # for checkpoints and exports that do not name their beam
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
    form = text.TextForm()  # lowercasing and Moses tokenization around the BPE: none

    def __init__(self, model, tokenizer, alpha: float = 0.6, form: text.TextForm | None = None,
                 beam: int = DEFAULT_BEAM, max_positions: int | None = None):
        self.model, self.tokenizer, self.alpha, self.beam = model, tokenizer, alpha, beam
        self.form = form or text.TextForm()
        self.max_positions = max_positions or model.max_positions
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
        sentences = self.form.prepare(sentences)
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
                    h.text = self.form.finish(text.decode(self.tokenizer, [h.ids]))[0]
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
