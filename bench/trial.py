"""`--strategies auto` measures before it commits, as FFTW's planner does with FFTW_MEASURE.

Why: the cost model is right to within a quarter on the emulated cluster (worst |error| 24.6%
over 56 predictions in reports/emulated-4host-planner-run3.md), so two placements predicted
closer than that are a tie the prediction cannot break. In that run the one pick that missed
the best measured placement by more than 5% was such a tie: sp predicted 12% faster than tp at
1 Gbit/s, seq 512, measured 7% slower.

What: the best placement of each strategy family (bp per boundary) predicted within
`--trial-margin` of the winner (default: that quarter), at most `--trials` of them (3), is
built on its own hosts (the build runs one forward to check the output), then timed: one
warm-up forward and the median of TRIAL_ITERS; the fastest measured one runs. Ranks a
contender leaves idle wait without spinning. The record keeps the prediction of the
placement that runs and lists every contender's prediction and trial time (`trial`), so
the model is still checked on every run.

Limit: one contender per family, so placements of one family (bp(tp) with N_b 1 or 4, two
host sets for sp) are never timed against each other; the model alone ranks those.
"""

from __future__ import annotations

import statistics

from parallelism import STRATEGIES

from . import planner
from .models import Model, make_inputs, resolve_model
from .plans import Plan, prepare
from .timing import measure

TRIAL_WARMUP, TRIAL_ITERS = 1, 3


def contenders(ranked: list[planner.Ranked], margin: float, limit: int) -> list[planner.Ranked]:
    """The winner, then the best placement of each other family predicted within `margin` of
    it (latency), at most `limit` in all, best predicted first. Pure."""
    if not ranked:
        return []
    best = planner.best_per_family(ranked)
    bound = best[0].prediction.latency_s * (1 + margin)
    return [r for r in best if r.prediction.latency_s <= bound][:max(limit, 1)]


def model_for(opts, model: Model, placement: planner.Placement) -> Model:
    """The model a placement runs: bp's decoupled shape is the planner's when the weights are seeded."""
    if placement.n_blocks is not None and model.checkpoint is None:
        return resolve_model(opts.model, placement.n_blocks, placement.n_div, opts.seed)
    return model


def plan_of(placement: planner.Placement) -> Plan:
    p = placement
    label = f"auto:{p.strategy}" + (f"({p.opts['boundary']})" if "boundary" in p.opts else "")
    options = {k: v for k, v in p.opts.items() if v is not None}
    return Plan(p.strategy, STRATEGIES[p.strategy], options, label)


def time_placement(session, opts, model: Model, placement: planner.Placement, batch: int, seq: int):
    """The median forward latency of `placement` on its hosts (world rank i = profile host i),
    or None when it cannot run this shape. Every world rank calls; all get the same value."""
    comm = session.comm
    ranks = list(placement.hosts)
    member = comm.rank in ranks
    sub = comm.split(0 if member else None, key=ranks.index(comm.rank) if member else 0)
    seconds = None
    if sub is not None:
        run_model, plan = model_for(opts, model, placement), plan_of(placement)
        ids, mask = make_inputs(run_model.original, batch, seq, opts.seed)
        strategy = prepare(plan, run_model.config(plan.decoupled), run_model.weights(plan.decoupled), sub,
                           ids, mask, strict=False, say=lambda _: None)
        if strategy is not None:
            seconds = statistics.median(measure(strategy, sub, ids, mask, TRIAL_WARMUP, TRIAL_ITERS).latency)
        del strategy
        sub.free()
    comm.idle_barrier()
    return comm.bcast_object(seconds, root=ranks[0])


def run_trials(session, opts, model: Model, entries: list, batch: int, seq: int, names: list[str]):
    """Time every (placement, fields) entry; returns the index of the fastest and the `trial`
    list the records carry."""
    rows = []
    for placement, fields in entries:
        label = placement.label(names)
        with session.point(f"trial of {label}"):
            seconds = time_placement(session, opts, model, placement, batch, seq)
        rows.append({"plan": label, "predicted_latency_s": fields["predicted_latency_s"], "trial_latency_s": seconds})
        session.say(f"  trial {label}: " + ("cannot run this shape" if seconds is None else
                                            f"{seconds * 1e3:.1f} ms (predicted "
                                            f"{fields['predicted_latency_s'] * 1e3:.1f} ms)"))
    return fastest(rows), rows


def fastest(rows: list[dict]) -> int:
    """The index of the fastest timed trial; the first (best predicted) when none could run. Pure."""
    timed = [i for i, row in enumerate(rows) if row["trial_latency_s"] is not None]
    return min(timed, key=lambda i: rows[i]["trial_latency_s"]) if timed else 0
