"""Shape a real host's egress with tc: rate (tbf) and, where the kernel has netem, delay,
jitter and loss. Show and clear what is in force.

    sudo python -m bench.netem set --iface eth0 --rate 100mbit [--delay 2ms --jitter 0.5ms --loss 0.1%]
    python -m bench.netem show [--iface eth0] [--json]
    sudo python -m bench.netem clear [--iface eth0]
    mpirun --hostfile hostfiles/pi4-cluster python -m bench.netem set --iface eth0 --rate 100mbit

Under mpirun one process per host acts (the lowest rank of each processor name) and rank 0
prints one line (or JSON object) per host. --iface defaults to $DETR_IFACE, else the interface
of the default route. The rate goes on a tbf qdisc (burst 32kb by default; a short queue,
the burst + 10 ms at the rate within 16-64 KiB, like a NIC's: bench.network.host_queue_limit);
delay/jitter/loss on a netem root qdisc with the tbf under it.
Where the kernel lacks netem the rate is still applied, and the command says which qdisc is
missing and what could not be emulated.

Exit codes: 0 done; 1 tc failed; 2 invalid arguments or not root (nothing changed);
3 applied only in part (a qdisc is missing from the kernel); 130 Ctrl-C; 141 closed stdout.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess

from bench import cli, network as N
from parallelism.errors import UsageError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3


def tc(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(["tc", *args], capture_output=True, text=True, check=False)


def last_line(proc: subprocess.CompletedProcess) -> str:
    lines = (proc.stderr or proc.stdout or "").strip().splitlines()
    return lines[-1] if lines else f"exit {proc.returncode}"


def default_iface() -> str | None:
    name = N.wire_iface()
    if name:
        return name
    proc = subprocess.run(["ip", "-j", "route", "show", "default"], capture_output=True, text=True, check=False)
    try:
        return json.loads(proc.stdout or "[]")[0]["dev"]
    except (json.JSONDecodeError, LookupError):
        return None


def iface_exists(iface: str) -> bool:
    return subprocess.run(["ip", "link", "show", "dev", iface], capture_output=True, check=False).returncode == 0


def state(iface: str) -> dict:
    out = N.describe_network(iface) or {"host": socket.gethostname(), "iface": iface}
    return out


def fmt_us(us: float) -> str:
    return f"{us / 1000:g}ms" if us >= 1000 else f"{us:g}us"


def do_set(args) -> dict:
    result = {"host": socket.gethostname(), "iface": args.iface, "action": "set", "exit": EXIT_OK,
              "missing_qdiscs": [], "not_emulated": [], "messages": []}
    rate_bit, burst = args._rate_bit, args._burst
    delay, jitter, loss = args._delay_us, args._jitter_us, args._loss
    want_netem = bool(delay or jitter or loss)
    netem_ok = N.netem_available() if want_netem else None
    tc(["qdisc", "del", "dev", args.iface, "root"])   # fails harmlessly when only the default qdisc is there
    applied = []
    if want_netem and netem_ok is not False:
        netem = ["netem"]
        if delay:
            netem += ["delay", f"{delay:g}us"] + ([f"{jitter:g}us"] if jitter else [])
        if loss:
            netem += ["loss", f"{loss:g}%"]
        netem += ["limit", "100000"]
        proc = tc(["qdisc", "add", "dev", args.iface, "root", "handle", "1:", *netem])
        if proc.returncode == 0:
            applied.append("netem " + " ".join(netem[1:]))
            if rate_bit:
                proc = tc(["qdisc", "add", "dev", args.iface, "parent", "1:1", "handle", "10:",
                           *N.tbf_args(rate_bit, burst, N.host_queue_limit(rate_bit, burst))])
                if proc.returncode != 0:
                    result.update(exit=EXIT_FAILED, error=f"tc tbf under netem: {last_line(proc)}")
                    return result
                applied.append(f"tbf rate {N.format_rate(rate_bit)} burst {burst}")
            result["applied"] = applied
            result["state"] = state(args.iface)
            return result
        if "unknown" not in last_line(proc).lower():
            result.update(exit=EXIT_FAILED, error=f"tc netem: {last_line(proc)}")
            return result
        netem_ok = False
    if want_netem and netem_ok is False:
        result["missing_qdiscs"].append("netem")
        if delay:
            result["not_emulated"].append(f"delay {fmt_us(delay)}")
        if jitter:
            result["not_emulated"].append(f"jitter {fmt_us(jitter)}")
        if loss:
            result["not_emulated"].append(f"loss {loss:g}%")
        result["messages"].append(
            "qdisc netem is missing from this kernel (sch_netem): cannot emulate "
            + ", ".join(result["not_emulated"]) + (f"; rate {N.format_rate(rate_bit)} applied with tbf"
                                                    if rate_bit else "; nothing applied"))
        result["exit"] = EXIT_PARTIAL
    if rate_bit:
        proc = tc(["qdisc", "add", "dev", args.iface, "root", "handle", "1:",
                   *N.tbf_args(rate_bit, burst, N.host_queue_limit(rate_bit, burst))])
        if proc.returncode != 0:
            missing = "unknown" in last_line(proc).lower()
            result.update(exit=EXIT_PARTIAL if missing else EXIT_FAILED,
                          error=("qdisc tbf is missing from this kernel (sch_tbf): cannot emulate the rate"
                                 if missing else f"tc tbf: {last_line(proc)}"))
            if missing:
                result["missing_qdiscs"].append("tbf")
                result["not_emulated"].append(f"rate {N.format_rate(rate_bit)}")
            return result
        applied.append(f"tbf rate {N.format_rate(rate_bit)} burst {burst}")
    result["applied"] = applied
    result["state"] = state(args.iface)
    return result


def do_clear(args) -> dict:
    before = N.tc_qdiscs(args.iface) or []
    proc = tc(["qdisc", "del", "dev", args.iface, "root"])
    result = {"host": socket.gethostname(), "iface": args.iface, "action": "clear", "exit": EXIT_OK,
              "removed": [q.get("kind") for q in before if q.get("kind") in ("tbf", "netem", "htb")]}
    if proc.returncode != 0 and result["removed"]:
        result.update(exit=EXIT_FAILED, error=f"tc: {last_line(proc)}")
    result["state"] = state(args.iface)
    return result


def do_show(args) -> dict:
    return {"host": socket.gethostname(), "iface": args.iface, "action": "show", "exit": EXIT_OK,
            "state": state(args.iface)}


def render(result: dict) -> str:
    head = f"{result['host']} {result['iface']}: "
    if result.get("error") and not result.get("state"):
        return head + "error: " + result["error"]
    parts = []
    if result["action"] == "set":
        parts.append("set " + (", ".join(result.get("applied") or []) or "nothing"))
    elif result["action"] == "clear":
        parts.append("cleared " + (", ".join(result["removed"]) if result["removed"] else "(nothing was set)"))
    st = result.get("state") or {}
    shown = [f"rate {N.format_rate(st.get('rate_bit'))}" if st.get("rate_bit") else "rate unshaped"]
    if st.get("burst"):
        shown.append(f"burst {st['burst']}")
    if st.get("delay_us") is not None:
        shown.append(f"delay {fmt_us(st['delay_us'])}")
    if st.get("jitter_us"):
        shown.append(f"jitter {fmt_us(st['jitter_us'])}")
    if st.get("loss_pct"):
        shown.append(f"loss {st['loss_pct']:g}%")
    qd = "/".join(k for k in (st.get("qdiscs") or []) if k)
    netem = {True: "netem available", False: "netem MISSING from kernel", None: "netem unknown"}[
        st.get("netem_available")]
    parts.append(f"in force: {', '.join(shown)} [{qd or '?'}]; {netem}")
    text = head + "; ".join(parts)
    for message in result.get("messages", []):
        text += f"\n{result['host']} {result['iface']}: warning: {message}"
    if result.get("error"):
        text += f"\n{result['host']} {result['iface']}: error: {result['error']}"
    return text


def under_mpi() -> bool:
    for key in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS"):
        try:
            if int(os.environ.get(key, "1")) > 1:
                return True
        except ValueError:
            pass
    return "PMI_RANK" in os.environ or "OMPI_COMM_WORLD_RANK" in os.environ


def validate(args) -> None:
    if args.iface is None:
        args.iface = default_iface()
        if args.iface is None:
            raise UsageError("no interface: pass --iface (or set DETR_IFACE)")
    N.validate_iface(args.iface)
    if args.cmd == "set":
        args._rate_bit = N.parse_rate(args.rate) if args.rate else None
        args._burst = N.parse_size(args.burst)
        args._delay_us = N.parse_time_us(args.delay, "delay") if args.delay else 0.0
        args._jitter_us = N.parse_time_us(args.jitter, "jitter") if args.jitter else 0.0
        args._loss = N.parse_percent(args.loss) if args.loss else 0.0
        if args._jitter_us and not args._delay_us:
            raise UsageError("--jitter needs --delay")
        if not (args._rate_bit or args._delay_us or args._loss):
            raise UsageError("nothing to set: give --rate and/or --delay/--jitter/--loss")
    if args.cmd in ("set", "clear") and os.geteuid() != 0:
        raise UsageError(f"`bench.netem {args.cmd}` needs root to change qdiscs: run it with sudo")


def act(args) -> dict:
    try:
        validate(args)
        if not iface_exists(args.iface):
            raise UsageError(f"no interface {args.iface!r} on this host")
        return {"set": do_set, "clear": do_clear, "show": do_show}[args.cmd](args)
    except (UsageError, ValueError) as err:
        return {"host": socket.gethostname(), "iface": args.iface, "action": args.cmd, "exit": EXIT_USAGE,
                "error": str(err)}


def make_parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(prog="python -m bench.netem", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="VERB")
    for verb, text in (("set", "shape egress (root)"), ("show", "what is in force"), ("clear", "remove it (root)")):
        p = sub.add_parser(verb, help=text)
        p.add_argument("--iface", help="interface (default $DETR_IFACE, else the default route's)")
        p.add_argument("--json", action="store_true", help="one JSON object per host")
        if verb == "set":
            p.add_argument("--rate", help="egress rate, tc units (100mbit, 1gbit)")
            p.add_argument("--burst", default="32kb", help="tbf burst (default %(default)s)")
            p.add_argument("--delay", help="added delay (netem), e.g. 2ms")
            p.add_argument("--jitter", help="delay jitter (netem), e.g. 0.5ms")
            p.add_argument("--loss", help="random loss (netem), e.g. 0.1%%")
    return parser


def act_once_per_host(args) -> int:
    """Under mpirun: the lowest rank of each processor name acts, rank 0 prints every host's line."""
    from parallelism.comm import processor_name, world   # only here: importing it starts MPI
    comm = world()
    hosts = comm.allgather_object(processor_name())
    result = act(args) if hosts.index(hosts[comm.rank]) == comm.rank else None
    results = comm.gather_object(result)
    code = comm.max_over_ranks(result["exit"] if result else EXIT_OK)
    if comm.rank == 0:
        for res in results:
            if res is not None:
                print(json.dumps(res) if args.json else render(res), flush=True)
    return code


def main(argv=None) -> int:
    args = make_parser().parse_args(argv)
    if under_mpi():
        return act_once_per_host(args)
    result = act(args)
    if result["exit"] == EXIT_USAGE:
        raise UsageError(result["error"])
    print(json.dumps(result) if args.json else render(result))
    return result["exit"]


if __name__ == "__main__":
    cli.run(main, mpi=under_mpi())
