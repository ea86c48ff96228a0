"""Before an MPI launch over ssh: is every host of the hostfile reachable, and does it have the
project at this path? One clear error within seconds instead of a launcher waiting forever.

    python -m bench.cluster ssh-check HOSTFILE [--python PATH] [--wdir DIR]

Every host is asked at once, over ssh in batch mode (no password prompt, ConnectTimeout 5 s,
each answer within TIMEOUT_S): does DIR (default: this folder, where mpiexec starts the ranks)
exist there, is PYTHON (default: this Python) there, can it find bench, parallelism, kernels,
mpi4py and torch, and is MPI's launcher folder (that of the mpiexec next to PYTHON) there.
Hostfiles: MPICH (`host[:n]`) or Open MPI (`host slots=n`); `#` starts a comment.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .system import UsageError

TIMEOUT_S = 20.0
MAX_HOSTS = 256
_HOST = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,252}")
_MODULES = ("bench", "parallelism", "kernels", "mpi4py", "torch")
_PROBE = ("import importlib.util as u; missing = [m for m in %r if u.find_spec(m) is None]; "
          "print('detr-check: missing ' + ','.join(missing) if missing else 'detr-check: ok')" % (_MODULES,))


def read_hostfile(path: str | Path) -> list[str]:
    """The distinct host names of an MPICH or Open MPI hostfile, in order."""
    try:
        text = Path(path).read_text(errors="replace")[:1_000_000]
    except OSError as err:
        raise UsageError(f"cannot read hostfile {str(path)!r}: {err.strerror or err}") from None
    hosts = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        host = re.split(r"[:\s]", line, maxsplit=1)[0]
        if not _HOST.fullmatch(host):
            raise UsageError(f"hostfile {str(path)!r} line {number}: {host!r} is not a host name")
        if host not in hosts:
            hosts.append(host)
    if not hosts:
        raise UsageError(f"hostfile {str(path)!r} names no host")
    if len(hosts) > MAX_HOSTS:
        raise UsageError(f"hostfile {str(path)!r} names {len(hosts)} hosts: at most {MAX_HOSTS}")
    return hosts


def remote_script(python: str, wdir: str, mpi_bin: str | None) -> str:
    """The shell line the host runs (ssh always hands its command to the remote user's shell:
    every path in it is quoted)."""
    q = shlex.quote
    steps = [f"cd {q(wdir)} 2>/dev/null || {{ echo 'detr-check: no-wdir'; exit 0; }}",
             f"test -x {q(python)} || {{ echo 'detr-check: no-python'; exit 0; }}"]
    if mpi_bin:
        steps.append(f"test -d {q(mpi_bin)} || {{ echo 'detr-check: no-mpi'; exit 0; }}")
    steps.append(f"{q(python)} -c {q(_PROBE)}")
    return "; ".join(steps)


def check_host(host: str, script: str, python: str, wdir: str, mpi_bin: str | None) -> str | None:
    """None if the host is ready, else what is wrong with it."""
    cmd = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "-o", "ServerAliveInterval=5", host, script]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return f"no answer within {TIMEOUT_S:g} s"
    answer = [line for line in proc.stdout.splitlines() if line.startswith("detr-check: ")]
    if proc.returncode == 255 or not answer:
        errors = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        return "ssh failed: " + (errors[-1] if errors else f"exit {proc.returncode}")
    verdict = answer[-1][len("detr-check: "):]
    return {"ok": None, "no-wdir": f"no folder {wdir} (the project must sit at the same path on every host)",
            "no-python": f"no Python at {python} (make setup there, at the same path)",
            "no-mpi": f"no MPI launcher folder {mpi_bin} (make setup there)"}.get(
        verdict, f"{python} cannot import {verdict.removeprefix('missing ')} (make setup there)")


def check(hosts: list[str], python: str, wdir: str, mpi_bin: str | None) -> list[tuple[str, str]]:
    """[(host, problem)] for every host that is not ready; all hosts are asked at once."""
    script = remote_script(python, wdir, mpi_bin)
    with ThreadPoolExecutor(max_workers=min(32, len(hosts))) as pool:
        problems = list(pool.map(lambda h: check_host(h, script, python, wdir, mpi_bin), hosts))
    return [(h, p) for h, p in zip(hosts, problems) if p]


def run_check(hostfile: str, python: str | None = None, wdir: str | None = None,
              mpi_bin: str | None = None) -> str:
    """Check every host; UsageError naming each failing host (one line), else a one-line summary."""
    hosts = read_hostfile(hostfile)
    python, wdir = python or sys.executable, wdir or str(Path.cwd())
    failed = check(hosts, python, wdir, mpi_bin)
    if failed:
        raise UsageError(f"{len(failed)} of {len(hosts)} hosts in {hostfile} not ready for an MPI launch: "
                         + "; ".join(f"{h}: {p}" for h, p in failed))
    return f"ssh-check: all {len(hosts)} hosts in {hostfile} reachable, with {wdir} and {python}"
