"""DP: data parallelism (docs/DESIGN.md, strategy table, row DP).

What each rank holds: the whole model (the `ReferenceModel` over the full
weights) and its share of the requests: rank r gets rows
[sum(rows[:r]), +rows[r]) of the batch, rows[r] = B//P + (r < B%P), so the
split is as even as possible and unequal splits are fine. With B < P the
ranks r >= B get no rows: they take part in the collectives with empty parts
and compute nothing (handled, not refused).

What it communicates, per forward (requests arrive at rank 0, answers leave
from rank 0):
- one scatterv from rank 0 of the token ids, the padding mask and the token
  type ids, packed into one int32 buffer (B, PACKED_ROWS=3, s) (the types row
  travels also when no types are given, as zeros, so the bytes do not depend
  on it): rank r receives rows[r] * 3 * s * 4 bytes (counted on rank 0:
  payload = bus = everything but its own rows);
- one gatherv to rank 0 of the outputs (rows[r], s, h) in the wire dtype (option
  `wire_dtype`; parallelism/wire.py): a non-root rank counts wire_bytes(rows[r] * s * h)
  (fp32: rows[r] * s * h * 4), rank 0 counts 0. The token ids stay int32 on every wire.
The full (B, s, h) output lands on rank 0 only (`holds_output`).
"""

from __future__ import annotations

import torch

from kernels import FP32, ReferenceModel, forward_flops, model_params

from .base import Strategy
from .options import even_split
from .schedule import collective, embedding, model_layers
from .traffic import charge
from .wire_ops import WIRE_OPTIONS, Wire, gather

INPUT_DTYPE = torch.int32  # token ids, mask and types travel as int32 (vocabularies are < 2**31)
PACKED_ROWS = 3            # rows per sequence in the scattered input buffer: ids, mask, token types


class DataParallel(Strategy):
    name = "dp"
    options = {**WIRE_OPTIONS}
    root = 0

    def __init__(self, cfg, weights, comm, **options):
        super().__init__(cfg, weights, comm, **options)
        weights = weights.materialize()  # the whole model on every rank
        self.model = ReferenceModel(cfg, weights)
        self._bytes = weights.nbytes()

    @torch.inference_mode()
    def forward(self, input_ids, attention_mask, token_type_ids=None):
        comm, rank = self.comm, self.comm.rank
        batch, seq = input_ids.shape
        rows = even_split(batch, comm.size)
        mine = rows[rank]
        # Only the root's copy of the inputs is read: it hands out the rows.
        packed = None
        if rank == self.root:
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(input_ids)
            packed = torch.stack([t.to(INPUT_DTYPE) for t in (input_ids, attention_mask, token_type_ids)], dim=1)
        local = torch.empty((mine, PACKED_ROWS, seq), dtype=INPUT_DTYPE)
        comm.scatterv(packed, [r * PACKED_ROWS * seq for r in rows], local, self.root)

        if mine:
            out_local = self.model.forward(local[:, 0], local[:, 1], local[:, 2])
        else:
            out_local = torch.empty((0, seq, self.cfg.hidden))
        full = torch.empty((batch, seq, self.cfg.hidden)) if rank == self.root else None
        gather(comm, self.wire, out_local, [r * seq * self.cfg.hidden for r in rows], full, self.root)
        return full

    def holds_output(self) -> bool:
        return self.comm.rank == self.root

    def held_bytes(self) -> int:
        return self._bytes

    @classmethod
    def _moved(cls, cfg, world, rank, batch, seq, **options) -> tuple[int, int]:
        """(bytes `rank` hands out in the scatter, bytes it hands in to the gather)."""
        rows, wire = even_split(batch, world), Wire.of(cls.name, {**cls.options, **options})
        if rank == cls.root:  # hands out every row but its own (token ids: int32 on any wire)
            return (batch - rows[rank]) * PACKED_ROWS * seq * INPUT_DTYPE.itemsize, 0
        return 0, wire.nbytes(rows[rank] * seq * cfg.hidden)

    @classmethod
    def expected_traffic(cls, cfg, world, rank, batch, seq, **options):
        handed_out, handed_in = cls._moved(cfg, world, rank, batch, seq, **options)
        return {"scatter": charge("scatter", handed_out), "gather": charge("gather", handed_in)}

    @classmethod
    def steps(cls, cfg, world, batch, seq, **options):
        """Scatter the rows, then every rank its rows through the whole model, then gather."""
        moved = [cls._moved(cfg, world, r, batch, seq, **options) for r in range(world)]
        rows = even_split(batch, world)
        work = [embedding(cfg, n, seq) + model_layers(cfg, n, seq) for n in rows]
        gathered = sum(Wire.of(cls.name, {**cls.options, **options}).nbytes(n * seq * cfg.hidden) for n in rows)
        return [collective([()] * world, "scatter", [m[0] for m in moved], sum(m[0] for m in moved)),
                collective(work, "gather", [m[1] for m in moved], gathered)]

    @classmethod
    def weights_bytes(cls, cfg, world, rank, **options):
        return FP32 * model_params(cfg)

    @classmethod
    def flops(cls, cfg, world, rank, batch, seq, **options):
        return forward_flops(cfg, even_split(batch, world)[rank], seq)
