"""The machine the cost model predicts for: the profiled hosts and links, or a projection.

A projection changes what was measured and says so (`Machine.projection`, printed beside
every prediction): more hosts than were profiled (host i behaves like profiled host
i mod N; collectives at world sizes never profiled scale their fitted alpha by the
algorithm's message steps, `costmodel.hops`, and keep their beta per byte), other device
speeds (kernel rates x speed), other CPU quotas, another link rate (every beta x
profiled rate / new rate; alphas kept).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from parallelism import UsageError

from .costmodel import Cpu, Fit, Host, Network


@dataclass
class Machine:
    hosts: list[Host]
    network: Network
    profiled_hosts: int
    projection: list[str] = field(default_factory=list)

    @property
    def is_projection(self) -> bool:
        return bool(self.projection)


def profiled_rate_bit(profile: dict) -> float | None:
    """The link rate the profile was measured at: tc's rate on the hosts' interfaces if
    shaped, else the measured ping-pong bandwidth."""
    rates = [h["network"]["rate_bit"] for h in profile["hosts"]
             if isinstance(h.get("network"), dict) and h["network"].get("rate_bit")]
    if rates:
        return float(min(rates))
    links = profile.get("links") or []
    return 8.0 * min(link["bandwidth_Bps"] for link in links) if links else None


def core_rate(host: dict, quota: float | None) -> float:
    """The share of a core a host's rank got while it ran, from its profile: CPU seconds over
    wall seconds of its kernels (`cpu_share`) is min(quota, that share); a share well below
    the quota means other load on the machine, which slowed every call alike."""
    share = (host.get("calibration") or {}).get("cpu_per_wall") if quota is None else None
    share = share or host.get("cpu_share")
    if not share or share >= 0.8 * min(quota or 1.0, 1.0):
        return 1.0
    return max(0.01, min(1.0, share))


def forward_wall(cpu: float, quota: float, reps: int = 2) -> float:
    """What `Cpu` predicts for `reps` back-to-back forwards of `cpu` seconds after one more."""
    model = Cpu(quota)
    start = model.run(0.0, cpu)
    end = start
    for _ in range(reps):
        end = model.run(end, cpu)
    return (end - start) / reps


def effective_quota(host: dict) -> float | None:
    """The quota under which the CFS model reproduces the host's measured whole forwards
    (bench.profile_kernels.calibrate): a quota's real pace differs from its nominal value
    (throttling granularity, the kernel's own accounting)."""
    quota, forward = host.get("cpu_quota"), (host.get("calibration") or {}).get("original")
    if quota is None or quota >= 1.0 or not forward:
        return quota
    low, high = 0.3 * quota, min(1.0, 2.0 * quota)
    for _ in range(40):  # the modelled wall time falls as the quota grows
        mid = (low + high) / 2
        if forward_wall(forward["forward_cpu_s"], mid) > forward["forward_wall_s"]:
            low = mid
        else:
            high = mid
    return (low + high) / 2


def factors(host: dict) -> tuple[float, float]:
    cal = host.get("calibration") or {}
    original = (cal.get("original") or {}).get("factor", 1.0)
    return original, (cal.get("decoupled") or {}).get("factor", original)


def _per_host(values, count: int, what: str) -> list:
    if values is None:
        return [None] * count
    if len(values) == 1:
        return values * count
    if len(values) != count:
        raise UsageError(f"{what}: {len(values)} values for {count} hosts (give one, or one per host)")
    return list(values)


def build(profile: dict, hosts: int | None = None, speeds: list[float] | None = None,
          quotas: list[float] | None = None, rate_bit: float | None = None) -> Machine:
    profiled = profile["hosts"]
    n = hosts or len(profiled)
    notes = []
    if n != len(profiled):
        notes.append(f"{n} hosts from {len(profiled)} profiled (host i as profiled host i mod {len(profiled)})")
    speeds = _per_host(speeds, n, "--speeds")
    quotas = _per_host(quotas, n, "--cpu-quotas")
    out = []
    names = [h["host"] for h in profiled]
    for i in range(n):
        p = profiled[i % len(profiled)]
        quota = effective_quota(p) if quotas[i] is None else quotas[i]
        # Local ranks share one host name: tell them apart by rank; projected hosts by index.
        name = p["host"] if names.count(p["host"]) == 1 else f"{p['host']}#{i % len(profiled)}"
        out.append(Host(name=name if i < len(profiled) else f"{name}~{i}", quota=quota,
                        kernels=p["kernels"], memory_available=int(p["memory_available_bytes"]),
                        runtime_bytes=int(p["runtime_bytes"]), speed=speeds[i] or 1.0,
                        rate=core_rate(p, p.get("cpu_quota")), factors=factors(p)))
    contended = [h for h in out if h.rate < 1.0]
    if contended:
        notes.append("contended when profiled: " + ", ".join(f"{h.name} ran at {h.rate:.2f} of a core"
                                                             for h in contended))
    if any(s is not None for s in speeds):
        notes.append("device speeds x " + ",".join(f"{s or 1:g}" for s in speeds))
    if any(q is not None for q in quotas):
        notes.append("CPU quotas " + ",".join("none" if h.quota is None else f"{h.quota:g}" for h in out))
    fits = {(f["op"], f["world"]): Fit(f["alpha_s"], f["beta_s_per_byte"], f["cpu_fraction"])
            for f in profile.get("collectives") or []}
    links = {}
    for link in profile.get("links") or []:
        links[(link["a"], link["b"])] = (link["latency_s"], link["bandwidth_Bps"])
    if n > len(profiled) and links:  # a projected host's links are its model host's
        for a in range(n):
            for b in range(n):
                ma, mb = a % len(profiled), b % len(profiled)
                if a != b and (a, b) not in links and ma != mb:
                    links[(a, b)] = links.get((ma, mb)) or links[(mb, ma)]
    scale = 1.0
    if rate_bit is not None:
        base = profiled_rate_bit(profile)
        if base is None:
            raise UsageError("--rate: the profile knows no link rate to scale from (a 1-host profile)")
        scale = base / rate_bit
        notes.append(f"link rate {rate_bit / 1e6:g} Mbit/s (profiled at {base / 1e6:g} Mbit/s)")
    if n > 1 and not fits:
        raise UsageError(f"the profile has no collective fits: it was made on 1 host, cannot plan for {n}")
    return Machine(out, Network(fits, links, scale), len(profiled), notes)
