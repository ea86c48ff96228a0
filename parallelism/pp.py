"""PP: pipeline parallelism (docs/DESIGN.md, strategy table, row PP).

What each rank holds: one stage, a contiguous range of layers (rank 0 the
first layers and the embeddings, rank P-1 the last layers). The ranges are
balanced by compute cost: `kernels.layer_flops` per layer (at a nominal
seq of min(128, max_positions)) plus a small embedding cost on the first
stage; the split minimizes the slowest stage's cost, ties broken towards the
most even split (L=12, P=4 -> 3/3/3/3; L=4, P=3 -> 1/1/2).

What it communicates, per forward: the batch is cut into `micro_batches`
micro-batches (option, default 1; rows as even as possible; clamped to B)
that flow through the stages fill-drain: stage r posts all its receives up
front, then for each micro-batch waits for its activation from stage r-1,
runs its layers and isends the result (B_j, s, h) to stage r+1, so
that while stage r+1 works on micro-batch j, stage r already computes j+1.
Per stage boundary and micro-batch: one send/recv of B_j*s*h values in the
wire dtype (option `wire_dtype`; packed before the send, decoded after the
receive: parallelism/wire.py), i.e. T = B*s*h values per boundary per forward
summed over micro-batches. Every rank has the (identical) ids, padding mask and
token types, so only activations move. The
full (B, s, h) output lands on the last stage (`holds_output`). Refused:
more stages than layers, micro_batches < 1.

Option `stages` (unequal devices): the layer count of each stage instead of
the FLOP balance, e.g. "3,3,4,2" or [3, 3, 4, 2]: one positive count per
rank, summing to the layer count (the planner gives faster hosts more layers).
"""

from __future__ import annotations

import torch

from kernels import FP32, additive_mask, embed, embedding_params, layer_flops, layer_forward, layer_index_params
from kernels.layers import nbytes

from .base import Strategy
from .options import even_split, int_option
from .errors import UsageError
from .schedule import Step, embedding, model_layers
from .traffic import Traffic, charge
from .wire_ops import WIRE_OPTIONS, Wire, recv, send


def balance_stages(costs: list[int], stages: int, first_extra: int = 0) -> list[range]:
    """Contiguous ranges of `costs` for `stages` stages (each non-empty) minimizing
    (max stage cost, sum of squared stage costs); `first_extra` is added to stage 0."""
    n = len(costs)
    prefix = [0]
    for c in costs:
        prefix.append(prefix[-1] + c)
    inf = (float("inf"), float("inf"))
    # best[k][i]: best split of the first i layers into k stages; cut[k][i]: start of stage k-1.
    best = [[inf] * (n + 1) for _ in range(stages + 1)]
    cut = [[0] * (n + 1) for _ in range(stages + 1)]
    best[0][0] = (0, 0)
    for k in range(1, stages + 1):
        for i in range(k, n - (stages - k) + 1):
            for j in range(k - 1, i):
                if best[k - 1][j] == inf:
                    continue
                cost = prefix[i] - prefix[j] + (first_extra if k == 1 else 0)
                prev_max, prev_sq = best[k - 1][j]
                cand = (max(prev_max, cost), prev_sq + cost * cost)
                if cand < best[k][i]:
                    best[k][i], cut[k][i] = cand, j
    ranges, end = [], n
    for k in range(stages, 0, -1):
        start = cut[k][end]
        ranges.append(range(start, end))
        end = start
    return ranges[::-1]


class PipelineParallel(Strategy):
    name = "pp"
    options = {"micro_batches": 1, "stages": None, **WIRE_OPTIONS}

    def __init__(self, cfg, weights, comm, **options):
        super().__init__(cfg, weights, comm, **options)
        self.micro_batches = int_option(self.name, "micro_batches", self.opts["micro_batches"], 1)
        self.stages = self.stage_layers(cfg, comm.size, self.opts["stages"])
        self.mine = self.stages[comm.rank]
        self.first, self.last = comm.rank == 0, comm.rank == comm.size - 1
        self.embeddings = weights.embeddings if self.first else None
        self.layers = [weights.layers[i] for i in self.mine]

    @classmethod
    def check(cls, cfg, world_size, **options):
        super().check(cfg, world_size, **options)
        int_option(cls.name, "micro_batches", options.get("micro_batches", cls.options["micro_batches"]), 1)
        if world_size > cfg.layers:
            raise UsageError(f"{cls.name}: stages (P={world_size}) must be <= layers ({cfg.layers})")
        cls.stage_counts(cfg, world_size, options.get("stages"))

    @classmethod
    def stage_counts(cls, cfg, world_size: int, stages) -> list[int] | None:
        """Layers per stage from the `stages` option ("3,3,4,2" or a list), None for the FLOP
        balance; UsageError unless one positive count per rank summing to the layer count."""
        if stages is None:
            return None
        parts = stages.replace("/", ",").split(",") if isinstance(stages, str) else stages
        try:
            counts = [int_option(cls.name, "stages", part, 1) for part in parts]
        except TypeError:
            raise UsageError(f"{cls.name}: option stages must be layer counts per rank like '3,3,4,2', "
                             f"got {stages!r}") from None
        if len(counts) != world_size:
            raise UsageError(f"{cls.name}: option stages needs one layer count per rank "
                             f"(got {len(counts)}, P={world_size})")
        if sum(counts) != cfg.layers:
            raise UsageError(f"{cls.name}: option stages must add up to the {cfg.layers} layers, "
                             f"got {'+'.join(map(str, counts))}={sum(counts)}")
        return counts

    @classmethod
    def stage_layers(cls, cfg, world_size: int, stages=None) -> list[range]:
        """Each rank's layer range: the `stages` counts if given, else balanced by FLOPs
        (embeddings on the first stage)."""
        counts = cls.stage_counts(cfg, world_size, stages)
        if counts is not None:
            starts = [sum(counts[:r]) for r in range(world_size)]
            return [range(a, a + n) for a, n in zip(starts, counts)]
        seq = min(128, cfg.max_positions)
        costs = [layer_flops(cfg, 1, seq, kind == "decoupled") for kind in cfg.layer_kinds()]
        embed_cost = 10 * seq * cfg.hidden  # lookups, adds and a LayerNorm: tiny, but on stage 0
        return balance_stages(costs, world_size, embed_cost)

    @classmethod
    def micro_rows(cls, batch: int, micro_batches) -> list[int]:
        """Rows of each micro-batch (as even as possible; no more micro-batches than rows)."""
        return even_split(batch, min(int_option(cls.name, "micro_batches", micro_batches, 1), batch))

    @torch.inference_mode()
    def forward(self, input_ids, attention_mask, token_type_ids=None):
        comm, cfg = self.comm, self.cfg
        batch, seq = input_ids.shape
        rows = self.micro_rows(batch, self.micro_batches)
        starts = [sum(rows[:j]) for j in range(len(rows))]
        mask = additive_mask(attention_mask)
        # One (B, s, h) buffer: micro-batch j's activations are its rows (contiguous).
        buf = torch.empty((batch, seq, cfg.hidden))
        receives = []
        if not self.first:
            receives = [recv(comm, self.wire, buf[a:a + n], comm.rank - 1, tag=j)
                        for j, (a, n) in enumerate(zip(starts, rows))]
        sends = []
        for j, (a, n) in enumerate(zip(starts, rows)):
            m = None if mask is None else mask[a:a + n]
            if self.first:
                types = None if token_type_ids is None else token_type_ids[a:a + n]
                x = embed(input_ids[a:a + n], self.embeddings, cfg.ln_eps, types)
            else:
                x = receives[j].wait()
            for w in self.layers:
                x = layer_forward(x, w, m, cfg.heads, cfg.ln_eps)
            if not self.last:
                sends.append(send(comm, self.wire, x, comm.rank + 1, tag=j))
            elif len(rows) == 1:
                buf = x  # a single micro-batch: its output is the output, no copy
            else:
                buf[a:a + n] = x  # its input rows were consumed already
        for request in sends:
            request.wait()
        return buf if self.last else None

    def holds_output(self) -> bool:
        return self.last

    def held_bytes(self) -> int:
        held = sum(nbytes(w) for w in self.layers)
        return held + (nbytes(self.embeddings) if self.embeddings is not None else 0)

    @classmethod
    def expected_traffic(cls, cfg, world, rank, batch, seq, micro_batches=1, **options):
        rows = cls.micro_rows(batch, micro_batches)
        wire = Wire.of(cls.name, {**cls.options, **options})
        table = {}
        if rank > 0:
            table["recv"] = charge("recv", calls=len(rows))
        if rank < world - 1:
            table["send"] = sum((charge("send", wire.nbytes(n * seq * cfg.hidden)) for n in rows), Traffic())
        return table

    @classmethod
    def weights_bytes(cls, cfg, world, rank, stages=None, **options):
        stage = cls.stage_layers(cfg, world, stages)[rank]
        held = sum(layer_index_params(cfg, i) for i in stage)
        return FP32 * (held + (embedding_params(cfg) if rank == 0 else 0))

    @classmethod
    def flops(cls, cfg, world, rank, batch, seq, stages=None, **options):
        stage = cls.stage_layers(cfg, world, stages)[rank]
        return sum(layer_flops(cfg, batch, seq, not cfg.is_boundary(i)) for i in stage)

    @classmethod
    def steps(cls, cfg, world, batch, seq, micro_batches=1, stages=None, **options):
        """Micro-batch j on stage r is step j*P + r: the stage's layers (and the embeddings on
        stage 0), then a non-blocking send to stage r+1, whose step j*P + r + 1 waits for it."""
        rows, ranges = cls.micro_rows(batch, micro_batches), cls.stage_layers(cfg, world, stages)
        wire = Wire.of(cls.name, {**cls.options, **options})
        out = []
        for n in rows:
            for r, stage in enumerate(ranges):
                work = [()] * world
                work[r] = (embedding(cfg, n, seq) if r == 0 else ()) + model_layers(cfg, n, seq, stage)
                after = len(out) - 1 if r > 0 else None
                if r < world - 1:
                    parts = tuple(wire.nbytes(n * seq * cfg.hidden) if q == r else 0 for q in range(world))
                    out.append(Step(tuple(work), "send", parts, parts[r], src=r, dst=r + 1, after=after))
                else:
                    out.append(Step(tuple(work), after=after))
        return out
