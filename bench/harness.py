"""The one harness every driver shares (OSU Micro-Benchmarks style).

A driver file is its loop and its table; everything else lives here:

- options: `parser()` builds the common command line (model, shape, strategies,
  warm-up/iterations, threads, output); bad input raises `UsageError`, which
  `run_main` turns into one line `error: ...` and exit code 2 on every rank;
- model and weights: `resolve_model()` (preset name or checkpoint folder),
  `Model.weights()` (seeded init or `kernels.load_checkpoint`);
- strategy selection: `select()` (default list: skip what does not fit, with a
  reason; explicit list: error);
- timing: `measure()` runs warm-up forwards, then timed forwards each started
  after a barrier; an iteration's latency is the maximum over ranks of the
  rank's forward time; per rank it also keeps the time spent inside the
  communicator (compute = latency - communication of the slowest rank);
- statistics, records (`Session.emit`: atomic JSONL append, `--csv`), env and
  network capture, progress lines with elapsed/ETA on rank 0, `--quiet`, tables.

Timing conventions (documented in every record): `latency_s` are seconds per
forward (one inference of `batch` sequences); `comm_s` is the slowest rank's
time inside communicator calls (including waiting for peers), averaged over
iterations, and `compute_s = latency_s.mean - comm_s`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter

import torch

from kernels import ConfigError, ModelConfig, PRESETS, ReferenceModel, init_weights, preset
from kernels.weights import config_from_checkpoint, load_checkpoint
from parallelism import STRATEGIES, UsageError
from parallelism.comm import Communicator, mpi_versions, processor_name, world_rank

from . import cli, records
from .cli import int_list, name_list, nonneg_int, positive_int  # noqa: F401 - drivers use H.*
from .records import fmt_bytes, fmt_s, stats  # noqa: F401 - drivers use H.fmt_*

DEFAULT_STRATEGIES = ("dp", "pp", "tp", "sp", "bp")
REFERENCE = "serial"


# ====================================================================================
# options
# ====================================================================================
def assignment(text: str) -> list[list[int]]:
    """'0,1/2/3' -> [[0, 1], [2], [3]]: sub-block indices per rank, ranks separated by '/'."""
    try:
        out = [[int(v) for v in part.split(",") if v.strip()] for part in text.split("/")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected sub-block lists per rank like '0,1/2/3', got {text!r}") from None
    if any(not part for part in out):
        raise argparse.ArgumentTypeError(f"every rank needs at least one sub-block, got {text!r}")
    return out


@dataclass
class Defaults:
    model: str = "bert-base"
    batch: int = 1
    seq: int = 128
    warmup: int = 2
    iters: int = 10
    strategies: tuple = DEFAULT_STRATEGIES


def parser(bench: str, description: str, defaults: Defaults | None = None, epilog: str | None = None,
           shape: bool = True, timing: bool = True, strategies: bool = True,
           batch: bool = True) -> ArgumentParser:
    d = defaults or Defaults()
    p = cli.ArgumentParser(prog=f"python -m bench.{bench}", description=description, epilog=epilog,
                           quiet_rank=world_rank() != 0)
    m = p.add_argument_group("model")
    m.add_argument("--model", default=d.model,
                   help=f"preset ({', '.join(PRESETS)}) or a Hugging Face BERT checkpoint folder "
                        f"(default {d.model}); checkpoint weights are original BERT, so bp is not run on them")
    if shape and batch:
        m.add_argument("--batch", type=positive_int, default=d.batch, help=f"sequences per request (default {d.batch})")
    if shape:
        m.add_argument("--seq", type=positive_int, default=d.seq, help=f"tokens per sequence (default {d.seq})")
    m.add_argument("--nb", type=positive_int, default=None,
                   help="blocks N_b of the decoupled model (bp; default 4, or for models of <= 4 layers "
                        "the largest divisor of the layer count below it, e.g. 2 for tiny)")
    m.add_argument("--ndiv", type=positive_int, default=4, help="sub-blocks N_div per decoupled layer (bp; default 4)")
    m.add_argument("--seed", type=int, default=0, help="seed of the weights and inputs (default 0)")
    if strategies:
        s = p.add_argument_group("strategies")
        s.add_argument("--strategies", type=name_list, default=None,
                       help=f"comma-separated (default: {','.join(d.strategies)}, skipping those that do "
                            "not fit the world size or model, with the reason; named ones must fit)")
        s.add_argument("--boundary", type=name_list, default=["replicate"],
                       help="bp boundary layers: replicate, tp, or both 'replicate,tp' (default replicate)")
        s.add_argument("--assignment", type=assignment, default=None,
                       help="bp sub-blocks per rank, ranks separated by '/', e.g. '0,1/2/3' (default: even)")
        s.add_argument("--micro-batches", type=positive_int, default=None,
                       help="pp micro-batches per forward (default: the strategy's)")
    if timing:
        t = p.add_argument_group("timing")
        t.add_argument("--warmup", type=nonneg_int, default=d.warmup,
                       help=f"untimed forwards first (default {d.warmup})")
        t.add_argument("--iters", type=positive_int, default=d.iters,
                       help=f"timed forwards, each after a barrier (default {d.iters})")
    e = p.add_argument_group("execution and output")
    e.add_argument("--threads", type=positive_int, default=1, help="torch threads per rank (default 1)")
    e.add_argument("--wait", choices=("auto", "spin", "sleep"), default="auto",
                   help="how ranks wait in MPI calls: spin (busy-poll), sleep (poll with short sleeps), "
                        "auto = sleep when there are more ranks than CPUs, else spin (default auto)")
    e.add_argument("--out", default=None,
                   help=f"JSONL file records are appended to (default results/{bench}-<UTC time>.jsonl)")
    e.add_argument("--csv", default=None, help="also append flat records to this CSV file")
    e.add_argument("--rate", default=None,
                   help="link rate in force, recorded as given (bench.sweep sets it); "
                        "default: from the network layer when it knows")
    e.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE",
                   help="extra key=value recorded under 'tags' (repeatable)")
    e.add_argument("--quiet", action="store_true", help="no progress lines or tables (errors still print)")
    return p


def parse(p: ArgumentParser, argv=None) -> argparse.Namespace:
    args = p.parse_args(argv)
    tags = {}
    for item in getattr(args, "tag", []):
        if "=" not in item:
            raise UsageError(f"--tag expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        tags[key] = value
    args.tags = tags
    for b in getattr(args, "boundary", None) or []:
        if b not in ("replicate", "tp"):
            raise UsageError(f"--boundary: expected replicate or tp, got {b!r}")
    if getattr(args, "strategies", None):
        for name in args.strategies:
            if name not in STRATEGIES:
                raise UsageError(f"unknown strategy {name!r} (available: {', '.join(STRATEGIES)})")
    return args


# ====================================================================================
# model and weights
# ====================================================================================
@dataclass
class Model:
    """The model a run uses: its original shape, its decoupled shape (bp), and where weights come from."""
    name: str
    original: ModelConfig
    decoupled: ModelConfig | None      # None when N_b/N_div do not fit this model
    decoupled_error: str | None
    checkpoint: Path | None
    seed: int

    def config(self, decoupled: bool) -> ModelConfig:
        if not decoupled:
            return self.original
        if self.decoupled is None:
            raise UsageError(self.decoupled_error)
        return self.decoupled

    def weights(self, decoupled: bool):
        if decoupled and self.checkpoint is not None:
            raise UsageError(f"bp runs the decoupled model, which needs trained decoupled weights; "
                             f"{self.checkpoint} is an original BERT checkpoint: use a preset (seeded weights)")
        if self.checkpoint is not None:
            return load_checkpoint(self.checkpoint)[1]
        return init_weights(self.config(decoupled), self.seed)


def default_blocks(layers: int) -> int:
    if layers > 4 and layers % 4 == 0:
        return 4
    return max([d for d in range(1, layers) if layers % d == 0] or [1])


def resolve_model(spec: str, nb: int | None = None, ndiv: int = 4, seed: int = 0) -> Model:
    try:
        if spec in PRESETS:
            cfg, checkpoint = preset(spec), None
        elif Path(spec).is_dir():
            cfg, checkpoint = config_from_checkpoint(spec), Path(spec)
        else:
            raise UsageError(f"--model {spec!r}: neither a preset ({', '.join(PRESETS)}) nor a checkpoint folder")
    except ConfigError as err:
        raise UsageError(str(err)) from None
    decoupled, error = None, None
    nb = default_blocks(cfg.layers) if nb is None else nb
    try:
        decoupled = cfg.replace(n_blocks=nb, n_div=ndiv)
        if not decoupled.is_decoupled:
            decoupled, error = None, (f"--nb {nb} equals the layer count {cfg.layers}: that is the original "
                                      "model, bp needs N_b < layers")
    except ConfigError as err:
        error = f"decoupled {cfg.name} with --nb {nb} --ndiv {ndiv}: {err}"
    if checkpoint is not None:
        decoupled, error = None, (f"bp needs decoupled weights; {checkpoint} is an original BERT checkpoint "
                                  "(use a preset)")
    name = cfg.name if checkpoint is None else "/".join(checkpoint.resolve().parts[-2:])
    return Model(name, cfg, decoupled, error, checkpoint, seed)


def make_inputs(cfg: ModelConfig, batch: int, seq: int, seed: int = 0):
    """Deterministic token ids (identical on every rank) and an all-ones mask."""
    if seq > cfg.max_positions:
        raise UsageError(f"--seq {seq} exceeds the model's max_positions {cfg.max_positions}")
    gen = torch.Generator().manual_seed(seed + 7919)
    ids = torch.randint(1, cfg.vocab, (batch, seq), generator=gen)
    return ids, torch.ones(batch, seq, dtype=torch.long)


# ====================================================================================
# strategies
# ====================================================================================
@dataclass
class Plan:
    """One strategy to run: class, options, label, and which model shape it needs."""
    name: str
    cls: type
    options: dict
    label: str

    @property
    def decoupled(self) -> bool:
        return bool(getattr(self.cls, "decoupled", False))


def strategy_options(cls, args, extra: dict | None = None) -> list[dict]:
    """The option sets to run `cls` with (one per --boundary value for bp)."""
    accepted = getattr(cls, "options", {}) or {}
    base = {}
    if "assignment" in accepted and getattr(args, "assignment", None) is not None:
        base["assignment"] = args.assignment
    if "micro_batches" in accepted and getattr(args, "micro_batches", None) is not None:
        base["micro_batches"] = args.micro_batches
    for key, value in (extra or {}).items():
        if key in accepted:
            base[key] = value
    if "boundary" in accepted:
        return [{**base, "boundary": b} for b in (getattr(args, "boundary", None) or ["replicate"])]
    return [base]


def label_of(name: str, options: dict, show_boundary: bool) -> str:
    if show_boundary and "boundary" in options:
        return f"{name}({options['boundary']})"
    return name


def select(args, model: Model, world_size: int, say=print, extra_options: dict | None = None,
           defaults=DEFAULT_STRATEGIES, strict: bool | None = None) -> list[Plan]:
    """Strategies to run at `world_size`. Default list: those that do not fit are
    skipped with a printed reason. Explicit --strategies: any misfit is an error
    (raised identically on every rank, before any communication) unless
    `strict=False` (a device-count sweep skips the counts a strategy cannot use)."""
    explicit = bool(getattr(args, "strategies", None))
    strict = explicit if strict is None else strict
    names = list(args.strategies) if explicit else [n for n in defaults if n in STRATEGIES]
    if not explicit:
        missing = [n for n in defaults if n not in STRATEGIES]
        if missing:
            say(f"skip {','.join(missing)}: not implemented in this checkout (parallelism.STRATEGIES)")
    plans = []
    many_boundaries = len(getattr(args, "boundary", None) or []) > 1
    for name in names:
        cls = STRATEGIES[name]
        for options in strategy_options(cls, args, extra_options):
            label = label_of(name, options, many_boundaries)
            try:
                cfg = model.config(getattr(cls, "decoupled", False))
                cls.check(cfg, world_size, **{**(getattr(cls, "options", {}) or {}), **options})
            except (UsageError, ConfigError) as err:
                if strict:
                    raise UsageError(f"{label}: {err}") from None
                say(f"skip {label}: {err}")
                continue
            plans.append(Plan(name, cls, options, label))
    return plans


# ====================================================================================
# waiting and timing
# ====================================================================================
def make_comm(mode: str = "auto") -> Communicator:
    from mpi4py import MPI
    size = MPI.COMM_WORLD.Get_size()
    if mode == "auto":
        env = os.environ.get("DETR_COMM_WAIT")
        mode = env if env in ("spin", "sleep") else ("sleep" if size > (os.cpu_count() or 1) else "spin")
    return Communicator(MPI.COMM_WORLD, wait=mode)


@dataclass
class Timing:
    """What `measure` found; rank-local fields are this rank's, the rest are the same on every rank."""
    latency: list[float]             # per iteration: max over ranks of the forward time
    compute_slowest: list[float]     # per iteration: the slowest rank's forward time minus its comm time
    comm_slowest: list[float]        # per iteration: the slowest rank's time in communicator calls
    comm_by_rank: list[float]        # mean comm seconds per iteration, per rank
    counters: object                 # this rank's comm.Counters over the timed iterations
    output: object                   # this rank's output of the last forward (None if not held)
    wire: dict | None = None         # {"tx": [...per rank], "rx": [...]} bytes per iteration, or None
    bare_s: float | None = None      # --compare-bare: mean over bare forwards of the slowest rank's time


@torch.inference_mode()
def measure(strategy, comm: Communicator, ids, mask, warmup: int, iters: int,
            wire_iface: str | None = None, bare: bool = False) -> Timing:
    """Warm-up, then `iters` barrier-synchronised forwards on every rank of `comm`.

    bare=True (--compare-bare) also times the harness's own cost: the timed
    iterations are split into up to 8 blocks, each followed by a block of as
    many bare forwards, so that drift in machine load hits both alike. A bare
    forward is what a hand-written latency loop does (barrier, clock, forward,
    clock) without the harness's bookkeeping; bare_s is the mean over those
    forwards of the slowest rank's time, the same statistic as the harness's.
    (A barrier-free back-to-back loop would measure something else: pp's
    stages would overlap consecutive requests, a throughput, not a latency.)
    """
    for _ in range(warmup):
        strategy.forward(ids, mask)
    comm.sync()
    comm.reset()
    local, local_comm = [], []
    tx0 = rx0 = None
    if wire_iface:
        tx0, rx0 = _read_wire(wire_iface)
    blocks = min(8, iters) if bare else 1
    sizes = [iters // blocks + (b < iters % blocks) for b in range(blocks)]
    bare_local, bare_counters = [], []
    out = None
    for size in sizes:
        for _ in range(size):
            comm.sync()
            c0 = comm.counters.seconds()
            t0 = perf_counter()
            out = strategy.forward(ids, mask)
            t1 = perf_counter()
            local.append(t1 - t0)
            local_comm.append(comm.counters.seconds() - c0)
        if bare:
            # Keep the bare forwards out of the counters and the wire bytes of the timed ones.
            bare_counters.append(comm.reset())
            for _ in range(size):
                comm.sync()
                t0 = perf_counter()
                strategy.forward(ids, mask)
                bare_local.append(perf_counter() - t0)
            comm.reset()
    counters = comm.reset() if not bare else _merge_counters(bare_counters)
    wire_local = None
    if wire_iface and tx0 is not None and not bare:
        tx1, rx1 = _read_wire(wire_iface)
        if tx1 is not None:
            wire_local = ((tx1 - tx0) / iters, (rx1 - rx0) / iters)
    everyone = comm.allgather_object((local, local_comm, wire_local, bare_local))
    bare_s = sum(max(r[3][i] for r in everyone) for i in range(iters)) / iters if bare else None
    latency, compute, comm_slow = [], [], []
    for i in range(iters):
        per_rank = [(r[0][i], r[1][i]) for r in everyone]
        total, inside = max(per_rank)
        latency.append(total)
        comm_slow.append(inside)
        compute.append(total - inside)
    comm_by_rank = [sum(r[1]) / iters for r in everyone]
    wire = None
    if all(r[2] is not None for r in everyone):
        wire = {"tx": [r[2][0] for r in everyone], "rx": [r[2][1] for r in everyone]}
    return Timing(latency, compute, comm_slow, comm_by_rank, counters,
                  out if strategy.holds_output() else None, wire, bare_s)


def _merge_counters(parts):
    from parallelism.comm import Counters
    merged = Counters()
    for part in parts:
        merged.merge(part)
    return merged


def max_abs_err(comm: Communicator, output, reference) -> float | None:
    """Max over the ranks that hold an output of |output - reference|; None if no rank holds one."""
    local = -1.0
    if output is not None and reference is not None:
        if tuple(output.shape) != tuple(reference.shape):
            local = float("inf")
        else:
            local = float((output.float() - reference.float()).abs().max())
    worst = comm.max_over_ranks(local)
    return None if worst < 0 else worst


# ====================================================================================
# traffic summaries
# ====================================================================================
def _over_ranks(comm: Communicator, local: dict) -> dict:
    """{'total': max over ranks, 'mean': ..., 'by_rank': [...], 'by_op': {op: max over ranks}}."""
    everyone = comm.allgather_object(local)
    totals = [sum(r.values()) for r in everyone]
    ops = sorted({op for r in everyone for op in r})
    return {"total": max(totals) if totals else 0, "mean": sum(totals) / len(totals),
            "by_rank": totals, "by_op": {op: max(r.get(op, 0) for r in everyone) for op in ops}}


def _per_iter(value, iters: int):
    q = value / iters
    return int(q) if float(q).is_integer() else q


def traffic(comm: Communicator, counters, iters: int) -> dict:
    """Measured payload, bus and message counts per inference per rank."""
    by_op = counters.by_op()
    return {"payload": _over_ranks(comm, {op: _per_iter(t.payload, iters) for op, t in by_op.items()}),
            "bus": _over_ranks(comm, {op: _per_iter(t.bus, iters) for op, t in by_op.items()}),
            "messages": _over_ranks(comm, {op: _per_iter(t.calls, iters) for op, t in by_op.items()})}


def expected(comm: Communicator, strategy, batch: int, seq: int) -> dict:
    table = strategy.traffic_here(batch, seq)
    return {"payload": _over_ranks(comm, {op: t.payload for op, t in table.items()}),
            "bus": _over_ranks(comm, {op: t.bus for op, t in table.items()}),
            "messages": _over_ranks(comm, {op: t.calls for op, t in table.items()})}


def weights_bytes(comm: Communicator, strategy) -> dict:
    everyone = comm.allgather_object(int(strategy.weights_bytes_here()))
    return {"max": max(everyone), "total": sum(everyone), "by_rank": everyone}


def measure_point(plan, strategy, comm: Communicator, ids, mask, warmup: int, iters: int, batch: int,
                  seq: int, wire_iface: str | None = None, bare: bool = False) -> tuple[dict, Timing]:
    """Time `strategy` (see `measure`) and summarise it into the record fields every driver shares.

    `warmup` counts the forward prepare() already ran.
    """
    timing = measure(strategy, comm, ids, mask, max(warmup - 1, 0), iters, wire_iface, bare)
    measured = traffic(comm, timing.counters, iters)
    analytic = expected(comm, strategy, batch, seq)
    fields = dict(
        strategy=plan.name, label=plan.label, options=plan.options, boundary=plan.options.get("boundary"),
        warmup=warmup, iters=iters,
        weights_bytes_per_rank=weights_bytes(comm, strategy),
        payload_bytes_per_rank=measured["payload"], bus_bytes_per_rank=measured["bus"],
        messages_per_rank=measured["messages"],
        expected_payload_bytes_per_rank=analytic["payload"], expected_bus_bytes_per_rank=analytic["bus"],
        expected_messages_per_rank=analytic["messages"],
        wire_bytes_per_rank=max(timing.wire["tx"]) if timing.wire else None,
        wire_rx_bytes_per_rank=max(timing.wire["rx"]) if timing.wire else None,
        reference="serial decoupled" if plan.decoupled else "serial")
    lat = stats(timing.latency)
    comm_s = sum(timing.comm_slowest) / len(timing.comm_slowest)
    fields.update(latency_s=lat, latency_samples_s=timing.latency, compute_s=lat["mean"] - comm_s,
                  comm_s=comm_s, comm_s_by_rank=timing.comm_by_rank)
    return fields, timing


# ====================================================================================
# network (bench.network is another engineer's module: optional)
# ====================================================================================
def _network_module():
    try:
        from . import network  # noqa: F401
        return network
    except Exception:  # noqa: BLE001 - missing or broken: run without it
        return None


def network_iface() -> str | None:
    net = _network_module()
    try:
        return net.wire_iface() if net is not None else None
    except Exception:  # noqa: BLE001
        return None


def _read_wire(iface: str):
    net = _network_module()
    try:
        tx, rx = net.read_tx_rx(iface)
        return int(tx), int(rx)
    except Exception:  # noqa: BLE001
        return None, None


def network_description(iface: str | None) -> dict | None:
    net = _network_module()
    try:
        return net.describe_network(iface) if net is not None else None
    except Exception:  # noqa: BLE001
        return None


# ====================================================================================
# a session: one driver run
# ====================================================================================
class Session:
    """Everything one driver run shares: communicator, env, network, output, progress."""

    def __init__(self, bench: str, args, comm: Communicator | None = None, collective: bool = True):
        self.bench, self.args = bench, args
        torch.set_num_threads(getattr(args, "threads", 1))
        self.comm = comm or make_comm(getattr(args, "wait", "auto"))
        self.rank, self.size = self.comm.rank, self.comm.size
        self.quiet = getattr(args, "quiet", False)
        self.out = Path(args.out) if getattr(args, "out", None) else \
            Path("results") / f"{bench}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.jsonl"
        problem = self._check_writable() if self.rank == 0 else None
        if collective:
            # Rank 0's name and verdict win so that every rank agrees (and fails alike).
            self.out, problem = self.comm.bcast_object((self.out, problem))
        if problem:
            raise UsageError(problem)
        self.iface = network_iface()
        local = {**records.local_env(), "host": processor_name(), "iface": self.iface,
                 "network": network_description(self.iface)}
        everyone = self.comm.allgather_object(local) if collective else [local]
        first = everyone[0]
        self.env = {"hostnames": [e["host"] for e in everyone], **mpi_versions(),
                    **{k: first[k] for k in ("python", "torch", "threads", "cpu_model", "cpus", "git_commit",
                                             "utc_time")},
                    "wait": self.comm.wait, "argv": sys.argv[1:]}
        nets = [e["network"] for e in everyone]
        # One entry per rank (rank r's host and the shaping on its interface), None if no rank knows.
        self.network = None if all(n is None for n in nets) else \
            {"per_host": [{"rank": r, "host": e["host"], **(n or {})} for r, (e, n) in enumerate(zip(everyone, nets))]}
        self.rate = getattr(args, "rate", None) or _rate_from(nets)
        self.written = 0
        self.start = perf_counter()
        self.total = 0
        self.done = 0

    def _check_writable(self) -> str | None:
        for path in filter(None, (self.out, getattr(self.args, "csv", None))):
            path = Path(path)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(path, "a"):
                    pass
            except OSError as err:
                return f"cannot write {path}: {err.strerror or err}"
        return None

    # -- printing (rank 0) --------------------------------------------------------------
    def say(self, message: str) -> None:
        if self.rank == 0 and not self.quiet:
            print(message, flush=True)

    def plan(self, total: int) -> None:
        self.total, self.done = total, 0

    def tick(self, what: str) -> None:
        """One progress line per finished point, with elapsed time and ETA."""
        self.done += 1
        elapsed = perf_counter() - self.start
        eta = elapsed / self.done * (self.total - self.done) if self.total >= self.done else 0.0
        self.say(f"[{self.done}/{self.total}] {what} | elapsed {elapsed:.1f}s, ETA {eta:.0f}s")

    def point_done(self, name: str, result, rows: list, summary) -> None:
        """Record one finished point: append its record, keep its table row, print progress.
        `result` is (record, row), or None for a point that was skipped."""
        if result is None:
            self.tick(f"{name}: skipped")
            return
        record, row = result
        self.emit(record)
        rows.append(row)
        self.tick(f"{name}: {summary(record)}")

    def table(self, rows: list[list], headers: list[str], title: str | None = None) -> None:
        if self.rank != 0 or self.quiet or not rows:
            return
        from tabulate import tabulate
        if title:
            print(f"\n{title}")
        print(tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True), flush=True)

    # -- records ---------------------------------------------------------------------------
    def base_record(self, model: Model, cfg: ModelConfig, **fields) -> dict:
        return {"schema": records.SCHEMA, "bench": self.bench, "model": model.name,
                "checkpoint": str(model.checkpoint.resolve()) if model.checkpoint else None,
                "model_config": {"layers": cfg.layers, "hidden": cfg.hidden, "heads": cfg.heads, "ffn": cfg.ffn},
                "n_blocks": cfg.n_blocks, "n_div": cfg.n_div, "world_size": self.size,
                "rate": self.rate, "network": self.network, "tags": getattr(self.args, "tags", {}),
                **fields}

    def emit(self, record: dict) -> None:
        """Rank 0 appends the record (atomic JSONL line, and CSV if asked)."""
        if self.rank != 0:
            return
        record = records.clean({**record, "env": {**self.env, "utc_time": records.utc_now(),
                                                  "loadavg_1m": records.loadavg()}})
        records.append_jsonl(self.out, record)
        if getattr(self.args, "csv", None):
            records.append_csv(self.args.csv, record)
        self.written += 1

    def finish(self) -> None:
        if self.written:
            self.say(f"\n{self.written} record(s) appended to {self.out}")


def _rate_from(nets) -> str | None:
    for net in nets:
        if isinstance(net, dict):
            for key in ("rate", "rate_in_force"):
                if net.get(key):
                    return str(net[key])
    return None


# ====================================================================================
# serial reference and building
# ====================================================================================
@dataclass
class Reference:
    output: object           # reference output on every rank (None if not computed)
    latency: dict | None     # stats of the serial forward on rank 0 (same on every rank)


def serial_reference(session: Session, cfg: ModelConfig, weights, ids, mask, warmup: int, iters: int,
                     time_it: bool = True, comm: Communicator | None = None) -> Reference:
    """The serial model on the first rank of `comm` (others wait without spinning),
    timed like any strategy; its output is broadcast to every rank."""
    comm = comm or session.comm
    output, lat = None, None
    if comm.rank == 0:
        model = ReferenceModel(cfg, weights)
        with torch.inference_mode():
            for _ in range(warmup if time_it else 0):
                model.forward(ids, mask)
            samples = []
            for _ in range(iters if time_it else 1):
                t0 = perf_counter()
                output = model.forward(ids, mask)
                samples.append(perf_counter() - t0)
        lat = stats(samples) if time_it else None
    comm.idle_barrier()
    output, lat = comm.bcast_object((output, lat))
    return Reference(output, lat)


def build(plan: Plan, cfg: ModelConfig, weights, comm: Communicator):
    try:
        return plan.cls(cfg, weights, comm, **plan.options)
    except ConfigError as err:
        raise UsageError(f"{plan.label}: {err}") from None


@torch.inference_mode()
def prepare(plan: Plan, cfg: ModelConfig, weights, comm: Communicator, ids, mask, strict: bool, say=print):
    """Build the strategy and run one forward (it counts as a warm-up iteration).

    A UsageError there (a shape the strategy cannot take, e.g. fewer tokens
    than SP ranks; strategies raise it on every rank before communicating) is
    agreed on by all ranks: strict -> the error on every rank, else a printed
    skip and None.
    """
    error, strategy = None, None
    try:
        strategy = build(plan, cfg, weights, comm)
        strategy.forward(ids, mask)
    except (UsageError, ConfigError) as err:
        error, strategy = str(err), None
    errors = [e for e in comm.allgather_object(error) if e]
    if errors:
        if strict:
            message = errors[0]
            raise UsageError(message if message.startswith(plan.name) else f"{plan.label}: {message}")
        say(f"skip {plan.label}: {errors[0]}")
        return None
    return strategy


def run_main(main) -> None:
    """Entry point of every driver: the suite's error convention under MPI (bench.cli.run)."""
    cli.run(main, mpi=True)


@contextmanager
def interrupt_note(session: Session):
    try:
        yield
    except KeyboardInterrupt:
        if session.rank == 0 and session.written:
            sys.stderr.write(f"interrupted: {session.written} finished record(s) kept in {session.out}\n")
            sys.stderr.flush()
        raise
