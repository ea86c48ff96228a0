"""TP: Megatron tensor parallelism (docs/DESIGN.md, strategy table, row TP).

What each rank holds:
- the embeddings, replicated (every rank embeds the whole batch; no traffic);
- for every layer, rank r of P: the q, k and v rows of heads
  [r*n_h/P, (r+1)*n_h/P) (`qkv_weight` (3h/P, h)), the matching h/P columns
  of the attention output projection (`out_weight` (h, h/P)), FFN columns
  [r*f/P, (r+1)*f/P) of W1/b1 and the matching f/P columns of W2, plus the
  replicated output biases and LayerNorms. Shards are cloned, so
  `weights_bytes()` is what the rank really holds (~1/P of the layers).

What it communicates, per layer (2 allreduces of T = B*s*h values, 4 bytes each in fp32):
1. attention: each rank projects and attends its own heads, multiplies its
   context by its out-projection columns -> a (B, s, h) partial sum;
   allreduce; then the bias b_o (added once, after the sum), residual, LN1;
2. FFN: GELU of its column shard, times its W2 columns -> a partial sum
   (`kernels.ffn(..., out_bias=None)`); allreduce; bias b_2, residual, LN2.
After each allreduce the hidden state is replicated, so every rank holds the
full (B, s, h) output. Refused: heads % P != 0 or ffn % P != 0.

Options: `wire_dtype` fp32|fp16|bf16|int8 and `wire_reduce` auto|mpi|split (how the
allreduces travel: parallelism/wire_ops.py); `overlap` off|on with `chunks` C: the sequence
is cut into C token spans and each allreduce becomes C allreduces of B*n_j*h values, each
posted as soon as its span is computed (see `TensorParallelLayer.__call__`; refused: C > s).

`TensorParallelLayer` is also used by block parallelism for its boundary
layers (`boundary='tp'`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from kernels import (FP32, LayerWeights, additive_mask, attention, embed, embedding_params, ffn, layer_gemms,
                     layer_norm, layer_params, split_qkv)
from kernels.layers import nbytes

from .base import Strategy
from .errors import UsageError
from .options import OVERLAP_OPTIONS, overlap_chunks, spans
from .schedule import collective, embedding, layer, same_everywhere
from .traffic import Traffic
from .wire_ops import REDUCE_OPTIONS, WIRE_OPTIONS, Wire, allreduce, allreduce_parts, allreduce_traffic, progress

if TYPE_CHECKING:  # the communicator imports mpi4py; the formulas must not need it
    from .comm import Communicator


def check_tp_divisible(cfg, world_size: int, who: str) -> None:
    """The Megatron split needs whole heads and whole FFN columns on every rank."""
    if cfg.heads % world_size:
        raise UsageError(f"{who}: heads % P must be 0 (heads={cfg.heads}, P={world_size})")
    if cfg.ffn % world_size:
        raise UsageError(f"{who}: ffn % P must be 0 (ffn={cfg.ffn}, P={world_size})")


def shard_layer(w: LayerWeights, heads: int, rank: int, world: int) -> LayerWeights:
    """Rank `rank`'s Megatron shard of an original layer (h wide), as a LayerWeights
    whose qkv/out/ffn tensors hold only its heads and FFN columns (cloned)."""
    h = w.out_weight.shape[0]
    f = w.ffn_in_weight.shape[0]
    d = h // heads
    cols = slice(rank * (h // world), (rank + 1) * (h // world))  # its heads' context channels
    fcols = slice(rank * (f // world), (rank + 1) * (f // world))
    # q, k and v rows of its heads, kept in q|k|v order so project_qkv can split them.
    mine = slice(rank * (heads // world), (rank + 1) * (heads // world))
    qkv_w = w.qkv_weight.view(3, heads, d, h)[:, mine]
    qkv_b = w.qkv_bias.view(3, heads, d)[:, mine]
    return LayerWeights(
        qkv_weight=_own(qkv_w).view(-1, h), qkv_bias=_own(qkv_b).view(-1),
        out_weight=_own(w.out_weight[:, cols]), out_bias=w.out_bias,
        ln1_weight=w.ln1_weight, ln1_bias=w.ln1_bias,
        ffn_in_weight=_own(w.ffn_in_weight[fcols]), ffn_in_bias=_own(w.ffn_in_bias[fcols]),
        ffn_out_weight=_own(w.ffn_out_weight[:, fcols]), ffn_out_bias=w.ffn_out_bias,
        ln2_weight=w.ln2_weight, ln2_bias=w.ln2_bias)


def _own(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of a shard, so the full tensor can be freed and bytes are real."""
    return t.clone(memory_format=torch.contiguous_format)


class TensorParallelLayer:
    """One original layer split Megatron-style over `comm`: 2 allreduces of (B, s, h), in the
    wire dtype; with several token spans (overlap) 2 per span, each posted as soon as its
    rows are computed."""

    def __init__(self, w: LayerWeights, heads: int, eps: float, comm: Communicator, wire: Wire = Wire()):
        self.w = shard_layer(w, heads, comm.rank, comm.size)
        self.local_heads, self.eps, self.comm, self.wire = heads // comm.size, eps, comm, wire

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's heads' fused q|k|v projection of x (per token: any rows of the sequence)."""
        return F.linear(x, self.w.qkv_weight, self.w.qkv_bias)

    def __call__(self, x: torch.Tensor, mask: torch.Tensor | None, spans=None, qkv: torch.Tensor | None = None,
                 next_layer: "TensorParallelLayer | None" = None):
        """x (B, s, h), replicated -> (B, s, h), replicated; with `next_layer`, returns
        (output, next_layer's projection of it) instead.

        Overlap (`spans`: (start, length) pieces of the sequence): everything after attention
        is per token, so the out-projection, both allreduces, the LayerNorms, the FFN and the
        next layer's projection run span by span, exactly as on the whole sequence: while
        span j's sum is on the wire, span j+1 is computed. `qkv`: this layer's projection,
        if already computed."""
        w, eps, comm, wire = self.w, self.eps, self.comm, self.wire
        spans = spans or [(0, x.shape[1])]
        post = len(spans) > 1
        context = attention(*split_qkv(self.project(x) if qkv is None else qkv, self.local_heads), mask)
        # Partial out-projection of this rank's heads (no bias: it is added once, after the sum).
        sums = []
        for a, n in spans:
            sums.append(allreduce(comm, wire, F.linear(context[:, a:a + n], w.out_weight), post))
            progress(sums)
        attended, ffn_sums = [], []
        for (a, n), summed in zip(spans, sums):
            partial = summed.wait()
            attended.append(layer_norm(partial.add_(w.out_bias).add_(x[:, a:a + n]), w.ln1_weight, w.ln1_bias, eps))
            ffn_sums.append(allreduce(comm, wire, ffn(attended[-1], w.ffn_in_weight, w.ffn_in_bias,
                                                      w.ffn_out_weight, None), post))
            progress(ffn_sums)
        outs, projected = [], []
        for a_span, summed in zip(attended, ffn_sums):
            outs.append(layer_norm(summed.wait().add_(w.ffn_out_bias).add_(a_span), w.ln2_weight, w.ln2_bias, eps))
            if next_layer is not None:
                projected.append(next_layer.project(outs[-1]))
        if next_layer is None:
            return join(outs)
        return join(outs), join(projected)

    def nbytes(self) -> int:
        return nbytes(self.w)

    @staticmethod
    def traffic(cfg, world: int, rank: int, batch: int, seq: int, wire: Wire, spans) -> Traffic:
        """Per token span, two allreduces of its rows of one activation (B*n*h values)."""
        return sum((allreduce_traffic(wire, batch * n * cfg.hidden, rank, world) * 2 for _, n in spans), Traffic())

    @staticmethod
    def params(cfg, world: int) -> int:
        """One rank's shard: 1/P of the heads and FFN columns, whole output biases and LayerNorms."""
        return layer_params(cfg, cfg.hidden, heads=cfg.heads // world, ffn=cfg.ffn // world)

    @staticmethod
    def flops(cfg, world: int, batch: int, seq: int) -> int:
        return sum(layer_gemms(cfg, batch, seq, seq, cfg.hidden, cfg.heads // world, cfg.ffn // world).values())

    @staticmethod
    def steps(cfg, world: int, batch: int, seq: int, wire: Wire, spans, before=()) -> list:
        """Attention (after `before`, e.g. the embeddings) -> per token span its output
        projection -> allreduce; per span its FFN -> allreduce (one span without overlap)."""
        shard = dict(heads=cfg.heads // world, ffn=cfg.ffn // world)
        attention = tuple(before) + layer(cfg, batch, seq, **shard, kernels=("qkv", "attention"))
        out = []
        for kernel in ("out", "ffn"):
            for a, n in spans:
                work = (attention if (kernel, a) == ("out", 0) else ()) + layer(cfg, batch, n, **shard, kernels=(kernel,))
                rule, parts, whole = allreduce_parts(wire, batch * n * cfg.hidden, world)
                out.append(collective(same_everywhere(world, work), "allreduce", parts, whole, rule))
        return out


def join(pieces: list[torch.Tensor], dim: int = 1) -> torch.Tensor:
    """Span outputs (B, n, ...) back into one (B, s, ...) tensor (no copy for a single span)."""
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=dim)


class TensorParallel(Strategy):
    name = "tp"
    options = {**WIRE_OPTIONS, **REDUCE_OPTIONS, **OVERLAP_OPTIONS}

    def __init__(self, cfg, weights, comm, **options):
        super().__init__(cfg, weights, comm, **options)
        self.embeddings = weights.embeddings  # replicated
        self.layers = [TensorParallelLayer(w, cfg.heads, cfg.ln_eps, comm, self.wire) for w in weights.layers]

    @classmethod
    def check(cls, cfg, world_size, **options):
        super().check(cfg, world_size, **options)
        check_tp_divisible(cfg, world_size, cls.name)

    @torch.inference_mode()
    def forward(self, input_ids, attention_mask, token_type_ids=None):
        mask = additive_mask(attention_mask)
        x = embed(input_ids, self.embeddings, self.cfg.ln_eps, token_type_ids)
        if self.chunks == 1:
            for tp_layer in self.layers:
                x = tp_layer(x, mask)
            return x
        # Overlap: each layer also projects the next layer's q|k|v span by span.
        pieces, qkv = spans(self.name, input_ids.shape[1], self.chunks), None
        for i, tp_layer in enumerate(self.layers[:-1]):
            x, qkv = tp_layer(x, mask, pieces, qkv, self.layers[i + 1])
        return self.layers[-1](x, mask, pieces, qkv)

    def held_bytes(self) -> int:
        return nbytes(self.embeddings) + sum(layer.nbytes() for layer in self.layers)

    @classmethod
    def expected_traffic(cls, cfg, world, rank, batch, seq, **options):
        options = {**cls.options, **options}
        pieces = spans(cls.name, seq, overlap_chunks(cls.name, options))
        layer = TensorParallelLayer.traffic(cfg, world, rank, batch, seq, Wire.of(cls.name, options), pieces)
        return {"allreduce": layer * cfg.layers}

    @classmethod
    def weights_bytes(cls, cfg, world, rank, **options):
        return FP32 * (embedding_params(cfg) + cfg.layers * TensorParallelLayer.params(cfg, world))

    @classmethod
    def steps(cls, cfg, world, batch, seq, **options):
        options = {**cls.options, **options}
        wire, pieces = Wire.of(cls.name, options), spans(cls.name, seq, overlap_chunks(cls.name, options))
        out = []
        for i in range(cfg.layers):
            out += TensorParallelLayer.steps(cfg, world, batch, seq, wire, pieces,
                                             embedding(cfg, batch, seq) if i == 0 else ())
        return out

    @classmethod
    def flops(cls, cfg, world, rank, batch, seq, **options):
        return cfg.layers * TensorParallelLayer.flops(cfg, world, batch, seq)

