"""What the Multi30k tiny-Transformer recipe needs (issue #17): separate dropouts, fairseq's
inverse-sqrt schedule, BPE merges, lowercased Moses-tokenized text, checkpoint averaging by
update, the papers' scores side by side, and the presets that put them together."""

from __future__ import annotations

import json
import sys

import pytest
import torch
import torch.nn.functional as F

from dlcli.config import config_against_schema, resolve_config, validate_preset
from dlcli.data import text
from dlcli.errors import DlcliError
from dlcli.models.transformer import Transformer
from dlcli.optim import Schedule
from dlcli.tasks.seq2seq import translation_scores

PAIRS = [("Ein Mann, der einen Hut trägt.", "A man wearing a hat."),
         ("Zwei Hunde spielen im Schnee.", "Two dogs play in the snow."),
         ("Eine Frau liest \"Die Zeit\".", "A woman reads \"Die Zeit\"."),
         ("Kinder laufen am Strand.", "Children run on the beach.")] * 10


# ---- keys ------------------------------------------------------------------------------

def test_dropouts_apply_where_each_key_says():
    model = Transformer(50, d_model=16, heads=2, encoder_layers=1, decoder_layers=1, d_ff=32,
                        dropout=0.3, attention_dropout=0.0, activation_dropout=0.1)
    enc, dec = model.encoder[0], model.decoder[0]
    assert enc.res1.dropout.p == dec.res3.dropout.p == model.dropout.p == 0.3
    assert enc.self_attn.dropout == dec.cross_attn.dropout == 0.0
    assert enc.ffn.dropout.p == dec.ffn.dropout.p == 0.1
    same = Transformer(50, d_model=16, heads=2, encoder_layers=1, decoder_layers=1, d_ff=32,
                       dropout=0.2)  # not given: the one rate of the paper everywhere
    assert same.decoder[0].self_attn.dropout == same.encoder[0].ffn.dropout.p == 0.2


@pytest.mark.parametrize("setting, message", [
    ("attention_dropout=1.5", r"attention_dropout must be in \[0, 1\)"),
    ("activation_dropout=abc", "'activation_dropout': 'abc' is not a number"),
    ("average_last=-1", "average_last must be 0 or more"),
    ("average_every=2.5", "expected int"),
    ("bpe_merges=-3", "bpe_merges must be 0 or more"),
    ("schedule=inverse-sqrt", None),  # checked where the schedule is made
])
def test_bad_values_are_one_line_errors(setting, message):
    if message is None:
        config = resolve_config("transformer", None, [setting])
        with pytest.raises(DlcliError, match="unknown schedule 'inverse-sqrt'.*inverse_sqrt"):
            Schedule(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0), config)
        return
    with pytest.raises(DlcliError, match=message):
        resolve_config("transformer", None, [setting])


def test_keep_epochs_still_means_average_last():
    assert resolve_config("transformer", None, ["keep_epochs=4"])["average_last"] == 4
    # a checkpoint written before the new keys reads as what it was trained with
    old = {k: v for k, v in resolve_config("transformer").items()
           if k not in ("attention_dropout", "activation_dropout", "lowercase", "moses",
                        "bpe_merges", "average_last", "average_every")}
    checked = config_against_schema("transformer", {**old, "keep_epochs": 3})
    assert checked["average_last"] == 3 and checked["average_every"] == 0
    assert checked["attention_dropout"] is None and checked["moses"] is False


def fairseq_inverse_sqrt(lr: float, warmup: int, num_updates: int) -> float:
    """fairseq/optim/lr_scheduler/inverse_square_root_schedule.py, --warmup-init-lr 0."""
    if num_updates < warmup:
        return 0 + num_updates * (lr - 0) / warmup
    return lr * warmup ** 0.5 * num_updates ** -0.5


def test_inverse_sqrt_is_fairseqs_schedule():
    weight = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([weight], lr=0.005)
    schedule = Schedule(optimizer, {"schedule": "inverse_sqrt", "warmup": 2000})
    seen = {}
    for update in range(8001):  # the lr the update after `update` updates is taken at
        seen[update] = optimizer.param_groups[0]["lr"]
        optimizer.step()
        schedule.after_step()
    for n in (0, 1, 1000, 1999, 2000, 2001, 4500, 8000):
        assert seen[n] == pytest.approx(fairseq_inverse_sqrt(0.005, 2000, n), abs=1e-12)
    assert max(seen.values()) == pytest.approx(0.005)


def test_label_smoothing_is_fairseqs():
    """fairseq's label_smoothed_nll_loss: (1 - eps) nll + eps / V * sum(-log p), which is
    what the model's loss (torch's label_smoothing) computes."""
    torch.manual_seed(0)
    model = Transformer(30, d_model=16, heads=2, encoder_layers=1, decoder_layers=1, d_ff=32,
                        dropout=0.0)
    src, tgt = torch.randint(4, 30, (3, 5)), torch.randint(4, 30, (3, 6))
    logp = model(src, tgt[:, :-1]).log_softmax(-1).flatten(0, 1)
    gold = tgt[:, 1:].flatten()
    nll = -logp.gather(1, gold[:, None]).squeeze(1)
    fairseq = (0.9 * nll + 0.1 / logp.shape[-1] * -logp.sum(-1)).mean()
    assert model.loss(src, tgt[:, :-1], tgt[:, 1:], 0.1).item() == pytest.approx(fairseq.item(), rel=1e-5)


@pytest.mark.parametrize("rows", [1, 4, 256])
def test_training_loss_takes_the_projection_in_blocks_with_the_same_gradients(rows):
    """ProjectedCrossEntropy gives the loss and gradients of the whole logits' cross-entropy,
    however the rows split into blocks; under bf16 autocast, within bfloat16's rounding."""
    from dlcli.models.transformer import ProjectedCrossEntropy

    torch.manual_seed(0)
    states, weight = torch.randn(13, 8, requires_grad=True), torch.randn(50, 8, requires_grad=True)
    target = torch.randint(0, 50, (13,))
    whole = F.cross_entropy(states @ weight.t(), target, label_smoothing=0.1)
    expected = torch.autograd.grad(whole, (states, weight))
    for dtype, tolerance in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
        loss = ProjectedCrossEntropy.apply(states, weight, target, 0.1, dtype, rows)
        got = torch.autograd.grad(2 * loss, (states, weight))  # the outer gradient scales
        assert loss.item() == pytest.approx(whole.item(), rel=tolerance)
        for g, e in zip(got, expected):
            assert torch.allclose(g, 2 * e, rtol=tolerance, atol=tolerance * e.abs().max())


def test_bpe_merges_counts_merges_not_tokens():
    texts = [s for pair in PAIRS for s in pair]
    tok = text.train_tokenizer(texts, vocab_size=1000, merges=30)
    assert text.merge_count(tok) == 30
    alphabet = text.train_tokenizer(texts, vocab_size=1).get_vocab_size()
    assert tok.get_vocab_size() == alphabet + 30


# ---- text form: lowercase, Moses ---------------------------------------------------------

def test_text_form_prepares_and_finishes_like_moses():
    pytest.importorskip("sacremoses")
    form = text.TextForm(lowercase=True, moses=True, source_lang="de", target_lang="en")
    assert form.prepare(["Ein Mann, der \"Die Zeit\" liest."]) == \
        ['ein mann , der " die zeit " liest .']
    assert form.prepare(["A Man's hat."], "target") == ["a man 's hat ."]
    assert form.finish(['a man , reading " die zeit " .']) == ['a man, reading "die zeit".']
    plain = text.TextForm()
    assert plain.plain and plain.prepare(["A, B."]) == ["A, B."] and plain.finish(["a ,"]) == ["a ,"]


def test_moses_without_sacremoses_is_a_one_line_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "sacremoses", None)  # import fails as if not installed
    with pytest.raises(DlcliError, match=r"^moses: true needs the sacremoses package: pip install "
                       r"'dlcli\[moses\]' \(or set moses: false\)$"):
        text.TextForm(moses=True)
    scores = translation_scores(["a b c d"], ["a b c d"], "en")
    assert scores["bleu_tokenized_lowercase"] is None and scores["bleu"] == pytest.approx(100)


# ---- scores --------------------------------------------------------------------------------

def test_scores_side_by_side_with_signatures():
    pytest.importorskip("sacremoses")
    import sacrebleu

    refs = ["A man, wearing a red hat, walks down the street.",
            "Two dogs are playing in the snow.", "The woman's bag is blue."]
    hyps = ["a man, wearing a red hat walks down a street.",
            "Two dogs are playing in the snow.", "The woman 's bag is blue ."]
    s = translation_scores(hyps, refs, "en")
    assert s["bleu_lowercase"] > s["bleu"]  # "a man" counts only lowercased
    assert "case:mixed" in s["bleu_signature"] and "tok:13a" in s["bleu_signature"]
    assert "case:lc" in s["bleu_lowercase_signature"] and "nc:6|nw:0" in s["chrf_signature"]
    assert s["exact_match"] == pytest.approx(1 / 3)
    # the papers' figure: Moses-tokenize both sides, lowercase, no further tokenization
    tokenize = sacremoses_tokenize("en")
    expected = sacrebleu.corpus_bleu([tokenize(h).lower() for h in hyps],
                                     [[tokenize(r).lower() for r in refs]], tokenize="none")
    assert s["bleu_tokenized_lowercase"] == pytest.approx(expected.score)
    assert s["bleu_tokenized_lowercase"] != pytest.approx(s["bleu_lowercase"])


def sacremoses_tokenize(lang):
    from sacremoses import MosesTokenizer

    return lambda s: MosesTokenizer(lang).tokenize(s, escape=False, return_str=True)


# ---- presets -----------------------------------------------------------------------------

@pytest.mark.parametrize("direction", ["en-de", "de-en"])
def test_tiny_presets_are_the_published_model_on_a_45_minute_schedule(direction):
    from dlcli.config import PRESET_DIR

    path = PRESET_DIR / f"transformer-multi30k-{direction}-tiny.yaml"
    model, c = validate_preset(path)
    assert model == "transformer" and f"{c['source_lang']}-{c['target_lang']}" == direction
    recipe = {"d_model": 128, "heads": 4, "encoder_layers": 4, "decoder_layers": 4, "d_ff": 256,
              "attention_dropout": 0.0, "activation_dropout": 0.0,
              "tie_embeddings": True, "pre_norm": False, "label_smoothing": 0.1, "lr": 0.005,
              "beam": 5, "average_last": 10, "average_every": 0, "lowercase": True,
              "moses": True, "bpe_merges": 10000}
    assert {k: c[k] for k in recipe} == recipe
    assert c["dropout"] < 0.3  # fewer epochs than the recipe's need less regularisation
    # fairseq's --lenpen 1 divides by L; ((5 + L) / 6)^alpha grows about as fast at
    # Multi30k's lengths: d log penalty / d log L = alpha * L / (5 + L), near 1
    assert all(0.95 < c["length_penalty"] * n / (5 + n) < 1.1 for n in (15, 16, 17))
    # the overrides its comments give bring back the recipe's own schedule and dropout
    overrides = "--precision 32 --epochs 120 --set batch_size=16384 --set schedule=inverse_sqrt " \
                "--set warmup=2000 --set dropout=0.3"
    assert overrides in " ".join(line.lstrip("# ") for line in path.read_text().splitlines())
    sets = [option.strip().replace(" ", "=", 1)  # "--epochs 120" -> "epochs=120"
            for option in overrides.replace("--set ", "--").split("--")[1:]]
    paper = resolve_config("transformer", f"transformer-multi30k-{direction}-tiny", sets)
    assert {k: paper[k] for k in recipe} == recipe and paper["dropout"] == 0.3


# ---- end to end: averaging by update, the text form inside a checkpoint ------------------

@pytest.mark.usefixtures("one_thread")
def test_average_every_keeps_and_averages_the_last_updates(tmp_path, capsys):
    pytest.importorskip("sacremoses")
    from dlcli.checkpoint import load_checkpoint
    from dlcli.models.decoding import Translator
    from dlcli.registry import get_spec
    from dlcli.train import train

    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("".join(f"{a}\t{b}\n" for a, b in PAIRS), encoding="utf-8")
    config = resolve_config("transformer", None, [
        f"data=[{tsv}]", "d_model=16", "heads=2", "encoder_layers=1", "decoder_layers=1",
        "d_ff=32", "val_translate=false", "batch_size=200", "epochs=2", "average_last=3",
        "average_every=2", "lowercase=true", "moses=true", "bpe_merges=40", "val_size=4",
        "schedule=inverse_sqrt", "warmup=4", "lr=0.01", "checkpoint_every=0"])
    spec = get_spec("transformer")
    train(spec, config, device="cpu", run_dir=tmp_path / "run", data_dir=tmp_path)
    run = tmp_path / "run"
    steps = load_checkpoint(run / "last.safetensors", tensors=False).step
    kept = sorted(p.name for p in run.glob("update-*.safetensors"))
    wanted = [f"update-{n:07d}.safetensors" for n in range(2, steps + 1, 2)][-3:]
    assert steps >= 6 and kept == wanted
    assert not list(run.glob("epoch-*.safetensors"))
    averaged = load_checkpoint(run / "averaged.safetensors")
    assert [p.rsplit("/", 1)[-1] for p in json.loads(averaged.meta["averaged_from"])] == wanted
    assert averaged.data_dir() == str(tmp_path.absolute())  # evaluate finds the run's data
    # the checkpoint's config carries the text form: input is lowercased and tokenized
    # before the BPE (every token it knows is lowercase), output detokenized
    task = spec.load_task().from_checkpoint(spec, averaged, torch.device("cpu"))
    translator = task.translator()
    assert isinstance(translator, Translator) and translator.form.moses
    assert translator.encode_sources(["EIN MANN."]) == translator.encode_sources(["ein mann ."])
    out = translator.translate(["Ein Mann, der einen Hut trägt."], beam=2)[0][0].text
    assert out == out.lower()
    # evaluate says that such a model's cased scores set lowercase against cased references
    capsys.readouterr()
    scores = task.evaluate()
    assert scores["bleu_lowercase"] >= scores["bleu"]
    assert "writes lowercase" in capsys.readouterr().err
