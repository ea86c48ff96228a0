"""The transformer kernel: BERT building blocks as functions over explicit weights.

Nothing here knows how many devices there are. A strategy runs a whole layer
(`layer_forward`) or composes the pieces on a shard of the weights: tensor
parallelism calls `project_qkv` with a subset of heads, sequence parallelism
calls `attention` with local queries against gathered keys/values, block
parallelism calls `layer_forward` on sub-block weights. The decoupled
sub-block (docs/DESIGN.md, "The decoupled model") is the same computation as an original layer with
narrower input/output width (h/N_div instead of h), so one function serves both.

Shapes: activations are (batch, seq, width); weights use torch.nn.Linear's
(out_features, in_features) layout.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F


@dataclass
class EmbeddingWeights:
    word: torch.Tensor         # (vocab, h)
    position: torch.Tensor     # (max_positions, h)
    token_type: torch.Tensor   # (type_vocab, h)
    ln_weight: torch.Tensor    # (h,)
    ln_bias: torch.Tensor      # (h,)


@dataclass
class LayerWeights:
    """One original layer (width w = h) or one decoupled sub-block (w = h/N_div).

    The attention inside always has all heads at full head size: q, k, v and
    the attention context are h wide whatever w is.
    """
    qkv_weight: torch.Tensor      # (3h, w): q, k, v stacked, fused into one GEMM
    qkv_bias: torch.Tensor        # (3h,)
    out_weight: torch.Tensor      # (w, h)
    out_bias: torch.Tensor        # (w,)
    ln1_weight: torch.Tensor      # (w,)
    ln1_bias: torch.Tensor        # (w,)
    ffn_in_weight: torch.Tensor   # (f, w)
    ffn_in_bias: torch.Tensor     # (f,)
    ffn_out_weight: torch.Tensor  # (w, f)
    ffn_out_bias: torch.Tensor    # (w,)
    ln2_weight: torch.Tensor      # (w,)
    ln2_bias: torch.Tensor        # (w,)


def tensors_of(weights) -> list[torch.Tensor]:
    return [getattr(weights, f.name) for f in fields(weights)]


def numel(weights) -> int:
    return sum(t.numel() for t in tensors_of(weights))


def nbytes(weights) -> int:
    return sum(t.numel() * t.element_size() for t in tensors_of(weights))


# -- masks and embeddings -----------------------------------------------------------
def additive_mask(attention_mask: torch.Tensor | None, dtype=torch.float32) -> torch.Tensor | None:
    """(B, s) 1/0 padding mask -> (B, 1, 1, s) additive key mask, or None if nothing is padded.

    Same convention as Hugging Face BERT: padded keys get the dtype's minimum,
    so a softmax row never sees them; padded queries are computed and ignored.
    """
    if attention_mask is None or bool(attention_mask.all()):
        return None
    keep = attention_mask[:, None, None, :].to(dtype)
    return (1.0 - keep) * torch.finfo(dtype).min


def embed(input_ids: torch.Tensor, weights: EmbeddingWeights, eps: float,
          token_type_ids: torch.Tensor | None = None,
          position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Word + position + token-type embeddings, then LayerNorm: (B, s) -> (B, s, h).

    `position_ids` defaults to 0..s-1; a strategy that holds a slice of the
    tokens passes their global positions.
    """
    seq = input_ids.shape[1]
    if position_ids is None:
        position_ids = torch.arange(seq)
    x = F.embedding(input_ids, weights.word) + F.embedding(position_ids, weights.position)
    if token_type_ids is None:
        x = x + weights.token_type[0]
    else:
        x = x + F.embedding(token_type_ids, weights.token_type)
    return F.layer_norm(x, x.shape[-1:], weights.ln_weight, weights.ln_bias, eps)


# -- attention ------------------------------------------------------------------------
def project_qkv(x: torch.Tensor, qkv_weight: torch.Tensor, qkv_bias: torch.Tensor,
                n_heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x (B, s, w) -> q, k, v each (B, n_heads, s, d) with one fused GEMM.

    `qkv_weight` holds the q, k and v rows of `n_heads` heads; pass a shard of
    the heads to compute just those (tensor parallelism).
    """
    return split_qkv(F.linear(x, qkv_weight, qkv_bias), n_heads)


def split_qkv(qkv: torch.Tensor, n_heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fused projection (B, s, 3 * n_heads * d), contiguous -> q, k, v views (B, n_heads, s, d)."""
    batch, seq, _ = qkv.shape
    head_dim = qkv.shape[-1] // (3 * n_heads)
    q, k, v = qkv.view(batch, seq, 3, n_heads, head_dim).permute(2, 0, 3, 1, 4)
    return q, k, v


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              mask: torch.Tensor | None) -> torch.Tensor:
    """Scaled dot-product attention, heads merged: q (B, n, sq, d), k/v (B, n, sk, d) -> (B, sq, n*d).

    Queries and keys may come from different token ranges (sequence
    parallelism: local queries against gathered keys); `mask` is the additive
    key mask (B, 1, 1, sk) or None.
    """
    context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    batch, n_heads, seq, head_dim = context.shape
    return context.transpose(1, 2).reshape(batch, seq, n_heads * head_dim)


# -- the two halves of a post-LN layer -------------------------------------------------
def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    return F.layer_norm(x, weight.shape, weight, bias, eps)


def ffn(x: torch.Tensor, in_weight: torch.Tensor, in_bias: torch.Tensor,
        out_weight: torch.Tensor, out_bias: torch.Tensor | None) -> torch.Tensor:
    """GELU(x W1 + b1) W2 (+ b2). With a column shard of W1/b1 and the matching
    rows of W2, and `out_bias=None`, the result is this shard's partial sum."""
    hidden = F.linear(x, in_weight, in_bias)
    # In place: GELU into a fresh (tokens x f) tensor took 0.71 ms per bert-base layer on
    # 1 thread here, in place 0.21 ms (torch profiler), ~3% of a 17 ms layer.
    torch.ops.aten.gelu_(hidden)
    return F.linear(hidden, out_weight, out_bias)


def attention_residual(x: torch.Tensor, context: torch.Tensor, w: LayerWeights, eps: float) -> torch.Tensor:
    """a = LN1(x + context W_o + b_o)."""
    y = F.linear(context, w.out_weight, w.out_bias)
    y += x
    return layer_norm(y, w.ln1_weight, w.ln1_bias, eps)


def ffn_residual(a: torch.Tensor, w: LayerWeights, eps: float) -> torch.Tensor:
    """y = LN2(a + FFN(a))."""
    y = ffn(a, w.ffn_in_weight, w.ffn_in_bias, w.ffn_out_weight, w.ffn_out_bias)
    y += a
    return layer_norm(y, w.ln2_weight, w.ln2_bias, eps)


def layer_forward(x: torch.Tensor, w: LayerWeights, mask: torch.Tensor | None,
                  n_heads: int, eps: float, qkv: torch.Tensor | None = None) -> torch.Tensor:
    """One original BERT layer (x is h wide) or one decoupled sub-block (x is h/N_div wide).

    `qkv`: the fused projection F.linear(x, w.qkv_weight, w.qkv_bias) when the caller has
    computed it already (per token, e.g. chunk by chunk as the rows of x arrived)."""
    if qkv is None:
        qkv = F.linear(x, w.qkv_weight, w.qkv_bias)
    q, k, v = split_qkv(qkv, n_heads)
    return ffn_residual(attention_residual(x, attention(q, k, v, mask), w, eps), w, eps)
