"""The verbs of `python -m bench.cluster` (see the package docstring for the whole picture)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import time
from pathlib import Path

from bench import cli, network as N

from . import device as D, launch, lifecycle as L, net, preflight, sshd, state as S
from .cgroups import CpuQuota
from .names import ClusterNames
from .status import collect, measure_hosts, render
from .system import ClusterError, UsageError

DEFAULT_NAME = "detr"
DEFAULT_BURST = "32kb"


def require_root_and_tools(need_cgroup: bool = False) -> CpuQuota | None:
    if os.geteuid() != 0:
        raise UsageError("needs root (network namespaces, tc and cgroups): run with sudo")
    for tool in ("ip", "tc"):
        if not any(os.access(os.path.join(d, tool), os.X_OK) for d in os.environ.get("PATH", "").split(os.pathsep)):
            raise UsageError(f"`{tool}` not found: install iproute2")
    cpu = CpuQuota.detect()
    if need_cgroup and cpu is None:
        raise UsageError("no cgroup cpu controller (v1 cpu mount or v2 cpu.max): CPU quotas unavailable")
    return cpu


def settle(names: ClusterNames, cpu: CpuQuota | None) -> bool:
    """Remove a half-made cluster whose `up` was killed; say so. True if there was one."""
    unfinished = S.unfinished_up(names)
    if unfinished is None:
        return False
    if unfinished["running"]:
        raise ClusterError(f"cluster {names.name!r} is being brought up by pid {unfinished['pid']}: wait for it")
    removed = L.teardown(names, S.load(names), cpu)
    made = ", ".join(f"{kind} {what}" for kind, what in unfinished["made"]) or "its state folder"
    print(f"cluster {names.name!r}: an interrupted `up` (pid {unfinished['pid']}, gone) had begun making {made}; "
          f"removed {len(removed)} objects", file=sys.stderr)
    return True


def parse_quotas(args, hosts: int) -> list | None:
    given = [flag for flag, value in (("--cpu-quota", args.cpu_quota), ("--cpu-quotas", args.cpu_quotas),
                                      ("--device", args.device), ("--gflops", args.gflops)) if value is not None]
    if len(given) > 1:
        raise UsageError(f"give one of --cpu-quota, --cpu-quotas, --device, --gflops (not {' and '.join(given)})")
    if args.cpu_quota is not None:
        return [N.parse_quota(args.cpu_quota)] * hosts
    return N.parse_quotas(args.cpu_quotas, hosts) if args.cpu_quotas is not None else None


def device_quotas(args, hosts: int) -> tuple[list | None, dict | None]:
    """--device / --gflops: measure this machine, return (quotas, device record); else (None, None)."""
    target = D.target_gflops(args.device, args.gflops)
    if target is None:
        return None, None
    try:
        calibration = D.calibrate()
    except (RuntimeError, ValueError) as err:
        raise ClusterError(f"could not measure this machine's GEMM rate: {err}") from None
    quota = D.device_quota(target, calibration, os.cpu_count() or 1)
    print(f"this machine: {calibration['gflops_per_cpu_s']:.1f} GFLOP/s per core ({calibration['model']} "
          f"s={calibration['seq']} linears, 1 thread); {target:g} GFLOP/s per host = CPU quota {quota:g}")
    return [quota] * hosts, {"name": args.device, "target_gflops": target, "quota": quota,
                             "gflops_per_cpu_s": round(calibration["gflops_per_cpu_s"], 2)}


def device_given(args) -> bool:
    return args.device is not None or args.gflops is not None


def correct_device_quota(state: dict, cpu: CpuQuota | None) -> None:
    """--device / --gflops: up to two measured corrections of the quota (bench/cluster/device.py says why)."""
    device = state.get("device")
    if not device or cpu is None:
        return
    cores, hosts, target = os.cpu_count() or 1, state["hosts"], device["target_gflops"]
    first = quota = device["quota"]
    steps, taken, why_not = [], 0, None
    if first * hosts > cores + 1e-9:
        why_not = f"{hosts} hosts x {first:g} cores are more than this machine's {cores}"
    while not why_not and taken < 2:
        achieved = measure_hosts(state)
        rates = [a.get("gflops", 0.0) for a in achieved]
        steps.append({"quota": quota, "achieved_gflops": rates})
        if all(rates) and abs(statistics.median(rates) / target - 1) <= D.CLOSE_ENOUGH:
            break
        new, why_not = D.corrected_quota(target, quota, achieved, hosts, cores)
        if not why_not:
            quota, taken = new, taken + 1
            L.apply_shape(state, None, None, [quota] * hosts, cpu)
    device.update(quota_first=first, quota=quota, correction_steps=steps)
    done = f"x {quota / first:.3f} in {taken} step(s)"
    device["correction"] = (f"skipped: {why_not}" if why_not and not taken else
                            f"{done}, then stopped: {why_not}" if why_not else done)
    S.save(state)
    print(f"device quota {device['quota']:g} (first {first:g}; correction {device['correction']})")


def cmd_up(args, names: ClusterNames) -> int:
    hosts = N.validate_hosts(args.hosts)
    rate_bit, burst = N.parse_rate(args.rate), N.parse_size(args.burst)
    quotas = parse_quotas(args, hosts)
    D.target_gflops(args.device, args.gflops)          # validate before anything is measured or made
    if args.subnet:
        net.parse_subnet(args.subnet)
    if args.sshd:
        sshd.sshd_binary()
    cpu = require_root_and_tools(need_cgroup=quotas is not None or args.device or args.gflops)
    device_q, device = device_quotas(args, hosts)
    quotas = device_q or quotas or [None] * hosts
    cores = os.cpu_count() or 1
    if all(q is not None for q in quotas) and sum(quotas) > cores + 1e-9:
        print(f"warning: quotas add up to {sum(quotas):g} cores on a {cores}-core machine: "
              "hosts will compete for cores", file=sys.stderr)
    settle(names, cpu)
    state = S.load(names)
    if state is not None and not L.damage(state):
        if state["hosts"] != hosts:
            raise UsageError(f"cluster {names.name!r} is up with {state['hosts']} hosts: run "
                             f"`python -m bench.cluster down --name {names.name}` first")
        if args.subnet and args.subnet != state["subnet"]:
            raise UsageError(f"cluster {names.name!r} is up on {state['subnet']}: run down first to change the subnet")
        state["device"] = device
        L.apply_shape(state, rate_bit, burst, quotas, cpu)
        correct_device_quota(state, cpu)
        if args.sshd and not state.get("sshd"):
            L.add(names, state, cpu, sshd.start_all)
        print(f"cluster {names.name!r} already up: {L.describe_line(state)}")
        return 0
    if state is not None or L.leftovers(names, cpu):
        L.teardown(names, state, cpu)      # damaged or stale: start afresh
    subnet = net.pick_subnet(args.subnet)
    wanted = {names.bridge} | {f(i) for i in range(hosts) for f in (names.veth, names.peer_tmp)}
    clash = net.existing_links() & wanted
    if clash:
        raise UsageError(f"interface {sorted(clash)[0]} already exists and is not this cluster's")
    start = time.perf_counter()
    state = L.new_state(names, hosts, subnet, rate_bit, burst, quotas, cpu)
    state["device"] = device
    L.make(names, state, cpu, extras=[sshd.start_all] if args.sshd else [])
    correct_device_quota(state, cpu)
    print(f"cluster {names.name!r} up in {time.perf_counter() - start:.2f} s: {L.describe_line(state)}")
    return 0


def cmd_down(args, names: ClusterNames) -> int:
    cpu = require_root_and_tools()
    settle(names, cpu)
    removed = L.teardown(names, S.load(names), cpu)
    left = L.leftovers(names, cpu)
    if left:
        raise ClusterError(f"could not remove: {', '.join(left)}")
    print(f"cluster {names.name!r} down: removed {len(removed)} objects" if removed else
          f"cluster {names.name!r}: nothing to remove")
    return 0


def need_state(names: ClusterNames) -> tuple[dict, CpuQuota | None]:
    """The state of an intact cluster, after settling an interrupted `up`."""
    cpu = require_root_and_tools()
    settle(names, cpu)
    state = S.load(names)
    if state is None:
        raise UsageError(f"no cluster {names.name!r} is up: run `python -m bench.cluster up --hosts N --rate R`")
    problems = L.damage(state)
    if problems:
        raise ClusterError(f"cluster {names.name!r} is damaged ({'; '.join(problems)}): run down, then up")
    return state, cpu


def cmd_shape(args, names: ClusterNames) -> int:
    state, cpu = need_state(names)
    rate_bit = N.parse_rate(args.rate) if args.rate else None
    burst = N.parse_size(args.burst) if args.burst else None
    quotas = parse_quotas(args, state["hosts"])
    if quotas is None:
        quotas, device = device_quotas(args, state["hosts"])
        state["device"] = device if quotas is not None else state.get("device")
    else:
        state["device"] = None
    if rate_bit is None and burst is not None:
        rate_bit = state["rate_bit"]
    if rate_bit is None and quotas is None:
        raise UsageError("nothing to change: give --rate, --burst and/or --cpu-quota(s), --device, --gflops")
    if quotas is not None and cpu is None:
        raise UsageError("no cgroup cpu controller (v1 cpu mount or v2 cpu.max): CPU quotas unavailable")
    L.apply_shape(state, rate_bit, burst, quotas, cpu)
    if device_given(args):
        correct_device_quota(state, cpu)
    print(f"cluster {names.name!r}: {L.describe_line(state)}")
    return 0


def cmd_status(args, names: ClusterNames) -> int:
    """Exit 0 only for an intact cluster; 1 when down, half-made or damaged (and say what)."""
    if not names.state_dir.exists():
        print(json.dumps({"name": names.name, "up": False}) if args.json else f"cluster {names.name!r}: down")
        return 1
    cpu = require_root_and_tools()
    if settle(names, cpu):
        print(json.dumps({"name": names.name, "up": False, "interrupted_up_removed": True}) if args.json else
              f"cluster {names.name!r}: down (an interrupted `up` was cleaned up)")
        return 1
    state = S.load(names)
    if state is None:
        raise ClusterError(f"cluster {names.name!r}: state folder {names.state_dir} has no readable state.json: "
                           "run down")
    status = collect(state, cpu, measure=args.measure or bool(state.get("device")))
    status["up"] = True
    print(json.dumps(status) if args.json else render(status, state))
    return 0 if status["intact"] else 1


def cmd_run(args, names: ClusterNames) -> int:
    cmd = strip_dashdash(args.command)
    if not cmd:
        raise UsageError("no command: python -m bench.cluster run [-n N] -- CMD...")
    state, _ = need_state(names)
    n = state["hosts"] if args.n is None else args.n
    if not 1 <= n <= state["hosts"]:
        raise UsageError(f"invalid rank count {args.n!r}: 1 to {state['hosts']} (one rank per host)")
    flavour = launch.mpi_flavour(launch.mpiexec_path())
    if not args.ssh:
        mpiexec = launch.agent_command(state, n, cmd, flavour, args.wait)
        return launch.supervise(mpiexec, launch.rank_env(state, args.wait))
    if not state.get("sshd"):
        raise UsageError(f"cluster {names.name!r} has no sshd: bring it up with --sshd to launch over ssh")
    hostfile = launch.cluster_hostfile(state, flavour)
    print(preflight.run_check(str(hostfile), mpi_bin=str(Path(launch.mpiexec_path()).parent)), file=sys.stderr)
    mpiexec = launch.hostfile_command(hostfile, n, cmd, iface=state["bridge"], env=launch.mpi_env(state, args.wait),
                                      flavour=flavour)
    return launch.supervise(mpiexec, launch.rank_env(state, args.wait))


def cmd_ssh_check(args, names: ClusterNames) -> int:
    mpi_bin = args.mpi_bin or str(Path(launch.mpiexec_path()).parent)
    print(preflight.run_check(args.hostfile, python=args.python, wdir=args.wdir, mpi_bin=mpi_bin))
    return 0


def cmd_exec(args, names: ClusterNames) -> int:
    cmd = strip_dashdash(args.command)
    if not cmd:
        raise UsageError("no command: python -m bench.cluster exec --host I -- CMD...")
    state, _ = need_state(names)
    if not 0 <= args.host < state["hosts"]:
        raise UsageError(f"invalid host {args.host}: 0 to {state['hosts'] - 1}")
    agent = names.state_dir / "agent"
    return launch.supervise([str(agent), "-x", state["netns"][args.host], "--", *cmd],
                            launch.rank_env(state, args.wait))


def strip_dashdash(cmd: list[str]) -> list[str]:
    return cmd[1:] if cmd and cmd[0] == "--" else cmd


def build_parser(description: str) -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(prog="python -m bench.cluster", description=description)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--name", default=os.environ.get("DETR_CLUSTER_NAME", DEFAULT_NAME),
                        help="cluster name, prefix of every object made (default %(default)s)")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="VERB")
    up = sub.add_parser("up", parents=[common], help="create (or re-shape) the cluster")
    up.add_argument("--hosts", required=True, help=f"number of emulated hosts, 1 to {N.MAX_HOSTS}")
    up.add_argument("--rate", required=True, help="link rate each way, tc units (100mbit, 1gbit)")
    up.add_argument("--burst", default=DEFAULT_BURST, help="tbf burst (default %(default)s)")
    up.add_argument("--cpu-quota", help="CPU quota of every host in cores (e.g. 0.45)")
    up.add_argument("--cpu-quotas", help="one quota per host, comma-separated (unequal devices)")
    up.add_argument("--device", help=f"every host as fast as this device ({', '.join(D.DEVICES)}): a quota "
                    "from this machine's measured GEMM rate (bench/cluster/device.py: the figures and sources)")
    up.add_argument("--gflops", help="every host at this GEMM rate, GFLOP/s (a quota from this machine's measured rate)")
    up.add_argument("--subnet", help="private /24 for the hosts (default: first free in 10.213.0.0/16)")
    up.add_argument("--sshd", action="store_true", help="an sshd in every host, a key pair, ssh client configuration "
                    "and a hostfile (bench/cluster/sshd.py); stays until down")
    shape = sub.add_parser("shape", parents=[common], help="change rate/burst/quotas of a running cluster")
    for flag in ("--rate", "--burst", "--cpu-quota", "--cpu-quotas", "--device", "--gflops"):
        shape.add_argument(flag, help=f"as for up ({flag[2:]})")
    status = sub.add_parser("status", parents=[common], help="what is up, qdiscs, quotas, counters; exit 1 unless intact")
    status.add_argument("--json", action="store_true", help="one JSON object")
    status.add_argument("--measure", action="store_true",
                        help="measure each host's GEMM rate (~3 s; always done for --device/--gflops clusters)")
    sub.add_parser("down", parents=[common], help="remove every namespace, link, qdisc, cgroup, file made")
    for verb, text in (("run", "launch CMD with one MPI rank per host (MPICH hydra)"),
                       ("exec", "run CMD in one host (its namespace and cgroup), no MPI")):
        p = sub.add_parser(verb, parents=[common], help=text)
        if verb == "run":
            p.add_argument("-n", type=cli.positive_int, help="ranks (first n hosts; default all)")
            p.add_argument("--ssh", action="store_true", help="launch over ssh with the cluster's hostfile "
                           "(needs up --sshd; as on real hosts) instead of through the agent")
        else:
            p.add_argument("--host", type=cli.nonneg_int, default=0, help="host index (default 0)")
        p.add_argument("--wait", choices=("sleep", "spin"), default="sleep",
                       help="DETR_COMM_WAIT for the communicator (default sleep: no spinning under quotas)")
        p.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD...")
    check = sub.add_parser("ssh-check", parents=[common], help="is every host of a hostfile reachable over ssh, with the project "
                           "at this path? (real or emulated hosts; no root needed)")
    check.add_argument("hostfile", help="MPICH (host[:n]) or Open MPI (host slots=n) hostfile")
    check.add_argument("--python", help="the Python every host must have (default: this one)")
    check.add_argument("--wdir", help="the folder the ranks start in (default: this one)")
    check.add_argument("--mpi-bin", help="MPI's launcher folder every host must have (default: that of mpiexec)")
    return parser


VERBS = {"up": cmd_up, "down": cmd_down, "shape": cmd_shape, "status": cmd_status, "run": cmd_run, "exec": cmd_exec,
         "ssh-check": cmd_ssh_check}


def main(argv=None, description: str = "") -> int:
    """Exit codes (through bench.cli.run): 0 ok, 1 operation failed (or status: not intact),
    2 invalid input or not root, 130 Ctrl-C, 141 closed stdout; run and exec: the command's."""
    args = build_parser(description).parse_args(argv)
    try:
        names = ClusterNames(getattr(args, "name", DEFAULT_NAME))
        if args.cmd in ("up", "down", "shape"):   # SIGTERM mid-way: undo like Ctrl-C, not half-made
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        return VERBS[args.cmd](args, names)
    except ValueError as err:      # bench.network's validators: bad input
        raise UsageError(str(err)) from None
