"""`bench.cluster status`: what is up, the shaping on both ends of every link, each host's CPU
quota and throttling, and the interface counters."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from bench import network as N

from . import device as D, launch, net
from .cgroups import CpuQuota
from .lifecycle import damage, describe_line
from .names import ClusterNames

FIELDS = ("name", "hosts", "subnet", "bridge", "bridge_addr", "rate_bit", "burst", "quotas", "cgroup_version")


def measure_hosts(state: dict, seconds: float = 2.0) -> list[dict]:
    """Each host's achieved GEMM rate, measured inside it (all hosts at once, as they run a job):
    {gflops, cpu_share: CPU-seconds per wall second} or {error}. Every host measures the same
    window: it starts after the slowest host can have imported torch under its quota (about one
    CPU-second), so that no host measures while the others are still starting."""
    agent = ClusterNames(state["name"]).state_dir / "agent"
    env = launch.rank_env(state)
    quotas = [q for q in state.get("quotas") or [] if q]
    start_at = time.time() + min(10.0, 2.0 + (1.0 / min(quotas) if quotas else 0.0))
    procs = [subprocess.Popen([str(agent), "-x", ns, "--", *D.measure_command(seconds, start_at=start_at)],
                              env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for ns in state["netns"]]
    out = []
    for proc in procs:
        stdout, stderr = proc.communicate()
        try:
            result = D.parse_result(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
            out.append({"gflops": round(result["gflops"], 2), "wall_s": round(result["wall_s"], 2),
                        "cpu_share": round(result["cpu_s"] / result["wall_s"], 4)})
        except (RuntimeError, ValueError, IndexError) as err:
            out.append({"error": str(err)})
    return out


def collect(state: dict, cpu: CpuQuota | None, measure: bool = False) -> dict:
    names = ClusterNames(state["name"])
    out = {k: state.get(k) for k in FIELDS}
    out["rate"] = N.format_rate(state["rate_bit"])
    out["damage"] = damage(state, shaping=True)
    out["intact"] = not out["damage"]
    out["netem_available"] = N.netem_available()
    out["device"] = state.get("device")
    out["host_list"] = []
    speeds = measure_hosts(state) if measure and not out["damage"] else [None] * state["hosts"]
    for i in range(state["hosts"]):
        host = {"host": state["netns"][i], "addr": state["addrs"][i], "veth": state["veth"][i]}
        host["egress"], host["ingress"] = net.link_shaping(names, i)   # ingress: the bridge port's egress
        host["tx_bytes"], host["rx_bytes"] = net.link_counters(names, i)
        if cpu is not None and state.get("cgroups"):
            host["cpu"] = cpu.read(Path(state["cgroups"][i]))
        host["speed"] = speeds[i]
        out["host_list"].append(host)
    return out


def render(status: dict, state: dict) -> str:
    from tabulate import tabulate
    health = "intact" if status["intact"] else ("DAMAGED: " + "; ".join(status["damage"]) +
                                                " (`shape --rate R` restores rates; for the rest: down, then up)")
    head = (f"cluster {status['name']!r} ({health}): {describe_line(state)}; "
            f"netem {'available' if status['netem_available'] else 'missing'}")
    device = status.get("device")
    if device:
        head += (f"\ndevice {device['name'] or 'custom'}: target {device['target_gflops']:g} GFLOP/s per host "
                 f"(this machine {device['gflops_per_cpu_s']:g} GFLOP/s per core -> quota "
                 f"{device.get('quota_first', device['quota']):g}; measured correction "
                 f"{device.get('correction', 'none')} -> {device['quota']:g})")
    rows = []
    for h in status["host_list"]:
        cpu, speed = h.get("cpu") or {}, h.get("speed") or {}
        rows.append([h["host"], h["addr"], h["veth"], N.format_rate((h["egress"] or {}).get("rate_bit")),
                     N.format_rate((h["ingress"] or {}).get("rate_bit")),
                     "-" if cpu.get("quota") is None else f"{cpu['quota']:g}",
                     f"{cpu.get('nr_throttled', '-')}/{cpu.get('nr_periods', '-')}",
                     speed.get("gflops", speed.get("error", "-")), h["tx_bytes"], h["rx_bytes"]])
    table = tabulate(rows, headers=["host", "address", "bridge port", "egress", "ingress", "cpu quota",
                                    "throttled/periods", "GFLOP/s", "tx bytes", "rx bytes"])
    return head + "\n" + table
