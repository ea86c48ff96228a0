"""The machine the cost model predicts for: the profiled hosts and links, or a projection.

A projection changes what was measured and says so (`Machine.projection`, printed beside
every prediction): more hosts than were profiled (host i behaves like profiled host
i mod N; collectives at world sizes never profiled scale their fitted alpha by the
algorithm's message steps, `costmodel.hops`, and keep their beta per byte; and every host
on a machine of its own: profiled hosts that shared cores do not share them), other device
speeds (kernel rates x speed), other CPU quotas, another link rate (every beta x
profiled rate / new rate; alphas kept).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from parallelism import UsageError

from .costmodel import Fit, Host, Network


@dataclass
class Machine:
    hosts: list[Host]
    network: Network
    profiled_hosts: int
    projection: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

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


def contention(host: dict) -> float | None:
    """The share of a core a host's rank got over its profiled kernels and forwards, when it
    is well below its quota (other load on the machine while profiling), else None. Not
    applied: a contended profile still has the right CPU seconds, but its wall times say
    more about the other jobs than about the host (on a quiet machine the hosts get their
    quota, which is what the cost model assumes)."""
    share = (host.get("calibration") or {}).get("cpu_per_wall") or host.get("cpu_share")
    quota = min(host.get("cpu_quota") or 1.0, 1.0)
    return share if share and share < 0.8 * quota else None


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
        quota = p.get("cpu_quota") if quotas[i] is None else quotas[i]
        # Local ranks share one host name: tell them apart by rank; projected hosts by index.
        name = p["host"] if names.count(p["host"]) == 1 else f"{p['host']}#{i % len(profiled)}"
        out.append(Host(name=name if i < len(profiled) else f"{name}~{i}", quota=quota,
                        kernels=p["kernels"], memory_available=int(p["memory_available_bytes"]),
                        runtime_bytes=int(p["runtime_bytes"]), speed=speeds[i] or 1.0, factors=factors(p),
                        machine=None if n != len(profiled) else p.get("machine_id"), cores=int(p["cpus"])))
    shares = {h["host"]: contention(h) for h in profiled if contention(h)}
    warnings = [f"the machine was busy while profiling ({', '.join(f'{k} got {v:.2f} of a core' for k, v in shares.items())}"
                f", load {profile.get('loadavg_1m')}): predictions assume each host gets its quota"] if shares else []
    if any(s is not None for s in speeds):
        notes.append("device speeds x " + ",".join(f"{s or 1:g}" for s in speeds))
    if any(q is not None for q in quotas):
        notes.append("CPU quotas " + ",".join("none" if h.quota is None else f"{h.quota:g}" for h in out))
    fits = {(f["op"], f["world"]): Fit(f["alpha_s"], f["beta_s_per_byte"], f["cpu_fraction"],
                                       cpu_alpha=f.get("cpu_alpha_s"), cpu_beta=f.get("cpu_beta_s_per_byte"))
            for f in profile.get("collectives") or []}
    ids = [h.get("machine_id") for h in profiled if h.get("machine_id")]
    if n != len(profiled) and len(set(ids)) < len(ids):
        notes.append("every host on a machine of its own (the profiled hosts shared one)")
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
    network = Network(fits, links, scale, wait_fraction=float(profile.get("wait_cpu_fraction") or 0.0))
    return Machine(out, network, len(profiled), notes, warnings)
