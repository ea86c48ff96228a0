"""Bringing an emulated cluster up, checking it, and taking every piece of it down again."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

from bench import network as N

from . import net, sshd, state as S
from .cgroups import CpuQuota
from .names import NS_IFACE, STATE_ROOT, ClusterNames
from .system import ClusterError, UsageError, kill_all, run_cmd

AGENT_SOURCE = Path(__file__).with_name("agent.py")


def fault_hook(point: str) -> None:
    """Test hook ($DETR_CLUSTER_FAULT): `hostI` (or `sshd`) fails `up` after host I (the sshds)
    is made; `stall-hostI` (`stall-sshd`) says so on stderr and waits there (to be killed)."""
    fault = os.environ.get("DETR_CLUSTER_FAULT")
    if fault == point:
        raise ClusterError(f"injected fault after {point} (DETR_CLUSTER_FAULT)")
    if fault == f"stall-{point}":
        sys.stderr.write(f"stalled after {point} (DETR_CLUSTER_FAULT)\n")
        sys.stderr.flush()
        time.sleep(600)


def new_state(names: ClusterNames, hosts: int, subnet, rate_bit: int, burst: int, quotas: list,
              cpu: CpuQuota | None) -> dict:
    return {"name": names.name, "hosts": hosts, "subnet": str(subnet), "bridge": names.bridge,
            "bridge_addr": str(subnet.network_address + 254),
            "netns": [names.netns(i) for i in range(hosts)], "veth": [names.veth(i) for i in range(hosts)],
            "ns_iface": NS_IFACE, "addrs": [str(subnet.network_address + i + 1) for i in range(hosts)],
            "rate_bit": rate_bit, "burst": burst, "quotas": quotas,
            "cgroup_version": cpu.version if cpu else None, "cgroup_parent": None, "cgroups": None,
            "created": time.time()}


def make(names: ClusterNames, state: dict, cpu: CpuQuota | None, extras=()) -> None:
    """Make every object of `state`, each journalled before it is made; on any failure (or
    Ctrl-C) remove what was made. `extras`: callables (state, journal) run last (sshd)."""
    journal = S.Journal(names)
    journal.begin()
    S.save(state)
    try:
        journal.will_make("bridge", names.bridge)
        net.make_bridge(names, state["bridge_addr"])
        if cpu is not None:
            parent, groups = cpu.groups(names.cgroup_dir, [names.cgroup_host(i) for i in range(state["hosts"])])
            journal.will_make("cgroup", parent)
            state["cgroup_parent"], state["cgroups"] = str(parent), [str(p) for p in groups]
            S.save(state)
            cpu.create(parent, groups)
        for i in range(state["hosts"]):
            journal.will_make("netns", names.netns(i))
            run_cmd(["ip", "netns", "add", names.netns(i)])
            journal.will_make("link", names.veth(i))
            net.make_host_link(names, i, state["addrs"][i])
            fault_hook(f"host{i}")
        apply_shape(state, state["rate_bit"], state["burst"], state["quotas"], cpu)
        install_agent(state)
        for extra in extras:
            extra(state, journal)
            fault_hook(extra.__module__.rsplit(".", 1)[-1])      # "sshd"
        S.save(state)
        journal.done()
    except BaseException:
        teardown(names, state, cpu)
        raise


def add(names: ClusterNames, state: dict, cpu: CpuQuota | None, step) -> None:
    """Add a part (`step(state, journal)`, e.g. sshd) to an intact cluster, journalled like `up`."""
    journal = S.Journal(names)
    journal.begin()
    try:
        step(state, journal)
        S.save(state)
        journal.done()
    except BaseException:
        teardown(names, state, cpu)
        raise


def apply_shape(state: dict, rate_bit: int | None, burst: int | None, quotas: list | None,
                cpu: CpuQuota | None) -> None:
    names = ClusterNames(state["name"])
    if rate_bit is not None:
        burst = burst or state["burst"]
        for i in range(state["hosts"]):
            net.shape_link(names, i, rate_bit, burst)
        state["rate_bit"], state["burst"] = rate_bit, burst
    if quotas is not None:
        if state.get("cgroups") and cpu is not None:
            for path, quota in zip(state["cgroups"], quotas):
                cpu.set(Path(path), quota)
        elif any(q is not None for q in quotas):
            raise UsageError("this cluster has no cgroups (made without a cpu controller): quotas unavailable")
        state["quotas"] = quotas
    S.save(state)
    if (names.state_dir / "agent").exists():
        install_agent(state)


def install_agent(state: dict) -> Path:
    """agent.py, with a #! line for this Python, and its hosts.json into the state folder."""
    folder = ClusterNames(state["name"]).state_dir
    groups = state.get("cgroups") or [None] * state["hosts"]
    config = {"ip": shutil.which("ip") or "/usr/sbin/ip",
              "hosts": {ns: {"procs": str(Path(group) / "cgroup.procs") if group else None, "quota": quota}
                        for ns, group, quota in zip(state["netns"], groups, state["quotas"])}}
    (folder / "hosts.json").write_text(json.dumps(config, indent=1) + "\n")
    agent = folder / "agent"
    agent.write_text(f"#!{sys.executable} -I\n" + AGENT_SOURCE.read_text())
    agent.chmod(0o755)
    return agent


def describe_line(state: dict) -> str:
    quotas = state.get("quotas") or []
    quota = ("none" if all(q is None for q in quotas) else
             f"{quotas[0]:g} core" if len(set(quotas)) == 1 else ",".join(f"{q:g}" if q else "-" for q in quotas))
    return (f"{state['hosts']} hosts on {state['subnet']} via bridge {state['bridge']}, links "
            f"{N.format_rate(state['rate_bit'])} each way (tbf burst {state['burst']}), CPU quota {quota}")


def damage(state: dict, shaping: bool = False) -> list[str]:
    """What is missing or wrong in a cluster that `up` finished (empty: intact). `shaping`: also
    compare the tbf rate on both ends of every link with the state's."""
    names = ClusterNames(state["name"])
    links, nss = net.existing_links(), net.existing_netns()
    found = [] if state["bridge"] in links else [f"bridge {state['bridge']} missing"]
    for i in range(state["hosts"]):
        ns, veth = state["netns"][i], state["veth"][i]
        if ns not in nss:
            found.append(f"namespace {ns} missing")
        elif veth not in links:
            found.append(f"link {veth} (host {i}) missing")
        elif shaping:
            for side, summary in zip(("egress", "ingress"), net.link_shaping(names, i)):
                rate = (summary or {}).get("rate_bit")
                if rate != state["rate_bit"]:
                    found.append(f"host {i} {side} shaped at {N.format_rate(rate)}, not "
                                 f"{N.format_rate(state['rate_bit'])}")
    found += [f"cgroup {p} missing" for p in state.get("cgroups") or [] if not Path(p).is_dir()]
    found += [f"{f} missing" for f in ("agent", "hosts.json") if not (names.state_dir / f).exists()]
    return found + sshd.damage(state)


def leftovers(names: ClusterNames, cpu: CpuQuota | None = None) -> list[str]:
    """Everything carrying this cluster's names that still exists."""
    found = sorted(ns for ns in net.existing_netns() if names.host_of_netns(ns) is not None)
    found += sorted(link for link in net.existing_links() if names.is_link(link))
    cpu = cpu or CpuQuota.detect()
    if cpu is not None and (cpu.root / names.cgroup_dir).exists():
        found.append(str(cpu.root / names.cgroup_dir))
    found += [str(p) for p in (names.state_dir, names.ssh_config) if p.exists()]
    return found


def host_processes(names: ClusterNames, nss: list[str], groups: list[Path]) -> list[int]:
    pids = []
    for ns in nss:
        pids += [int(p) for p in run_cmd(["ip", "netns", "pids", ns], check=False).stdout.split() if p.isdigit()]
    for group in groups:
        pids += CpuQuota.pids(group)
    return sorted(set(pids) - {os.getpid()})


def teardown(names: ClusterNames, state: dict | None, cpu: CpuQuota | None = None) -> list[str]:
    """Remove everything this cluster made, found by its state, its journal and its names.
    Returns what was removed."""
    removed = []
    cpu = cpu or CpuQuota.detect()
    nss = sorted(ns for ns in net.existing_netns() if names.host_of_netns(ns) is not None)
    parent = (Path(state["cgroup_parent"]) if state and state.get("cgroup_parent") else
              cpu.root / names.cgroup_dir if cpu else None)
    groups = sorted(p for p in parent.iterdir() if p.is_dir()) if parent and parent.is_dir() else []
    # 1. processes still running in our hosts (ranks, sshd): only ours, by id.
    for _ in range(50):
        pids = host_processes(names, nss, groups)
        if not pids:
            break
        kill_all(pids)
        time.sleep(0.02)
    # 2. namespaces (their veth ends go with them), then our links left in the root namespace.
    for ns in nss:
        if run_cmd(["ip", "netns", "del", ns], check=False).returncode == 0:
            removed.append(f"netns {ns}")
    links = net.existing_links()
    for link in sorted((l for l in links if names.is_port(l))) + ([names.bridge] if names.bridge in links else []):
        if run_cmd(["ip", "link", "del", "dev", link], check=False).returncode == 0:
            removed.append(f"link {link}")
    # 3. cgroups, children first (empty by now, unless a process was still on its way out).
    for group in groups + ([parent] if parent is not None else []):
        for _ in range(50):
            try:
                group.rmdir()
                removed.append(f"cgroup {group}")
                break
            except FileNotFoundError:
                break
            except OSError:
                kill_all(CpuQuota.pids(group))
                time.sleep(0.02)
    # 4. files: ssh client configuration, state folder (journal, agent, keys).
    if names.ssh_config.exists():
        names.ssh_config.unlink()
        removed.append(f"file {names.ssh_config}")
    if names.state_dir.exists():
        shutil.rmtree(names.state_dir, ignore_errors=True)
        removed.append(f"state {names.state_dir}")
    try:
        STATE_ROOT.rmdir()   # only when no other cluster is up
    except OSError:
        pass
    return removed
