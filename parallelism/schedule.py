"""A strategy's forward as a schedule of synchronisation points, for the planner's cost model.

`Strategy.steps(cfg, world, batch, seq, **options)` lists in order what one forward does:
per `Step`, every rank's compute (a tuple of `Work` items: a kernel at a shape) and then one
communication (a collective of all ranks, or one message between two of them). Pure, like
`expected_traffic`: the tests check that the steps' traffic sums to `expected_traffic` and
their FLOPs to `flops` exactly, so the schedule is the same formula seen step by step, not
a second copy of it.

Kernels are those of `kernels.layer_gemms` ("qkv", "attention", "out", "ffn") plus
"embed": the embeddings of `batch x queries` tokens (lookups, adds and a LayerNorm; no
matmul FLOPs, but time on the host that does it).
"""

from __future__ import annotations

from dataclasses import dataclass

from kernels import ModelConfig, layer_gemms

from .traffic import Traffic, add, charge

KERNELS = ("qkv", "attention", "out", "ffn")
EMBED = "embed"


@dataclass(frozen=True)
class Work:
    """`count` times one kernel at one shape: the arguments of `kernels.layer_gemms` (width:
    the layer's input/output width; heads and ffn: those it computes; queries: its tokens
    per sequence; keys: the tokens they attend to)."""
    kernel: str
    batch: int
    queries: int
    keys: int
    width: int
    heads: int
    ffn: int
    count: int = 1

    def flops(self, cfg: ModelConfig) -> int:
        if self.kernel == EMBED or self.count == 0 or self.batch * self.queries == 0:
            return 0
        gemms = layer_gemms(cfg, self.batch, self.queries, self.keys, self.width, self.heads, self.ffn)
        return self.count * gemms[self.kernel]

    @property
    def shape(self) -> tuple:
        """Everything but the count: what a profiled rate is keyed by."""
        return (self.kernel, self.batch, self.queries, self.keys, self.width, self.heads, self.ffn)


def layer(cfg: ModelConfig, batch: int, queries: int, keys: int | None = None, width: int | None = None,
          heads: int | None = None, ffn: int | None = None, count: int = 1,
          kernels: tuple[str, ...] = KERNELS) -> tuple[Work, ...]:
    """`count` layers of one shape (defaults: an original layer over `queries` tokens), as Work
    items of the given kernels (a strategy that communicates inside a layer splits them)."""
    if count == 0 or batch * queries == 0:
        return ()
    keys = queries if keys is None else keys
    width = cfg.hidden if width is None else width
    heads = cfg.heads if heads is None else heads
    ffn = cfg.ffn if ffn is None else ffn
    return tuple(Work(k, batch, queries, keys, width, heads, ffn, count) for k in kernels)


def embedding(cfg: ModelConfig, batch: int, tokens: int) -> tuple[Work, ...]:
    if batch * tokens == 0:
        return ()
    return (Work(EMBED, batch, tokens, tokens, cfg.hidden, cfg.heads, cfg.ffn),)


def model_layers(cfg: ModelConfig, batch: int, seq: int, layers: range | None = None) -> tuple[Work, ...]:
    """The whole model's layers (or the given range) over `seq` tokens: original layers at
    width h, a decoupled layer as its N_div sub-blocks at width h/N_div."""
    layers = range(cfg.layers) if layers is None else layers
    boundary = sum(1 for i in layers if cfg.is_boundary(i))
    decoupled = len(layers) - boundary
    return (layer(cfg, batch, seq, count=boundary)
            + layer(cfg, batch, seq, width=cfg.sub_width, count=decoupled * cfg.n_div))


@dataclass(frozen=True)
class Step:
    """One synchronisation point: every rank computes its `work`, then the communication.

    op None: none. A collective (allreduce, allgather, scatter, gather, ...): all ranks take
    part, rank r with `parts[r]` of `whole` bytes (as `traffic.charge` takes them); it ends
    the step on every rank. op "send": one message of `parts[src]` bytes from `src` to `dst`,
    non-blocking (the sender goes on; pipeline parallelism); `after` is the index of an
    earlier send step whose message this step's work waits for (its receiver computes)."""
    work: tuple[tuple[Work, ...], ...]
    op: str | None = None
    parts: tuple[int, ...] = ()
    whole: int = 0
    src: int | None = None
    dst: int | None = None
    after: int | None = None
    rule: str | None = None  # the traffic rule when it is not op's own (a split allreduce)

    def traffic(self, world: int, rank: int) -> dict[str, Traffic]:
        if self.op is None:
            return {}
        if self.op == "send":
            if rank == self.src:
                return {"send": charge("send", self.parts[rank])}
            return {"recv": charge("recv")} if rank == self.dst else {}
        return {self.op: charge(self.rule or self.op, self.parts[rank], self.whole, world)}

    def flops(self, cfg: ModelConfig, rank: int) -> int:
        return sum(w.flops(cfg) for w in self.work[rank])


def collective(work, op: str, parts, whole: int, rule: str | None = None) -> Step:
    return Step(tuple(tuple(w) for w in work), op, tuple(parts), whole, rule=rule)


def same_everywhere(world: int, work) -> tuple[tuple[Work, ...], ...]:
    return tuple(tuple(work) for _ in range(world))


def schedule_traffic(steps: list[Step], world: int, rank: int) -> dict[str, Traffic]:
    """op -> traffic of `rank` over all steps (equals the strategy's expected_traffic)."""
    table: dict[str, Traffic] = {}
    for step in steps:
        for op, traffic in step.traffic(world, rank).items():
            add(table, op, traffic)
    return table


def schedule_flops(steps: list[Step], cfg: ModelConfig, rank: int) -> int:
    """FLOPs of `rank` over all steps (equals the strategy's flops)."""
    return sum(step.flops(cfg, rank) for step in steps)
