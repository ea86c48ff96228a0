"""The links of an emulated cluster: the private /24, the bridge, one veth per host into its
network namespace, and tbf shaping on both ends of every host link."""

from __future__ import annotations

import ipaddress
import json

from bench import network as N

from .names import NS_IFACE, ClusterNames
from .system import UsageError, run_cmd

SUBNET_POOL = ipaddress.ip_network("10.213.0.0/16")
# With a tbf burst >= 32kb, GSO packets of at most 16 KiB keep a 1 MiB allgather at ~0.94 of the
# link bound; a GSO packet larger than the burst dropped 1 Gbit/s to 0.3-0.4 of it (measured when
# the cluster was built; test_cluster.py::test_allgather_100mbit_wire_bytes_and_time checks it).
GSO_MAX_SIZE = 16384


def _ip_json(cmd: list[str]) -> list:
    try:
        return json.loads(run_cmd(cmd, check=False).stdout or "[]")
    except json.JSONDecodeError:
        return []


def existing_netns() -> set[str]:
    return {e["name"] for e in _ip_json(["ip", "-j", "netns", "list"]) if isinstance(e, dict) and "name" in e}


def existing_links(netns: str | None = None) -> set[str]:
    where = ["-n", netns] if netns else []
    return {e["ifname"] for e in _ip_json(["ip", *where, "-j", "link", "show"]) if isinstance(e, dict) and "ifname" in e}


def used_networks() -> list:
    """Every IPv4 route and address of the root namespace (loopback aside)."""
    nets = []
    for cmd in (["ip", "-j", "route", "show", "table", "all"], ["ip", "-j", "addr", "show"]):
        for entry in _ip_json(cmd):
            dst = entry.get("dst")
            if dst and dst != "default" and dst[0].isdigit():
                try:
                    nets.append(ipaddress.ip_network(dst, strict=False))
                except ValueError:
                    pass
            for addr in entry.get("addr_info", []):
                try:
                    nets.append(ipaddress.ip_network(f"{addr['local']}/{addr['prefixlen']}", strict=False))
                except (KeyError, ValueError):
                    pass
    return [n for n in nets if n.version == 4 and not n.is_loopback]


def parse_subnet(requested: str) -> ipaddress.IPv4Network:
    problem = f"invalid subnet {requested!r}: expected a private IPv4 /24 such as 10.213.7.0/24"
    try:
        net = ipaddress.ip_network(requested, strict=True)
    except ValueError:
        raise UsageError(problem) from None
    if net.version != 4 or net.prefixlen != 24 or not net.is_private or net.is_loopback or net.is_link_local:
        raise UsageError(problem)
    return net


def pick_subnet(requested: str | None) -> ipaddress.IPv4Network:
    """The requested /24 if nothing of this machine overlaps it, else the first free /24 of the pool."""
    used = used_networks()
    if requested:
        net = parse_subnet(requested)
        clash = [str(n) for n in used if n.overlaps(net)]
        if clash:
            raise UsageError(f"subnet {net} overlaps {clash[0]} already in use on this machine")
        return net
    for net in SUBNET_POOL.subnets(new_prefix=24):
        if not any(n.overlaps(net) for n in used):
            return net
    raise UsageError(f"no free /24 left in {SUBNET_POOL}: pass --subnet")


def make_bridge(names: ClusterNames, address: str) -> None:
    run_cmd(["ip", "link", "add", "name", names.bridge, "type", "bridge"])
    run_cmd(["ip", "addr", "add", f"{address}/24", "dev", names.bridge])
    run_cmd(["ip", "link", "set", "dev", names.bridge, "up"])


def make_host_link(names: ClusterNames, host: int, address: str) -> None:
    """veth NAMEvI (bridge port) <-> eth0 in namespace NAME-hI (which must exist), up, addressed."""
    ns, veth, tmp = names.netns(host), names.veth(host), names.peer_tmp(host)
    run_cmd(["ip", "link", "add", "name", veth, "type", "veth", "peer", "name", tmp, "netns", ns])
    run_cmd(["ip", "-n", ns, "link", "set", "dev", tmp, "name", NS_IFACE])
    run_cmd(["ip", "link", "set", "dev", veth, "gso_max_size", str(GSO_MAX_SIZE)])
    run_cmd(["ip", "-n", ns, "link", "set", "dev", NS_IFACE, "gso_max_size", str(GSO_MAX_SIZE)])
    run_cmd(["ip", "-n", ns, "addr", "add", f"{address}/24", "dev", NS_IFACE])
    run_cmd(["ip", "-n", ns, "link", "set", "dev", "lo", "up"])
    run_cmd(["ip", "-n", ns, "link", "set", "dev", NS_IFACE, "up"])
    run_cmd(["ip", "link", "set", "dev", veth, "master", names.bridge, "up"])


def shape_link(names: ClusterNames, host: int, rate_bit: int, burst: int) -> None:
    """Both directions of host i's link: its own egress on eth0 (a NIC's short queue) and the
    bridge port's egress towards it (a switch's deep buffer)."""
    switch_port = ["root", "handle", "1:", *N.tbf_args(rate_bit, burst, N.switch_queue_limit(rate_bit, burst))]
    host_egress = ["root", "handle", "1:", *N.tbf_args(rate_bit, burst, N.host_queue_limit(rate_bit, burst))]
    run_cmd(["tc", "qdisc", "replace", "dev", names.veth(host), *switch_port])
    run_cmd(["tc", "-n", names.netns(host), "qdisc", "replace", "dev", NS_IFACE, *host_egress])


def link_shaping(names: ClusterNames, host: int) -> tuple[dict | None, dict | None]:
    """(egress, ingress) shaping in force on host i's link, each summarised, None if unreadable."""
    inner = N.tc_qdiscs(NS_IFACE, netns=names.netns(host))
    outer = N.tc_qdiscs(names.veth(host))
    return (N.summarize_qdiscs(inner) if inner is not None else None,
            N.summarize_qdiscs(outer) if outer is not None else None)


def link_counters(names: ClusterNames, host: int) -> tuple[int | None, int | None]:
    """(tx, rx) bytes of eth0 in host i."""
    entries = _ip_json(["ip", "-n", names.netns(host), "-j", "-s", "link", "show", "dev", NS_IFACE])
    try:
        stats = entries[0]["stats64"]
        return stats["tx"]["bytes"], stats["rx"]["bytes"]
    except (LookupError, TypeError):
        return None, None
