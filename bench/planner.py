"""The planner: every candidate placement, predicted by the cost model, ranked (pure, no MPI).

Candidates on N hosts, for every k = 1..N of the fastest hosts (a plan may leave slower
hosts idle; the driver then runs on a sub-communicator of the chosen ones, in this order):

- k = 1: serial on the fastest host;
- dp; tp; sp; pp with its stage split: the FLOP balance, and layer counts per host
  (`stages`: every composition of the layers when there are few, else the split
  proportional to host pace and its one-layer moves), 1 or `batch` micro-batches;
- bp over the decoupled model: (N_b, N_div) free when the weights are random (every N_b
  dividing the layers, N_div dividing the width up to max(8, 2N)) or fixed (--nb/--ndiv,
  as a trained decoupled checkpoint fixes them); boundary replicate or tp; sub-block
  counts per host (`assignment`, chosen like pp's stages).

A candidate is refused (with the reason) when its strategy's own `check` refuses it or
when a host's predicted memory exceeds its budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import comb

from kernels import ConfigError
from parallelism import STRATEGIES, UsageError

from .costmodel import Prediction, predict
from .machine import Machine

ENUMERATE_LIMIT = 64  # splits enumerated exhaustively up to this many, else proportional +- moves


@dataclass(frozen=True)
class Placement:
    strategy: str
    hosts: tuple[int, ...]          # profile host indices, in rank order
    options: tuple = ()             # sorted (name, value) pairs of strategy options
    n_blocks: int | None = None     # bp: the decoupled model's shape
    n_div: int | None = None

    @property
    def opts(self) -> dict:
        return dict(self.options)

    def config(self, base):
        return base if self.n_blocks is None else base.replace(n_blocks=self.n_blocks, n_div=self.n_div)

    def label(self, host_names: list[str] | None = None) -> str:
        o = self.opts
        text = family(self)
        extra = []
        if self.n_blocks is not None:
            extra.append(f"N_b={self.n_blocks} N_div={self.n_div}")
        if o.get("assignment"):
            extra.append(f"assignment {o['assignment']}")
        if o.get("stages"):
            extra.append(f"stages {o['stages']}")
        if o.get("micro_batches", 1) > 1:
            extra.append(f"micro-batches {o['micro_batches']}")
        names = [host_names[h] if host_names else str(h) for h in self.hosts]
        extra.append("on " + (",".join(names) if len(names) <= 6 else f"{len(names)} hosts ({names[0]}..{names[-1]})"))
        return f"{text} " + " ".join(extra)

    def record(self, host_names: list[str]) -> dict:
        """The plan as records carry it."""
        return {"strategy": self.strategy, "options": self.opts, "n_blocks": self.n_blocks, "n_div": self.n_div,
                "hosts": list(self.hosts), "host_names": [host_names[h] for h in self.hosts]}


@dataclass
class Ranked:
    placement: Placement
    prediction: Prediction


@dataclass
class Refusal:
    label: str
    reason: str


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def proportional(total: int, weights: list[float]) -> list[int]:
    """`total` units over the weights, each >= 1, by largest remainder."""
    k = len(weights)
    spare = total - k
    shares = [spare * w / sum(weights) for w in weights]
    counts = [1 + int(s) for s in shares]
    for i in sorted(range(k), key=lambda i: shares[i] - int(shares[i]), reverse=True)[:total - sum(counts)]:
        counts[i] += 1
    return counts


def compositions(total: int, parts: int):
    if parts == 1:
        yield (total,)
        return
    for first in range(1, total - parts + 2):
        for rest in compositions(total - first, parts - 1):
            yield (first, *rest)


def splits(total: int, weights: list[float]) -> list[tuple[int, ...]]:
    """Ways to give `total` units (layers, sub-blocks) to hosts of these paces, each >= 1."""
    k = len(weights)
    if total < k:
        return []
    if comb(total - 1, k - 1) <= ENUMERATE_LIMIT:
        return list(compositions(total, k))
    base = proportional(total, weights)
    if k > 8 or len(set(weights)) == 1:
        return [tuple(base)]
    out = {tuple(base)}
    for i in range(k):
        for j in range(k):
            if i != j and base[i] > 1:
                moved = list(base)
                moved[i] -= 1
                moved[j] += 1
                out.add(tuple(moved))
    return sorted(out)


def contiguous(counts) -> str:
    """Sub-block counts per rank -> the assignment string '0,1/2/3'."""
    out, start = [], 0
    for n in counts:
        out.append(",".join(str(i) for i in range(start, start + n)))
        start += n
    return "/".join(out)


def decoupled_shapes(cfg, hosts: int, nb=None, ndiv=None) -> tuple[list[int], list[int]]:
    """The (N_b, N_div) values bp may use: fixed, or free (random weights)."""
    nbs = [nb] if nb else [d for d in divisors(cfg.layers) if d < cfg.layers]
    ndivs = [ndiv] if ndiv else [d for d in divisors(cfg.hidden) if 2 <= d <= max(8, 2 * hosts)]
    return nbs, ndivs


def kernel_shapes(cfg, hosts: int, shapes, nb=None, ndiv=None) -> tuple[dict, dict]:
    """What a profile of `hosts` hosts must measure for the candidates at these (batch, seq):
    ({kernel key: a Work of that shape}, {(op, world): {whole bytes the plans move}})."""
    from parallelism.schedule import EMBED  # noqa: F401 - keys come from the same Work items
    from .costmodel import FIT_OF
    from .profiles import kernel_key
    works, sizes = {}, {}
    nbs, ndivs = decoupled_shapes(cfg, hosts, nb, ndiv)
    for (batch, seq), k in ((shape, k) for shape in shapes for k in range(1, hosts + 1)):
        plans = [("serial", cfg, {})] if k == 1 else [(n, cfg, {}) for n in ("dp", "tp", "sp")]
        if k > 1:
            plans += [("pp", cfg, {"micro_batches": m}) for m in sorted({1, batch})]
        plans += [("bp", cfg.replace(n_blocks=nbs[0], n_div=nd), {"boundary": b, "assignment": (
            None if nd % k == 0 else contiguous(proportional(nd, [1.0] * k)))})
            for nd in ndivs if nd >= k for b in ("replicate", "tp")]
        for name, model, opts in plans:
            cls = STRATEGIES[name]
            try:
                cls.check(model, k, **opts)
                steps = cls.steps(model, k, batch, seq, **opts)
            except (UsageError, ConfigError):
                continue
            for step in steps:
                for work in (w for rank_work in step.work for w in rank_work):
                    works.setdefault(kernel_key(*work.shape), work)
                if step.op is not None:
                    whole = step.parts[step.src] if step.op == "send" else step.whole
                    sizes.setdefault((FIT_OF[step.op], k), set()).add(whole)
    return works, sizes


def host_counts(n: int) -> list[int]:
    """How many of the fastest hosts a placement may use: every count up to 8, then powers of
    two and all of them (projections to 16 or 32 hosts)."""
    return [k for k in range(1, n + 1) if k <= 8 or k & (k - 1) == 0 or k == n]


def fastest(machine: Machine, k: int) -> tuple[int, ...]:
    """The k fastest hosts (sustained pace; ties: profile order), listed in profile (= world
    rank) order, so that a placement's stages and assignment read in rank order, as the
    drivers' --stages and --assignment take them."""
    order = sorted(range(len(machine.hosts)), key=lambda h: -machine.hosts[h].pace)
    return tuple(sorted(order[:k]))


def limits(model, nb: int | None = None, ndiv: int | None = None) -> dict:
    """What a run's model (bench.models.Model) leaves the planner: a checkpoint of original
    weights rules bp out, a decoupled one rules the original strategies out and fixes
    (N_b, N_div); seeded weights leave (N_b, N_div) free unless given."""
    if model.checkpoint is not None and model.decoupled is not None:
        nb, ndiv = model.decoupled.n_blocks, model.decoupled.n_div
    return {"nb": nb, "ndiv": ndiv, "original_ok": model.original_error,
            "decoupled_ok": model.decoupled_error if model.checkpoint is not None and model.decoupled is None
            else None}


def candidates(cfg, machine: Machine, batch: int, seq: int, strategies=None, nb=None, ndiv=None,
               decoupled_ok: str | None = None, original_ok: str | None = None):
    """Placements to predict. `decoupled_ok` / `original_ok`: None if bp / the original model's
    strategies may run, else why not (a checkpoint holds one kind of weights)."""
    names = strategies or ["serial", "dp", "pp", "tp", "sp", "bp"]
    n = len(machine.hosts)
    if original_ok is not None:
        for name in (x for x in names if x != "bp"):
            yield Refusal(name, original_ok)
        names = ["bp"] if "bp" in names else []
    if decoupled_ok is not None and "bp" in names:
        yield Refusal("bp", decoupled_ok)
        names = [x for x in names if x != "bp"]
    nbs, ndivs = decoupled_shapes(cfg, n, nb, ndiv)
    if "dp" in names and n > batch:
        # A host without a request: the same rows on fewer hosts do the same work with fewer
        # ranks in the scatter and the gather.
        yield Refusal(f"dp on more than {batch} host(s)", f"batch {batch}: a host would get no request")
    for k in host_counts(n):
        hosts = fastest(machine, k)
        paces = [machine.hosts[h].pace for h in hosts]
        if k == 1 and "serial" in names:
            yield Placement("serial", hosts)
        for name in ("dp", "tp", "sp"):
            if name in names and k > 1 and not (name == "dp" and k > batch):
                yield Placement(name, hosts)
        if "pp" in names and 1 < k <= cfg.layers:
            micro = sorted({1, batch})
            for m in micro:
                yield Placement("pp", hosts, (("micro_batches", m),))
                for counts in splits(cfg.layers, paces):
                    yield Placement("pp", hosts, (("micro_batches", m), ("stages", ",".join(map(str, counts)))))
        if "bp" in names and (k > 1 or "serial" not in names):  # one host: serial, unless only bp may run
            for nb_, nd in ((a, b) for a in nbs for b in ndivs):
                for boundary in ("replicate", "tp") if k > 1 else ("replicate",):
                    for counts in splits(nd, paces):
                        even = len(set(counts)) == 1
                        opts = (("assignment", None if even else contiguous(counts)), ("boundary", boundary))
                        yield Placement("bp", hosts, opts, nb_, nd)


def plan(cfg, machine: Machine, batch: int, seq: int, budgets: list[int] | None = None,
         objective: str = "latency", **options) -> tuple[list[Ranked], list[Refusal]]:
    """Every candidate predicted and ranked best first; and the refused ones with reasons."""
    ranked, refused, seen = [], [], set()
    budgets = budgets or [h.memory_available for h in machine.hosts]
    names = [h.name for h in machine.hosts]
    for cand in candidates(cfg, machine, batch, seq, **options):
        if isinstance(cand, Refusal):
            refused.append(cand)
            continue
        cls, model = STRATEGIES[cand.strategy], None
        try:
            model = cand.config(cfg)
            opts = cand.opts
            cls.check(model, len(cand.hosts), **opts)
            if cand.strategy == "sp":
                cls.tokens(seq, len(cand.hosts))
        except (UsageError, ConfigError) as err:
            key = (cand.strategy, len(cand.hosts), str(err))
            if key not in seen:
                seen.add(key)
                refused.append(Refusal(f"{cand.strategy} on {len(cand.hosts)} hosts", str(err)))
            continue
        pred = predict(cand.strategy, model, opts, cand.hosts, machine.hosts, machine.network, batch, seq)
        over = [(h, m) for h, m in pred.memory_by_host.items() if m > budgets[h]]
        if over:
            h, m = max(over, key=lambda x: x[1] - budgets[x[0]])
            refused.append(Refusal(cand.label(names), f"needs {m / 2**20:.0f} MiB on {names[h]}, "
                                                      f"budget {budgets[h] / 2**20:.0f} MiB"))
            continue
        ranked.append(Ranked(cand, pred))
    # Ties (within 0.1%: quota periods quantize latencies) go to the least memory on the fullest host.
    metric = (lambda p: -p.throughput_rps) if objective == "throughput" else (lambda p: p.latency_s)
    ranked.sort(key=lambda r: (float(f"{metric(r.prediction):.3g}"), max(r.prediction.memory_by_host.values()),
                               len(r.placement.hosts)))
    return ranked, refused


def best_per(ranked: list[Ranked], key) -> list[Ranked]:
    """The best placement of each `key(placement)`, in rank order."""
    out, seen = [], set()
    for r in ranked:
        k = key(r.placement)
        if k not in seen:
            seen.add(k)
            out.append(r)
    return out


def family(p: Placement) -> str:
    """A strategy, and bp's boundary: 'dp', 'bp(tp)'."""
    return p.strategy + (f"({p.opts['boundary']})" if p.opts.get("boundary") else "")


def best_per_family(ranked: list[Ranked]) -> list[Ranked]:
    """The best placement of each strategy (and bp boundary), in rank order."""
    return best_per(ranked, family)


def why(ranked: list[Ranked], names: list[str]) -> list[str]:
    """Why the winner wins: its dominant term, and the term that separates it from the best
    placement of every other strategy."""
    if not ranked:
        return []
    win = ranked[0]
    t = win.prediction.timeline
    share = lambda v: f"{100 * v / t.latency_s:.0f}%"  # noqa: E731
    lines = [f"winner {win.placement.label(names)}: {t.latency_s * 1e3:.1f} ms = compute {t.compute_s * 1e3:.1f} "
             f"({share(t.compute_s)}) + CPU quota waits {t.throttled_s * 1e3:.1f} ({share(t.throttled_s)}) + "
             f"communication {t.comm_s * 1e3:.1f} ({share(t.comm_s)}); dominant term: {t.dominant()}"]
    for other in best_per_family(ranked)[1:]:
        o = other.prediction.timeline
        diffs = {"compute": o.compute_s - t.compute_s, "CPU quota waits": o.throttled_s - t.throttled_s,
                 "communication": o.comm_s - t.comm_s}
        term = max(diffs, key=diffs.get)
        lines.append(f"  vs {other.placement.label(names)}: {o.latency_s / t.latency_s:.2f}x slower, "
                     f"mostly {term} (+{diffs[term] * 1e3:.1f} ms)")
    return lines
