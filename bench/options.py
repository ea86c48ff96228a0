"""The drivers' common command line, parsed into a typed options object.

`parser()` builds the options every driver shares (model, shape, strategies, timing,
execution and output); a driver adds its own arguments and a dataclass that extends
`Options` with them, and `parse()` returns that dataclass: code reads `opts.seq`, never
`getattr(args, ...)`. Bad input raises UsageError (one `error:` line, exit 2 on every rank).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields

from kernels import PRESETS
from parallelism import STRATEGIES, UsageError
from parallelism.comm import world_rank
from parallelism.wire import WIRE_DTYPES
from parallelism.wire_ops import REDUCE_MODES

from .cli import ArgumentParser, bounded_int, finite_float, name_list, output_path, positive_int

DEFAULT_STRATEGIES = ("dp", "pp", "tp", "sp", "bp")
BOUNDARIES = ("replicate", "tp")
MAX_RANKS = 4096        # upper bounds keep a typo from running for hours or overflowing a library
MAX_THREADS = 256
MAX_SEED = 2**31 - 1
MAX_ITERS = 100_000
TRIAL_MARGIN = 0.25      # --strategies auto times the near-ties within this of the winner (bench.trial: why)
TRIAL_LIMIT = 4          # placements timed at most (each costs a build and a few forwards)


@dataclass
class Options:
    """What every driver's command line gives (the fields its `parser()` groups define)."""
    model: str = "bert-base"
    batch: int = 1
    seq: int | None = None            # None: min(128, the model's max_positions)
    nb: int | None = None
    ndiv: int = 4
    seed: int = 0
    strategies: list[str] | None = None
    boundary: list[str] = field(default_factory=lambda: ["replicate"])
    assignment: list[list[int]] | None = None
    micro_batches: int | None = None
    stages: str | None = None
    profile: str | None = None
    trials: int = TRIAL_LIMIT
    trial_margin: float = TRIAL_MARGIN
    wire_dtype: list[str] = field(default_factory=lambda: ["fp32"])
    wire_reduce: str = "auto"
    overlap: list[str] = field(default_factory=lambda: ["off"])
    chunks: int = 2
    warmup: int = 2
    iters: int = 10
    threads: int = 1
    wait: str = "auto"
    out: str | None = None
    csv: str | None = None
    rate: str | None = None
    tag: list[str] = field(default_factory=list)
    quiet: bool = False
    timeout: float = 0.0
    tags: dict = field(default_factory=dict)

    @property
    def explicit_strategies(self) -> bool:
        return bool(self.strategies)

    @property
    def auto(self) -> bool:
        """--strategies auto: the planner picks the placement (bench.auto)."""
        return self.strategies == ["auto"]


@dataclass
class Defaults:
    model: str = "bert-base"
    batch: int = 1
    warmup: int = 2
    iters: int = 10
    strategies: tuple = DEFAULT_STRATEGIES


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


def timeout_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 7 * 86400:
        raise argparse.ArgumentTypeError(f"expected seconds from 0 (no limit) to 604800, got {text!r}")
    return value


def parser(bench: str, description: str, defaults: Defaults | None = None, epilog: str | None = None,
           shape: bool = True, timing: bool = True, strategies: bool = True,
           batch: bool = True) -> ArgumentParser:
    d = defaults or Defaults()
    p = ArgumentParser(prog=f"python -m bench.{bench}", description=description, epilog=epilog,
                       quiet_rank=world_rank() != 0)
    m = p.add_argument_group("model")
    m.add_argument("--model", default=d.model,
                   help=f"preset ({', '.join(PRESETS)}) or a Hugging Face BERT checkpoint folder (default {d.model})")
    if shape and batch:
        m.add_argument("--batch", type=bounded_int(1, 65536, "a batch size"), default=d.batch,
                       help=f"sequences per request (default {d.batch})")
    if shape:
        m.add_argument("--seq", type=positive_int, default=None,
                       help="tokens per sequence (default 128, or the model's max positions if smaller)")
    m.add_argument("--nb", type=positive_int, default=None,
                   help="blocks N_b of the decoupled model (bp; default 4, or for models of <= 4 layers "
                        "the largest divisor of the layer count below it, e.g. 2 for tiny)")
    m.add_argument("--ndiv", type=positive_int, default=4, help="sub-blocks N_div per decoupled layer (bp; default 4)")
    m.add_argument("--seed", type=bounded_int(0, MAX_SEED, "a seed"), default=0,
                   help="seed of the weights and inputs (default 0)")
    if strategies:
        s = p.add_argument_group("strategies")
        s.add_argument("--strategies", type=name_list, default=None,
                       help=f"comma-separated (default: {','.join(d.strategies)}, skipping those that do "
                            "not fit the world size or model, with the reason; named ones must fit); "
                            "'auto': the planner picks one placement from --profile (or profiles the hosts "
                            "first) and runs it on the hosts it uses")
        s.add_argument("--profile", default=None,
                       help="a profile of these hosts (python -m bench.profile): auto plans with it, and "
                            "every record gets the prediction of its placement (predicted_latency_s)")
        s.add_argument("--trials", type=bounded_int(1, 16, "a trial count"), default=TRIAL_LIMIT,
                       help="auto, latency: time the best placement of each strategy (then of each further "
                            "bp block count N_b) predicted within --trial-margin of the winner, at most this many, "
                            "and run the fastest (default "
                            f"{TRIAL_LIMIT}; 1: run the predicted winner untimed)")
        s.add_argument("--trial-margin", type=finite_float(0.0, 10.0), default=TRIAL_MARGIN,
                       help="auto: how far behind the winner's prediction a placement may be and still be timed, "
                            f"as a fraction (default {TRIAL_MARGIN}: the cost model's worst error measured on the "
                            "emulated cluster)")
        s.add_argument("--boundary", type=name_list, default=["replicate"],
                       help="bp boundary layers: replicate, tp, or both 'replicate,tp' (default replicate)")
        s.add_argument("--assignment", type=assignment, default=None,
                       help="bp sub-blocks per rank, ranks separated by '/', e.g. '0,1/2/3' (default: even)")
        s.add_argument("--micro-batches", type=bounded_int(1, 65536, "a micro-batch count"), default=None,
                       help="pp micro-batches per forward (default: the strategy's)")
        s.add_argument("--stages", default=None,
                       help="pp layers per rank, e.g. 4,3,3,2 (unequal devices; default: balanced by FLOPs)")
        s.add_argument("--wire-dtype", type=name_list, default=["fp32"],
                       help=f"how activations travel: {', '.join(WIRE_DTYPES)}, or several, e.g. 'fp32,int8' "
                            "(int8: blocks of 128 codes, an fp32 scale and the largest value apart; default fp32)")
        s.add_argument("--wire-reduce", choices=REDUCE_MODES, default="auto",
                       help="allreduces (tp, bp --boundary tp): mpi = MPI's own sum (fp32, fp16), split = "
                            "alltoall + fp32 sum + allgather (any wire dtype); auto = mpi for fp32, else split")
        s.add_argument("--overlap", type=name_list, default=["off"],
                       help="off, on, or 'off,on': tp, sp and bp cut their communication into --chunks "
                            "token spans, each sent while the next is computed (default off)")
        s.add_argument("--chunks", type=bounded_int(1, 65536, "a chunk count"), default=2,
                       help="token spans per overlapped communication (<= seq; default 2: each span's GEMMs "
                            "re-read the weights, so more spans cost compute)")
    if timing:
        t = p.add_argument_group("timing")
        t.add_argument("--warmup", type=bounded_int(0, MAX_ITERS, "a warm-up count"), default=d.warmup,
                       help=f"untimed forwards first (default {d.warmup})")
        t.add_argument("--iters", type=bounded_int(1, MAX_ITERS, "an iteration count"), default=d.iters,
                       help=f"timed forwards, each after a barrier (default {d.iters})")
    e = p.add_argument_group("execution and output")
    e.add_argument("--threads", type=bounded_int(1, MAX_THREADS, "a thread count"), default=1,
                   help="torch threads per rank (default 1)")
    e.add_argument("--wait", choices=("auto", "spin", "sleep"), default="auto",
                   help="how ranks wait in MPI calls: spin (busy-poll), sleep (poll with short sleeps), "
                        "auto = sleep when there are more ranks than CPUs, else spin (default auto)")
    e.add_argument("--out", type=output_path, default=None,
                   help=f"JSONL file records are appended to (default results/{bench}-<UTC time>.jsonl)")
    e.add_argument("--csv", type=output_path, default=None, help="also append flat records to this CSV file")
    e.add_argument("--rate", default=None,
                   help="link rate in force, recorded as given (bench.sweep sets it); "
                        "default: from the network layer when it knows")
    e.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE",
                   help="extra key=value recorded under 'tags' (repeatable)")
    e.add_argument("--timeout", type=timeout_seconds, default=600.0,
                   help="seconds one measured point may take before the job is ended with a message "
                        "(a stopped rank or a dead link must not hang it; 0: no limit; default 600)")
    e.add_argument("--quiet", action="store_true", help="no progress lines or tables (errors still print)")
    return p


def parse(p: ArgumentParser, argv=None, cls: type[Options] = Options) -> Options:
    """Parse into `cls` (a dataclass extending Options with the driver's own arguments)."""
    values = vars(p.parse_args(argv))
    known = {f.name for f in fields(cls)}
    unknown = set(values) - known
    if unknown:  # a driver argument without a field: a bug in the driver, not bad input
        raise TypeError(f"{cls.__name__} has no field for {', '.join(sorted(unknown))}")
    opts = cls(**values)
    for item in opts.tag:
        if "=" not in item:
            raise UsageError(f"--tag expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        opts.tags[key] = value
    for b in opts.boundary or []:
        if b not in BOUNDARIES:
            raise UsageError(f"--boundary: expected replicate or tp, got {b!r}")
    opts.boundary = list(dict.fromkeys(opts.boundary or []))  # 'tp,tp' once
    for flag, values, allowed in (("--wire-dtype", opts.wire_dtype, WIRE_DTYPES),
                                  ("--overlap", opts.overlap, ("off", "on"))):
        for value in values:
            if value not in allowed:
                raise UsageError(f"{flag}: expected one of {', '.join(allowed)}, got {value!r}")
    opts.wire_dtype, opts.overlap = list(dict.fromkeys(opts.wire_dtype)), list(dict.fromkeys(opts.overlap))
    if opts.strategies and "auto" in opts.strategies:
        if len(opts.strategies) > 1:
            raise UsageError("--strategies auto runs the planner's pick alone: do not list other strategies")
        if opts.assignment is not None or opts.micro_batches is not None or opts.stages is not None or (
                opts.nb is None and opts.ndiv != 4):
            raise UsageError("--strategies auto chooses assignment, stages and micro-batches itself "
                             "(give --nb and --ndiv together to fix the decoupled model)")
    elif opts.strategies:
        for name in opts.strategies:
            if name not in STRATEGIES:
                raise UsageError(f"unknown strategy {name!r} (available: {', '.join(STRATEGIES)})")
        opts.strategies = list(dict.fromkeys(opts.strategies))  # a name given twice runs once
    return opts
