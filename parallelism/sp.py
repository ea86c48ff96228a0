"""SP: sequence parallelism (docs/DESIGN.md, strategy table, row SP).

What each rank holds: the whole model (every weight) and 1/P of the tokens:
rank r owns positions [sum(s_q[:r]), +s_q[r]) with s_q[r] = s//P + (r < s%P)
(uneven lengths are fine). It embeds its tokens at their global positions and
keeps its (B, s_q[r], h) slice of the hidden state through all layers.

What it communicates (all `allgatherv`, counted as op 'allgather'):
- per layer, ONE allgatherv of keys and values packed in one buffer: the rank
  projects q, k, v of its tokens and packs k and v token-major as
  (s_q[r], B, 2, h); the gathered (s, B, 2, h) buffer is read in place as
  the full K and V (B, n_h, s, d) (strided views, no copy); its queries attend
  over all keys with the padding mask. Payload 2*B*s_q[r]*h*4 bytes, bus
  2*B*(s - s_q[r])*h*4 (2 x T gathered per layer, as in the table);
- one final allgatherv of the outputs (s_q[r], B, h) so that every rank holds
  the full (B, s, h) output: payload B*s_q[r]*h*4, bus B*(s - s_q[r])*h*4.
That is L + 1 allgather calls per forward. Refused: more ranks than tokens
(P > s, found at forward time, identically on every rank, before any
communication; P > max_positions at construction).
"""

from __future__ import annotations

import torch

from kernels import (FP32, additive_mask, attention, attention_residual, embed, ffn_residual, layer_gemms,
                     model_params, project_qkv)

from .base import Strategy
from .errors import UsageError
from .dp import even_split
from .schedule import collective, embedding, layer
from .traffic import charge


class SequenceParallel(Strategy):
    name = "sp"

    def __init__(self, cfg, weights, comm, **options):
        super().__init__(cfg, weights, comm, **options)
        weights = weights.materialize()  # the whole model on every rank
        self.embeddings, self.layers = weights.embeddings, weights.layers
        self._bytes = weights.nbytes()

    @classmethod
    def check(cls, cfg, world_size, **options):
        super().check(cfg, world_size, **options)
        if world_size > cfg.max_positions:
            raise UsageError(f"{cls.name}: ranks must be <= tokens (P={world_size}, "
                             f"max_positions={cfg.max_positions})")

    @classmethod
    def tokens(cls, seq: int, world: int) -> list[int]:
        """Tokens per rank."""
        if seq < world:
            raise UsageError(f"{cls.name}: ranks must be <= tokens (P={world}, seq={seq})")
        return even_split(seq, world)

    @torch.inference_mode()
    def forward(self, input_ids, attention_mask, token_type_ids=None):
        cfg, comm = self.cfg, self.comm
        batch, seq = input_ids.shape
        tokens = self.tokens(seq, comm.size)
        start, mine = sum(tokens[:comm.rank]), tokens[comm.rank]
        h, heads, d, eps = cfg.hidden, cfg.heads, cfg.head_dim, cfg.ln_eps
        mask = additive_mask(attention_mask)  # (B, 1, 1, s): over all keys

        types = None if token_type_ids is None else token_type_ids[:, start:start + mine]
        x = embed(input_ids[:, start:start + mine], self.embeddings, eps, types,
                  position_ids=torch.arange(start, start + mine))
        kv_counts = [n * batch * 2 * h for n in tokens]
        send = torch.empty((mine, batch, 2, heads, d))
        gathered = torch.empty((seq, batch, 2, heads, d))
        keys = gathered[:, :, 0].permute(1, 2, 0, 3)    # (B, n_h, s, d) views
        values = gathered[:, :, 1].permute(1, 2, 0, 3)
        for w in self.layers:
            q, k, v = project_qkv(x, w.qkv_weight, w.qkv_bias, heads)   # (B, n_h, s_q, d)
            send[:, :, 0] = k.permute(2, 0, 1, 3)
            send[:, :, 1] = v.permute(2, 0, 1, 3)
            comm.allgatherv(send.view(-1), kv_counts, gathered.view(-1))
            x = ffn_residual(attention_residual(x, attention(q, keys, values, mask), w, eps), w, eps)

        out = torch.empty((seq, batch, h))
        comm.allgatherv(x.transpose(0, 1).contiguous().view(-1), [n * batch * h for n in tokens], out.view(-1))
        return out.transpose(0, 1).contiguous()  # no copy when B == 1

    def held_bytes(self) -> int:
        return self._bytes

    @classmethod
    def expected_traffic(cls, cfg, world, rank, batch, seq, **options):
        tokens = cls.tokens(seq, world)
        mine, row = tokens[rank], batch * cfg.hidden * FP32  # one token's activation, all sequences
        keys_values = charge("allgather", 2 * mine * row, 2 * seq * row, world, calls=cfg.layers)
        outputs = charge("allgather", mine * row, seq * row, world)
        return {"allgather": keys_values + outputs}

    @classmethod
    def steps(cls, cfg, world, batch, seq, **options):
        """Per layer: its q, k, v (after the previous layer's attention, output projection and
        FFN, or the embeddings) -> allgather of K and V; the last layer's rest -> allgather
        of the outputs."""
        tokens, row = cls.tokens(seq, world), batch * cfg.hidden * FP32
        head = [embedding(cfg, batch, n) for n in tokens]
        out = []
        for i in range(cfg.layers + 1):
            work = [head[r] + (layer(cfg, batch, n, kernels=("qkv",)) if i < cfg.layers else ())
                    for r, n in enumerate(tokens)]
            kv = 2 if i < cfg.layers else 1  # keys and values; the outputs at the end
            out.append(collective(work, "allgather", [kv * n * row for n in tokens], kv * seq * row))
            head = [layer(cfg, batch, n, keys=seq, kernels=("attention", "out", "ffn")) for n in tokens]
        return out

    @classmethod
    def weights_bytes(cls, cfg, world, rank, **options):
        return FP32 * model_params(cfg)

    @classmethod
    def flops(cls, cfg, world, rank, batch, seq, **options):
        mine = cls.tokens(seq, world)[rank]
        return cfg.layers * sum(layer_gemms(cfg, batch, mine, seq, cfg.hidden).values())
