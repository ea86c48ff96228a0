"""An emulated edge cluster on one Linux machine: one network namespace per host, a veth from
each to one bridge (the switch), both directions of every host link shaped with tbf, a CPU quota
per host from the cgroup `cpu` controller, and MPI ranks launched one per host over TCP.

    python -m bench.cluster up --hosts 4 --rate 100mbit --cpu-quota 0.45
    python -m bench.cluster shape --rate 10mbit             # between sweep points, no teardown
    python -m bench.cluster status [--json]
    python -m bench.cluster run -- python -m bench.collectives --sizes 1m
    python -m bench.cluster exec --host 0 -- ip addr       # one command in one host, no MPI
    python -m bench.cluster down

Layout for cluster NAME (default "detr", --name or $DETR_CLUSTER_NAME) with N hosts:
  namespaces NAME-h0..NAME-h{N-1}, each with `lo` and `eth0` (address .1, .2, ... of one private
  /24 picked from 10.213.0.0/16 where no route or address of this machine is, or --subnet);
  bridge NAMEbr (address .254, in the root namespace: mpiexec's proxies call back to it);
  bridge-side veth ends NAMEv0..; cgroups <cpu mount>/detr-NAME/h0..; state and the launcher
  agent in /run/detr-cluster/NAME/.
`run` calls MPICH hydra: mpiexec -launcher ssh -launcher-exec AGENT -iface NAMEbr -hosts ...;
the agent joins the host's cgroup, gives the host its own hostname (UTS namespace) and then
`ip netns exec`s the proxy there. MPI is forced onto TCP (ofi/tcp on eth0); ranks get
DETR_IFACE=eth0, DETR_COMM_WAIT=sleep (--wait spin to change), GLOO_SOCKET_IFNAME=eth0,
MASTER_ADDR/MASTER_PORT (host 0); unless set: OMP_NUM_THREADS=1 and
MPIR_CVAR_IALLREDUCE_INTRA_ALGORITHM=tsp_ring (the ring beats MPICH's default on slow links).

Exit codes: 0 ok, 1 operation failed (a failed `up` removes what it made), 2 invalid arguments
or not root (nothing created).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench import cli, network as N

STATE_ROOT = Path(os.environ.get("DETR_CLUSTER_STATE", "/run/detr-cluster"))
DEFAULT_NAME = "detr"
DEFAULT_BURST = "32kb"
GSO_MAX_SIZE = 16384          # with burst >= 32kb keeps tbf at ~0.94 of the bound (MACHINE-FACTS)
CFS_PERIOD_US = 100_000
NS_IFACE = "eth0"
SUBNET_POOL = ipaddress.ip_network("10.213.0.0/16")


class UsageError(Exception):
    """Invalid input or environment: one line on stderr, exit 2, nothing created."""


class ClusterError(Exception):
    """An operation failed after validation: exit 1."""


# ---------------------------------------------------------------------------------------------
# small helpers


def run_cmd(cmd: list[str], check: bool = True, quiet: bool = False) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        err = (proc.stderr or proc.stdout).strip().splitlines()
        raise ClusterError(f"`{' '.join(cmd)}` failed: {err[-1] if err else 'exit ' + str(proc.returncode)}")
    return proc


def names(name: str, hosts: int) -> dict:
    return {"bridge": f"{name}br",
            "netns": [f"{name}-h{i}" for i in range(hosts)],
            "veth": [f"{name}v{i}" for i in range(hosts)],        # bridge side, root namespace
            "peer_tmp": [f"{name}p{i}" for i in range(hosts)]}    # ns side before renaming to eth0


def state_dir(name: str) -> Path:
    return STATE_ROOT / name


def load_state(name: str) -> dict | None:
    path = state_dir(name) / "state.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def save_state(state: dict) -> None:
    folder = state_dir(state["name"])
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "state.json.tmp"
    tmp.write_text(json.dumps(state, indent=1) + "\n")
    tmp.replace(folder / "state.json")


def existing_netns() -> set[str]:
    proc = run_cmd(["ip", "-j", "netns", "list"], check=False)
    try:
        return {entry["name"] for entry in json.loads(proc.stdout or "[]")}
    except (json.JSONDecodeError, KeyError, TypeError):
        return set()


def existing_links() -> set[str]:
    proc = run_cmd(["ip", "-j", "link", "show"], check=False)
    try:
        return {entry["ifname"] for entry in json.loads(proc.stdout or "[]")}
    except (json.JSONDecodeError, KeyError, TypeError):
        return set()


def used_networks() -> list:
    """Every route and address of the root namespace and of every existing namespace but ours."""
    nets = []
    for cmd in (["ip", "-j", "route", "show", "table", "all"], ["ip", "-j", "addr", "show"]):
        proc = run_cmd(cmd, check=False)
        try:
            entries = json.loads(proc.stdout or "[]")
        except json.JSONDecodeError:
            continue
        for entry in entries:
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
    try:
        net = ipaddress.ip_network(requested, strict=True)
    except ValueError:
        raise UsageError(f"invalid subnet {requested!r}: expected a private IPv4 /24 such as 10.213.7.0/24") from None
    if net.version != 4 or net.prefixlen != 24 or not net.is_private or net.is_loopback or net.is_link_local:
        raise UsageError(f"invalid subnet {requested!r}: expected a private IPv4 /24 such as 10.213.7.0/24")
    return net


def pick_subnet(requested: str | None) -> ipaddress.IPv4Network:
    """The requested /24 if no route or address of this machine overlaps it, else the first free
    /24 of 10.213.0.0/16."""
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


# ---------------------------------------------------------------------------------------------
# cgroups (v1 cpu controller, or v2 cpu.max)


def cgroup_layout() -> tuple[str, Path] | None:
    """('v1', <cpu mount>) or ('v2', <cgroup2 root with the cpu controller>) or None."""
    with open("/proc/self/mounts") as handle:
        mounts = [line.split() for line in handle]
    for dev, mnt, fstype, opts, *_ in mounts:
        if fstype == "cgroup" and "cpu" in opts.split(","):
            if (Path(mnt) / "cpu.cfs_quota_us").exists():
                return "v1", Path(mnt)
    for dev, mnt, fstype, opts, *_ in mounts:
        if fstype == "cgroup2":
            controllers = Path(mnt) / "cgroup.controllers"
            try:
                if "cpu" in controllers.read_text().split():
                    return "v2", Path(mnt)
            except OSError:
                pass
    return None


def cgroup_paths(layout: tuple[str, Path], name: str, hosts: int) -> tuple[Path, list[Path]]:
    parent = layout[1] / f"detr-{name}"
    return parent, [parent / f"h{i}" for i in range(hosts)]


def set_quota(layout: tuple[str, Path], path: Path, quota: float | None) -> None:
    quota_us = -1 if quota is None else max(1000, int(round(quota * CFS_PERIOD_US)))
    if layout[0] == "v1":
        (path / "cpu.cfs_period_us").write_text(str(CFS_PERIOD_US))
        (path / "cpu.cfs_quota_us").write_text(str(quota_us))
    else:
        (path / "cpu.max").write_text(f"{'max' if quota_us < 0 else quota_us} {CFS_PERIOD_US}")


def read_cpu(layout: tuple[str, Path], path: Path) -> dict:
    out = {"quota": None, "nr_periods": None, "nr_throttled": None, "throttled_s": None}
    try:
        if layout[0] == "v1":
            quota_us = int((path / "cpu.cfs_quota_us").read_text())
            period_us = int((path / "cpu.cfs_period_us").read_text())
        else:
            q, p = (path / "cpu.max").read_text().split()
            quota_us, period_us = (-1 if q == "max" else int(q)), int(p)
        out["quota"] = None if quota_us < 0 else quota_us / period_us
        for line in (path / "cpu.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key in ("nr_periods", "nr_throttled"):
                out[key] = int(value)
            elif key == "throttled_time":
                out["throttled_s"] = int(value) / 1e9
            elif key == "throttled_usec":
                out["throttled_s"] = int(value) / 1e6
    except (OSError, ValueError):
        pass
    return out


def cgroup_pids(path: Path) -> list[int]:
    try:
        return [int(p) for p in (path / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


# ---------------------------------------------------------------------------------------------
# shaping


def shape_link(state: dict, i: int, rate_bit: int, burst: int) -> None:
    """Both directions of host i's link: its own egress on eth0 and the bridge port's egress."""
    switch_port = ["root", "handle", "1:", *N.tbf_args(rate_bit, burst, N.switch_queue_limit(rate_bit, burst))]
    host_egress = ["root", "handle", "1:", *N.tbf_args(rate_bit, burst, N.host_queue_limit(rate_bit, burst))]
    run_cmd(["tc", "qdisc", "replace", "dev", state["veth"][i], *switch_port])
    run_cmd(["tc", "-n", state["netns"][i], "qdisc", "replace", "dev", NS_IFACE, *host_egress])


# ---------------------------------------------------------------------------------------------
# the launcher agent (generated into the state dir at `up`)

AGENT_TEMPLATE = '''#!{python} -I
"""Launcher agent of emulated cluster {name!r} (generated by bench.cluster up; removed by down).

Called by MPICH hydra as `agent -x HOST WORDS...` (its ssh launcher hook: the words are
joined and split again like a remote shell would, without running one) and by
`bench.cluster exec` as `agent -x HOST -- ARGV...` (taken literally). Joins HOST's cgroup (before `ip netns exec` hides /sys/fs/cgroup),
gives it its own hostname (UTS namespace), then runs CMD inside HOST's network namespace.
"""
import ctypes, os, shlex, socket, sys

HOSTS = {hosts!r}   # netns name -> (cgroup.procs path or None, CPU quota or None)
IP = {ip!r}
CLONE_NEWUTS = 0x04000000


def main(argv):
    args = argv[1:]
    while args and args[0] in ("-x", "-q", "-T", "-n"):
        args = args[1:]
    if len(args) < 2 or args[0] not in HOSTS:
        sys.stderr.write("cluster agent: usage: agent -x HOST CMD... with HOST among %s\\n" % ", ".join(HOSTS))
        return 255
    host, cmd = args[0], args[1:]
    if cmd[0] == "--":
        cmd = cmd[1:]                       # literal argv (bench.cluster exec)
    else:
        cmd = shlex.split(" ".join(cmd))    # ssh semantics: hydra quotes its words for a remote shell
    if os.environ.get("DETR_AGENT_DEBUG"):
        sys.stderr.write("cluster agent: %r\\n" % (argv,))
    procs, quota = HOSTS[host]
    os.environ["DETR_HOST"] = host
    os.environ["DETR_CPU_QUOTA"] = "none" if quota is None else repr(quota)
    if procs:
        with open(procs, "w") as handle:
            handle.write(str(os.getpid()))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWUTS) == 0:
        socket.sethostname(host)
    os.execv(IP, [IP, "netns", "exec", host] + cmd)


sys.exit(main(sys.argv))
'''


def write_agent(state: dict) -> Path:
    path = state_dir(state["name"]) / "agent"
    hosts = {ns: (str(Path(cg) / "cgroup.procs") if cg else None, quota)
             for ns, cg, quota in zip(state["netns"], state["cgroups"] or [None] * state["hosts"], state["quotas"])}
    text = AGENT_TEMPLATE.format(python=sys.executable, name=state["name"], hosts=hosts,
                                 ip=shutil.which("ip") or "/usr/sbin/ip")
    path.write_text(text)
    path.chmod(0o755)
    return path


# ---------------------------------------------------------------------------------------------
# commands


def require_root_and_tools(need_cgroup: bool = False):
    if os.geteuid() != 0:
        raise UsageError("needs root (network namespaces, tc and cgroups): run with sudo")
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            raise UsageError(f"`{tool}` not found: install iproute2")
    layout = cgroup_layout()
    if need_cgroup and layout is None:
        raise UsageError("no cgroup cpu controller (v1 cpu mount or v2 cpu.max): CPU quotas unavailable")
    return layout


def cmd_up(args) -> int:
    name = args.name
    hosts = N.validate_hosts(args.hosts)
    rate_bit = N.parse_rate(args.rate)
    burst = N.parse_size(args.burst)
    if args.cpu_quota is not None and args.cpu_quotas is not None:
        raise UsageError("give --cpu-quota or --cpu-quotas, not both")
    quotas = ([N.parse_quota(args.cpu_quota)] * hosts if args.cpu_quota is not None else
              N.parse_quotas(args.cpu_quotas, hosts) if args.cpu_quotas is not None else [None] * hosts)
    if args.subnet:
        parse_subnet(args.subnet)
    layout = require_root_and_tools(need_cgroup=any(q is not None for q in quotas))
    cores = os.cpu_count() or 1
    if all(q is not None for q in quotas) and sum(quotas) > cores + 1e-9:
        print(f"warning: quotas add up to {sum(quotas):g} cores on a {cores}-core machine: "
              "hosts will compete for cores", file=sys.stderr)

    state = load_state(name)
    if state is not None:
        if state["hosts"] == hosts and cluster_intact(state):
            if args.subnet and args.subnet != state["subnet"]:
                raise UsageError(f"cluster {name!r} is up on {state['subnet']}: run down first to change the subnet")
            apply_shape(state, rate_bit, burst, quotas, layout)
            write_agent(state)
            print(f"cluster {name!r} already up: {describe_line(state)}")
            return 0
        if state["hosts"] != hosts and cluster_intact(state):
            raise UsageError(f"cluster {name!r} is up with {state['hosts']} hosts: run "
                             f"`python -m bench.cluster down --name {name}` first")
        teardown(name, state)      # half-made or stale: start afresh
    elif leftovers(name):
        teardown(name, None)

    subnet = pick_subnet(args.subnet)
    n = names(name, hosts)
    clash = existing_links() & ({n["bridge"]} | set(n["veth"]) | set(n["peer_tmp"]))
    if clash:
        raise UsageError(f"interface {sorted(clash)[0]} already exists and is not this cluster's")
    addrs = [str(subnet.network_address + i + 1) for i in range(hosts)]
    state = {"name": name, "hosts": hosts, "subnet": str(subnet), "bridge": n["bridge"],
             "bridge_addr": str(subnet.network_address + 254), "netns": n["netns"], "veth": n["veth"],
             "ns_iface": NS_IFACE, "addrs": addrs, "rate_bit": rate_bit, "burst": burst,
             "quotas": quotas, "cgroup_version": layout[0] if layout else None,
             "cgroup_parent": None, "cgroups": None, "created": time.time()}
    start = time.perf_counter()
    try:
        save_state(state)  # first, so that `down` finds a half-made cluster
        run_cmd(["ip", "link", "add", "name", n["bridge"], "type", "bridge"])
        run_cmd(["ip", "addr", "add", f"{state['bridge_addr']}/24", "dev", n["bridge"]])
        run_cmd(["ip", "link", "set", "dev", n["bridge"], "up"])
        if layout is not None:
            parent, paths = cgroup_paths(layout, name, hosts)
            state["cgroup_parent"], state["cgroups"] = str(parent), [str(p) for p in paths]
            save_state(state)
            parent.mkdir(exist_ok=True)
            if layout[0] == "v2":
                (parent.parent / "cgroup.subtree_control").write_text("+cpu")
                (parent / "cgroup.subtree_control").write_text("+cpu")
            for path in paths:
                path.mkdir(exist_ok=True)
        for i in range(hosts):
            ns, veth, tmp = n["netns"][i], n["veth"][i], n["peer_tmp"][i]
            run_cmd(["ip", "netns", "add", ns])
            run_cmd(["ip", "link", "add", "name", veth, "type", "veth", "peer", "name", tmp, "netns", ns])
            run_cmd(["ip", "-n", ns, "link", "set", "dev", tmp, "name", NS_IFACE])
            run_cmd(["ip", "link", "set", "dev", veth, "gso_max_size", str(GSO_MAX_SIZE)])
            run_cmd(["ip", "-n", ns, "link", "set", "dev", NS_IFACE, "gso_max_size", str(GSO_MAX_SIZE)])
            run_cmd(["ip", "-n", ns, "addr", "add", f"{addrs[i]}/24", "dev", NS_IFACE])
            run_cmd(["ip", "-n", ns, "link", "set", "dev", "lo", "up"])
            run_cmd(["ip", "-n", ns, "link", "set", "dev", NS_IFACE, "up"])
            run_cmd(["ip", "link", "set", "dev", veth, "master", n["bridge"], "up"])
            if os.environ.get("DETR_CLUSTER_FAULT") == f"host{i}":   # test hook: fail half-way
                raise ClusterError(f"injected fault after host {i} (DETR_CLUSTER_FAULT)")
        apply_shape(state, rate_bit, burst, quotas, layout)
        write_agent(state)
        save_state(state)
    except BaseException:
        teardown(name, state)
        raise
    print(f"cluster {name!r} up in {time.perf_counter() - start:.2f} s: {describe_line(state)}")
    return 0


def apply_shape(state: dict, rate_bit: int | None, burst: int | None, quotas: list | None, layout) -> None:
    if rate_bit is not None:
        burst = burst or state["burst"]
        for i in range(state["hosts"]):
            shape_link(state, i, rate_bit, burst)
        state["rate_bit"], state["burst"] = rate_bit, burst
    if quotas is not None:
        if state.get("cgroups"):
            for path, quota in zip(state["cgroups"], quotas):
                set_quota(layout, Path(path), quota)
        elif any(q is not None for q in quotas):
            raise UsageError("this cluster has no cgroups (made without a cpu controller): quotas unavailable")
        state["quotas"] = quotas
    save_state(state)
    if (state_dir(state["name"]) / "agent").exists():
        write_agent(state)


def describe_line(state: dict) -> str:
    quotas = state.get("quotas") or []
    quota = ("none" if all(q is None for q in quotas) else
             f"{quotas[0]:g} core" if len(set(quotas)) == 1 else ",".join(f"{q:g}" if q else "-" for q in quotas))
    return (f"{state['hosts']} hosts on {state['subnet']} via bridge {state['bridge']}, links "
            f"{N.format_rate(state['rate_bit'])} each way (tbf burst {state['burst']}), CPU quota {quota}")


def cluster_intact(state: dict) -> bool:
    links, nss = existing_links(), existing_netns()
    if state["bridge"] not in links or not set(state["veth"]) <= links or not set(state["netns"]) <= nss:
        return False
    if state.get("cgroups") and not all(Path(p).is_dir() for p in state["cgroups"]):
        return False
    return (state_dir(state["name"]) / "agent").exists()


def leftovers(name: str, state: dict | None = None) -> list[str]:
    """Everything with this cluster's names that still exists."""
    found = []
    prefix_ns = f"{name}-h"
    found += sorted(ns for ns in existing_netns() if ns.startswith(prefix_ns) and ns[len(prefix_ns):].isdigit())
    for link in sorted(existing_links()):
        tail = link[len(name):] if link.startswith(name) else None
        if tail is not None and (tail == "br" or (tail[:1] in ("v", "p") and tail[1:].isdigit())):
            found.append(link)
    layout = cgroup_layout()
    if layout is not None:
        parent = layout[1] / f"detr-{name}"
        if parent.exists():
            found.append(str(parent))
    if state_dir(name).exists():
        found.append(str(state_dir(name)))
    return found


def _kill(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def teardown(name: str, state: dict | None) -> list[str]:
    """Remove everything this cluster made (found by state and by name). Returns what was removed."""
    removed = []
    layout = cgroup_layout()
    nss = [ns for ns in existing_netns() if ns.startswith(f"{name}-h") and ns[len(name) + 2:].isdigit()]
    cg_parent = (Path(state["cgroup_parent"]) if state and state.get("cgroup_parent") else
                 (layout[1] / f"detr-{name}" if layout else None))
    cg_children = sorted(p for p in cg_parent.iterdir() if p.is_dir()) if cg_parent and cg_parent.is_dir() else []
    # 1. processes still running in our hosts (ranks of an interrupted run): only ours, by id.
    for _ in range(50):
        pids = []
        for ns in nss:
            pids += [int(p) for p in run_cmd(["ip", "netns", "pids", ns], check=False).stdout.split() if p.isdigit()]
        for child in cg_children:
            pids += cgroup_pids(child)
        pids = sorted(set(pids) - {os.getpid()})
        if not pids:
            break
        _kill(pids)
        time.sleep(0.02)
    # 2. namespaces (their veth ends go with them), then links left in the root namespace.
    for ns in nss:
        if run_cmd(["ip", "netns", "del", ns], check=False).returncode == 0:
            removed.append(f"netns {ns}")
    links = existing_links()
    for link in sorted(links):
        tail = link[len(name):] if link.startswith(name) else None
        if tail is not None and tail[:1] in ("v", "p") and tail[1:].isdigit():
            if run_cmd(["ip", "link", "del", "dev", link], check=False).returncode == 0:
                removed.append(f"link {link}")
    if f"{name}br" in links:
        if run_cmd(["ip", "link", "del", "dev", f"{name}br"], check=False).returncode == 0:
            removed.append(f"bridge {name}br")
    # 3. cgroups (children first; empty by now).
    for child in cg_children:
        for _ in range(50):
            try:
                child.rmdir()
                removed.append(f"cgroup {child}")
                break
            except FileNotFoundError:
                break
            except OSError:
                _kill(cgroup_pids(child))
                time.sleep(0.02)
    if cg_parent is not None and cg_parent.is_dir():
        try:
            cg_parent.rmdir()
            removed.append(f"cgroup {cg_parent}")
        except OSError:
            pass
    # 4. state and agent.
    folder = state_dir(name)
    if folder.exists():
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(f"state {folder}")
    try:
        STATE_ROOT.rmdir()   # only when no other cluster is up
    except OSError:
        pass
    return removed


def cmd_down(args) -> int:
    require_root_and_tools()
    state = load_state(args.name)
    removed = teardown(args.name, state)
    left = leftovers(args.name)
    if left:
        print(f"error: could not remove: {', '.join(left)}", file=sys.stderr)
        return 1
    print(f"cluster {args.name!r} down: removed {len(removed)} objects" if removed else
          f"cluster {args.name!r}: nothing to remove")
    return 0


def need_state(name: str) -> dict:
    state = load_state(name)
    if state is None:
        raise UsageError(f"no cluster {name!r} is up: run `python -m bench.cluster up --hosts N --rate R`")
    return state


def cmd_shape(args) -> int:
    state = need_state(args.name)
    rate_bit = N.parse_rate(args.rate) if args.rate else None
    burst = N.parse_size(args.burst) if args.burst else None
    if args.cpu_quota is not None and args.cpu_quotas is not None:
        raise UsageError("give --cpu-quota or --cpu-quotas, not both")
    quotas = ([N.parse_quota(args.cpu_quota)] * state["hosts"] if args.cpu_quota is not None else
              N.parse_quotas(args.cpu_quotas, state["hosts"]) if args.cpu_quotas is not None else None)
    if rate_bit is None and burst is not None:
        rate_bit = state["rate_bit"]
    if rate_bit is None and quotas is None:
        raise UsageError("nothing to change: give --rate, --burst and/or --cpu-quota(s)")
    layout = require_root_and_tools(need_cgroup=quotas is not None and any(q is not None for q in quotas))
    if not cluster_intact(state):
        raise ClusterError(f"cluster {args.name!r} is damaged: run down, then up")
    apply_shape(state, rate_bit, burst, quotas, layout)
    print(f"cluster {args.name!r}: {describe_line(state)}")
    return 0


def collect_status(state: dict) -> dict:
    layout = cgroup_layout()
    out = {k: state[k] for k in ("name", "hosts", "subnet", "bridge", "bridge_addr", "rate_bit", "burst",
                                 "quotas", "cgroup_version")}
    out["rate"] = N.format_rate(state["rate_bit"])
    out["intact"] = cluster_intact(state)
    out["netem_available"] = N.netem_available()
    out["host_list"] = []
    for i in range(state["hosts"]):
        ns = state["netns"][i]
        host = {"host": ns, "addr": state["addrs"][i], "veth": state["veth"][i]}
        inner = N.tc_qdiscs(NS_IFACE, netns=ns)
        outer = N.tc_qdiscs(state["veth"][i])
        host["egress"] = N.summarize_qdiscs(inner) if inner is not None else None
        host["ingress"] = N.summarize_qdiscs(outer) if outer is not None else None   # bridge-side egress
        proc = run_cmd(["ip", "-n", ns, "-j", "-s", "link", "show", "dev", NS_IFACE], check=False)
        try:
            stats = json.loads(proc.stdout)[0]["stats64"]
            host["tx_bytes"], host["rx_bytes"] = stats["tx"]["bytes"], stats["rx"]["bytes"]
        except (json.JSONDecodeError, LookupError, TypeError):
            host["tx_bytes"] = host["rx_bytes"] = None
        if layout and state.get("cgroups"):
            host["cpu"] = read_cpu(layout, Path(state["cgroups"][i]))
        out["host_list"].append(host)
    return out


def cmd_status(args) -> int:
    state = load_state(args.name)
    if state is None:
        if args.json:
            print(json.dumps({"name": args.name, "up": False}))
        else:
            print(f"cluster {args.name!r}: down")
        return 1
    if os.geteuid() != 0:
        raise UsageError("needs root to read the namespaces' state")
    status = collect_status(state)
    status["up"] = True
    if args.json:
        print(json.dumps(status))
        return 0
    from tabulate import tabulate
    print(f"cluster {args.name!r} ({'intact' if status['intact'] else 'DAMAGED: run down, then up'}): "
          f"{describe_line(state)}; netem {'available' if status['netem_available'] else 'missing'}")
    rows = []
    for h in status["host_list"]:
        cpu = h.get("cpu") or {}
        rows.append([h["host"], h["addr"], h["veth"],
                     N.format_rate((h["egress"] or {}).get("rate_bit")),
                     N.format_rate((h["ingress"] or {}).get("rate_bit")),
                     "-" if cpu.get("quota") is None else f"{cpu['quota']:g}",
                     f"{cpu.get('nr_throttled', '-')}/{cpu.get('nr_periods', '-')}",
                     h["tx_bytes"], h["rx_bytes"]])
    print(tabulate(rows, headers=["host", "address", "bridge port", "egress", "ingress", "cpu quota",
                                  "throttled/periods", "tx bytes", "rx bytes"]))
    return 0


def mpiexec_path() -> str:
    here = Path(sys.executable).parent / "mpiexec"
    if here.exists():
        return str(here)
    found = shutil.which("mpiexec")
    if not found:
        raise UsageError("mpiexec not found (pip install mpich, or put MPICH's mpiexec on PATH)")
    return found


def rank_env(state: dict, wait: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("DETR_CPU_QUOTA", "DETR_HOST")}  # set per host by the agent
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env.update({
        # MPICH over TCP on the shaped link (its default UCX transport would use shared memory).
        "MPIR_CVAR_CH4_NETMOD": "ofi", "FI_PROVIDER": "tcp", "FI_TCP_IFACE": NS_IFACE,
        "DETR_IFACE": NS_IFACE, "DETR_COMM_WAIT": wait, "DETR_CLUSTER": state["name"],
        "GLOO_SOCKET_IFNAME": NS_IFACE, "TP_SOCKET_IFNAME": NS_IFACE,
        "MASTER_ADDR": state["addrs"][0], "DETR_MASTER_ADDR": state["addrs"][0],
    })
    env.setdefault("MASTER_PORT", str(20000 + (os.getpid() % 20000)))
    env.setdefault("OMP_NUM_THREADS", "1")
    # Sleep-mode waits run allreduces as MPI_Iallreduce. MPICH's automatic choice for it
    # (recursive halving/doubling) lost to gloo's ring on these shaped links: 1 MiB on 4 hosts,
    # ours/gloo 1.19 at 10 Mbit/s and 1.04-1.09 at 100 Mbit/s; its ring algorithm: 0.98 and 1.00
    # (1 Gbit/s: equal; only 64 KiB at 1 Gbit/s lost ~1 ms to the ring's extra steps).
    env.setdefault("MPIR_CVAR_IALLREDUCE_INTRA_ALGORITHM", "tsp_ring")
    return env


def strip_dashdash(cmd: list[str]) -> list[str]:
    return cmd[1:] if cmd and cmd[0] == "--" else cmd


def cmd_run(args) -> int:
    state = need_state(args.name)
    cmd = strip_dashdash(args.command)
    if not cmd:
        raise UsageError("no command: python -m bench.cluster run [-n N] -- CMD...")
    n = state["hosts"] if args.n is None else args.n
    if not 1 <= n <= state["hosts"]:
        raise UsageError(f"invalid rank count {args.n!r}: 1 to {state['hosts']} (one rank per host)")
    require_root_and_tools()
    if not cluster_intact(state):
        raise ClusterError(f"cluster {args.name!r} is damaged: run down, then up")
    agent = state_dir(args.name) / "agent"
    mpiexec = [mpiexec_path(), "-launcher", "ssh", "-launcher-exec", str(agent), "-iface", state["bridge"],
               "-hosts", ",".join(state["netns"][:n]), "-n", str(n), *cmd]
    proc = subprocess.run(mpiexec, env=rank_env(state, args.wait), check=False)
    return proc.returncode


def cmd_exec(args) -> int:
    state = need_state(args.name)
    cmd = strip_dashdash(args.command)
    if not cmd:
        raise UsageError("no command: python -m bench.cluster exec --host I -- CMD...")
    if not 0 <= args.host < state["hosts"]:
        raise UsageError(f"invalid host {args.host}: 0 to {state['hosts'] - 1}")
    require_root_and_tools()
    agent = state_dir(args.name) / "agent"
    proc = subprocess.run([str(agent), "-x", state["netns"][args.host], "--", *cmd],
                          env=rank_env(state, args.wait), check=False)
    return proc.returncode


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--name", default=os.environ.get("DETR_CLUSTER_NAME", DEFAULT_NAME),
                        help="cluster name, prefix of every object made (default %(default)s)")
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", parents=[common], help="create (or re-shape) the cluster")
    up.add_argument("--hosts", required=True, help=f"number of emulated hosts, 1 to {N.MAX_HOSTS}")
    up.add_argument("--rate", required=True, help="link rate each way, tc units (100mbit, 1gbit)")
    up.add_argument("--burst", default=DEFAULT_BURST, help="tbf burst (default %(default)s)")
    up.add_argument("--cpu-quota", help="CPU quota of every host in cores (e.g. 0.45)")
    up.add_argument("--cpu-quotas", help="one quota per host, comma-separated (unequal devices)")
    up.add_argument("--subnet", help="private /24 for the hosts (default: first free in 10.213.0.0/16)")
    shape = sub.add_parser("shape", parents=[common], help="change rate/burst/quotas of a running cluster")
    shape.add_argument("--rate")
    shape.add_argument("--burst")
    shape.add_argument("--cpu-quota")
    shape.add_argument("--cpu-quotas")
    status = sub.add_parser("status", parents=[common], help="what is up, qdiscs, quotas, counters")
    status.add_argument("--json", action="store_true")
    sub.add_parser("down", parents=[common], help="remove every namespace, link, qdisc, cgroup made")
    for verb, text in (("run", "launch CMD with one MPI rank per host (MPICH hydra)"),
                       ("exec", "run CMD in one host (its namespace and cgroup), no MPI")):
        p = sub.add_parser(verb, parents=[common], help=text)
        if verb == "run":
            p.add_argument("-n", type=int, help="ranks (first n hosts; default all)")
        else:
            p.add_argument("--host", type=int, default=0, help="host index (default 0)")
        p.add_argument("--wait", choices=("sleep", "spin"), default="sleep",
                       help="DETR_COMM_WAIT for the communicator (default sleep: no spinning under quotas)")
        p.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD...")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        N.validate_cluster_name(args.name)
        code = {"up": cmd_up, "down": cmd_down, "shape": cmd_shape, "status": cmd_status,
                "run": cmd_run, "exec": cmd_exec}[args.cmd](args)
        sys.stdout.flush()   # here, not at exit, so that a closed stdout lands below
        return code
    except (UsageError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ClusterError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:   # `... | head`: the work is done, only its report has no reader
        return cli.stdout_gone()


if __name__ == "__main__":
    sys.exit(main())
