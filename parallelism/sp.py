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
communication; P > max_positions at construction). (Bytes above are fp32's;
option `wire_dtype` packs each part before the call: parallelism/wire_ops.py.)

Overlap (`overlap='on'`, `chunks` C <= s_q[r] on every rank): each rank cuts
its tokens into C spans. After a layer's attention (which needs every key),
the rest of the layer is per token, and so is the next layer's projection: so
span by span the rank runs FFN + LayerNorm, projects the next layer's q, k, v
and posts that span's keys and values (a non-blocking allgatherv straight
into their global positions of the gathered buffer) while it computes the
next span; the last layer posts its output spans the same way. (L + 1) x C
allgathers, the same bytes (int8: the scales of each span's parts). Exact:
the same per-token arithmetic on fewer rows at a time.
"""

from __future__ import annotations

import torch

from kernels import (FP32, additive_mask, attention, attention_residual, embed, ffn_residual, layer_gemms,
                     model_params, project_qkv)

from .base import Strategy
from .errors import UsageError
from .options import OVERLAP_OPTIONS, even_split, overlap_chunks, spans
from .schedule import collective, embedding, layer
from .tp import join
from .traffic import Traffic
from .wire_ops import WIRE_OPTIONS, Wire, allgather, allgather_traffic, progress


class SequenceParallel(Strategy):
    name = "sp"
    options = {**WIRE_OPTIONS, **OVERLAP_OPTIONS}

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
        cfg, comm, wire = self.cfg, self.comm, self.wire
        batch, seq = input_ids.shape
        tokens = self.tokens(seq, comm.size)
        start, mine = sum(tokens[:comm.rank]), tokens[comm.rank]
        h, heads, d, eps = cfg.hidden, cfg.heads, cfg.head_dim, cfg.ln_eps
        mask = additive_mask(attention_mask)  # (B, 1, 1, s): over all keys
        # Per span j: every rank's span j of its tokens, as (global first token, tokens) per rank.
        pieces = self.pieces(seq, comm.size, self.chunks)
        post = len(pieces) > 1
        a_mine = [spans_of_rank[comm.rank] for spans_of_rank in pieces]

        types = None if token_type_ids is None else token_type_ids[:, start:start + mine]
        x = embed(input_ids[:, start:start + mine], self.embeddings, eps, types,
                  position_ids=torch.arange(start, start + mine))
        send = torch.empty((mine, batch, 2, heads, d))
        gathered = torch.empty((seq, batch, 2, heads, d))
        keys = gathered[:, :, 0].permute(1, 2, 0, 3)    # (B, n_h, s, d) views
        values = gathered[:, :, 1].permute(1, 2, 0, 3)
        queries = []

        def post_keys_values(w, j, x_span):
            """Project a span of this rank's tokens; its keys and values go on the wire at once."""
            n, local = a_mine[j][1], a_mine[j][0] - start
            q, k, v = project_qkv(x_span, w.qkv_weight, w.qkv_bias, heads)   # (B, n_h, n, d)
            queries.append(q)
            send[local:local + n, :, 0] = k.permute(2, 0, 1, 3)
            send[local:local + n, :, 1] = v.permute(2, 0, 1, 3)
            row = batch * 2 * h  # one token's keys and values, all sequences
            return allgather(comm, wire, send[local:local + n], [m * row for _, m in pieces[j]],
                             gathered.view(-1), [b * row for b, _ in pieces[j]], post)

        handles = [post_keys_values(self.layers[0], j, x[:, a - start:a - start + n]) for j, (a, n) in enumerate(a_mine)]
        out = torch.empty((seq, batch, h))
        for i, w in enumerate(self.layers):
            for handle in handles:
                handle.wait()
            q = join(queries, dim=2)
            queries.clear()
            attended = attention_residual(x, attention(q, keys, values, mask), w, eps)
            # Per token from here: each span's FFN, then at once the next layer's projection of
            # it (its keys and values on the wire), or for the last layer its output.
            outs, handles = [], []
            for j, (a, n) in enumerate(a_mine):
                outs.append(ffn_residual(attended[:, a - start:a - start + n], w, eps))
                if i + 1 < len(self.layers):
                    handles.append(post_keys_values(self.layers[i + 1], j, outs[-1]))
                else:
                    row = batch * h
                    handles.append(allgather(comm, wire, outs[-1].transpose(0, 1).contiguous(),
                                             [m * row for _, m in pieces[j]], out.view(-1),
                                             [b * row for b, _ in pieces[j]], post))
                progress(handles)
            x = join(outs)
        for handle in handles:
            handle.wait()
        return out.transpose(0, 1).contiguous()  # no copy when B == 1

    @classmethod
    def pieces(cls, seq: int, world: int, chunks: int) -> list[list[tuple[int, int]]]:
        """Per span j, per rank r: (first global token, tokens) of span j of rank r's tokens."""
        tokens = cls.tokens(seq, world)
        per_rank = [spans(cls.name, n, chunks, "the tokens of each rank") for n in tokens]
        return [[(sum(tokens[:r]) + a, n) for r, (a, n) in enumerate(column)] for column in zip(*per_rank)]

    def held_bytes(self) -> int:
        return self._bytes

    @classmethod
    def expected_traffic(cls, cfg, world, rank, batch, seq, **options):
        options = {**cls.options, **options}
        wire, row = Wire.of(cls.name, options), batch * cfg.hidden  # one token's activation, all sequences
        keys_values, outputs = Traffic(), Traffic()
        for column in cls.pieces(seq, world, overlap_chunks(cls.name, options)):
            keys_values += allgather_traffic(wire, [2 * n * row for _, n in column], rank, world)
            outputs += allgather_traffic(wire, [n * row for _, n in column], rank, world)
        return {"allgather": keys_values * cfg.layers + outputs}

    @classmethod
    def steps(cls, cfg, world, batch, seq, **options):
        """Per layer and token span (one span without overlap): the span's FFN of the previous
        layer (after that layer's attention and output projection over all local tokens, or
        the embeddings) and its q, k, v -> allgather of the span's K and V; the last layer's
        spans -> allgather of the outputs."""
        options = {**cls.options, **options}
        wire, row = Wire.of(cls.name, options), batch * cfg.hidden
        columns = cls.pieces(seq, world, overlap_chunks(cls.name, options))
        tokens = cls.tokens(seq, world)
        head = [embedding(cfg, batch, n) for n in tokens]
        out = []
        for i in range(cfg.layers + 1):
            kv = 2 if i < cfg.layers else 1  # keys and values; the outputs at the end
            for column in columns:
                work = [head[r] + (layer(cfg, batch, n, kernels=("ffn",)) if i else ())
                        + (layer(cfg, batch, n, kernels=("qkv",)) if i < cfg.layers else ())
                        for r, (_, n) in enumerate(column)]
                parts = [wire.nbytes(kv * n * row) for _, n in column]
                out.append(collective(work, "allgather", parts, sum(parts)))
                head = [()] * world
            head = [layer(cfg, batch, n, keys=seq, kernels=("attention", "out")) for n in tokens]
        return out

    @classmethod
    def weights_bytes(cls, cfg, world, rank, **options):
        return FP32 * model_params(cfg)

    @classmethod
    def flops(cls, cfg, world, rank, batch, seq, **options):
        mine = cls.tokens(seq, world)[rank]
        return cfg.layers * sum(layer_gemms(cfg, batch, mine, seq, cfg.hidden).values())
