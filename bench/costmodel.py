"""The cost model: latency, throughput, memory and bytes of a placement on profiled hosts.

Pure (no MPI, no torch): everything comes from the strategies' own schedules
(`Strategy.steps`: per synchronisation point each rank's kernels and one communication),
their `weights_bytes` and `expected_traffic`, and a profile (bench.profiles). Per step:

    each rank's compute: sum over its Work items of the profiled full-speed seconds of that
        kernel at that shape (nearest profiled shape, scaled by FLOPs, when not profiled),
        run through its host's CPU quota (`Cpu`: CFS hands out quota x 100 ms per period;
        a rank that waited on the network starts its next compute with a fresh budget, so
        short bursts run at full speed and long ones at the quota's pace), and through the
        cores of its machine: hosts that share one (emulated hosts, local ranks; the same
        profiled machine_id) and compute in the same step get cores / (hosts computing)
        of a core each while that is less than one (`Cpu.run`'s share);
    then the communication: a collective ends when the slowest rank arrives plus
        alpha + beta x cost_bytes (fitted per op and world size); a send (pipeline
        parallelism) starts when its sender is done and its link is free, and the
        receiver's next compute waits for it, while the sender goes on. Communication costs
        CPU, which comes out of the quota: a rank waiting for a late peer burns the profiled
        wait_cpu_fraction of a core, and once all have arrived each rank goes on polling at
        that fraction while the bytes move and runs the fitted cpu_alpha + cpu_beta x bytes of
        CPU work (copies, TCP, MPI's progress engine), spread over the transfer, through its
        quota; the collective ends when both the wire and the slowest of those are done. (A
        0.2-core host polling at 0.1 of a core through a long transfer has half its budget
        left for compute: without this the model was 20-28% fast for bp(tp) and sp on
        unequal hosts, reports/emulated-4host-planner-run4.md.)

A forward's latency is when the last rank is done; the breakdown (compute, throttled,
comm) follows the critical path. Several forwards are simulated after one another (each
after a barrier, as the drivers time them) and their mean is the prediction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from parallelism import STRATEGIES
from parallelism.schedule import EMBED, Step, Work
from parallelism.traffic import bus_bytes, total

from .profiles import kernel_key

CFS_PERIOD_S = 0.1   # bench.cluster's cpu.cfs_period_us (100 ms), also the Linux default
# What a profile's kernel times are worth in another job on the same hosts: dp's predictions
# (one host running the whole model, compute alone) were off by a standard deviation of
# 10.9% over 40 records of planner runs 3-7 (reports/emulated-4host-planner-run3..7); five
# even steps from -15% to +15% have a standard deviation of 10.6%.
KERNEL_SPREAD, SPREAD_POINTS = 0.15, 5
FP32 = 4
ROOTED = ("scatter", "gather", "bcast")
# The op whose fit prices each op (scatter moves the same bytes through the root as gather).
FIT_OF = {"allreduce": "allreduce", "allgather": "allgather", "reduce_scatter": "allgather",
          "scatter": "gather", "gather": "gather", "bcast": "gather", "send": "send"}


def cost_bytes(op: str, parts, whole: int, world: int) -> int:
    """The bytes that set a collective's time: the busiest rank's bus bytes (ring collectives:
    every rank sends and receives as much in parallel), or for rooted ops everything through
    the root's link (a gather's root receives every other rank's part one link after another)."""
    bus = [bus_bytes(op, part, whole, world) for part in parts]
    return sum(bus) if op in ROOTED else max(bus)


def hops(op: str, world: int) -> int:
    """Sequential message steps of the algorithm (ring allreduce 2(P-1), allgather/gather P-1):
    how a fitted alpha scales to a world size that was not profiled."""
    return {"allreduce": 2 * (world - 1), "send": 1}.get(op, world - 1)


# -- hosts ------------------------------------------------------------------------------------
@dataclass
class Host:
    name: str
    quota: float | None          # cores (CFS), None: not limited
    kernels: dict                # profile entries by kernel key
    memory_available: int
    runtime_bytes: int
    speed: float = 1.0           # projection: kernel rates x speed
    factors: tuple = (1.0, 1.0)  # whole forward / its kernels (profile calibration): original, sub-blocks
    machine: str | None = None   # hosts with the same machine share its `cores` (None: a machine of its own)
    cores: int = 1
    _one: dict = field(default_factory=dict, repr=False)   # shape -> seconds of one call

    def seconds(self, work: Work, cfg) -> float:
        """Full-speed seconds of one Work item (all `count` of it) on this host."""
        if work.count == 0 or work.batch * work.queries == 0:
            return 0.0
        one = self._one.get(work.shape)
        if one is None:
            entry, scale = self.kernels.get(kernel_key(*work.shape)), 1.0
            if entry is None:  # not profiled: the nearest shape, scaled by FLOPs (tokens for embed)
                entry = self._nearest(work)
                if work.kernel == EMBED or not entry["flops"]:
                    scale = work.batch * work.queries / (entry["batch"] * entry["queries"])
                else:
                    scale = work.flops(cfg) / work.count / entry["flops"]
            factor = self.factors[0] if work.width == cfg.hidden else self.factors[1]
            one = self._one[work.shape] = entry["seconds"] * scale * factor / self.speed
        return work.count * one

    def _nearest(self, work: Work) -> dict:
        """The profiled shape of the same kernel nearest in log-dimensions (a projection)."""
        same = [e for e in self.kernels.values() if e["kernel"] == work.kernel]
        if not same:
            raise KeyError(f"{self.name}: no {work.kernel} kernel in the profile")
        dims = ("batch", "queries", "keys", "width", "heads", "ffn")
        return min(same, key=lambda e: sum(abs(math.log(e[d] / getattr(work, d))) for d in dims))

    @property
    def pace(self) -> float:
        """Sustained share of a core (for ranking hosts): quota x speed."""
        return (1.0 if self.quota is None else min(1.0, self.quota)) * self.speed


class Cpu:
    """One host's CPU under a CFS quota: it runs at full speed until its budget for the
    current 100 ms period (quota x period CPU seconds) is spent, then waits for the next."""

    def __init__(self, quota: float | None, period: float = CFS_PERIOD_S):
        self.budget = None if quota is None or quota >= 1.0 else quota * period
        self.period, self.period_end, self.used = period, period, 0.0

    def _roll(self, t: float) -> None:
        if t >= self.period_end:
            self.period_end += math.floor((t - self.period_end) / self.period + 1) * self.period
            self.used = 0.0

    def run(self, start: float, seconds: float, share: float = 1.0) -> float:
        """Run `seconds` of full-speed work from `start` on `share` of a core (hosts sharing a
        machine's cores; a collective's polling and CPU work spread over its transfer); returns
        when it is done. The quota counts CPU time, not wall time."""
        if self.budget is None:
            return start + seconds / share
        t = start
        while seconds > 1e-12:
            self._roll(t)
            room = self.budget - self.used
            if room <= 1e-12:
                t = self.period_end
                continue
            cpu = min(seconds, room, (self.period_end - t) * share)
            t, self.used, seconds = t + cpu / share, self.used + cpu, seconds - cpu
        return t

    def runnable(self, t: float, need: float = 1e-3) -> float:
        """When, from t, the host can run again for `need` seconds: a throttled rank cannot
        progress its share of a collective or a send (MPI moves data inside its calls)."""
        if self.budget is None:
            return t
        self._roll(t)
        return t if self.budget - self.used >= need else self.period_end

    def spend(self, start: float, end: float, fraction: float) -> None:
        """Charge `fraction` of a core between start and end (waiting in MPI, TCP work)."""
        if self.budget is None or fraction <= 0:
            return
        t = start
        while t < end:
            self._roll(t)
            dt = min(end, self.period_end) - t
            self.used += fraction * dt
            t += dt
            if t >= self.period_end:
                self._roll(t)


# -- the network ------------------------------------------------------------------------------
@dataclass
class Fit:
    alpha: float
    beta: float
    cpu_fraction: float = 0.0
    projected: bool = False
    cpu_alpha: float | None = None   # CPU seconds beyond waiting = cpu_alpha + cpu_beta x bytes
    cpu_beta: float | None = None    # (None: a profile older than these; cpu_fraction x time instead)

    def busy_cpu(self, nbytes: int, seconds: float) -> float:
        if self.cpu_beta is None:
            return self.cpu_fraction * seconds
        return self.cpu_alpha + self.cpu_beta * nbytes


@dataclass
class Network:
    fits: dict                   # (op, world) -> Fit, as profiled
    links: dict                  # (a, b) -> (latency_s, bandwidth_Bps), both directions
    rate_scale: float = 1.0      # projection: beta x rate_scale (profiled rate / projected rate)
    notes: list = field(default_factory=list)
    wait_fraction: float = 0.0   # share of a core a rank burns while waiting in MPI (profiled)

    def fit(self, op: str, world: int) -> Fit:
        name = FIT_OF[op]
        if (name, world) in self.fits:
            f = self.fits[(name, world)]
            return Fit(f.alpha, f.beta * self.rate_scale, f.cpu_fraction, self.rate_scale != 1.0, f.cpu_alpha,
                       f.cpu_beta)
        measured = sorted(w for (o, w) in self.fits if o == name)
        if not measured:
            raise KeyError(f"no {name} fit in the profile")
        base = max([w for w in measured if w <= world] or measured[:1])
        f = self.fits[(name, base)]
        return Fit(f.alpha * hops(name, world) / hops(name, base), f.beta * self.rate_scale, f.cpu_fraction, True,
                   f.cpu_alpha, f.cpu_beta)

    def collective(self, step: Step, world: int) -> tuple[float, float]:
        """(seconds, each rank's CPU seconds beyond waiting) of a step's collective."""
        f = self.fit(step.op, world)
        nbytes = cost_bytes(step.op, step.parts, step.whole, world)
        seconds = f.alpha + f.beta * nbytes
        return seconds, f.busy_cpu(nbytes, seconds)

    def send(self, a: int, b: int, nbytes: int) -> tuple[float, float]:
        """One message from host a to host b: the link's ping-pong latency and bandwidth."""
        cpu = self.fit("send", 2).cpu_fraction if any(o == "send" for o, _ in self.fits) else 0.0
        latency, bandwidth = self.links.get((a, b)) or self.links.get((b, a)) or self._typical()
        return latency + nbytes / bandwidth * self.rate_scale, cpu

    def _typical(self) -> tuple[float, float]:
        lats = sorted(v[0] for v in self.links.values())
        bws = sorted(v[1] for v in self.links.values())
        return lats[len(lats) // 2], bws[len(bws) // 2]


# -- simulation -------------------------------------------------------------------------------
@dataclass
class Timeline:
    latency_s: float
    compute_s: float     # full-speed compute on the critical path
    throttled_s: float   # waiting for the CPU quota on the critical path
    comm_s: float        # communication (and waiting for a link) on the critical path

    def dominant(self) -> str:
        terms = {"compute": self.compute_s, "CPU quota waits": self.throttled_s, "communication": self.comm_s}
        return max(terms, key=terms.get)


def simulate(steps: list[Step], cfg, hosts: list[Host], host_ids: tuple[int, ...], network: Network,
             spread: float = KERNEL_SPREAD, forwards: int = 3) -> Timeline:
    """Forwards of `steps` (rank r on hosts[r], profile host host_ids[r]): the expected timeline.

    Under a CPU quota, latency is a step function of compute: a stage whose work needs a
    little more than a whole number of periods' budget waits one more period. Every host
    has the same period grid (Linux starts a cgroup's CFS period timer with
    hrtimer_forward_now from an expiry of 0, kernel/sched/fair.c, start_cfs_bandwidth, so
    all periods of one length begin at the same multiples of it since boot), so pp at 1
    Gbit/s, where a stage of three layers needs about two periods' budget at 0.45 core,
    measured 296 to 590 ms in different jobs (reports/emulated-4host-planner-rerun.md,
    -run7.md) while its predictions from one number per kernel jumped between 598 and 797
    ms with a few percent of profiled kernel time. So a prediction is the mean over kernel
    times x (1 - spread .. 1 + spread) in SPREAD_POINTS even steps, the spread being what a profile's kernel times are worth in another job
    (KERNEL_SPREAD); for each, one forward to settle, then `forwards` timed after one
    another (each after a barrier), which sample different phases of the period grid as a
    measured run does. Without a quota, latency is (piecewise) linear in compute and the
    mean over a symmetric spread is the profiled times' own: one forward, no spread."""
    world = len(hosts)
    nominal = [[sum(hosts[r].seconds(w, cfg) for w in step.work[r]) for r in range(world)] for step in steps]
    shares = [core_shares(hosts, row) for row in nominal]
    barrier = network.fit("allreduce", world).alpha if world > 1 else 0.0
    costs = [network.send(host_ids[s.src], host_ids[s.dst], s.parts[s.src]) if s.op == "send" else
             network.collective(s, world) if s.op is not None else None for s in steps]
    if all(h.quota is None or h.quota >= 1.0 for h in hosts):
        spread, forwards = 0.0, 0
    scales = [1 + spread * (2 * i / (SPREAD_POINTS - 1) - 1) for i in range(SPREAD_POINTS)] if spread else [1.0]
    results = []
    for scale in scales:
        seconds = [[s * scale for s in row] for row in nominal]
        cpus = [Cpu(h.quota) for h in hosts]
        now = 0.0
        for j in range(forwards + 1):
            timeline, end = _forward(steps, seconds, shares, costs, cpus, now, network.wait_fraction)
            if j or not forwards:
                results.append(timeline)
            now = end + barrier
    return Timeline(*(sum(getattr(t, f) for t in results) / len(results)
                      for f in ("latency_s", "compute_s", "throttled_s", "comm_s")))


def core_shares(hosts: list[Host], seconds: list[float]) -> list[float]:
    """Each rank's share of a core in a step where rank r computes seconds[r]: hosts on one
    machine that compute at once split its cores (at most one core each)."""
    shares = [1.0] * len(hosts)
    machines = {}
    for r, host in enumerate(hosts):
        if host.machine is not None and seconds[r] > 0:
            machines.setdefault(host.machine, []).append(r)
    for ranks in machines.values():
        cores = hosts[ranks[0]].cores
        for r in ranks:
            shares[r] = min(1.0, cores / len(ranks))
    return shares


def _forward(steps, seconds, shares, costs, cpus, now: float, wait: float) -> tuple[Timeline, float]:
    """One forward from `now` (every rank starts after a barrier): its timeline and end."""
    world = len(cpus)
    clock = [now] * world
    path = [(0.0, 0.0, 0.0)] * world            # (compute, throttled, comm) behind each clock
    arrival, link_free, sends_end = {}, {}, [now] * world
    for i, step in enumerate(steps):
        if step.after is not None:               # the receiver waits for its message
            dst = steps[step.after].dst
            t, via = arrival[step.after]
            if t > clock[dst]:
                cpus[dst].spend(clock[dst], t, wait)
                clock[dst], path[dst] = t, via
        finish = []
        for r in range(world):
            end = cpus[r].run(clock[r], seconds[i][r], shares[i][r])
            c, th, cm = path[r]
            path[r] = (c + seconds[i][r], th + max(0.0, end - clock[r] - seconds[i][r]), cm)
            finish.append(end)
        clock = finish
        if step.op == "send":
            src, dst = step.src, step.dst
            ready = cpus[src].runnable(clock[src])
            start = max(ready, link_free.get((src, dst), now))
            cost, frac = costs[i]
            c, th, cm = path[src]
            arrival[i] = (start + cost, (c, th + ready - clock[src], cm + start + cost - ready))
            link_free[(src, dst)] = start + cost
            sends_end[src] = max(sends_end[src], start + cost)
            cpus[src].spend(start, start + cost, frac)
        elif step.op is not None:
            ready = [cpus[r].runnable(clock[r]) for r in range(world)]
            slowest = max(range(world), key=lambda r: ready[r])
            cost, busy = costs[i]
            last = ready[slowest]
            for r in range(world):               # the early ones wait (and poll) for the last
                cpus[r].spend(ready[r], last, wait)
            # then the wire, during which each rank keeps polling (wait) and does the collective's
            # own CPU work (busy), spread over the transfer, under its quota: a rank whose quota
            # runs out stops moving its share and the collective waits for the next period.
            # Polling only fills time the wire leaves idle (a spinning rank, wait ~1, is done
            # when the wire is), so the CPU is at most max(busy, cost).
            cpu = min(busy + wait * cost, max(busy, cost))
            share = min(1.0, cpu / cost) if cost > 0 else 1.0
            end = max([last + cost] + ([cpus[r].run(last, cpu, share) for r in range(world)] if cpu > 0 else []))
            unthrottled = last + max(cost, cpu)
            c, th, cm = path[slowest]           # waits for the quota count as throttled, not comm
            throttled = th + last - clock[slowest] + end - unthrottled
            clock, path = [end] * world, [(c, throttled, cm + unthrottled - last)] * world
    for r in range(world):                       # isends complete before the forward returns
        if sends_end[r] > clock[r]:
            c, th, cm = path[r]
            path[r] = (c, th, cm + sends_end[r] - clock[r])
            clock[r] = sends_end[r]
    last = max(range(world), key=lambda r: clock[r])
    return Timeline(clock[last] - now, *path[last]), clock[last]


# -- memory -----------------------------------------------------------------------------------
def transient_bytes(work: Work, head_dim: int) -> int:
    """Activations one kernel call holds at its peak (input, output, intermediates), fp32."""
    tokens, inner = work.batch * work.queries, work.heads * head_dim
    per_kernel = {"qkv": tokens * (work.width + 3 * inner),
                  "attention": work.batch * work.heads * work.queries * work.keys + 4 * tokens * inner,
                  "out": tokens * (inner + 2 * work.width),
                  "ffn": tokens * (2 * work.width + work.ffn),
                  EMBED: 3 * tokens * work.width}
    return FP32 * per_kernel[work.kernel]


def memory_bytes(steps: list[Step], cfg, rank: int) -> int:
    """Activations and communication buffers of `rank`: the largest kernel's transient memory
    plus the largest buffer a step communicates (the gathered or reduced whole)."""
    peak = max((transient_bytes(w, cfg.head_dim) for s in steps for w in s.work[rank]), default=0)
    buffers = max((s.whole if s.op != "send" else s.parts[s.src] for s in steps if s.op), default=0)
    return peak + 2 * buffers


# -- a placement's prediction -----------------------------------------------------------------
@dataclass
class Prediction:
    latency_s: float
    throughput_rps: float
    timeline: Timeline
    memory_by_host: dict         # profile host index -> bytes (weights + activations + buffers + runtime)
    weights_by_rank: list
    bus_bytes_by_rank: list      # bytes per inference per rank (expected_traffic)
    payload_bytes_by_rank: list


def predict(strategy: str, cfg, options: dict, host_ids: tuple[int, ...], hosts: list[Host],
            network: Network, batch: int, seq: int) -> Prediction:
    cls, world = STRATEGIES[strategy], len(host_ids)
    steps = cls.steps(cfg, world, batch, seq, **options)
    timeline = simulate(steps, cfg, [hosts[i] for i in host_ids], host_ids, network)
    weights = [cls.weights_bytes(cfg, world, r, **options) for r in range(world)]
    tables = [total(cls.expected_traffic(cfg, world, r, batch, seq, **options)) for r in range(world)]
    memory = {h: weights[r] + memory_bytes(steps, cfg, r) + hosts[h].runtime_bytes for r, h in enumerate(host_ids)}
    return Prediction(timeline.latency_s, batch / timeline.latency_s, timeline, memory, weights,
                      [t.bus for t in tables], [t.payload for t in tables])
