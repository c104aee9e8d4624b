"""The Transformer: masks, positions, cache, tokenizer, a copy task, checkpoints, corpora."""

from __future__ import annotations

import math

import pytest
import torch

from dlcli.data import text
from dlcli.models.transformer import (
    CPU_SHORT_KEYS,
    Dropout,
    Transformer,
    attend,
    drop,
    sinusoidal_positions,
    softmax_over_keys,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(vocab=20, tie=True, **kw):
    torch.manual_seed(0)
    return Transformer(vocab, d_model=32, heads=4, encoder_layers=2, decoder_layers=2, d_ff=64,
                       dropout=0.0, tie_embeddings=tie, max_positions=64, **kw).eval()


def test_positional_encoding_values():
    pe = sinusoidal_positions(50, 16)
    assert pe.shape == (50, 16)
    assert torch.allclose(pe[0, 0::2], torch.zeros(8))
    assert torch.allclose(pe[0, 1::2], torch.ones(8))
    for pos, i in [(1, 0), (7, 3), (49, 7), (20, 5)]:
        angle = pos / 10000 ** (2 * i / 16)
        assert pe[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-5)
        assert pe[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_zeroes_p_and_keeps_the_mean(dtype):
    torch.manual_seed(0)
    layer = Dropout(0.3).train()
    x = torch.full((400, 500), 2.0, dtype=dtype, requires_grad=True)
    y = layer(x)
    assert y.dtype == dtype
    dropped = (y == 0).float().mean().item()
    assert dropped == pytest.approx(0.3, abs=0.01)
    kept = y[y != 0].float()
    assert torch.allclose(kept, torch.full_like(kept, 2 / 0.7), rtol=1e-2)
    y.float().sum().backward()  # the gradient goes through the kept elements, scaled alike
    assert torch.equal(x.grad == 0, y == 0)
    assert torch.allclose(x.grad[y != 0].float(), torch.full_like(kept, 1 / 0.7), rtol=1e-2)
    assert layer.eval()(x) is x


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_masks_are_unbiased_in_every_lane(p):
    """Each 64-bit random word masks four elements; every one of the four is dropped with
    probability p (a word's sign bit is always 0, so a lane that used it would drop less)."""
    torch.manual_seed(0)
    dropped = drop(torch.ones(250_000, 4), p) == 0
    assert dropped.float().mean(0).tolist() == pytest.approx([p] * 4, abs=0.005)


def test_dropout_masks_drop_neighbours_and_successive_calls_independently():
    """Elements that share a random word (1 apart), lie in the next word (4) or the next
    row (128), and the same element in the next call, are each dropped together with
    probability p^2, as independent draws are."""
    torch.manual_seed(0)
    p, x = 0.2, torch.ones(1_000_000)
    first, second = (drop(x, p) == 0).float(), (drop(x, p) == 0).float()
    pairs = {f"{gap} apart": (first[:-gap] * first[gap:]).mean().item() for gap in (1, 4, 128)}
    pairs["next call"] = (first * second).mean().item()
    assert pairs == pytest.approx(dict.fromkeys(pairs, p * p), abs=0.0015)


@pytest.mark.parametrize("keys", [1, 5, 15, 16, 17, 40])  # padded to 16 on a CPU below 16
def test_softmax_over_keys_is_softmax(keys):
    torch.manual_seed(0)
    scores = torch.randn(3, 2, 6, keys).masked_fill(torch.rand(3, 2, 6, keys) < 0.3, -math.inf)
    scores[..., 0] = 1.0  # every row keeps a key
    scores.requires_grad_()
    expected = scores.detach().softmax(-1)
    weights = softmax_over_keys(scores)
    assert weights.shape == expected.shape
    assert torch.allclose(weights, expected, atol=1e-6)
    upstream = torch.randn_like(expected)
    (weights * upstream).sum().backward()
    leaf = scores.detach().requires_grad_()
    (leaf.softmax(-1) * upstream).sum().backward()
    assert torch.allclose(scores.grad, leaf.grad, atol=1e-6)


@pytest.mark.parametrize("keys", [7, CPU_SHORT_KEYS + 9])  # spelled out; fused kernel
@pytest.mark.parametrize("causal", [False, True])
def test_attention_equals_the_fused_kernel(keys, causal):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, keys, 8) for _ in range(3))
    mask = torch.rand(2, 1, 1, keys) > 0.3
    mask[..., 0] = True
    expected = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=None if causal else mask, is_causal=causal)
    y = attend(q, k, v, None if causal else mask, causal, 0.0)
    assert torch.allclose(y, expected, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 products, float32 softmax
        y = attend(q.bfloat16(), k.bfloat16(), v.bfloat16(), None if causal else mask,
                   causal, 0.0)
    assert torch.allclose(y.float(), expected, atol=0.05)
    if keys > CPU_SHORT_KEYS:  # the fused kernel's bf16 backward pass is slow on a CPU
        assert y.dtype == torch.float32


def test_attention_dropout_drops_weights_and_keeps_their_mean():
    torch.manual_seed(0)
    q, k = torch.zeros(1, 1, 4000, 8), torch.zeros(1, 1, 10, 8)  # every weight 1/10
    v = torch.ones(1, 1, 10, 8)
    y = attend(q, k, v, None, False, 0.5)
    assert y.mean().item() == pytest.approx(1.0, abs=0.02)  # 1/(1-p) makes up for the drops
    assert y[..., 0].std().item() > 0.2  # ...which differ from query to query


@pytest.mark.parametrize("pre_norm", [False, True])
def test_future_tokens_cannot_change_earlier_outputs(pre_norm):
    model = tiny_model(pre_norm=pre_norm)
    src = torch.randint(4, 20, (3, 9))
    tgt = torch.randint(4, 20, (3, 10))
    changed = tgt.clone()
    changed[:, 6:] = torch.randint(4, 20, (3, 4))
    with torch.no_grad():
        a, b = model(src, tgt), model(src, changed)
    assert torch.allclose(a[:, :6], b[:, :6], atol=1e-5)
    assert not torch.allclose(a[:, 6:], b[:, 6:], atol=1e-3)  # later ones do see them


def test_source_padding_is_invisible():
    model = tiny_model()
    src = torch.randint(4, 20, (2, 7))
    tgt = torch.randint(4, 20, (2, 5))
    padded = torch.cat([src, torch.full((2, 4), text.PAD)], 1)
    with torch.no_grad():
        assert torch.allclose(model(src, tgt), model(padded, tgt), atol=1e-5)


def test_cached_decoding_matches_full_decoder():
    model = tiny_model()
    src = torch.randint(4, 20, (2, 6))
    tgt = torch.randint(4, 20, (2, 7))
    with torch.no_grad():
        full = model(src, tgt)
        memory, mask = model.encode(src)
        cache = model.new_cache()
        steps = [model.generator(model.decode(tgt[:, t:t + 1], memory, mask, cache, offset=t))
                 for t in range(tgt.shape[1])]
    assert torch.allclose(full, torch.cat(steps, 1), atol=1e-5)


def test_tokenizer_round_trip_is_clean():
    sentences = ["A man, in a blue shirt, is standing on a ladder.",
                 "Zwei Männer (im Freien) sagen: \"Hallo!\"", "It's 1,234 km -- isn't it?"] * 20
    tok = text.train_tokenizer(sentences, 200)
    ids = text.encode(tok, sentences[:3])
    assert text.decode(tok, ids) == sentences[:3]  # no "@@", no space before punctuation
    assert all(len(row) > 3 for row in ids)
    restored = text.tokenizer_from_json(tok.to_str())
    assert text.encode(restored, sentences[:3]) == ids
    # a character never seen in training does not break decoding
    assert text.decode(tok, text.encode(tok, ["a man ☃ stands"])) == ["a man stands"]


def test_numbers_corpus_keeps_test_out_of_training():
    corpus = text.numbers_corpus(3000, val_size=100, test_size=200)
    train, test = corpus.splits["train"], corpus.splits["test"]
    assert len(train[0]) == 3000 and len(test[0]) == 200
    assert not set(train[0]) & set(test[0])
    assert text.number_words(342017) == "three hundred forty-two thousand seventeen"
    assert text.number_words(90) == "ninety" and text.number_words(100000) == "one hundred thousand"


def test_tiny_model_learns_to_copy():
    from dlcli.models.decoding import beam_search, greedy
    from dlcli.optim import Schedule

    torch.manual_seed(0)
    vocab = 14
    model = Transformer(vocab, d_model=64, heads=4, encoder_layers=2, decoder_layers=2, d_ff=128,
                        dropout=0.0, max_positions=16)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, betas=(0.9, 0.98), eps=1e-9)
    sched = Schedule(opt, {"schedule": "noam", "warmup": 50})

    def batch(n):
        body = torch.randint(4, vocab, (n, 6))
        src = torch.cat([body, torch.full((n, 1), text.EOS)], 1)
        tgt = torch.cat([torch.full((n, 1), text.BOS), src], 1)
        return src, tgt

    for _ in range(300):
        src, tgt = batch(64)
        loss = model.loss(src, tgt[:, :-1], tgt[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.after_step()
    model.eval()
    src, _ = batch(100)
    want = src[:, :-1].tolist()
    got = [h[0].ids for h in greedy(model, src, 10, 0.6)]
    assert sum(g == w for g, w in zip(got, want)) >= 95
    got = [h[0].ids for h in beam_search(model, src, 3, 10, 0.6)]
    assert sum(g == w for g, w in zip(got, want)) >= 95


def test_tied_embedding_checkpoint_round_trip(tmp_path):
    from dlcli.checkpoint import load_checkpoint, save_checkpoint

    model = tiny_model(tie=True)
    assert model.generator.weight is model.src_embed.weight is model.tgt_embed.weight
    with torch.no_grad():
        model.generator.weight.add_(0.5)  # one matrix: every use of it changes
    path = save_checkpoint(tmp_path / "tied.safetensors", model="transformer", config={},
                           modules={"model": model})
    fresh = tiny_model(tie=True)
    load_checkpoint(path).load_into({"model": fresh})
    assert fresh.generator.weight is fresh.src_embed.weight
    assert torch.equal(fresh.src_embed.weight, model.src_embed.weight)
    src, tgt = torch.randint(4, 20, (2, 5)), torch.randint(4, 20, (2, 4))
    with torch.no_grad():
        assert torch.equal(fresh(src, tgt), model(src, tgt))


def test_average_is_the_mean_of_the_weights(tmp_path):
    from dlcli.checkpoint import load_checkpoint, save_checkpoint
    from dlcli.checkpointer import average_checkpoints
    from dlcli.config import resolve_config
    from dlcli.models.mlp import MLP

    config = resolve_config("mlp", None, ["hidden=[4]", "dataset=xor"])
    paths = []
    for i in range(3):
        torch.manual_seed(i)
        m = MLP(2, [4], 2, batchnorm=True)
        paths.append(save_checkpoint(tmp_path / f"{i}.safetensors", model="mlp",
                                     config={**config, "seed": i}, modules={"model": m},
                                     extra={"note": str(i)}))
    out = average_checkpoints(paths, tmp_path / "avg.safetensors")
    avg = load_checkpoint(out)
    key = "hidden.0.weight"
    weights = [load_checkpoint(p).state_dict("model")[key] for p in paths]
    assert torch.allclose(avg.state_dict("model")[key], sum(weights) / 3)
    assert avg.model == "mlp" and avg.meta["note"] == "2" and avg.config["seed"] == 2


def test_misaligned_corpus_names_both_counts(cli, tmp_path):
    (tmp_path / "a.de").write_text("eins\nzwei\ndrei\n")
    (tmp_path / "b.en").write_text("one\ntwo\n")
    proc = cli("train", "transformer", "--data", "a.de", "--data", "b.en", cwd=tmp_path,
               env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2
    assert "3" in proc.stderr and "2" in proc.stderr and "a.de" in proc.stderr
    assert "Traceback" not in proc.stderr
