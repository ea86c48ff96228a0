"""TP: Megatron tensor parallelism (docs/DESIGN.md, strategy table, row TP).

What each rank holds:
- the embeddings, replicated (every rank embeds the whole batch; no traffic);
- for every layer, rank r of P: the q, k and v rows of heads
  [r*n_h/P, (r+1)*n_h/P) (`qkv_weight` (3h/P, h)), the matching h/P columns
  of the attention output projection (`out_weight` (h, h/P)), FFN columns
  [r*f/P, (r+1)*f/P) of W1/b1 and the matching f/P columns of W2, plus the
  replicated output biases and LayerNorms. Shards are cloned, so
  `weights_bytes()` is what the rank really holds (~1/P of the layers).

What it communicates, per layer (2 allreduces of T = B*s*h*4 bytes):
1. attention: each rank projects and attends its own heads, multiplies its
   context by its out-projection columns -> a (B, s, h) partial sum;
   allreduce; then the bias b_o (added once, after the sum), residual, LN1;
2. FFN: GELU of its column shard, times its W2 columns -> a partial sum
   (`kernels.ffn(..., out_bias=None)`); allreduce; bias b_2, residual, LN2.
After each allreduce the hidden state is replicated, so every rank holds the
full (B, s, h) output. Refused: heads % P != 0 or ffn % P != 0.

`TensorParallelLayer` is also used by block parallelism for its boundary
layers (`boundary='tp'`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from kernels import (FP32, LayerWeights, additive_mask, attention, embed, embedding_params, ffn, layer_gemms,
                     layer_norm, layer_params, project_qkv)
from kernels.layers import nbytes

from .base import Strategy
from .errors import UsageError
from .schedule import collective, embedding, layer, same_everywhere
from .traffic import Traffic, charge

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
    """One original layer split Megatron-style over `comm`: 2 allreduces of (B, s, h)."""

    def __init__(self, w: LayerWeights, heads: int, eps: float, comm: Communicator):
        self.w = shard_layer(w, heads, comm.rank, comm.size)
        self.local_heads, self.eps, self.comm = heads // comm.size, eps, comm

    def __call__(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        w, eps = self.w, self.eps
        q, k, v = project_qkv(x, w.qkv_weight, w.qkv_bias, self.local_heads)
        # Partial out-projection of this rank's heads (no bias: it is added once, after the sum).
        partial = F.linear(attention(q, k, v, mask), w.out_weight)
        self.comm.allreduce(partial)
        a = layer_norm(partial.add_(w.out_bias).add_(x), w.ln1_weight, w.ln1_bias, eps)
        partial = ffn(a, w.ffn_in_weight, w.ffn_in_bias, w.ffn_out_weight, None)
        self.comm.allreduce(partial)
        return layer_norm(partial.add_(w.ffn_out_bias).add_(a), w.ln2_weight, w.ln2_bias, eps)

    def nbytes(self) -> int:
        return nbytes(self.w)

    @staticmethod
    def traffic(cfg, world: int, batch: int, seq: int) -> Traffic:
        """Two allreduces of one fp32 activation T = B*s*h*4."""
        return charge("allreduce", whole=batch * seq * cfg.hidden * FP32, world=world, calls=2)

    @staticmethod
    def params(cfg, world: int) -> int:
        """One rank's shard: 1/P of the heads and FFN columns, whole output biases and LayerNorms."""
        return layer_params(cfg, cfg.hidden, heads=cfg.heads // world, ffn=cfg.ffn // world)

    @staticmethod
    def flops(cfg, world: int, batch: int, seq: int) -> int:
        return sum(layer_gemms(cfg, batch, seq, seq, cfg.hidden, cfg.heads // world, cfg.ffn // world).values())

    @staticmethod
    def steps(cfg, world: int, batch: int, seq: int, before=()) -> list:
        """Attention (after `before`, e.g. the embeddings) -> allreduce; FFN -> allreduce."""
        whole = batch * seq * cfg.hidden * FP32
        shard = dict(heads=cfg.heads // world, ffn=cfg.ffn // world)
        attention = tuple(before) + layer(cfg, batch, seq, **shard, kernels=("qkv", "attention", "out"))
        feed_forward = layer(cfg, batch, seq, **shard, kernels=("ffn",))
        return [collective(same_everywhere(world, work), "allreduce", [whole] * world, whole)
                for work in (attention, feed_forward)]


class TensorParallel(Strategy):
    name = "tp"

    def __init__(self, cfg, weights, comm, **options):
        super().__init__(cfg, weights, comm, **options)
        self.embeddings = weights.embeddings  # replicated
        self.layers = [TensorParallelLayer(w, cfg.heads, cfg.ln_eps, comm) for w in weights.layers]

    @classmethod
    def check(cls, cfg, world_size, **options):
        super().check(cfg, world_size, **options)
        check_tp_divisible(cfg, world_size, cls.name)

    @torch.inference_mode()
    def forward(self, input_ids, attention_mask, token_type_ids=None):
        mask = additive_mask(attention_mask)
        x = embed(input_ids, self.embeddings, self.cfg.ln_eps, token_type_ids)
        for layer in self.layers:
            x = layer(x, mask)
        return x

    def held_bytes(self) -> int:
        return nbytes(self.embeddings) + sum(layer.nbytes() for layer in self.layers)

    @classmethod
    def expected_traffic(cls, cfg, world, rank, batch, seq, **options):
        return {"allreduce": TensorParallelLayer.traffic(cfg, world, batch, seq) * cfg.layers}

    @classmethod
    def weights_bytes(cls, cfg, world, rank, **options):
        return FP32 * (embedding_params(cfg) + cfg.layers * TensorParallelLayer.params(cfg, world))

    @classmethod
    def steps(cls, cfg, world, batch, seq, **options):
        out = []
        for i in range(cfg.layers):
            out += TensorParallelLayer.steps(cfg, world, batch, seq, embedding(cfg, batch, seq) if i == 0 else ())
        return out

    @classmethod
    def flops(cls, cfg, world, rank, batch, seq, **options):
        return cfg.layers * TensorParallelLayer.flops(cfg, world, batch, seq)

