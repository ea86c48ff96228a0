"""Launching MPI jobs on emulated hosts (and on real ones over ssh): the command lines and the
environment, shared by `bench.cluster run`, `bench.sweep` and the ssh path. Standard library
only (bench.sweep must not import mpi4py or torch).

    mpiexec_path()                             the mpiexec next to this Python, else on PATH
    mpi_flavour(mpiexec)                       "mpich" (hydra) or "openmpi" (prte)
    mpi_env(state, wait)                       the variables every rank on an emulated host needs
    agent_command(state, n, cmd)               mpiexec through the cluster's launcher agent
    hostfile_command(hostfile, n, cmd, ...)    over ssh from a hostfile (real or emulated hosts):
                                               MPICH mpiexec -f, Open MPI mpirun --hostfile
    local_command(n, cmd)                      mpiexec -n N on this machine
    cluster_run_command(cmd, n, name)          python -m bench.cluster run ... (for bench.sweep)
    cluster_shape_command(rate, name)          python -m bench.cluster shape --rate R
    supervise(cmd, env)                        run a launcher so that killing us ends it and its ranks
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from .names import NS_IFACE, ClusterNames
from .system import UsageError

PR_SET_PDEATHSIG = 1
GRACE_S = 5.0          # after Ctrl-C / SIGTERM, how long MPI may take to end its ranks itself


def mpiexec_path() -> str:
    here = Path(sys.executable).parent / "mpiexec"
    if here.exists():
        return str(here)
    found = shutil.which("mpiexec")
    if not found:
        raise UsageError("mpiexec not found next to python or on PATH (pip install mpich, or put MPICH's mpiexec "
                         "on PATH)")
    return found


def mpi_flavour(mpiexec: str) -> str:
    """'openmpi' if `mpiexec --version` names Open MPI, else 'mpich' (MPICH's hydra)."""
    try:
        proc = subprocess.run([mpiexec, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "mpich"
    return "openmpi" if "Open MPI" in proc.stdout + proc.stderr else "mpich"


def openmpi_args(env: dict, rank_iface: str | None) -> list[str]:
    """Open MPI's equivalents of what MPICH gets from mpi_env: one rank per host, TCP on the ranks'
    interface, yielding when idle (else busy-polling ranks starve each other on shared cores), and
    every variable exported explicitly (Open MPI passes on only what -x names)."""
    out = ["--map-by", "ppr:1:node", "--mca", "pml", "ob1", "--mca", "btl", "tcp,self",
           "--mca", "mpi_yield_when_idle", "1"]
    out += ["--mca", "btl_tcp_if_include", rank_iface] if rank_iface else []
    for key, value in env.items():
        out += ["-x", f"{key}={value}"]
    return out + ["-x", "PATH"]


def mpi_env(state: dict, wait: str = "sleep") -> dict:
    """What each rank on an emulated host needs: MPI over TCP on the shaped eth0 (MPICH's default
    UCX transport would move the bytes through shared memory), the interface the drivers read
    counters and tc state from, the communicator's wait mode, and gloo on the same links."""
    env = {"MPIR_CVAR_CH4_NETMOD": "ofi", "FI_PROVIDER": "tcp", "FI_TCP_IFACE": NS_IFACE,
           "DETR_IFACE": NS_IFACE, "DETR_COMM_WAIT": wait, "DETR_CLUSTER": state["name"],
           "GLOO_SOCKET_IFNAME": NS_IFACE, "TP_SOCKET_IFNAME": NS_IFACE,
           "MASTER_ADDR": state["addrs"][0], "DETR_MASTER_ADDR": state["addrs"][0],
           "MASTER_PORT": os.environ.get("MASTER_PORT", str(20000 + os.getpid() % 20000)),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    # Sleep-mode waits run allreduces as MPI_Iallreduce. MPICH's automatic choice for it
    # (recursive halving/doubling) lost to gloo's ring on these shaped links: 1 MiB on 4 hosts,
    # ours/gloo 1.19 at 10 Mbit/s and 1.04-1.09 at 100 Mbit/s; its ring algorithm: 0.98 and 1.00
    # (1 Gbit/s: equal; only 64 KiB at 1 Gbit/s lost ~1 ms to the ring's extra steps).
    # The same for MPI_Iallgatherv (every allgather in sleep mode): its automatic choice,
    # recursive doubling at these sizes, made bp(replicate) fp16 with --overlap on --chunks 2
    # (98 KiB per span on 4 hosts) take 1.16 s at 10 Mbit/s against 0.80 s with the ring, and
    # 0.85 s without overlap (reports/notes/emulated-4host-wire.md, "Overlap at 10 Mbit/s");
    # at 1 Gbit/s the ring was level or faster (sp fp16 2.07x of serial against 1.77x).
    for op in ("IALLREDUCE", "IALLGATHERV"):
        name = f"MPIR_CVAR_{op}_INTRA_ALGORITHM"
        env[name] = os.environ.get(name, "tsp_ring")
    return env


def rank_env(state: dict, wait: str = "sleep") -> dict:
    """The launcher's whole environment: ours, this Python's bin folder first on PATH, and
    mpi_env (DETR_HOST and DETR_CPU_QUOTA are set per host by the agent)."""
    env = {k: v for k, v in os.environ.items() if k not in ("DETR_CPU_QUOTA", "DETR_HOST")}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.update(mpi_env(state, wait))
    if os.geteuid() == 0:       # Open MPI refuses root without these (MPICH ignores them)
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    return env


def agent_command(state: dict, n: int, cmd: list[str], flavour: str | None = None, wait: str = "sleep") -> list[str]:
    """MPI with the cluster's agent as its ssh: one rank per host on the first n hosts."""
    agent, hosts, mpiexec = ClusterNames(state["name"]).state_dir / "agent", ",".join(state["netns"][:n]), mpiexec_path()
    if (flavour or mpi_flavour(mpiexec)) == "openmpi":
        return [mpiexec, "--mca", "plm_rsh_agent", f"{agent} --shell", "--host", hosts, "-n", str(n),
                *openmpi_args(mpi_env(state, wait), NS_IFACE), *cmd]
    return [mpiexec, "-launcher", "ssh", "-launcher-exec", str(agent), "-iface", state["bridge"],
            "-hosts", hosts, "-n", str(n), *cmd]


def hostfile_command(hostfile: str | Path, n: int, cmd: list[str], iface: str | None = None,
                     env: dict | None = None, flavour: str | None = None) -> list[str]:
    """Over real ssh from a hostfile. MPICH: `mpiexec -f HOSTFILE -launcher ssh [-iface IFACE]
    -genv K V ... -n N CMD`, `iface` being the launching machine's interface the hosts reach it
    on (Pis: eth0; the emulated cluster: its bridge). Open MPI: `mpirun --hostfile HOSTFILE -n N
    ... -x K=V ... CMD` (an Open MPI hostfile: `host slots=1`), TCP on env's DETR_IFACE."""
    env, mpiexec = env or {}, mpiexec_path()
    if (flavour or mpi_flavour(mpiexec)) == "openmpi":
        return [mpiexec, "--hostfile", str(hostfile), "-n", str(n), *openmpi_args(env, env.get("DETR_IFACE")), *cmd]
    out = [mpiexec, "-f", str(hostfile), "-launcher", "ssh"]
    out += ["-iface", iface] if iface else []
    for key, value in env.items():
        out += ["-genv", key, value]
    return out + ["-n", str(n), *cmd]


def cluster_hostfile(state: dict, flavour: str) -> Path:
    """The hostfile `up --sshd` wrote for this MPI (MPICH host:1, Open MPI host slots=1)."""
    folder = ClusterNames(state["name"]).state_dir
    return folder / ("hostfile.openmpi" if flavour == "openmpi" else "hostfile")


def local_command(n: int, cmd: list[str]) -> list[str]:
    return [mpiexec_path(), "-n", str(n), *cmd]


def cluster_run_command(cmd: list[str], n: int | None = None, name: str | None = None) -> list[str]:
    return ([sys.executable, "-m", "bench.cluster", "run"] + (["--name", name] if name else []) +
            (["-n", str(n)] if n else []) + ["--", *cmd])


def cluster_shape_command(rate: str, name: str | None = None) -> list[str]:
    return [sys.executable, "-m", "bench.cluster", "shape"] + (["--name", name] if name else []) + ["--rate", rate]


class _Signalled(Exception):
    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_signalled(signum, _frame):
    raise _Signalled(signum)


def _die_with(parent: int):
    """preexec_fn: the child gets SIGKILL when `parent` dies, however it dies (even by SIGKILL).
    hydra's proxies notice their mpiexec is gone and kill their ranks."""
    def arm():
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:      # the parent died before the line above
            os._exit(1)
    return arm


def supervise(cmd: list[str], env: dict) -> int:
    """Run `cmd` (mpiexec, the agent) and return its exit code. Killing this process ends it:
    SIGTERM, SIGHUP or Ctrl-C are passed on as SIGINT (MPI ends its ranks itself) with
    GRACE_S to finish, then SIGKILL, and 128 + the signal is returned; SIGKILL of this process
    kills it through PR_SET_PDEATHSIG. The caller's signal handlers are restored on return."""
    handled = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
    previous = {sig: signal.getsignal(sig) for sig in handled}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_signalled)
    try:
        proc = subprocess.Popen(cmd, env=env, preexec_fn=_die_with(os.getpid()))
        try:
            return proc.wait()
        except (_Signalled, KeyboardInterrupt) as err:
            signum = err.signum if isinstance(err, _Signalled) else signal.SIGINT
            for sig in handled:
                signal.signal(sig, signal.SIG_IGN)
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(GRACE_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            return 128 + signum
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
