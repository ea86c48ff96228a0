"""Which strategies a run measures, with which options, and building them.

A `Plan` is one strategy class with its options and a label (`bp(tp)`); `select` turns
the command line into plans for a world size (skipping, or refusing, what does not fit),
`prepare` builds one and runs its first forward, agreeing on errors across ranks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kernels import ConfigError
from parallelism import STRATEGIES, UsageError
from parallelism.comm import Communicator

from .models import Model, weights_returned_when_freed
from .options import DEFAULT_STRATEGIES, Options


@dataclass
class Plan:
    """One strategy to run: class, options, label, and which model shape it needs."""
    name: str
    cls: type
    options: dict
    label: str

    @property
    def decoupled(self) -> bool:
        return bool(self.cls.decoupled)


def strategy_options(cls, opts: Options, extra: dict | None = None) -> list[dict]:
    """The option sets to run `cls` with: one per --boundary value (bp) x --wire-dtype value x
    --overlap value (tp, sp, bp), each option only where the strategy takes it."""
    accepted = cls.options
    given = {"assignment": opts.assignment, "micro_batches": opts.micro_batches, "stages": opts.stages,
             "wire_reduce": None if opts.wire_reduce == "auto" else opts.wire_reduce, **(extra or {})}
    sets = [{key: value for key, value in given.items() if key in accepted and value is not None}]
    for key, values in (("boundary", opts.boundary or ["replicate"]), ("wire_dtype", opts.wire_dtype),
                        ("overlap", opts.overlap)):
        if key in accepted:
            sets = [{**s, key: v} for s in sets for v in values]
    for s in sets:
        if s.get("overlap") == "on":
            s["chunks"] = opts.chunks
        elif s.get("overlap") == "off":
            del s["overlap"]  # the strategy's default: records of runs without --overlap look alike
        if s.get("wire_dtype") == "fp32":
            del s["wire_dtype"]
    unique = []
    for s in sets:
        if s not in unique:  # e.g. --overlap on,off for a strategy without the option
            unique.append(s)
    return unique


def label_of(name: str, options: dict, show_boundary: bool) -> str:
    """'bp', or with what sets the point apart: 'bp(tp)', 'tp(int8)', 'bp(replicate,fp16,overlap4)'."""
    parts = [options["boundary"]] if show_boundary and "boundary" in options else []
    if options.get("wire_dtype", "fp32") != "fp32":
        parts.append(options["wire_dtype"])
    if options.get("wire_reduce"):
        parts.append(f"reduce={options['wire_reduce']}")
    if options.get("overlap") == "on":
        parts.append(f"overlap{options['chunks']}")
    return f"{name}({','.join(parts)})" if parts else name


def _with_label(label: str, message: str) -> str:
    """'tp: heads % P ...' stays as it is; other messages get the plan's label once."""
    return message if message.startswith((label, label.split("(")[0])) else f"{label}: {message}"


def select(opts: Options, model: Model, world_size: int, say=print, extra_options: dict | None = None,
           defaults=DEFAULT_STRATEGIES, strict: bool | None = None) -> list[Plan]:
    """Strategies to run at `world_size`. Default list: those that do not fit are
    skipped with a printed reason. Explicit --strategies: any misfit is an error
    (raised identically on every rank, before any communication) unless
    `strict=False` (a device-count sweep skips the counts a strategy cannot use)."""
    if opts.auto:  # bench.auto handles it in the drivers that run the planner's pick
        raise UsageError("--strategies auto: only bench.latency, bench.throughput and bench.sweep run the "
                         "planner's pick")
    explicit = opts.explicit_strategies
    strict = explicit if strict is None else strict
    names = list(opts.strategies) if explicit else list(defaults)
    plans = []
    many_boundaries = len(opts.boundary or []) > 1
    for name in names:
        cls = STRATEGIES[name]
        for options in strategy_options(cls, opts, extra_options):
            label = label_of(name, options, many_boundaries)
            try:
                cls.check(model.config(cls.decoupled), world_size, **{**cls.options, **options})
            except (UsageError, ConfigError) as err:
                if strict:
                    raise UsageError(_with_label(label, str(err))) from None
                say(f"skip {label}: {err}")
                continue
            plans.append(Plan(name, cls, options, label))
    return plans


def build(plan: Plan, cfg, weights, comm: Communicator):
    try:
        return plan.cls(cfg, weights, comm, **plan.options)
    except ConfigError as err:
        raise UsageError(_with_label(plan.label, str(err))) from None


@torch.inference_mode()
def prepare(plan: Plan, cfg, weights, comm: Communicator, ids, mask, strict: bool, say=print):
    """Build the strategy and run one forward (it counts as a warm-up iteration).

    A UsageError there (a shape the strategy cannot take, e.g. fewer tokens
    than SP ranks; strategies raise it on every rank before communicating) is
    agreed on by all ranks: strict -> the error on every rank, else a printed
    skip and None.
    """
    error, strategy = None, None
    try:
        with weights_returned_when_freed():
            strategy = build(plan, cfg, weights, comm)
        strategy.forward(ids, mask)
    except (UsageError, ConfigError) as err:
        error, strategy = str(err), None
    errors = [e for e in comm.allgather_object(error) if e]
    if errors:
        if strict:
            raise UsageError(_with_label(plan.label, errors[0]))
        say(f"skip {plan.label}: {errors[0]}")
        return None
    return strategy
