"""The Transformer in CTranslate2, OpenNMT's inference engine: conversion and decoding.

dlcli's Transformer is the one CTranslate2's TransformerSpec describes, layer for layer:
embeddings scaled by sqrt(d_model) plus sinusoidal positions (the table itself is copied,
so the two agree to the bit), fused Q/K/V (self-attention) and K/V (cross-attention)
projections in the same order, pre- or post-norm residual blocks (pre-norm stacks end with
a LayerNorm), a ReLU feed-forward network, and one output projection (tied to the
embeddings or not). The vocabulary is dlcli's joint BPE, id for id, so "<s>" starts the
decoder and "</s>" ends every source, as in dlcli; the tokenizer travels in the folder
(tokenizer.json) and `dlcli translate --engine ctranslate2` splits and joins text with it
exactly as the PyTorch path does.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from dlcli import __version__
from dlcli.data import text
from dlcli.errors import DlcliError
from dlcli.export import TOLERANCE, ExportMismatch, folder_in_place
from dlcli.models.decoding import DEFAULT_BEAM, Hypothesis, Translator

QUANTIZATIONS = ("int8", "int8_float32", "int16", "float16", "bfloat16", "float32")
INFO_FILE, TOKENIZER_FILE = "dlcli.json", "tokenizer.json"


def _ctranslate2():
    try:
        import ctranslate2
    except ImportError:
        raise DlcliError("CTranslate2 is not installed: pip install 'dlcli[ctranslate2]'") from None
    return ctranslate2


# ---- dlcli weights -> TransformerSpec -----------------------------------------------------

def _array(t: torch.Tensor):
    # a copy: CTranslate2 rewrites its arrays in place (quantizing), the model must not change
    return t.detach().float().cpu().numpy().copy()


def _linear(spec, layer) -> None:
    spec.weight = _array(layer.weight)
    if layer.bias is not None:
        spec.bias = _array(layer.bias)


def _norm(spec, norm) -> None:
    spec.gamma, spec.beta = _array(norm.weight), _array(norm.bias)


def _attention(spec, attention, norm) -> None:
    """Self-attention: [qkv, out]; cross-attention: [query, key_value, out]."""
    layers = ([attention.query, attention.key_value] if attention.cross else [attention.qkv])
    for s, layer in zip(spec.linear, layers + [attention.out]):
        _linear(s, layer)
    _norm(spec.layer_norm, norm)


def _ffn(spec, ffn, norm) -> None:
    _linear(spec.linear_0, ffn.w1)
    _linear(spec.linear_1, ffn.w2)
    _norm(spec.layer_norm, norm)


def build_spec(model, tokenizer, pre_norm: bool):
    from ctranslate2.specs import transformer_spec

    heads = model.encoder[0].self_attn.heads
    spec = transformer_spec.TransformerSpec.from_config(
        (len(model.encoder), len(model.decoder)), heads, pre_norm=pre_norm)
    spec.config.layer_norm_epsilon = model.encoder[0].res1.norm.eps
    positions = _array(model.positions)
    encoder, decoder = spec.encoder, spec.decoder
    encoder.embeddings[0].weight = _array(model.src_embed.weight)
    encoder.position_encodings.encodings = positions
    for s, layer in zip(encoder.layer, model.encoder):
        _attention(s.self_attention, layer.self_attn, layer.res1.norm)
        _ffn(s.ffn, layer.ffn, layer.res2.norm)
    decoder.embeddings.weight = _array(model.tgt_embed.weight)
    decoder.position_encodings.encodings = positions
    for s, layer in zip(decoder.layer, model.decoder):
        _attention(s.self_attention, layer.self_attn, layer.res1.norm)
        _attention(s.attention, layer.cross_attn, layer.res2.norm)
        _ffn(s.ffn, layer.ffn, layer.res3.norm)
    if pre_norm:
        _norm(encoder.layer_norm, model.enc_norm)
        _norm(decoder.layer_norm, model.dec_norm)
    _linear(decoder.projection, model.generator)
    vocabulary = vocabulary_of(tokenizer)
    spec.register_source_vocabulary(vocabulary)
    spec.register_target_vocabulary(vocabulary)
    return spec


def vocabulary_of(tokenizer) -> list[str]:
    return [tokenizer.id_to_token(i) for i in range(tokenizer.get_vocab_size())]


def save_spec(task, ckpt, folder: Path, quantization: str | None) -> None:
    spec = build_spec(task.model, task.tokenizer, task.config["pre_norm"])
    spec.validate()
    spec.optimize(quantization=quantization)
    spec.save(str(folder))
    (folder / TOKENIZER_FILE).write_text(task.tokenizer.to_str(), encoding="utf-8")
    info = {"dlcli_version": __version__, "model": ckpt.model, "source_checkpoint": str(ckpt.path),
            "max_positions": task.model.max_positions,
            "length_penalty": task.config["length_penalty"], "beam": task.config["beam"],
            "quantization": quantization,
            "source_lang": task.config.get("source_lang"),
            "target_lang": task.config.get("target_lang"), "dataset": task.config.get("dataset"),
            # how text is prepared around the BPE (data/text.py TextForm)
            "lowercase": bool(task.config.get("lowercase")), "moses": bool(task.config.get("moses"))}
    (folder / INFO_FILE).write_text(json.dumps(info, indent=2), encoding="utf-8")


# ---- the check: teacher-forced log-probabilities ------------------------------------------

@torch.no_grad()
def check_scores(model, tokenizer, folder: Path, pairs: int = 8, seed: int = 0) -> None:
    """Score random token sequences with both engines: every target token's log-probability
    must agree within TOLERANCE."""
    engine = _ctranslate2().Translator(str(folder), device="cpu", compute_type="float32")
    vocabulary = vocabulary_of(tokenizer)
    g = torch.Generator().manual_seed(seed)
    model.train(False)
    worst = 0.0
    for _ in range(pairs):
        src, tgt = (torch.randint(len(text.SPECIALS), len(vocabulary),
                                  (int(torch.randint(2, 12, (1,), generator=g)),), generator=g)
                    for _ in range(2))
        src = torch.cat([src, torch.tensor([text.EOS])])
        result = engine.score_batch([[vocabulary[i] for i in src.tolist()]],
                                    [[vocabulary[i] for i in tgt.tolist()]])[0]
        tgt_in = torch.cat([torch.tensor([text.BOS]), tgt])
        tgt_out = torch.cat([tgt, torch.tensor([text.EOS])])
        logp = model(src[None], tgt_in[None])[0].log_softmax(-1)
        expected = logp.gather(1, tgt_out[:, None])[:, 0]
        got = torch.tensor(result.log_probs, dtype=torch.float64)
        if got.shape != expected.shape:
            raise ExportMismatch(f"CTranslate2 scored {len(got)} target tokens, PyTorch "
                                 f"{len(expected)}; the folder is not kept")
        worst = max(worst, (got - expected.double()).abs().max().item())
    if not worst <= TOLERANCE:
        raise ExportMismatch(f"CTranslate2's token log-probabilities differ from PyTorch's by "
                             f"{worst:.3g} (more than {TOLERANCE:g}); the folder is not kept")


def export_ctranslate2(task, ckpt, target: Path, quantization: str | None = None) -> None:
    _ctranslate2()
    if quantization is not None and quantization not in QUANTIZATIONS:
        raise DlcliError(f"unknown --quantize {quantization!r}; choose one of: "
                         + ", ".join(QUANTIZATIONS))
    exact = quantization in (None, "float32")
    with folder_in_place(target) as folder:
        save_spec(task, ckpt, folder, quantization)
        if exact:
            check_scores(task.model, task.tokenizer, folder)
        else:  # the mapping is checked in float32; rounding the weights is CTranslate2's
            with tempfile.TemporaryDirectory() as plain:
                save_spec(task, ckpt, Path(plain), None)
                check_scores(task.model, task.tokenizer, Path(plain))


# ---- decoding --------------------------------------------------------------------------

class CT2Translator(Translator):
    """dlcli's Translator (tokenizing, batching by length, line order, warnings) with
    CTranslate2 doing the search."""

    def __init__(self, engine, tokenizer, max_positions: int, alpha: float, keep=None,
                 form: text.TextForm | None = None, beam: int = DEFAULT_BEAM):
        super().__init__(None, tokenizer, alpha, form, beam, max_positions)
        self.engine = engine
        self.vocabulary = vocabulary_of(tokenizer)
        self.keep = keep  # a temporary folder the engine reads from, removed with us

    def search(self, rows: list[list[int]], beam: int, max_len: int | None,
               n_best: int) -> list[list[Hypothesis]]:
        results = self.engine.translate_batch(
            [[self.vocabulary[i] for i in row] for row in rows], beam_size=beam,
            num_hypotheses=n_best, length_penalty=self.alpha, return_scores=True,
            max_decoding_length=self.output_limit(max(map(len, rows)), max_len),
            # dlcli's decoders never emit these two; neither may CTranslate2
            suppress_sequences=[[text.SPECIALS[text.PAD]], [text.SPECIALS[text.BOS]]])
        token_id = self.tokenizer.token_to_id
        return [[Hypothesis(score, [token_id(t) for t in tokens])
                 for tokens, score in zip(r.hypotheses, r.scores)] for r in results]


def load_translator(path: Path, device: str = "auto") -> CT2Translator:
    """A CTranslate2 translator from an exported folder, or from a dlcli checkpoint
    converted (and checked) into a temporary folder first."""
    ctranslate2 = _ctranslate2()
    path = Path(path)
    keep = None
    if not path.is_dir():
        from dlcli.checkpoint import load_checkpoint
        from dlcli.registry import get_spec

        ckpt = load_checkpoint(path, expect_model="transformer")
        spec = get_spec(ckpt.model)
        task = spec.load_task().from_checkpoint(spec, ckpt, torch.device("cpu"))
        keep = tempfile.TemporaryDirectory(prefix="dlcli-ct2-")
        save_spec(task, ckpt, Path(keep.name), None)
        check_scores(task.model, task.tokenizer, Path(keep.name))
        path = Path(keep.name)
    elif not (path / INFO_FILE).is_file() or not (path / TOKENIZER_FILE).is_file():
        raise DlcliError(f"{path} is not a folder written by `dlcli export --format ctranslate2` "
                         f"(no {INFO_FILE} or {TOKENIZER_FILE} in it)")
    if device == "auto":
        device = "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
    if device not in ("cpu", "cuda"):
        raise DlcliError(f"CTranslate2 runs on cpu or cuda, not {device!r}")
    info = json.loads((path / INFO_FILE).read_text(encoding="utf-8"))
    engine = ctranslate2.Translator(str(path), device=device, inter_threads=1,
                                    intra_threads=torch.get_num_threads())
    tokenizer = text.tokenizer_from_json((path / TOKENIZER_FILE).read_text(encoding="utf-8"))
    return CT2Translator(engine, tokenizer, info["max_positions"], info["length_penalty"], keep,
                         text.TextForm.of(info), info.get("beam", DEFAULT_BEAM))
