"""Launcher agent of an emulated cluster: runs a command inside one emulated host.

`bench.cluster up` copies this file into the cluster's state folder as `agent` (first line
replaced by a `#!` line naming the Python that ran `up`) next to `hosts.json`: the path of `ip`
and, for each host (namespace name), its cgroup.procs file and CPU quota. Standard library only: it runs
before any virtual environment matters.

    agent -x HOST WORDS...      MPICH hydra's ssh launcher hook: the words are joined and split
                                again as a remote shell would, without running a shell
    agent --shell HOST WORDS... Open MPI's rsh agent hook (plm_rsh_agent "AGENT --shell"): its
                                words are a shell line (variable assignments, `;`), run by
                                /bin/sh -c inside the host, as sshd would run it
    agent -x HOST -- ARGV...    bench.cluster exec / sshd start: ARGV taken literally

It joins HOST's cgroup (before `ip netns exec`, which remounts /sys and hides /sys/fs/cgroup),
gives the host its own hostname (a new UTS namespace: MPI.Get_processor_name() is the host's
name), then execs `ip netns exec HOST CMD...`, so CMD and everything it starts live in the
host's network namespace and CPU quota.
"""

import ctypes
import json
import os
import shlex
import socket
import sys

CLONE_NEWUTS = 0x04000000
SSH_FLAGS = ("-x", "-q", "-T", "-n")        # what hydra passes to its ssh launcher before HOST


def parse(argv: list[str], hosts) -> tuple[str, list[str]]:
    """(host, command) from the agent's arguments; ValueError with a usage line if malformed."""
    args, shell = list(argv), False
    while args and args[0] in SSH_FLAGS + ("--shell",):
        shell = shell or args[0] == "--shell"
        args = args[1:]
    if len(args) < 2 or args[0] not in hosts:
        raise ValueError("usage: agent -x HOST CMD... with HOST among " + ", ".join(sorted(hosts)))
    host, cmd = args[0], args[1:]
    if cmd[0] == "--":
        cmd = cmd[1:]                       # literal argv
    elif shell:
        cmd = ["/bin/sh", "-c", " ".join(cmd)]
    else:
        cmd = shlex.split(" ".join(cmd))    # ssh semantics: hydra quotes its words for a remote shell
    if not cmd:
        raise ValueError("agent: no command after --")
    return host, cmd


def enter(host: str, procs: str | None, quota) -> None:
    os.environ["DETR_HOST"] = host
    os.environ["DETR_CPU_QUOTA"] = "none" if quota is None else repr(quota)
    if procs:
        with open(procs, "w") as handle:
            handle.write(str(os.getpid()))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWUTS) == 0:
        socket.sethostname(host)


def main(argv: list[str]) -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "hosts.json")) as handle:
        config = json.load(handle)          # {"ip": path, "hosts": {host: {"procs": path, "quota": cores}}}
    hosts = config["hosts"]
    try:
        host, cmd = parse(argv, hosts)
    except ValueError as err:
        sys.stderr.write(f"cluster agent: {err}\n")
        return 255
    if os.environ.get("DETR_AGENT_DEBUG"):
        sys.stderr.write(f"cluster agent: {argv!r}\n")
    enter(host, hosts[host]["procs"], hosts[host]["quota"])
    os.execv(config["ip"], [config["ip"], "netns", "exec", host, *cmd])
    return 255                              # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
