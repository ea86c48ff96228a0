"""BP: DeTransformer block parallelism over the decoupled model (docs/DESIGN.md, strategy table, row BP).

The model: N_b blocks; in each block L/N_b - 1 decoupled layers of N_div
independent sub-blocks (sub-block i reads and writes only slice i, h/N_div
wide, of the hidden state), then one original layer (the block boundary).

What each rank holds:
- the embeddings, replicated (every rank embeds the whole batch and cuts out
  its slices: no traffic);
- its sub-blocks of every decoupled layer: by default rank r of P owns
  sub-blocks [r*N_div/P, (r+1)*N_div/P) (needs N_div % P == 0); option
  `assignment` gives each rank an explicit list of sub-block indices instead
  (unequal devices), e.g. [[0, 1, 2], [3]] or the string "0,1,2/3" (ranks
  separated by '/' or ';', as on the drivers' command line): every
  sub-block exactly once, every rank at least one;
- the boundary layers: `boundary='replicate'` (default) the whole layer on
  every rank; `boundary='tp'` a Megatron shard (1/P of the heads and FFN
  columns, `tp.TensorParallelLayer`; needs heads % P == 0 and ffn % P == 0).

What it communicates, per block (N_b times per forward):
- nothing inside the block (sub-blocks never read each other);
- at the boundary, one allgatherv (op 'allgather') of the slices: the rank
  sends its n_r sub-block outputs packed sub-block-major (n_r, B, s, h/N_div)
  -> payload B*s*n_r*(h/N_div)*4, bus B*s*(N_div - n_r)*(h/N_div)*4 bytes;
  the gathered buffer is put back in sub-block order (whatever the
  assignment) into the (B, s, h) input of the boundary layer (one copy);
- `boundary='tp'`: + the 2 allreduces of T = B*s*h*4 of the TP layer.
After the boundary layer every rank has the full hidden state and cuts its
slices again; after the last block every rank holds the full (B, s, h)
output. (Bytes above are fp32's; option `wire_dtype` packs each part before
the call, `wire_reduce` picks how the boundary='tp' allreduces run:
parallelism/wire_ops.py.)

Overlap (`overlap='on'`, `chunks` C, C <= s): the block's last decoupled layer
runs attention and its residual/LayerNorm on every token (attention needs all
keys), then its FFN, residual and LayerNorm (per token) span by span: each
span's slices go on the wire (a non-blocking allgatherv) as soon as they are
computed, while the next span's FFN runs. The boundary layer projects q|k|v
of each span as soon as it has arrived (also per token), then attends over
all tokens as usual (boundary='tp': its allreduces too go span by span,
`TensorParallelLayer`). C allgathers per block instead of one, the same
bytes (int8: the scales of each span's parts). Exact: the same per-token
arithmetic on fewer rows at a time. Not overlapped: the boundary's attention
waits for the last span, and the next block needs the boundary's whole output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels import (FP32, additive_mask, attention, attention_residual, embed, embedding_params, ffn_residual,
                     layer_flops, layer_forward, layer_gemms, layer_params, project_qkv)
from kernels.layers import nbytes

from .base import Strategy
from .errors import UsageError
from .options import OVERLAP_OPTIONS, overlap_chunks, spans
from .schedule import Step, collective, embedding, layer, same_everywhere
from .tp import TensorParallelLayer, check_tp_divisible, join
from .traffic import Traffic
from .wire_ops import REDUCE_OPTIONS, WIRE_OPTIONS, Wire, allgather, allgather_traffic, progress

BOUNDARIES = ("replicate", "tp")


def parse_assignment(value, n_div: int, world_size: int, who: str = "bp") -> list[list[int]] | None:
    """Per-rank sorted sub-block lists from a list of lists or a "0,1,2/3" string;
    UsageError unless it is a partition of range(n_div) into world_size non-empty parts."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = [[int(i) for i in part.split(",") if i.strip()]
                     for part in value.replace(";", "/").split("/")]
        except ValueError:
            raise UsageError(f"{who}: assignment must look like '0,1,2/3' (per-rank sub-block "
                             f"lists separated by '/'), got {value!r}") from None
    try:
        lists = [sorted(int(i) for i in part) for part in value]
    except (TypeError, ValueError):
        raise UsageError(f"{who}: assignment must be one list of sub-block indices per rank, "
                         f"got {value!r}") from None
    if len(lists) != world_size:
        raise UsageError(f"{who}: assignment needs one sub-block list per rank "
                         f"(got {len(lists)} lists, P={world_size})")
    if any(not part for part in lists):
        raise UsageError(f"{who}: assignment gives some rank no sub-block (every rank needs >= 1): {lists}")
    flat = sorted(i for part in lists for i in part)
    if flat != list(range(n_div)):
        raise UsageError(f"{who}: assignment must use every sub-block 0..{n_div - 1} exactly once, "
                         f"got {lists}")
    return lists


class BlockParallel(Strategy):
    name = "bp"
    decoupled = True
    options = {"boundary": "replicate", "assignment": None, **WIRE_OPTIONS, **REDUCE_OPTIONS, **OVERLAP_OPTIONS}

    def __init__(self, cfg, weights, comm, **options):
        super().__init__(cfg, weights, comm, **options)
        self.assignment = self.assign(cfg, comm.size, self.opts["assignment"])
        self.mine = self.assignment[comm.rank]
        # Position in the gathered buffer -> sub-block index (rank order, then the ranks' lists).
        order = [i for part in self.assignment for i in part]
        self.order = None if order == list(range(cfg.n_div)) else torch.tensor(order)
        self.embeddings = weights.embeddings
        self.blocks = []  # per block: (decoupled layers: per layer its sub-blocks, boundary layer)
        lpb = cfg.layers_per_block
        for b in range(cfg.n_blocks):
            decoupled = []
            for li in range(b * lpb, (b + 1) * lpb - 1):
                layer = weights.layers[li]
                if not isinstance(layer, list) or len(layer) != cfg.n_div:
                    raise ValueError(f"layer {li} must be a list of {cfg.n_div} sub-blocks for {cfg.describe()}")
                decoupled.append([layer[i] for i in self.mine])
            w = weights.layers[(b + 1) * lpb - 1]
            if self.opts["boundary"] == "tp":
                boundary = TensorParallelLayer(w, cfg.heads, cfg.ln_eps, comm, self.wire)
            else:
                boundary = w
            self.blocks.append((decoupled, boundary))

    @classmethod
    def check(cls, cfg, world_size, **options):
        super().check(cfg, world_size, **options)
        boundary = options.get("boundary", cls.options["boundary"])
        if boundary not in BOUNDARIES:
            raise UsageError(f"{cls.name}: boundary must be one of {', '.join(BOUNDARIES)}, got {boundary!r}")
        cls.assign(cfg, world_size, options.get("assignment"))
        if boundary == "tp":
            check_tp_divisible(cfg, world_size, f"{cls.name} boundary=tp")

    @classmethod
    def assign(cls, cfg, world_size: int, assignment) -> list[list[int]]:
        lists = parse_assignment(assignment, cfg.n_div, world_size, cls.name)
        if lists is not None:
            return lists
        if cfg.n_div % world_size:
            raise UsageError(f"{cls.name}: n_div % P must be 0 (n_div={cfg.n_div}, P={world_size}), "
                             "or give assignment='0,1/2/3' (per-rank sub-block lists)")
        per = cfg.n_div // world_size
        return [list(range(r * per, (r + 1) * per)) for r in range(world_size)]

    @torch.inference_mode()
    def forward(self, input_ids, attention_mask, token_type_ids=None):
        cfg, comm, wire = self.cfg, self.comm, self.wire
        batch, seq = input_ids.shape
        w_sub, heads, eps = cfg.sub_width, cfg.heads, cfg.ln_eps
        mask = additive_mask(attention_mask)
        pieces = spans(self.name, seq, self.chunks)
        post = len(pieces) > 1

        x = embed(input_ids, self.embeddings, eps, token_type_ids)
        for decoupled, boundary in self.blocks:
            slices = [x[..., i * w_sub:(i + 1) * w_sub] for i in self.mine]  # strided views, no copy
            for sub_blocks in decoupled[:-1]:  # no communication inside the block
                slices = [layer_forward(xi, wi, mask, heads, eps) for xi, wi in zip(slices, sub_blocks)]
            # The block's last decoupled layer: attention needs every token, what follows is per
            # token, so its FFN runs span by span and each span goes on the wire when computed.
            last = decoupled[-1]
            attended = [attention_residual(xi, attention(*project_qkv(xi, wi.qkv_weight, wi.qkv_bias, heads), mask),
                                           wi, eps) for xi, wi in zip(slices, last)]
            handles = []
            for a, n in pieces:
                outs = [ffn_residual(ai[:, a:a + n], wi, eps) for ai, wi in zip(attended, last)]
                part = outs[0] if len(outs) == 1 else torch.stack(outs)  # (n_r, B, n, w) sub-block-major
                gathered = torch.empty((cfg.n_div, batch, n, w_sub))
                counts = [len(mine) * batch * n * w_sub for mine in self.assignment]
                handles.append((allgather(comm, wire, part, counts, gathered.view(-1), post=post), gathered))
                progress(h for h, _ in handles)
            # The boundary layer: its q|k|v projection is per token too, so with overlap each
            # span is projected as soon as it has arrived.
            x = torch.empty((batch, seq, cfg.hidden))
            projected = []
            for (a, n), (handle, gathered) in zip(pieces, handles):
                handle.wait()
                self.place(gathered, x[:, a:a + n])
                if post:
                    projected.append(self.project(boundary, x[:, a:a + n]))
            qkv = join(projected) if post else None
            if isinstance(boundary, TensorParallelLayer):
                x = boundary(x, mask, pieces, qkv)
            else:
                x = layer_forward(x, boundary, mask, heads, eps, qkv)
        return x

    def place(self, gathered: torch.Tensor, x: torch.Tensor) -> None:
        """Gathered slices (n_div, B, n, w), in rank order -> their columns of x (B, n, h):
        slice i of the hidden state is columns [i*w, (i+1)*w)."""
        by_slice = x.unflatten(-1, (self.cfg.n_div, self.cfg.sub_width)).permute(2, 0, 1, 3)
        if self.order is None:
            by_slice.copy_(gathered)
        else:
            by_slice.index_copy_(0, self.order, gathered)

    @staticmethod
    def project(boundary, x: torch.Tensor) -> torch.Tensor:
        if isinstance(boundary, TensorParallelLayer):
            return boundary.project(x)
        return F.linear(x, boundary.qkv_weight, boundary.qkv_bias)

    def held_bytes(self) -> int:
        held = nbytes(self.embeddings)
        for decoupled, boundary in self.blocks:
            held += sum(nbytes(w) for sub_blocks in decoupled for w in sub_blocks)
            held += boundary.nbytes() if isinstance(boundary, TensorParallelLayer) else nbytes(boundary)
        return held

    @classmethod
    def _opts(cls, cfg, world, rank, options) -> tuple[int, bool]:
        """(sub-blocks this rank holds, whether the boundary layers are TP-sharded)."""
        options = {**cls.options, **options}
        return len(cls.assign(cfg, world, options["assignment"])[rank]), options["boundary"] == "tp"

    @classmethod
    def expected_traffic(cls, cfg, world, rank, batch, seq, **options):
        mine, tp = cls._opts(cfg, world, rank, options)
        options = {**cls.options, **options}
        wire, pieces = Wire.of(cls.name, options), spans(cls.name, seq, overlap_chunks(cls.name, options))
        parts = [len(p) for p in cls.assign(cfg, world, options["assignment"])]
        block = sum((allgather_traffic(wire, [k * batch * n * cfg.sub_width for k in parts], rank, world)
                     for _, n in pieces), Traffic())
        table = {"allgather": block * cfg.n_blocks}
        if tp:
            table["allreduce"] = TensorParallelLayer.traffic(cfg, world, rank, batch, seq, wire, pieces) * cfg.n_blocks
        return table

    @classmethod
    def weights_bytes(cls, cfg, world, rank, **options):
        mine, tp = cls._opts(cfg, world, rank, options)
        decoupled = cfg.layers - cfg.n_blocks
        boundary = TensorParallelLayer.params(cfg, world) if tp else layer_params(cfg, cfg.hidden)
        held = decoupled * mine * layer_params(cfg, cfg.sub_width) + cfg.n_blocks * boundary
        return FP32 * (embedding_params(cfg) + held)

    @classmethod
    def flops(cls, cfg, world, rank, batch, seq, **options):
        mine, tp = cls._opts(cfg, world, rank, options)
        decoupled = cfg.layers - cfg.n_blocks
        sub_block = sum(layer_gemms(cfg, batch, seq, seq, cfg.sub_width).values())
        boundary = TensorParallelLayer.flops(cfg, world, batch, seq) if tp else layer_flops(cfg, batch, seq, False)
        return decoupled * mine * sub_block + cfg.n_blocks * boundary

    @classmethod
    def steps(cls, cfg, world, batch, seq, **options):
        """Per block: the rank's sub-blocks of its decoupled layers (after the previous block's
        replicated boundary layer, or the embeddings), the last one's FFN per token span ->
        per span an allgather of the slices (one span without overlap); a TP boundary is then
        its own steps (tp.TensorParallelLayer.steps)."""
        options = {**cls.options, **options}
        mine = [len(part) for part in cls.assign(cfg, world, options["assignment"])]
        wire, pieces = Wire.of(cls.name, options), spans(cls.name, seq, overlap_chunks(cls.name, options))
        tp, w = options["boundary"] == "tp", cfg.sub_width
        boundary = layer(cfg, batch, seq)  # replicated: every rank computes it whole
        head = [embedding(cfg, batch, seq)] * world
        out = []
        for _ in range(cfg.n_blocks):
            for a, n in pieces:
                work = [layer(cfg, batch, n, width=w, count=k, kernels=("ffn",)) for k in mine]
                if a == 0:  # the block's layers up to the last one's attention, over every token
                    work = [head[r] + layer(cfg, batch, seq, width=w, count=(cfg.layers_per_block - 2) * k)
                            + layer(cfg, batch, seq, width=w, count=k, kernels=("qkv", "attention", "out")) + work[r]
                            for r, k in enumerate(mine)]
                parts = [wire.nbytes(k * batch * n * w) for k in mine]
                out.append(collective(work, "allgather", parts, sum(parts)))
            if tp:
                out += TensorParallelLayer.steps(cfg, world, batch, seq, wire, pieces)
                head = [()] * world
            else:
                head = [boundary] * world
        if not tp:  # the last boundary layer ends the forward, no communication after it
            out.append(Step(same_everywhere(world, boundary)))
        return out
