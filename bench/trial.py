"""`--strategies auto` measures before it commits, as FFTW's planner does with FFTW_MEASURE.

Why: the cost model is right to within a quarter on the emulated cluster (worst |error| 25.6%
over 56 predictions in reports/emulated-4host-planner-run5.md), so two placements predicted
closer than that are a tie the prediction cannot break. In run 3 the one pick that missed
the best measured placement by more than 5% was such a tie: sp predicted 12% faster than tp
at 1 Gbit/s, seq 512, measured 7% slower.

What: the placements predicted within `--trial-margin` of the winner (default: that quarter),
at most `--trials` of them (4), best predicted first: the best of each strategy family (bp per
boundary), then, while trials are left, the best of each further bp block count (N_b) of
a family (run 5 missed at 1 Gbit/s seq 128 because bp(tp) N_b=4, 5% behind N_b=1 in the
prediction, was never timed against it). Each is built on its own hosts (the build runs one
forward to check the output), then timed: one warm-up forward and the median of
TRIAL_ITERS. When their predicted memory fits every host together, all are built first and
timed in interleaved rounds (one forward of each per round), so that a change in machine
load mid-trial hits them alike; otherwise one after another, each freed before the next.
The fastest measured one runs. Ranks a contender leaves idle wait without spinning. The
record keeps the prediction of the placement that runs and lists every contender's
prediction and trial time (`trial`), so the model is still checked on every run.

Limit: placements of one family and block count (two host sets for sp, two assignments or
two N_div of bp) are never timed against each other; the model alone ranks those.
"""

from __future__ import annotations

import gc
import statistics

from parallelism import STRATEGIES

from . import planner
from .models import Model, make_inputs, resolve_model
from .plans import Plan, prepare
from .timing import measure

TRIAL_WARMUP, TRIAL_ITERS = 1, 3


def contenders(ranked: list[planner.Ranked], margin: float, limit: int) -> list[planner.Ranked]:
    """The winner, then the best placement of each other family predicted within `margin` of
    it (latency), then the best of each further (family, N_b), at most `limit` in all, best
    predicted first. Pure."""
    if not ranked:
        return []
    bound = ranked[0].prediction.latency_s * (1 + margin)
    near = [r for r in ranked if r.prediction.latency_s <= bound]
    families = planner.best_per_family(near)
    depths = planner.best_per(near, lambda p: (planner.family(p), p.n_blocks))
    chosen = (families + [r for r in depths if r not in families])[:max(limit, 1)]
    return sorted(chosen, key=ranked.index)


def fit_together(rivals: list[planner.Ranked], hosts: list) -> bool:
    """Whether all the contenders' predicted memory fits at once (`hosts`: the machine's
    costmodel.Host list). Hosts on one machine (emulated hosts, local ranks) share its memory;
    a host's runtime is one process, counted once however many contenders it holds. Pure."""
    machine = [h.machine or f"host {i}" for i, h in enumerate(hosts)]
    budget, need, used = {}, {}, set()
    for i, h in enumerate(hosts):
        budget[machine[i]] = min(budget.get(machine[i], h.memory_available), h.memory_available)
    for r in rivals:
        for i, nbytes in r.prediction.memory_by_host.items():
            need[machine[i]] = need.get(machine[i], 0) + nbytes - hosts[i].runtime_bytes
            used.add(i)
    for i in used:
        need[machine[i]] += hosts[i].runtime_bytes
    return all(n <= budget[m] for m, n in need.items())


def model_for(opts, model: Model, placement: planner.Placement) -> Model:
    """The model a placement runs: bp's decoupled shape is the planner's when the weights are seeded."""
    if placement.n_blocks is not None and model.checkpoint is None:
        return resolve_model(opts.model, placement.n_blocks, placement.n_div, opts.seed)
    return model


def plan_of(placement: planner.Placement) -> Plan:
    p = placement
    label = f"auto:{planner.family(p)}"
    options = {k: v for k, v in p.opts.items() if v is not None}
    return Plan(p.strategy, STRATEGIES[p.strategy], options, label)


class Contender:
    """One placement built on its hosts: `strategy` is None on the ranks it leaves idle and
    where it cannot run this shape; `runs` (the same on every world rank) says which."""

    def __init__(self, session, opts, model: Model, placement: planner.Placement, batch: int, seq: int):
        comm, ranks = session.comm, list(placement.hosts)
        member = comm.rank in ranks
        self.root = ranks[0]
        self.sub = comm.split(0 if member else None, key=ranks.index(comm.rank) if member else 0)
        self.strategy = None
        if self.sub is not None:
            run_model, plan = model_for(opts, model, placement), plan_of(placement)
            self.ids, self.mask = make_inputs(run_model.original, batch, seq, opts.seed)
            self.strategy = prepare(plan, run_model.config(plan.decoupled), run_model.weights(plan.decoupled),
                                    self.sub, self.ids, self.mask, strict=False, say=lambda _: None)
        comm.idle_barrier()
        self.runs = comm.bcast_object(self.strategy is not None, root=self.root)
        self.samples: list[float] = []

    def forward(self, comm, keep: bool) -> None:
        """One barrier-started forward on its hosts (bench.timing.measure: the slowest rank's
        time); the others wait idle."""
        if self.strategy is not None:
            [seconds] = measure(self.strategy, self.sub, self.ids, self.mask, warmup=0, iters=1).latency
            if keep:
                self.samples.append(seconds)
        comm.idle_barrier()

    def seconds(self, comm) -> float | None:
        """The median timed forward, the same on every world rank (None: cannot run this shape)."""
        median = statistics.median(self.samples) if self.samples else None
        return comm.bcast_object(median, root=self.root) if self.runs else None

    def free(self) -> None:
        """Drop the strategy (and collect it: its tensors may sit in reference cycles) before
        the next one is built."""
        self.strategy = None
        gc.collect()
        if self.sub is not None:
            self.sub.free()
            self.sub = None


def _rounds(comm, built: list[Contender]) -> None:
    """Warm-up and timed rounds; each round starts at the next contender, so that none always
    follows the same one (its cache state, what is left of the host's quota period)."""
    runnable = [c for c in built if c.runs]   # the same list on every world rank
    for i in range(TRIAL_WARMUP + TRIAL_ITERS):
        k = i % len(runnable) if runnable else 0
        for c in runnable[k:] + runnable[:k]:
            c.forward(comm, keep=i >= TRIAL_WARMUP)


def run_trials(session, opts, model: Model, entries: list, batch: int, seq: int, names: list[str],
               together: bool = False):
    """Time every (placement, fields) entry, interleaved when `together` (fit_together), else
    one after another; returns the index of the fastest and the `trial` list the records carry."""
    comm, times = session.comm, []
    groups = [entries] if together else [[entry] for entry in entries]
    for group in groups:
        what = (f"trials of {len(group)} placements, interleaved" if together else
                f"trial of {group[0][0].label(names)}")
        with session.point(what):
            built = [Contender(session, opts, model, placement, batch, seq) for placement, _ in group]
            _rounds(comm, built)
            times += [c.seconds(comm) for c in built]
            for c in built:
                c.free()
            del built
    rows = []
    for (placement, fields), seconds in zip(entries, times):
        label = placement.label(names)
        rows.append({"plan": label, "predicted_latency_s": fields["predicted_latency_s"], "trial_latency_s": seconds})
        session.say(f"  trial {label}: " + ("cannot run this shape" if seconds is None else
                                            f"{seconds * 1e3:.1f} ms (predicted "
                                            f"{fields['predicted_latency_s'] * 1e3:.1f} ms)"))
    return fastest(rows), rows


def fastest(rows: list[dict]) -> int:
    """The index of the fastest timed trial; the first (best predicted) when none could run. Pure."""
    timed = [i for i, row in enumerate(rows) if row["trial_latency_s"] is not None]
    return min(timed, key=lambda i: rows[i]["trial_latency_s"]) if timed else 0
