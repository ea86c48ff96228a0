"""`bench.cluster status`: what is up, the shaping on both ends of every link, each host's CPU
quota and throttling, and the interface counters."""

from __future__ import annotations

from pathlib import Path

from bench import network as N

from . import net
from .cgroups import CpuQuota
from .lifecycle import damage, describe_line
from .names import ClusterNames

FIELDS = ("name", "hosts", "subnet", "bridge", "bridge_addr", "rate_bit", "burst", "quotas", "cgroup_version")


def collect(state: dict, cpu: CpuQuota | None) -> dict:
    names = ClusterNames(state["name"])
    out = {k: state.get(k) for k in FIELDS}
    out["rate"] = N.format_rate(state["rate_bit"])
    out["damage"] = damage(state, shaping=True)
    out["intact"] = not out["damage"]
    out["netem_available"] = N.netem_available()
    out["host_list"] = []
    for i in range(state["hosts"]):
        host = {"host": state["netns"][i], "addr": state["addrs"][i], "veth": state["veth"][i]}
        host["egress"], host["ingress"] = net.link_shaping(names, i)   # ingress: the bridge port's egress
        host["tx_bytes"], host["rx_bytes"] = net.link_counters(names, i)
        if cpu is not None and state.get("cgroups"):
            host["cpu"] = cpu.read(Path(state["cgroups"][i]))
        out["host_list"].append(host)
    return out


def render(status: dict, state: dict) -> str:
    from tabulate import tabulate
    health = "intact" if status["intact"] else "DAMAGED: " + "; ".join(status["damage"]) + " (run down, then up)"
    head = (f"cluster {status['name']!r} ({health}): {describe_line(state)}; "
            f"netem {'available' if status['netem_available'] else 'missing'}")
    rows = []
    for h in status["host_list"]:
        cpu = h.get("cpu") or {}
        rows.append([h["host"], h["addr"], h["veth"], N.format_rate((h["egress"] or {}).get("rate_bit")),
                     N.format_rate((h["ingress"] or {}).get("rate_bit")),
                     "-" if cpu.get("quota") is None else f"{cpu['quota']:g}",
                     f"{cpu.get('nr_throttled', '-')}/{cpu.get('nr_periods', '-')}", h["tx_bytes"], h["rx_bytes"]])
    table = tabulate(rows, headers=["host", "address", "bridge port", "egress", "ingress", "cpu quota",
                                    "throttled/periods", "tx bytes", "rx bytes"])
    return head + "\n" + table
