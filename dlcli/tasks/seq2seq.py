"""Sequence-to-sequence: the Transformer on parallel text (numbers, Multi30k, own files).

Batches hold about `batch_size` tokens (source + target, padding included): sentences of
similar length are bucketed together, so padding stays small. The learning rate follows
the paper's warm-up schedule (`schedule: noam`), scaled so that it peaks at `lr` after
`warmup` steps, or warm-up then a cosine decay to 0 at the last step (`schedule: cosine`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from dlcli.console import notice
from dlcli.data import text
from dlcli.data.batches import epoch_permutation
from dlcli.errors import DlcliError
from dlcli.optim import Schedule, make_optimizer
from dlcli.tasks.base import Task, sha256_of


def pad_rows(rows: list[list[int]], length: int) -> torch.Tensor:
    out = torch.full((len(rows), length), text.PAD, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, :len(row)] = torch.tensor(row, dtype=torch.long)
    return out


class EncodedSplit:
    """One split as two padded id tensors: source (ids, EOS) and target (BOS, ids, EOS),
    of sentences already in the form the tokenizer was trained on (TextForm)."""

    def __init__(self, tokenizer, sources, targets, max_len: int, device):
        src = [ids[:max_len - 1] + [text.EOS] for ids in text.encode(tokenizer, sources)]
        tgt = [[text.BOS] + ids[:max_len - 1] + [text.EOS]
               for ids in text.encode(tokenizer, targets)]
        self.src_len = torch.tensor([len(r) for r in src])
        self.tgt_len = torch.tensor([len(r) for r in tgt])
        self.src = pad_rows(src, int(self.src_len.max())).to(device)
        self.tgt = pad_rows(tgt, int(self.tgt_len.max())).to(device)
        self.sources, self.targets = sources, targets

    def __len__(self) -> int:
        return len(self.src_len)

    def batch(self, index: torch.Tensor):
        s, t = int(self.src_len[index].max()), int(self.tgt_len[index].max())
        index = index.to(self.src.device)
        return self.src[index, :s], self.tgt[index, :t]


def token_batches(split: EncodedSplit, max_tokens: int, order: torch.Tensor) -> list[torch.Tensor]:
    """Cut `order` (sorted by length) into batches whose padded size fits `max_tokens`."""
    batches, start, s_max, t_max = [], 0, 0, 0
    src_len, tgt_len = split.src_len.tolist(), split.tgt_len.tolist()
    order_list = order.tolist()
    for i, row in enumerate(order_list):
        s, t = max(s_max, src_len[row]), max(t_max, tgt_len[row])
        if i > start and (i - start + 1) * (s + t) > max_tokens:
            batches.append(order[start:i])
            start, s, t = i, src_len[row], tgt_len[row]
        s_max, t_max = s, t
    if start < len(order_list):
        batches.append(order[start:])
    return batches


class TokenBatches(Sequence):
    def __init__(self, split: EncodedSplit, batches: list[torch.Tensor]):
        self.split, self.batches = split, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int):
        return self.split.batch(self.batches[i])


def length_sorted(split: EncodedSplit, shuffle: torch.Tensor | None = None) -> torch.Tensor:
    """Indices sorted by (source, target) length; ties in the order of `shuffle`."""
    order = shuffle if shuffle is not None else torch.arange(len(split))
    key = split.src_len[order] * 10_000 + split.tgt_len[order]
    return order[torch.sort(key, stable=True).indices]


EMBEDDING = "src_embed.weight"  # the Transformer's (source) embedding: a row per token


class Seq2SeqTask(Task):
    item_name = "tok"
    monitor = "val_loss"

    # ---- model, tokenizer, optimizer -------------------------------------------------
    def build(self) -> None:
        c = self.config
        self.corpus, self.prepared = None, {}
        self.form = text.TextForm.of(c)  # lowercasing, Moses tokenization (sacremoses found?)
        if "tokenizer" in self.meta:
            self.tokenizer = text.tokenizer_from_json(self.meta["tokenizer"])  # checked before
        else:
            self.corpus = text.load_corpus(c, self.data_dir)
            sources, targets = self.prepared_split("train")
            self.tokenizer = text.train_tokenizer(sources + targets, c["vocab_size"],
                                                  c.get("bpe_merges", 0))
        vocabulary = {"vocab_size": self.tokenizer.get_vocab_size(), "pad_id": text.PAD}
        self.model = self.spec.build(c, vocabulary).to(self.device)
        self.modules = {"model": self.model}

    def build_optimizers(self) -> None:
        opt = make_optimizer(self.model.parameters(), {"lr": self.config["lr"]},
                             betas=(0.9, 0.98), eps=1e-9)
        self.optimizers = {"model": opt}
        self.schedule = Schedule(opt, self.config)
        self.schedulers = {"model": self.schedule.scheduler}

    def checkpoint_extra(self) -> dict[str, str]:
        return {"tokenizer": self.tokenizer.to_str()}

    @classmethod
    def check_checkpoint(cls, ckpt) -> None:
        """The tokenizer parses, and its vocabulary is the embedding's: the model is built
        from the vocabulary size, so a forged one could ask for gigabytes before the
        weights were found not to fit."""
        if "tokenizer" not in ckpt.meta:
            raise DlcliError(f"{ckpt.path}: a transformer checkpoint without its tokenizer")
        vocab = text.tokenizer_from_json(ckpt.meta["tokenizer"], ckpt.path).get_vocab_size()
        embedding = ckpt.tensors.get(f"model/model/{EMBEDDING}")
        rows = embedding.shape[0] if embedding is not None else None
        if rows is not None and vocab != rows:
            raise DlcliError(f"{ckpt.path}: its tokenizer has {vocab:,} tokens but tensor "
                             f"model/model/{EMBEDDING} has {rows:,} rows; the two do not belong "
                             "together")

    def translator(self):
        from dlcli.models.decoding import Translator

        return Translator(self.model, self.tokenizer, self.config["length_penalty"], self.form,
                          self.config["beam"])

    # ---- data ----------------------------------------------------------------------
    def setup_data(self) -> None:
        if self.corpus is None:
            self.corpus = text.load_corpus(self.config, self.data_dir)
        self.data_source = f"{self.corpus.source}; vocabulary {self.tokenizer.get_vocab_size():,}"
        self.splits = {}

    def data_sha256(self) -> str:
        return sha256_of(self.corpus.splits)

    def test_items(self) -> int:
        return len(self.corpus.splits["test"][0])

    def prepared_split(self, name: str) -> tuple[list[str], list[str]]:
        """A split's sentences lowercased and Moses-tokenized as the config asks."""
        if name not in self.prepared:
            sources, targets = self.corpus.splits[name]
            self.prepared[name] = (self.form.prepare(sources, "source"),
                                   self.form.prepare(targets, "target"))
        return self.prepared[name]

    def split(self, name: str) -> EncodedSplit:
        if name not in self.splits:
            sources, targets = self.prepared_split(name)
            self.splits[name] = EncodedSplit(self.tokenizer, sources, targets,
                                             self.config["max_len"], self.device)
        return self.splits[name]

    def epoch_batches(self, epoch: int) -> list[torch.Tensor]:
        train = self.split("train")
        seed = self.config["seed"]
        order = length_sorted(train, epoch_permutation(len(train), seed, epoch))
        batches = token_batches(train, self.config["batch_size"], order)
        shuffle = epoch_permutation(len(batches), seed + 1, epoch)  # buckets in random order
        return [batches[i] for i in shuffle.tolist()]

    def train_batches(self, epoch: int):
        batches = self.epoch_batches(epoch)
        if self.schedule.total_steps is None:
            # an epoch's batch count varies a little with the shuffle; epoch 0's stands in
            first = batches if epoch == 0 else self.epoch_batches(0)
            self.schedule.total_steps = len(first) * self.config["epochs"]
        return TokenBatches(self.split("train"), batches)

    def eval_batches(self, name: str) -> TokenBatches:
        split = self.split(name)
        batches = token_batches(split, self.config["batch_size"], length_sorted(split))
        return TokenBatches(split, batches)

    def batch_items(self, batch) -> int:
        src, tgt = batch
        return int((src != text.PAD).sum() + (tgt[:, 1:] != text.PAD).sum())

    # ---- training ------------------------------------------------------------------
    def train_step(self, batch) -> dict[str, float]:
        src, tgt = batch
        loss = self.model.loss(src, tgt[:, :-1], tgt[:, 1:], self.config["label_smoothing"])
        self.optimize(loss, self.optimizers["model"], self.config["clip_norm"])
        self.schedule.after_step()
        return {"loss": loss.item()}

    @torch.no_grad()
    def loss_on(self, name: str) -> dict[str, float]:
        """Per-token cross-entropy without label smoothing, and its perplexity."""
        total, tokens = 0.0, 0
        for src, tgt in self.eval_batches(name):
            n = int((tgt[:, 1:] != text.PAD).sum())
            total += self.model.loss(src, tgt[:, :-1], tgt[:, 1:]).item() * n
            tokens += n
        loss = total / max(tokens, 1)
        return {"loss": loss, "ppl": math.exp(min(loss, 50.0))}

    def scores(self, name: str, beam: int, all_scores: bool = False) -> dict:
        """Translate a split and score it against its references (translation_scores);
        all_scores: every score and its signature (evaluate), else the two that
        validation logs."""
        sources, references = self.corpus.splits[name]
        hyps = [h[0].text for h in self.translator().translate(sources, beam=beam)]
        self.last_example = (sources[0], hyps[0])
        if not all_scores:
            import sacrebleu

            return {"bleu": sacrebleu.corpus_bleu(hyps, [references]).score,
                    "exact_match": exact_match(hyps, references)}
        return translation_scores(hyps, references, self.config.get("target_lang", "en"),
                                  tokenized=self.config.get("dataset") == "multi30k"
                                  or bool(self.config.get("moses")))

    def validate(self) -> dict[str, float]:
        out = {f"val_{k}": v for k, v in self.loss_on("val").items()}
        if self.config["val_translate"]:
            scores = self.scores("val", beam=1)
            out.update(val_bleu=scores["bleu"], val_exact_match=scores["exact_match"])
        return out

    def end_of_epoch(self, epoch: int) -> dict:
        """No pictures: a translation of the first validation sentence instead (average_last
        snapshots and their average are the Checkpointer's)."""
        if getattr(self, "last_example", None):
            notice(f"  {self.last_example[0]}  ->  {self.last_example[1]}")
        return {}

    # ---- evaluation ----------------------------------------------------------------
    def evaluate(self, **options) -> dict:
        try:
            self.setup_eval_data()
        except DlcliError as e:
            moved = " (if it moved, pass --data with where it is now)" if self.config.get("data") else ""
            raise DlcliError(f"evaluate needs the training corpus: {e}{moved}") from None
        self.train_mode(False)
        if self.config.get("lowercase"):
            notice("this model writes lowercase (it learnt from lowercased text): the cased bleu "
                   "and chrf set its output against cased references; bleu_lowercase and "
                   "bleu_tokenized_lowercase are its figures")
        loss = self.loss_on("test")
        beam = self.config["beam"]
        return {**loss, **self.scores("test", beam, all_scores=True), "beam": beam,
                "sentences": len(self.corpus.splits["test"][0])}


def exact_match(hyps: list[str], references: list[str]) -> float:
    """The share of outputs identical to their reference."""
    return sum(h == r.strip() for h, r in zip(hyps, references)) / max(len(references), 1)


def translation_scores(hyps: list[str], references: list[str], lang: str,
                       tokenized: bool = True) -> dict:
    """The scores published translation figures use, side by side (detokenized output):

    bleu                      sacreBLEU, cased, its own 13a tokenization: the WMT standard
                              (Post, 2018); bleu_signature says exactly how it was computed
    bleu_lowercase            the same, lowercased (sacreBLEU -lc)
    bleu_tokenized_lowercase  Moses-tokenized and lowercased reference and output, then BLEU
                              with no further tokenization (tokenize='none'): what
                              multi-bleu.perl or fairseq `generate --remove-bpe` report on
                              the Multi30k papers' lowercased, tokenized text (e.g. Wu et
                              al., 2021, 41.02 en->de); None without sacremoses
    chrf                      chrF (Popovic, 2015), cased; chrf_signature
    exact_match               the share of outputs identical to their reference
    """
    import sacrebleu

    bleu = sacrebleu.metrics.BLEU()
    bleu_lc = sacrebleu.metrics.BLEU(lowercase=True)
    chrf = sacrebleu.metrics.CHRF()
    out = {"bleu": bleu.corpus_score(hyps, [references]).score,
           "bleu_signature": str(bleu.get_signature()),
           "bleu_lowercase": bleu_lc.corpus_score(hyps, [references]).score,
           "bleu_lowercase_signature": str(bleu_lc.get_signature()),
           "bleu_tokenized_lowercase": None,
           "chrf": chrf.corpus_score(hyps, [references]).score,
           "chrf_signature": str(chrf.get_signature()),
           "exact_match": exact_match(hyps, references)}
    if tokenized:
        try:
            prepared = [[s.lower() for s in text.moses_tokenized(side, lang)]
                        for side in (hyps, references)]
        except DlcliError:
            notice("bleu_tokenized_lowercase needs sacremoses: pip install 'dlcli[moses]'")
        else:
            plain = sacrebleu.metrics.BLEU(tokenize="none", force=True)
            out["bleu_tokenized_lowercase"] = plain.corpus_score(prepared[0], [prepared[1]]).score
    return out
