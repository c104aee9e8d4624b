"""The encoder-decoder Transformer of "Attention Is All You Need" (Vaswani et al., 2017).

Read top to bottom: attention, the feed-forward network, positions, one encoder layer,
one decoder layer, then the whole model. Shapes: B batch, S source length, T target
length, D model width, H heads. Masks are booleans where True means "may attend".
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class MultiHeadAttention(nn.Module):
    """MultiHead(Q, K, V) = Concat(head_1..head_h) W_O,
    head_i = Attention(Q W_Q_i, K W_K_i, V W_V_i).

    The per-head projections are stored as one D x D matrix each (packed into one matmul:
    Q, K and V for self-attention, K and V for cross-attention), then split into heads."""

    def __init__(self, d_model: int, heads: int, dropout: float, cross: bool = False):
        super().__init__()
        assert d_model % heads == 0, "d_model must be divisible by heads"
        self.heads, self.dropout, self.cross = heads, dropout, cross
        if cross:
            self.query = nn.Linear(d_model, d_model)
            self.key_value = nn.Linear(d_model, 2 * d_model)
        else:
            self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.keep_weights = False  # set to record attention weights (for --attention plots)
        self.weights = None

    def split_heads(self, x):  # (B, L, D) -> (B, H, L, D/H)
        b, length, d = x.shape
        return x.view(b, length, self.heads, d // self.heads).transpose(1, 2)

    def forward(self, x, memory=None, mask=None, causal=False, cache=None):
        """x: (B, T, D). memory: (B, S, D) for cross-attention. cache: a dict that keeps
        keys/values between decoding steps (self-attention appends, cross computes once)."""
        if self.cross:
            q = self.split_heads(self.query(x))
            if cache is not None and "k" in cache:
                k, v = cache["k"], cache["v"]
            else:
                k, v = map(self.split_heads, self.key_value(memory).chunk(2, dim=-1))
                if cache is not None:
                    cache["k"], cache["v"] = k, v
        else:
            q, k, v = map(self.split_heads, self.qkv(x).chunk(3, dim=-1))
            if cache is not None:
                if "k" in cache:  # one new position: it may see every earlier one
                    k, v = torch.cat([cache["k"], k], 2), torch.cat([cache["v"], v], 2)
                    causal = False
                cache["k"], cache["v"] = k, v
        if self.keep_weights:
            self.weights = attention_weights(q, k, mask, causal)
        y = attend(q, k, v, mask, causal, self.dropout if self.training else 0.0)
        b, h, t, dh = y.shape
        return self.out(y.transpose(1, 2).reshape(b, t, h * dh))  # merge the heads


# Key lengths up to which a CPU computes attention step by step rather than with PyTorch's
# fused kernel: its flash-attention kernel is built for long sequences, and on sentences
# (tens of tokens) the plain products and softmax run its forward and backward passes
# several times faster (and its bfloat16 backward pass is slower still).
CPU_SHORT_KEYS = 64


def attend(q, k, v, mask, causal: bool, dropout: float):
    """softmax(Q K^T / sqrt(d_k)) V. On a CPU, short sequences take the products spelled
    out, the weights' dropout, then their average of the values; long ones the fused kernel
    in float32, even under bf16 autocast. Elsewhere the fused kernel."""
    if q.device.type == "cpu":
        if k.shape[-2] <= CPU_SHORT_KEYS:
            return drop(attention_weights(q, k, mask, causal), dropout).to(v.dtype) @ v
        if q.dtype == torch.bfloat16:
            with torch.autocast("cpu", enabled=False):
                return F.scaled_dot_product_attention(q.float(), k.float(), v.float(),
                                                      attn_mask=mask, is_causal=causal,
                                                      dropout_p=dropout)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                          dropout_p=dropout)


def attention_weights(q, k, mask, causal: bool = False):
    """softmax(Q K^T / sqrt(d_k)), (B, H, T, S), the softmax in float32 whatever the
    products' dtype. `causal` as the fused kernel has it: query i sees keys 0..i."""
    scores = (q @ k.transpose(-2, -1)).float() * q.shape[-1] ** -0.5
    if causal:
        t, s = scores.shape[-2:]
        future = torch.ones(t, s, dtype=torch.bool, device=q.device).triu_(1)
        scores = scores.masked_fill(future, float("-inf"))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return softmax_over_keys(scores)


# PyTorch's CPU softmax vectorizes along the softmax dimension and runs scalar code on rows
# shorter than one vector (16 floats with AVX-512): over ten times slower per element, and
# a sentence often has fewer tokens than that.
CPU_SOFTMAX_WIDTH = 16


def softmax_over_keys(scores):
    """softmax over the last dimension; on a CPU, rows shorter than CPU_SOFTMAX_WIDTH are
    padded with -inf (weight 0) to that width first, and the padding sliced off after."""
    keys = scores.shape[-1]
    if scores.device.type != "cpu" or keys >= CPU_SOFTMAX_WIDTH:
        return scores.softmax(-1)
    padded = F.pad(scores, (0, CPU_SOFTMAX_WIDTH - keys), value=float("-inf"))
    return padded.softmax(-1)[..., :keys]


def drop(x, p: float):
    """Dropout: zero each element with probability p, scale the rest by 1 / (1 - p).

    A Transformer draws a mask after every sublayer, and on a CPU drawing it costs more
    than applying it: nn.Dropout's bernoulli_ draws a random number per element, and so
    does torch.rand. Here each 64-bit random word gives four 15-bit uniform numbers
    (random_ leaves a word's sign bit 0, so each 16-bit quarter keeps its low 15 bits), and
    an element is kept when its number is at least p * 2^15. Other devices have a fused
    dropout kernel."""
    if p == 0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p)
    words = torch.empty((x.numel() + 3) // 4, dtype=torch.int64, device=x.device).random_()
    uniform = words.view(torch.int16)[:x.numel()].view(x.shape).bitwise_and_(0x7FFF)
    keep = uniform.ge_(round(p * 2 ** 15))
    return x * keep.to(x.dtype).mul_(1 / (1 - p))


class Dropout(nn.Module):
    """nn.Dropout by `drop`."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        return drop(x, self.p) if self.training else x

    def extra_repr(self) -> str:
        return f"p={self.p}"


class FeedForward(nn.Module):
    """FFN(x) = max(0, x W1 + b1) W2 + b2, applied to each position alike."""

    def __init__(self, d_model: int, d_ff: int, activation_dropout: float):
        super().__init__()
        self.w1, self.w2 = nn.Linear(d_model, d_ff), nn.Linear(d_ff, d_model)
        self.dropout = Dropout(activation_dropout)  # on the ReLU's output

    def forward(self, x):
        return self.w2(self.dropout(F.relu(self.w1(x))))


def sinusoidal_positions(length: int, d_model: int) -> torch.Tensor:
    """PE(pos, 2i) = sin(pos / 10000^(2i/D)), PE(pos, 2i+1) = cos(pos / 10000^(2i/D))."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    two_i = torch.arange(0, d_model, 2, dtype=torch.float32)
    inv_freq = torch.exp(-math.log(10000.0) * two_i / d_model)
    pe = torch.zeros(length, d_model)
    pe[:, 0::2] = torch.sin(pos * inv_freq)
    pe[:, 1::2] = torch.cos(pos * inv_freq)
    return pe


class Residual(nn.Module):
    """LayerNorm(x + Dropout(Sublayer(x))) as in the paper (post-norm), or
    x + Dropout(Sublayer(LayerNorm(x))) (pre-norm, steadier for deep or fast-trained models)."""

    def __init__(self, d_model: int, dropout: float, pre_norm: bool):
        super().__init__()
        self.norm, self.dropout = nn.LayerNorm(d_model), Dropout(dropout)
        self.pre_norm = pre_norm

    def forward(self, x, sublayer):
        if self.pre_norm:
            return x + self.dropout(sublayer(self.norm(x)))
        return self.norm(x + self.dropout(sublayer(x)))


class Dropouts(NamedTuple):
    """Where dropout applies. The paper has one rate (P_drop) on each sublayer's output and
    on the embeddings; fairseq adds separate rates on the attention weights and inside the
    feed-forward network (--attention-dropout, --activation-dropout), which its small
    recipes leave at 0 while `residual` is as high as 0.3."""
    residual: float
    attention: float
    activation: float


class EncoderLayer(nn.Module):
    def __init__(self, d_model, heads, d_ff, dropout: Dropouts, pre_norm):
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, heads, dropout.attention)
        self.ffn = FeedForward(d_model, d_ff, dropout.activation)
        self.res1, self.res2 = (Residual(d_model, dropout.residual, pre_norm) for _ in range(2))

    def forward(self, x, src_mask):
        x = self.res1(x, lambda h: self.self_attn(h, mask=src_mask))
        return self.res2(x, self.ffn)


class DecoderLayer(nn.Module):
    """Masked self-attention (a position sees only earlier ones), attention over the
    encoder output, then the feed-forward network."""

    def __init__(self, d_model, heads, d_ff, dropout: Dropouts, pre_norm):
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, heads, dropout.attention)
        self.cross_attn = MultiHeadAttention(d_model, heads, dropout.attention, cross=True)
        self.ffn = FeedForward(d_model, d_ff, dropout.activation)
        self.res1, self.res2, self.res3 = (Residual(d_model, dropout.residual, pre_norm)
                                           for _ in range(3))

    def forward(self, y, memory, src_mask, cache=None):
        cache = cache if cache is not None else {}
        # Target padding sits after the real tokens, so the causal mask alone keeps real
        # positions from seeing it; no target padding mask is needed.
        y = self.res1(y, lambda h: self.self_attn(h, causal=True, cache=cache.get("self")))
        y = self.res2(y, lambda h: self.cross_attn(h, memory, mask=src_mask,
                                                   cache=cache.get("cross")))
        return self.res3(y, self.ffn)


class ProjectedCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy (with label smoothing) of logits = states @ weight^T, computed
    `rows` states at a time, with its gradients taken in the same pass.

    The vocabulary projection is the largest product of a small model: for an update of
    8,000 target tokens and 10,000 types its logits, their softmax and its gradient are
    three 320 MB tensors, which a CPU writes and reads back from memory (and glibc hands
    back to the system and faults in again after every step). A block of `rows` logits fits
    in cache; nothing of vocabulary size outlives it. With label smoothing eps over V types,
    the gradient of the loss with respect to a row of logits is
        softmax(z) - (1 - eps) * onehot(target) - eps / V.
    The products run in `dtype` (bfloat16 under a bf16 precision), softmax and sums in
    float32."""

    @staticmethod
    def forward(ctx, states, weight, target, label_smoothing: float, dtype, rows: int = 256):
        with torch.autocast(states.device.type, enabled=False):
            n, types, eps = states.shape[0], weight.shape[0], label_smoothing
            w, hs = weight.to(dtype), states.to(dtype)
            loss = states.new_zeros((), dtype=torch.float32)
            grad_states = torch.empty(states.shape, dtype=torch.float32, device=states.device)
            grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
            # One block's logits (then its gradient) in `dtype` and in float32, written in
            # place block after block: a fresh tensor of this size is fresh memory for the
            # allocator, whose pages would be faulted in again for every block.
            block = torch.empty(min(rows, n), types, dtype=dtype, device=states.device)
            block32 = block if dtype == torch.float32 else torch.empty(
                block.shape, dtype=torch.float32, device=states.device)
            for start in range(0, n, rows):
                h, y = hs[start:start + rows], target[start:start + rows]
                z, grad = block[:len(y)], block32[:len(y)]
                torch.mm(h, w.t(), out=z)
                grad.copy_(z)  # the logits in float32 (copy_ onto itself does nothing)
                top = grad.amax(1, keepdim=True)
                z_target, z_mean = grad.gather(1, y[:, None])[:, 0], grad.mean(1)
                grad.sub_(top).exp_()  # one exp for both the normaliser and the softmax
                total = grad.sum(1, keepdim=True)
                log_norm = (top + total.log())[:, 0]
                loss -= ((1 - eps) * (z_target - log_norm) + eps * (z_mean - log_norm)).sum()
                grad.div_(total).sub_(eps / types)
                grad.scatter_add_(1, y[:, None], grad.new_full((len(y), 1), eps - 1))
                z.copy_(grad)  # the gradient, in `dtype`
                grad_states[start:start + rows] = z @ w
                grad_weight += z.t() @ h
        ctx.save_for_backward(grad_states.div_(n).to(states.dtype),
                              grad_weight.div_(n).to(weight.dtype))
        return loss / n

    @staticmethod
    def backward(ctx, grad_loss):
        grad_states, grad_weight = ctx.saved_tensors
        return grad_states * grad_loss, grad_weight * grad_loss, None, None, None, None


class Transformer(nn.Module):
    def __init__(self, vocab_size: int, d_model: int = 256, heads: int = 8,
                 encoder_layers: int = 3, decoder_layers: int = 3, d_ff: int = 1024,
                 dropout: float = 0.1, tie_embeddings: bool = True, pre_norm: bool = False,
                 max_positions: int = 256, pad_id: int = 0,
                 attention_dropout: float | None = None, activation_dropout: float | None = None):
        """attention_dropout, activation_dropout: None means `dropout`, as in the paper."""
        super().__init__()
        self.d_model, self.pad_id, self.max_positions = d_model, pad_id, max_positions
        self.src_embed = nn.Embedding(vocab_size, d_model, padding_idx=pad_id)
        self.tgt_embed = self.src_embed if tie_embeddings else nn.Embedding(vocab_size, d_model,
                                                                           padding_idx=pad_id)
        self.register_buffer("positions", sinusoidal_positions(max_positions, d_model),
                             persistent=False)
        self.dropout = Dropout(dropout)
        rates = Dropouts(dropout, dropout if attention_dropout is None else attention_dropout,
                         dropout if activation_dropout is None else activation_dropout)
        self.encoder = nn.ModuleList(EncoderLayer(d_model, heads, d_ff, rates, pre_norm)
                                     for _ in range(encoder_layers))
        self.decoder = nn.ModuleList(DecoderLayer(d_model, heads, d_ff, rates, pre_norm)
                                     for _ in range(decoder_layers))
        # Pre-norm stacks end with a LayerNorm (their residual stream is never normalised).
        self.enc_norm = nn.LayerNorm(d_model) if pre_norm else nn.Identity()
        self.dec_norm = nn.LayerNorm(d_model) if pre_norm else nn.Identity()
        self.generator = nn.Linear(d_model, vocab_size, bias=False)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        # Embeddings are scaled by sqrt(D) on the way in, so they start at 1/sqrt(D).
        for emb in {self.src_embed, self.tgt_embed}:
            nn.init.normal_(emb.weight, std=d_model ** -0.5)
            emb.weight.data[pad_id] = 0
        if tie_embeddings:  # the paper shares one matrix: source, target and pre-softmax
            self.generator.weight = self.tgt_embed.weight

    def embed(self, table, tokens, offset: int = 0):
        x = table(tokens) * math.sqrt(self.d_model)
        return self.dropout(x + self.positions[offset:offset + tokens.shape[1]])

    def source_mask(self, src):  # (B, 1, 1, S): every query may see the real source tokens
        return (src != self.pad_id)[:, None, None, :]

    def encode(self, src):
        mask = self.source_mask(src)
        x = self.embed(self.src_embed, src)
        for layer in self.encoder:
            x = layer(x, mask)
        return self.enc_norm(x), mask

    def decode(self, tgt_in, memory, src_mask, cache=None, offset: int = 0):
        """Decoder states (B, T, D) for target inputs; with a cache, only the new positions."""
        y = self.embed(self.tgt_embed, tgt_in, offset)
        for i, layer in enumerate(self.decoder):
            y = layer(y, memory, src_mask, cache[i] if cache is not None else None)
        return self.dec_norm(y)

    def forward(self, src, tgt_in):
        """Logits (B, T, V) of the next target token at every position."""
        memory, src_mask = self.encode(src)
        return self.generator(self.decode(tgt_in, memory, src_mask))

    def loss(self, src, tgt_in, tgt_out, label_smoothing: float = 0.0):
        """Mean cross-entropy per target token; the vocabulary projection runs only on
        real (non-padding) positions, in training a block at a time (ProjectedCrossEntropy)."""
        memory, src_mask = self.encode(src)
        states = self.decode(tgt_in, memory, src_mask)
        real = tgt_out != self.pad_id
        if not torch.is_grad_enabled():
            logits = self.generator(states[real])
            return F.cross_entropy(logits, tgt_out[real], label_smoothing=label_smoothing)
        device = states.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) \
            else torch.float32
        return ProjectedCrossEntropy.apply(states[real], self.generator.weight, tgt_out[real],
                                           label_smoothing, dtype)

    def new_cache(self) -> list[dict]:
        return [{"self": {}, "cross": {}} for _ in self.decoder]

    @staticmethod
    def reorder_cache(cache: list[dict], index: torch.Tensor) -> None:
        """Keep the cache rows of `index` (beam search follows the surviving hypotheses)."""
        for layer in cache:
            for part in layer.values():
                for key in part:
                    part[key] = part[key].index_select(0, index)


def build(config: dict, data: dict) -> Transformer:
    """The Transformer of a config for a vocabulary (`data`: vocab_size, pad_id)."""
    c = config
    return Transformer(
        data["vocab_size"], d_model=c["d_model"], heads=c["heads"],
        encoder_layers=c["encoder_layers"], decoder_layers=c["decoder_layers"],
        d_ff=c["d_ff"], dropout=c["dropout"], tie_embeddings=c["tie_embeddings"],
        pre_norm=c["pre_norm"], max_positions=c["max_len"] + 1, pad_id=data["pad_id"],
        attention_dropout=c.get("attention_dropout"), activation_dropout=c.get("activation_dropout"))
