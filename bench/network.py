"""The network layer shared by `bench.netem`, `bench.cluster` and the drivers.

- validation of everything that reaches `ip`, `tc` or a cgroup file: rates,
  sizes, times, percentages, interface / cluster names, CPU quotas, host
  counts (each raises `ValueError` with a one-line message);
- `tc -j qdisc show` parsing into what is in force: rate, burst, delay, jitter, loss;
- whether this kernel has the `netem` qdisc;
- interface byte counters from `/proc/net/dev` of the current namespace.

The drivers call exactly three functions:

    describe_network(iface=None) -> dict | None   # shaping in force on this host's MPI interface
    wire_iface() -> str | None                    # that interface: $DETR_IFACE (set by bench.cluster run)
    read_tx_rx(iface) -> (tx_bytes, rx_bytes)     # counters, read before and after a measured phase

Every external command is an argument list (never a shell string).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess

# ---------------------------------------------------------------------------------------------
# Validation. Units follow tc(8): "bit" suffixes are bits per second, "bps" suffixes are BYTES
# per second; k/m/g are powers of 1000 for rates; sizes use powers of 1024 like tc.

_RATE_UNITS = {"bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9, "tbit": 10**12,
               "bps": 8, "kbps": 8 * 10**3, "mbps": 8 * 10**6, "gbps": 8 * 10**9}
MIN_RATE_BIT, MAX_RATE_BIT = 8_000, 100 * 10**9
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "m": 1024**2, "mb": 1024**2}
MIN_BURST, MAX_BURST = 2048, 64 * 1024**2
_TIME_UNITS = {"us": 1.0, "usec": 1.0, "ms": 1e3, "msec": 1e3, "s": 1e6, "sec": 1e6}
_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
# Linux interface names: at most 15 bytes (IFNAMSIZ - 1); we allow a safe subset.
_IFACE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}")
# Cluster names become prefixes of interface names ("<name>br", "<name>v12"): short and plain.
_CLUSTER_NAME_RE = re.compile(r"[a-z][a-z0-9]{0,7}")
MAX_HOSTS = 64


def parse_rate(text: str) -> int:
    """'100mbit' -> 100_000_000 bits per second (tc units; a unit is required)."""
    match = re.fullmatch(_NUMBER + r"([a-z]+)", str(text).strip().lower())
    if not match or match.group(2) not in _RATE_UNITS:
        raise ValueError(f"invalid rate {text!r}: expected a number and a unit among "
                         f"{', '.join(_RATE_UNITS)} (e.g. 100mbit)")
    bits = int(round(float(match.group(1)) * _RATE_UNITS[match.group(2)]))
    if not MIN_RATE_BIT <= bits <= MAX_RATE_BIT:
        raise ValueError(f"rate {text!r} out of range: {format_rate(MIN_RATE_BIT)} to {format_rate(MAX_RATE_BIT)}")
    return bits


def format_rate(bits: int | float | None) -> str:
    if bits is None:
        return "-"
    for unit, scale in (("gbit", 10**9), ("mbit", 10**6), ("kbit", 10**3)):
        if bits >= scale:
            value = bits / scale
            return f"{value:g}{unit}" if value == int(value) else f"{value:.3g}{unit}"
    return f"{int(bits)}bit"


def parse_size(text: str) -> int:
    """'32kb' -> 32768 bytes (tc units: b, k/kb, m/mb are powers of 1024)."""
    match = re.fullmatch(r"(\d+)([a-z]*)", str(text).strip().lower())
    if not match or match.group(2) not in _SIZE_UNITS:
        raise ValueError(f"invalid size {text!r}: expected e.g. 32kb, 65536, 1mb")
    size = int(match.group(1)) * _SIZE_UNITS[match.group(2)]
    if not MIN_BURST <= size <= MAX_BURST:
        raise ValueError(f"size {text!r} out of range: {MIN_BURST} bytes to {MAX_BURST // 1024**2}mb")
    return size


def parse_time_us(text: str, what: str = "time", max_us: float = 10e6) -> float:
    """'2ms' -> 2000.0 microseconds (unit required: us, ms, s)."""
    match = re.fullmatch(_NUMBER + r"([a-z]+)", str(text).strip().lower())
    if not match or match.group(2) not in _TIME_UNITS:
        raise ValueError(f"invalid {what} {text!r}: expected a number and a unit among us, ms, s (e.g. 2ms)")
    value = float(match.group(1)) * _TIME_UNITS[match.group(2)]
    if value > max_us:
        raise ValueError(f"{what} {text!r} out of range: at most {max_us / 1e6:g}s")
    return value


def parse_percent(text: str, what: str = "loss") -> float:
    """'0.1%' -> 0.1 (percent, 0 to 100; the % sign is optional)."""
    match = re.fullmatch(_NUMBER + r"%?", str(text).strip())
    if not match or float(match.group(1)) > 100:
        raise ValueError(f"invalid {what} {text!r}: expected a percentage between 0 and 100 (e.g. 0.1%)")
    return float(match.group(1))


def validate_iface(name: str) -> str:
    if not isinstance(name, str) or not _IFACE_RE.fullmatch(name):
        raise ValueError(f"invalid interface name {name!r}: 1-15 characters among letters, digits, '_', '.', '-', "
                         "not starting with a punctuation mark")
    return name


def validate_cluster_name(name: str) -> str:
    if not isinstance(name, str) or not _CLUSTER_NAME_RE.fullmatch(name):
        raise ValueError(f"invalid cluster name {name!r}: 1-8 characters, lower-case letters and digits, "
                         "starting with a letter")
    return name


def validate_hosts(value) -> int:
    try:
        hosts = int(str(value), 10)
    except ValueError:
        raise ValueError(f"invalid host count {value!r}: expected an integer from 1 to {MAX_HOSTS}") from None
    if not 1 <= hosts <= MAX_HOSTS:
        raise ValueError(f"invalid host count {value!r}: expected an integer from 1 to {MAX_HOSTS}")
    return hosts


def parse_quota(text, cores: int | None = None) -> float:
    """CPU quota in cores: '0.45' -> 0.45 (0.01 up to the number of cores)."""
    cores = cores or os.cpu_count() or 1
    try:
        quota = float(str(text).strip())
    except ValueError:
        raise ValueError(f"invalid CPU quota {text!r}: expected a number of cores from 0.01 to {cores}") from None
    if not 0.01 <= quota <= cores:  # also rejects nan and inf
        raise ValueError(f"invalid CPU quota {text!r}: expected a number of cores from 0.01 to {cores}")
    return quota


def parse_quotas(text: str, hosts: int, cores: int | None = None) -> list[float]:
    parts = [p for p in str(text).split(",")]
    if len(parts) != hosts:
        raise ValueError(f"invalid CPU quotas {text!r}: {len(parts)} values for {hosts} hosts")
    return [parse_quota(p, cores) for p in parts]


# ---------------------------------------------------------------------------------------------
# tc state


def _netns_prefix(netns: str | None) -> list[str]:
    return ["ip", "netns", "exec", netns] if netns else []


def tc_qdiscs(iface: str, netns: str | None = None, stats: bool = False) -> list[dict] | None:
    """`tc -j qdisc show dev IFACE` parsed (None if tc is missing or the interface does not exist)."""
    validate_iface(iface)
    if shutil.which("tc") is None:
        return None
    cmd = ["tc"] + (["-n", netns] if netns else []) + ["-j"] + (["-s"] if stats else []) + \
        ["qdisc", "show", "dev", iface]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return None
    try:
        return json.loads(proc.stdout or "[]")
    except json.JSONDecodeError:
        return None


def summarize_qdiscs(qdiscs: list[dict]) -> dict:
    """What the qdiscs enforce on egress: the lowest tbf/htb/netem rate, tbf burst, netem delay/jitter/loss."""
    out = {"qdiscs": [q.get("kind") for q in qdiscs], "rate_bit": None, "burst": None,
           "delay_us": None, "jitter_us": None, "loss_pct": None, "limit": None}
    rates = []
    for q in qdiscs:
        kind, opts = q.get("kind"), q.get("options") or {}
        if kind == "tbf":
            if "rate" in opts:  # tc -j prints tbf rates in bytes per second
                rates.append(int(opts["rate"]) * 8)
            out["burst"] = opts.get("burst", out["burst"])
            out["limit"] = opts.get("limit", out["limit"])
        elif kind == "netem":
            delay = opts.get("delay") or {}
            if isinstance(delay, dict):
                if delay.get("delay") is not None:
                    out["delay_us"] = float(delay["delay"]) * 1e6
                if delay.get("jitter") is not None:
                    out["jitter_us"] = float(delay["jitter"]) * 1e6
            loss = opts.get("loss-random") or opts.get("loss")
            if isinstance(loss, dict) and loss.get("loss") is not None:
                out["loss_pct"] = float(loss["loss"]) * 100
            if opts.get("rate"):
                rate = opts["rate"].get("rate") if isinstance(opts["rate"], dict) else opts["rate"]
                if rate:
                    rates.append(int(rate) * 8)
            out["limit"] = opts.get("limit", out["limit"])
    out["rate_bit"] = min(rates) if rates else None
    return out


def host_queue_limit(rate_bit: int, burst: int) -> int:
    """tbf queue room in bytes on a host's own egress: the burst and 10 ms at the rate, kept
    between 16 KiB (one GSO packet on the emulated links) and 64 KiB: a short transmit queue
    like a real NIC's. A deep one (100 ms, the switch's below) held a host's outgoing ACKs
    behind its outgoing data: the flows it received stalled, and a 1 MiB allgather on 4
    emulated hosts reached 0.79-0.81 of the link rate (gloo 0.72-0.82) against 0.85-0.95 now
    (burst + 64 KiB at 10 Mbit/s, 79 ms of queue, still cost 8%). Its drops happen before
    the interface, so TCP backs off without retransmitting on the wire."""
    return burst + min(64 << 10, max(16 << 10, rate_bit // 8 // 100))


def switch_queue_limit(rate_bit: int, burst: int) -> int:
    """tbf queue room in bytes on the switch port towards a host (an emulated cluster's bridge
    side): 100 ms at the rate, at least 1 MiB, so that several senders converging on one host
    are delayed rather than dropped and retransmitted (wire bytes stay ~1% above payload)."""
    return max(1 << 20, rate_bit // 8 // 10) + burst


def tbf_args(rate_bit: int, burst: int, limit: int) -> list[str]:
    return ["tbf", "rate", f"{rate_bit}bit", "burst", str(burst), "limit", str(limit)]


_NETEM_CACHE: dict[str, bool | None] = {}


def netem_available() -> bool | None:
    """Does this kernel have the netem qdisc? None if it cannot be told (not root, no tc).

    Probed by adding netem to the loopback of a throw-away network namespace
    (`unshare --net`, gone when the probe exits), so nothing real is touched.
    """
    if "netem" in _NETEM_CACHE:
        return _NETEM_CACHE["netem"]
    answer = None
    release = os.uname().release
    for path in ("/sys/module/sch_netem", f"/lib/modules/{release}/kernel/net/sched/sch_netem.ko",
                 f"/lib/modules/{release}/kernel/net/sched/sch_netem.ko.xz",
                 f"/lib/modules/{release}/kernel/net/sched/sch_netem.ko.zst"):
        if os.path.exists(path):
            answer = True
            break
    if answer is None and os.geteuid() == 0 and shutil.which("unshare") and shutil.which("tc"):
        proc = subprocess.run(["unshare", "--net", "tc", "qdisc", "add", "dev", "lo", "root", "netem",
                               "delay", "1ms"], capture_output=True, text=True, check=False)
        if proc.returncode == 0:
            answer = True
        elif "unknown" in (proc.stderr or "").lower():
            answer = False
    _NETEM_CACHE["netem"] = answer
    return answer


# ---------------------------------------------------------------------------------------------
# For the drivers


def wire_iface() -> str | None:
    """The interface carrying MPI traffic on this host: $DETR_IFACE (bench.cluster run sets it in
    every namespace; set it yourself on real hosts, e.g. DETR_IFACE=eth0), else None."""
    name = os.environ.get("DETR_IFACE", "").strip()
    if not name:
        return None
    try:
        return validate_iface(name)
    except ValueError:
        return None


def read_tx_rx(iface: str) -> tuple[int, int]:
    """(tx_bytes, rx_bytes) of `iface` from /proc/net/dev of the current network namespace."""
    with open("/proc/net/dev") as handle:
        lines = handle.read().splitlines()[2:]
    for line in lines:
        name, _, fields = line.partition(":")
        if name.strip() == iface:
            values = fields.split()
            return int(values[8]), int(values[0])
    raise LookupError(f"interface {iface!r} not found in /proc/net/dev of this network namespace")


def describe_network(iface: str | None = None) -> dict | None:
    """The shaping in force on this host's egress on `iface` (default `wire_iface()`).

    Returns {host, iface, rate_bit, rate, burst, delay_us, jitter_us, loss_pct,
    qdiscs, netem_available, cluster, source} or None if there is no interface
    or its state cannot be read. `rate_bit` is None when the link is not shaped.
    Inside `bench.cluster` both directions of each host link carry this shaping.
    """
    iface = iface or wire_iface()
    if not iface:
        return None
    try:
        qdiscs = tc_qdiscs(iface)
    except ValueError:
        return None
    if qdiscs is None:
        return None
    out = {"host": socket.gethostname(), "iface": iface}
    out.update(summarize_qdiscs(qdiscs))
    out["rate"] = format_rate(out["rate_bit"]) if out["rate_bit"] else None
    out["netem_available"] = netem_available()
    out["cluster"] = os.environ.get("DETR_CLUSTER") or None
    out["source"] = "tc -j qdisc show"
    return out
