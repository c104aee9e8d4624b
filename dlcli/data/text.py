"""Parallel text: the generated `numbers` corpus, Multi30k, a user's own files; the tokenizer.

A corpus is three splits of aligned (source, target) sentence lists. The tokenizer is a
joint subword BPE (one vocabulary for both languages, so embeddings can be tied) trained
on the training split with the `tokenizers` library; it travels inside the checkpoint as
its JSON string. Pre-tokenization marks word starts with "▁" (as SentencePiece does), so
decoding gives back the exact spacing: no "@@", no stray space before punctuation.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from dlcli.console import notice
from dlcli.errors import DlcliError

PAD, UNK, BOS, EOS = 0, 1, 2, 3
SPECIALS = ["<pad>", "<unk>", "<s>", "</s>"]
SPLITS = ("train", "val", "test")


@dataclass
class Corpus:
    name: str
    splits: dict[str, tuple[list[str], list[str]]]  # split -> (sources, targets)
    source: str  # where it came from, for the log


# ---- numbers: digits -> English words, generated ---------------------------------------
# "66,417" -> "sixty-six thousand four hundred seventeen". The thousands separator is what a
# reader relies on too: it tells which digit is a hundred without counting from the end.

ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen "
        "fourteen fifteen sixteen seventeen eighteen nineteen").split()
TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_words(n: int) -> str:
    """342017 -> 'three hundred forty-two thousand seventeen' (0 <= n < 10**6)."""
    if n < 20:
        return ONES[n]
    if n < 100:
        return TENS[n // 10] + ("" if n % 10 == 0 else "-" + ONES[n % 10])
    if n < 1000:
        rest = n % 100
        return ONES[n // 100] + " hundred" + (" " + number_words(rest) if rest else "")
    rest = n % 1000
    return number_words(n // 1000) + " thousand" + (" " + number_words(rest) if rest else "")


def numbers_corpus(train_size: int, val_size: int = 500, test_size: int = 1000) -> Corpus:
    """Distinct numbers below a million (as many of each digit count as there are), so no
    test number is ever seen in training. The corpus does not depend on the training seed."""
    rng = random.Random(20171206)
    picked, total = set(), train_size + val_size + test_size
    while len(picked) < total:
        digits = rng.randint(1, 6)
        picked.add(rng.randrange(10 ** (digits - 1) if digits > 1 else 0, 10 ** digits))
    values = sorted(picked)
    rng.shuffle(values)
    cuts = {"test": values[:test_size], "val": values[test_size:test_size + val_size],
            "train": values[test_size + val_size:]}
    splits = {k: ([f"{n:,}" for n in v], [number_words(n) for n in v]) for k, v in cuts.items()}
    return Corpus("numbers", splits, f"generated, {train_size:,} training pairs")


# ---- Multi30k ----------------------------------------------------------------------------

MULTI30K_FILES = {"train": "train", "val": "val", "test": "test_2016_flickr"}
MULTI30K_LANGS = ("de", "en", "fr")
MULTI30K_URL = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw/"
MULTI30K_SHA256 = {  # of the decompressed files
    "test_2016_flickr.de": "4be6b5b3236b79c25475c6bb829800a7ce559e9ba7a1f6c2394fe4d40be46d16",
    "test_2016_flickr.en": "399a4382932c1aadd3ceb9bef1008d388a64c76d4ae4e9d4728c6f4301cac182",
    "test_2016_flickr.fr": "cb3160d69b002bb638e66cc7612fcd56cb0af82eadc9c142dedc438afb885ef6",
    "train.de": "2c2b73fd2b548fbcde3a875e0a78d6ee94d498bfdee6bd3eae3945779e9ddf72",
    "train.en": "460a15fbd157e34a7a9957ee388c1ca247fe47af3ef25fb50442af6c274e0fc6",
    "train.fr": "5925a3c18f1587b6b54b87743106e6e8ab93618edb6f65d19eac0621f853a10d",
    "val.de": "660e09eb7e1da2f856ea13ee5ad3cf6d36b3d5b0b733c857e94c5747a3dfc660",
    "val.en": "1f2a23d992769b5b3d209b0a10dd0b77c08cceb1f20dfb97ed0aafa49d107227",
    "val.fr": "5304e444d842e962b2dda4d816b70b22a1765b15401642b7ca37a67477e708dc",
}


def _read_text(path: Path) -> list[str]:
    from dlcli.data.files import read_maybe_gzip

    raw = read_maybe_gzip(path)
    return raw.decode("utf-8", errors="replace").splitlines()


def _multi30k_folder(folder: Path, langs) -> dict | None:
    files = {}
    for stem in MULTI30K_FILES.values():
        for lang in langs:
            found = [folder / f"{stem}.{lang}{ext}" for ext in (".gz", "")]
            found = [p for p in found if p.is_file()]
            if not found:
                return None
            files[f"{stem}.{lang}"] = found[0]
    return files


def _download_multi30k(target: Path, langs) -> bool:
    from dlcli.data.files import fetch, keep_verified

    try:
        for stem in MULTI30K_FILES.values():
            for lang in langs:
                name = f"{stem}.{lang}"
                keep_verified(fetch(MULTI30K_URL + name + ".gz", name), target, name,
                              MULTI30K_SHA256[name])
        return True
    except (OSError, EOFError) as e:
        notice(f"download of Multi30k failed: {e}")
        return False


def multi30k_corpus(src: str, tgt: str, data_dir=None) -> Corpus:
    from dlcli.data.files import cache_dir, candidate_dirs, downloads_allowed

    for lang in (src, tgt):
        if lang not in MULTI30K_LANGS:
            raise DlcliError(f"Multi30k has no language {lang!r}; choose one of: "
                             + ", ".join(MULTI30K_LANGS))
    if src == tgt:
        raise DlcliError(f"source and target language are both {src!r}")
    files, where = None, ""
    for label, folder in candidate_dirs("multi30k", data_dir):
        files = _multi30k_folder(folder, (src, tgt))
        if files:
            where = f"{folder} ({label})"
            break
    if files is None:
        target = cache_dir() / "multi30k"
        if not (downloads_allowed() and _download_multi30k(target, (src, tgt))):
            searched = f"not in --data-dir {data_dir}/multi30k, " if data_dir else ""
            raise DlcliError(f"Multi30k not found ({searched}not in the cache, no download): "
                             f"put its files (train.{src}.gz, ...) in {target} or pass "
                             "--data-dir DIR (a folder with multi30k/ inside)")
        files, where = _multi30k_folder(target, (src, tgt)), f"{target} (downloaded)"
    splits = {}
    for split, stem in MULTI30K_FILES.items():
        a, b = (_read_text(files[f"{stem}.{lang}"]) for lang in (src, tgt))
        check_aligned(a, b, str(files[f"{stem}.{src}"]), str(files[f"{stem}.{tgt}"]))
        splits[split] = (a, b)
    return Corpus(f"multi30k {src}-{tgt}", splits, where)


# ---- a user's own parallel text ------------------------------------------------------------

def check_aligned(sources, targets, source_name: str, target_name: str) -> None:
    if len(sources) != len(targets):
        raise DlcliError(f"misaligned corpus: {source_name} has {len(sources):,} lines but "
                         f"{target_name} has {len(targets):,}; they must pair line by line")


def user_corpus(paths: list[str], val_size: int, seed: int) -> Corpus:
    """--data FILE.tsv (source<TAB>target) or --data SRC --data TGT (aligned lines).
    A shuffled `val_size` pairs are held out; they serve as validation and test split."""
    for p in paths:
        if not Path(p).is_file():
            raise DlcliError(f"--data {p}: no such file")
    if len(paths) == 1:
        sources, targets = [], []
        for i, line in enumerate(_read_text(Path(paths[0])), 1):
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) != 2:
                raise DlcliError(f"{paths[0]}, line {i}: expected source<TAB>target, found "
                                 f"{len(parts) - 1} tab(s)")
            sources.append(parts[0].strip())
            targets.append(parts[1].strip())
    elif len(paths) == 2:
        sources, targets = (_read_text(Path(p)) for p in paths)
        check_aligned(sources, targets, paths[0], paths[1])
    else:
        raise DlcliError(f"--data takes one TSV file or two aligned files, got {len(paths)}")
    if len(sources) < 2:
        raise DlcliError(f"{paths[0]}: too few sentence pairs to train on ({len(sources)})")
    order = list(range(len(sources)))
    random.Random(seed).shuffle(order)
    held = max(1, min(val_size, len(order) // 10))  # validation needs one pair at least
    pick = lambda idx: ([sources[i] for i in idx], [targets[i] for i in idx])  # noqa: E731
    val = pick(order[:held])
    splits = {"train": pick(order[held:]), "val": val, "test": val}
    return Corpus("own text", splits, " + ".join(paths))


def load_corpus(config: dict, data_dir=None) -> Corpus:
    if config.get("data"):
        return user_corpus(list(config["data"]), config["val_size"], config["seed"])
    name = config["dataset"]
    if name == "numbers":
        return numbers_corpus(config["train_size"])
    if name == "multi30k":
        return multi30k_corpus(config["source_lang"], config["target_lang"], data_dir)
    raise DlcliError(f"unknown text dataset {name!r}; choose one of: numbers, multi30k "
                     "(or --data FILE.tsv)")


# ---- tokenizer ---------------------------------------------------------------------------

def train_tokenizer(texts, vocab_size: int, merges: int = 0):
    """A joint BPE over both languages. Digits are split one by one (numbers generalise).

    merges > 0 asks for that many merge operations instead of a vocabulary size, as
    subword-nmt's `learn_bpe.py -s N` (the Multi30k papers' "10,000 merges"): the
    vocabulary is then the specials, the alphabet of the text and one token per merge."""
    if merges:
        alphabet = _new_tokenizer(texts, 1).get_vocab_size()  # specials + characters only
        return _new_tokenizer(texts, alphabet + merges)
    return _new_tokenizer(texts, vocab_size)


def _new_tokenizer(texts, vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(), pre_tokenizers.Punctuation(),
        pre_tokenizers.Digits(individual_digits=True)])
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return tok


def merge_count(tokenizer) -> int:
    """How many BPE merges the tokenizer holds."""
    import json

    return len(json.loads(tokenizer.to_str())["model"]["merges"])


def tokenizer_from_json(text: str, source="the checkpoint"):
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_str(text)
    except Exception as e:  # noqa: BLE001 -- the Rust parser raises a plain Exception
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DlcliError(f"{source}: its tokenizer is not a valid tokenizer ({first})") from None


def encode(tokenizer, sentences: list[str]) -> list[list[int]]:
    return [e.ids for e in tokenizer.encode_batch(sentences, add_special_tokens=False)]


def decode(tokenizer, ids_list) -> list[str]:
    """Token ids -> text; a skipped <unk> leaves no double space behind."""
    return [" ".join(text.split()) for text in tokenizer.decode_batch(ids_list)]


# ---- text as the model sees it: lowercased, Moses-tokenized -----------------------------

def _sacremoses():
    try:
        import sacremoses
    except ImportError:
        raise DlcliError("moses: true needs the sacremoses package: pip install 'dlcli[moses]' "
                         "(or set moses: false)") from None
    return sacremoses


class TextForm:
    """How sentences are prepared before BPE, and translations finished after it.

    The Multi30k papers train on lowercased, Moses-tokenized text ("a man , in a hat .")
    and score that form. `lowercase` and `moses` (config keys) do the same to the training
    text, to each sentence `translate` gets, and undo the tokenization of the output with
    Moses' detokenizer, so that what comes out is ordinary text (lowercased, if trained so).
    Moses escaping (&quot;) is off: the BPE sees the characters themselves. The tokenizer
    stored in a checkpoint is the BPE alone; these two keys travel in its config."""

    def __init__(self, lowercase: bool = False, moses: bool = False, source_lang: str = "de",
                 target_lang: str = "en"):
        self.lowercase, self.moses = lowercase, moses
        self.langs = {"source": source_lang, "target": target_lang}
        self.tokenizers, self.detokenizer = {}, None
        if moses:
            sacremoses = _sacremoses()
            self.tokenizers = {side: sacremoses.MosesTokenizer(lang)
                               for side, lang in self.langs.items()}
            self.detokenizer = sacremoses.MosesDetokenizer(target_lang)

    @classmethod
    def of(cls, config: dict) -> "TextForm":
        return cls(bool(config.get("lowercase")), bool(config.get("moses")),
                   config.get("source_lang", "de"), config.get("target_lang", "en"))

    @property
    def plain(self) -> bool:
        return not (self.lowercase or self.moses)

    def prepare(self, sentences: list[str], side: str = "source") -> list[str]:
        """Sentences of one side ("source" or "target") in the form the BPE was trained on."""
        if self.plain:
            return sentences
        out = sentences
        if self.moses:
            tokenizer = self.tokenizers[side]
            out = [tokenizer.tokenize(s, escape=False, return_str=True) for s in out]
        return [s.lower() for s in out] if self.lowercase else out

    def finish(self, sentences: list[str]) -> list[str]:
        """Translations back to ordinary text: Moses-detokenized when trained tokenized."""
        if not self.moses:
            return sentences
        return [self.detokenizer.detokenize(s.split()) for s in sentences]


def moses_tokenized(sentences: list[str], lang: str) -> list[str]:
    """Moses tokenization of `lang` (no escaping), as the Multi30k papers score."""
    return TextForm(moses=True, source_lang=lang).prepare(sentences, "source")
