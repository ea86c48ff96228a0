"""bench.cluster on this machine: namespaces, shaped links, CPU quotas, MPI over TCP.

Needs root, iproute2 and a cgroup cpu controller; skipped with the reason otherwise. Each test
uses its own cluster name (prefix "dt" + random) so it never touches a user's cluster, and
checks that nothing is left behind.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import string
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.cluster import CpuQuota, ClusterNames, launch, lifecycle, state as cluster_state

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.root, pytest.mark.slow]


def skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, tc, cgroups)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"`{tool}` not found (iproute2)"
    if CpuQuota.detect() is None:
        return "no cgroup cpu controller (v1 cpu mount or v2 cpu.max)"
    if subprocess.run(["ip", "netns", "list"], capture_output=True).returncode != 0:
        return "cannot list network namespaces"
    return None


REASON = skip_reason()
needs_root = pytest.mark.skipif(REASON is not None, reason=REASON or "")
SSHD_REASON = REASON or (None if shutil.which("sshd") or os.path.exists("/usr/sbin/sshd") else
                         "openssh-server not installed (.ci/run installs it when root)")
needs_sshd = pytest.mark.skipif(SSHD_REASON is not None, reason=SSHD_REASON or "")


def unique_name() -> str:
    return "dt" + "".join(random.choices(string.ascii_lowercase + string.digits, k=5))


def cluster(*args, name: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    verb, rest = args[0], list(args[1:])
    return subprocess.run([sys.executable, "-m", "bench.cluster", verb, "--name", name, *rest], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


def leftovers(name: str) -> list[str]:
    found = lifecycle.leftovers(ClusterNames(name))
    # qdiscs live on links: none of ours may remain on any link of the root namespace either.
    proc = subprocess.run(["tc", "-j", "qdisc", "show"], capture_output=True, text=True)
    found += [q["dev"] for q in json.loads(proc.stdout or "[]") if str(q.get("dev", "")).startswith(name)]
    return found


@pytest.fixture
def name():
    name = unique_name()
    yield name
    if REASON is None:
        cluster("down", name=name)
        assert leftovers(name) == []


def write_job(tmp_path: Path, code: str) -> str:
    path = tmp_path / "job.py"
    path.write_text(code)
    return str(path)


# -- validation: no root needed for most, nothing created ------------------------------------

BAD = [
    (["up", "--hosts", "0", "--rate", "100mbit"], "host count"),
    (["up", "--hosts", "65", "--rate", "100mbit"], "host count"),
    (["up", "--hosts", "x", "--rate", "100mbit"], "host count"),
    (["up", "--hosts", "2", "--rate", "100"], "rate"),
    (["up", "--hosts", "2", "--rate", "fast"], "rate"),
    (["up", "--hosts", "2", "--rate", "1000gbit"], "rate"),
    (["up", "--hosts", "2", "--rate", "10mbit", "--cpu-quota", "0"], "quota"),
    (["up", "--hosts", "2", "--rate", "10mbit", "--cpu-quota", "abc"], "quota"),
    (["up", "--hosts", "2", "--rate", "10mbit", "--cpu-quota", "999"], "quota"),
    (["up", "--hosts", "2", "--rate", "10mbit", "--cpu-quotas", "0.5,0.5,0.5"], "quotas"),
    (["up", "--hosts", "2", "--rate", "10mbit", "--burst", "1b"], "size"),
    (["up", "--hosts", "2", "--rate", "10mbit", "--subnet", "8.8.8.0/24"], "subnet"),
    (["up", "--hosts", "2", "--rate", "10mbit", "--subnet", "10.0.0.0/16"], "subnet"),
]


@pytest.mark.parametrize("args, word", BAD)
def test_invalid_arguments_one_line_exit_2_nothing_created(args, word):
    name = unique_name()
    proc = cluster(*args, name=name)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and word in lines[0], proc.stderr
    if REASON is None:
        assert leftovers(name) == []


@pytest.mark.parametrize("bad", ["Bad", "a-b", "toolongname", "x/y"])
def test_invalid_cluster_name(bad):
    proc = subprocess.run([sys.executable, "-m", "bench.cluster", "up", "--name", bad, "--hosts", "2",
                           "--rate", "10mbit"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "cluster name" in proc.stderr


# -- lifecycle -------------------------------------------------------------------------------

@needs_root
def test_up_idempotent_status_run_failure_down_leaves_nothing(name, tmp_path):
    proc = cluster("up", "--hosts", "2", "--rate", "100mbit", "--cpu-quota", "0.5", name=name)
    assert proc.returncode == 0, proc.stderr
    proc = cluster("up", "--hosts", "2", "--rate", "50mbit", "--cpu-quota", "0.5", name=name)
    assert proc.returncode == 0 and "already up" in proc.stdout, proc.stderr
    status = json.loads(cluster("status", "--json", name=name).stdout)
    assert status["intact"] and status["hosts"] == 2 and status["rate_bit"] == 50_000_000
    for host in status["host_list"]:
        assert host["egress"]["rate_bit"] == host["ingress"]["rate_bit"] == 50_000_000   # both directions
        assert host["cpu"]["quota"] == pytest.approx(0.5)
    # a different host count on a running cluster is refused, nothing changes
    assert cluster("up", "--hosts", "3", "--rate", "50mbit", name=name).returncode == 2
    # another cluster may not take this one's /24
    other = unique_name()
    proc = cluster("up", "--hosts", "1", "--rate", "50mbit", "--subnet", status["subnet"], name=other)
    assert proc.returncode == 2 and "overlaps" in proc.stderr and leftovers(other) == []
    # a command failing on one rank: non-zero exit, cluster still intact, down removes everything
    job = write_job(tmp_path, "import sys\nfrom mpi4py import MPI\nsys.exit(3 if MPI.COMM_WORLD.Get_rank() == 1 else 0)\n")
    proc = cluster("run", "--", sys.executable, job, name=name, timeout=60)     # MPICH or Open MPI
    assert proc.returncode != 0
    assert cluster("shape", "--rate", "10mbit", name=name).returncode == 0
    assert json.loads(cluster("status", "--json", name=name).stdout)["host_list"][1]["egress"]["rate_bit"] == 10**7
    proc = cluster("down", name=name)
    assert proc.returncode == 0, proc.stderr
    assert leftovers(name) == []
    assert cluster("status", name=name).returncode == 1


@needs_root
def test_failed_up_cleans_up(name):
    proc = cluster("up", "--hosts", "3", "--rate", "100mbit", "--cpu-quota", "0.3", name=name,
                   env={"DETR_CLUSTER_FAULT": "host1"})
    assert proc.returncode == 1 and "injected fault" in proc.stderr
    assert leftovers(name) == []


@needs_root
def test_down_kills_ranks_left_running(name, tmp_path):
    assert cluster("up", "--hosts", "2", "--rate", "100mbit", name=name).returncode == 0
    sleeper = subprocess.Popen([sys.executable, "-m", "bench.cluster", "exec", "--name", name, "--host", "1", "--",
                                "sleep", "60"], cwd=ROOT)
    try:
        for _ in range(100):
            if CpuQuota.pids(Path(cluster_state.load(ClusterNames(name))["cgroups"][1])):
                break
            subprocess.run(["sleep", "0.02"])
        assert cluster("down", name=name).returncode == 0
        assert leftovers(name) == []
        assert sleeper.wait(timeout=10) != 0
    finally:
        if sleeper.poll() is None:
            sleeper.kill()


# -- the links and the quotas do what they say -----------------------------------------------

ALLGATHER_JOB = """
import json, time, torch
from parallelism.comm import Communicator
from bench.network import describe_network, read_tx_rx, wire_iface
comm = Communicator()
part, out = torch.ones(1 << 18), torch.empty(comm.size << 18)      # 1 MiB per rank
for _ in range(2):
    comm.allgather(part, out)
times, wires = [], []
for _ in range(5):
    comm.barrier()
    tx = read_tx_rx(wire_iface())[0]
    start = time.perf_counter()
    comm.allgather(part, out)
    times.append(comm.max_over_ranks(time.perf_counter() - start))
    wires.append(read_tx_rx(wire_iface())[0] - tx)
assert torch.equal(out, torch.ones(comm.size << 18))
res = comm.gather_object({"times": times, "wire": sorted(wires)[2], "net": describe_network(), "wait": comm.wait})
if comm.rank == 0:
    print(json.dumps(res))
"""


@needs_root
def test_allgather_100mbit_wire_bytes_and_time(name, tmp_path):
    assert cluster("up", "--hosts", "4", "--rate", "100mbit", "--cpu-quota", "0.45", name=name).returncode == 0
    proc = cluster("run", "--", sys.executable, write_job(tmp_path, ALLGATHER_JOB), name=name, timeout=120)
    assert proc.returncode == 0, proc.stderr
    ranks = json.loads(proc.stdout.strip().splitlines()[-1])
    bus = 3 * (1 << 20)                                  # (P-1) x 1 MiB sent per rank
    bound = bus * 8 / 100e6
    for rank in ranks:
        assert rank["net"]["rate_bit"] == 100_000_000 and rank["net"]["iface"] == "eth0" and rank["wait"] == "sleep"
        assert abs(rank["wire"] / bus - 1) < 0.03, rank["wire"] / bus
    best = min(ranks[0]["times"])
    if launch.mpi_flavour(launch.mpiexec_path()) == "openmpi":
        pytest.skip(f"wire bytes checked; time not: Open MPI's TCP transport takes {best / bound:.2f}x the link "
                    "bound here (MPICH 1.0-1.15x)")
    assert best <= 1.15 * bound and best >= 0.95 * bound, (best, bound)


LOOP = ("import time\nstart, cpu = time.perf_counter(), time.process_time()\nx = 0\n"
        "for i in range(8_000_000):\n    x += i * i\n"
        "print(time.perf_counter() - start, time.process_time() - cpu)\n")


def run_loop(cmd: list[str]) -> tuple[float, float]:
    """(wall, cpu) seconds of the loop."""
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    wall, cpu = proc.stdout.split()
    return float(wall), float(cpu)


@needs_root
def test_cpu_quota_quarter_slows_loop_4x(name):
    assert cluster("up", "--hosts", "1", "--rate", "1gbit", "--cpu-quota", "0.25", name=name).returncode == 0
    # The loop's own CPU time is the work it did at full speed: comparing it with its wall
    # time asks the quota alone. (Comparing with separate unconfined runs also measured this
    # VM's speed from run to run and the cold caches of a throttled loop: it failed CI both
    # ways, at 4.73x and 3.13x, while every confined run here took 3.98-4.00x its CPU time.)
    capped = [run_loop([sys.executable, "-m", "bench.cluster", "exec", "--name", name, "--host", "0",
                        "--", sys.executable, "-c", LOOP]) for _ in range(3)]
    slowdown = sorted(w / c for w, c in capped)[1]          # the median of 3
    assert 4 * 0.85 <= slowdown <= 4 * 1.15, (slowdown, capped)
    # and the quota itself in every run: the confined loop got a quarter of a core while it ran
    share = min(c / w for w, c in capped)
    assert 0.25 * 0.85 <= share <= 0.25 * 1.15, (share, capped)


@needs_root
def test_gflops_target_sets_the_quota_from_a_measurement_and_status_measures_each_host(name):
    proc = cluster("up", "--hosts", "2", "--rate", "1gbit", "--gflops", "40", name=name)
    assert proc.returncode == 0 and "GFLOP/s per core" in proc.stdout, proc.stderr
    status = json.loads(cluster("status", "--json", name=name).stdout)
    device = status["device"]
    assert device["target_gflops"] == 40 and device["quota_first"] == pytest.approx(40 / device["gflops_per_cpu_s"], rel=1e-3)
    # up to two measured correction steps, each quota x target / median achieved, or a stated
    # reason to skip (a busy machine)
    steps = device["correction_steps"]
    assert device["correction"].startswith(("x ", "skipped: ")) and len(steps[0]["achieved_gflops"]) == 2
    assert steps[0]["quota"] == device["quota_first"] and len(steps) <= 2
    scaled = [s["quota"] * 40 / (sum(s["achieved_gflops"]) / 2) for s in steps]
    for step, before in zip(steps[1:], scaled):
        assert step["quota"] == pytest.approx(before, rel=1e-3)
    assert any(device["quota"] == pytest.approx(q, rel=1e-3) for q in [steps[-1]["quota"], scaled[-1]])
    for host in status["host_list"]:
        assert host["cpu"]["quota"] == pytest.approx(device["quota"], rel=1e-3)
        assert host["speed"]["gflops"] > 0 and host["speed"]["wall_s"] >= 2     # measured over whole periods
    proc = cluster("up", "--hosts", "2", "--rate", "1gbit", "--device", "pi4", "--cpu-quota", "0.5", name=name)
    assert proc.returncode == 2 and "not --cpu-quota and --device" in proc.stderr


# -- defects: interrupted runs and ups, damaged clusters, usage errors -------------------------

RECORDING_JOB = """
import sys, time
from parallelism.comm import Communicator
comm = Communicator()
path = f"{sys.argv[1]}.{comm.rank}"
while True:                       # a rank that keeps writing records until it is killed
    with open(path, "a") as handle:
        handle.write("record\\n")
    time.sleep(0.05)
"""


def processes_mentioning(text: str) -> list[int]:
    """Pids of every process whose command line contains `text` (found through /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if text in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def sizes(paths: list[Path]) -> list[int]:
    return [p.stat().st_size if p.exists() else 0 for p in paths]


@needs_root
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_killing_run_ends_mpiexec_and_every_rank(name, tmp_path, sig):
    assert cluster("up", "--hosts", "2", "--rate", "100mbit", name=name).returncode == 0
    job, out = write_job(tmp_path, RECORDING_JOB), tmp_path / "records"
    outputs = [Path(f"{out}.{rank}") for rank in range(2)]
    run = subprocess.Popen([sys.executable, "-m", "bench.cluster", "run", "--name", name, "--",
                            sys.executable, job, str(out)], cwd=ROOT)
    try:
        for _ in range(600):                       # both ranks are writing
            if all(p.exists() for p in outputs):
                break
            time.sleep(0.05)
        assert all(p.exists() for p in outputs), "the job never started"
        run.send_signal(sig)
        run.wait(timeout=10)
        for _ in range(100):                       # within seconds: no mpiexec, no proxy, no rank
            if not processes_mentioning(job):
                break
            time.sleep(0.1)
        assert processes_mentioning(job) == []
        before = sizes(outputs)
        time.sleep(0.5)
        assert sizes(outputs) == before            # nobody writes records any more
    finally:
        if run.poll() is None:
            run.kill()
        for pid in processes_mentioning(job):
            os.kill(pid, signal.SIGKILL)


@needs_root
def test_status_of_a_damaged_cluster_exits_1_and_names_the_damage(name):
    assert cluster("up", "--hosts", "2", "--rate", "100mbit", "--cpu-quota", "0.5", name=name).returncode == 0
    assert cluster("status", name=name).returncode == 0
    subprocess.run(["ip", "link", "del", "dev", f"{name}v1"], check=True)   # host 1 loses its link
    proc = cluster("status", name=name)
    assert proc.returncode == 1 and f"{name}v1" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    proc = cluster("status", "--json", name=name)
    assert proc.returncode == 1 and not json.loads(proc.stdout)["intact"]


@needs_root
@pytest.mark.parametrize("then", ["status", "up", "down"])
def test_sigkill_during_up_is_cleaned_by_the_next_command(name, then):
    up = subprocess.Popen([sys.executable, "-m", "bench.cluster", "up", "--name", name, "--hosts", "3",
                           "--rate", "100mbit", "--cpu-quota", "0.3"], cwd=ROOT, stderr=subprocess.PIPE,
                          text=True, env={**os.environ, "DETR_CLUSTER_FAULT": "stall-host1"})
    try:
        line = up.stderr.readline()               # the hook says when host 1 is made
        assert "stalled" in line, line
        assert lifecycle.leftovers(ClusterNames(name)), "nothing was made before the stall"
        up.kill()
        up.wait(timeout=10)
    finally:
        if up.poll() is None:
            up.kill()
    if then == "status":
        proc = cluster("status", name=name)
        assert proc.returncode == 1 and "interrupted" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
        assert leftovers(name) == []
    elif then == "up":
        proc = cluster("up", "--hosts", "2", "--rate", "10mbit", name=name)
        assert proc.returncode == 0 and "interrupted" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
        assert json.loads(cluster("status", "--json", name=name).stdout)["intact"]
        assert cluster("down", name=name).returncode == 0
        assert leftovers(name) == []
    else:
        assert cluster("down", name=name).returncode == 0
        assert leftovers(name) == []


@pytest.mark.parametrize("args", [["up", "--name", "dtusage"], ["frobnicate"], ["run", "--name", "dtusage", "-n", "x"],
                                  ["status", "--bogus"]])
def test_argparse_errors_are_one_line_exit_2(args):
    proc = subprocess.run([sys.executable, "-m", "bench.cluster", *args], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr


# -- the real launch path: sshd in every host, mpiexec -f HOSTFILE over ssh ------------------

@needs_sshd
def test_ssh_launch_from_the_hostfile_runs_on_the_shaped_links_and_down_leaves_nothing(name, tmp_path):
    assert cluster("up", "--hosts", "2", "--rate", "100mbit", "--sshd", name=name).returncode == 0
    names, flavour = ClusterNames(name), launch.mpi_flavour(launch.mpiexec_path())   # MPICH or Open MPI
    state, hostfile = cluster_state.load(names), names.state_dir / "hostfile"
    assert hostfile.read_text() == f"{name}-h0:1\n{name}-h1:1\n"
    assert launch.cluster_hostfile(state, "openmpi").read_text() == f"{name}-h0 slots=1\n{name}-h1 slots=1\n"
    hostfile = launch.cluster_hostfile(state, flavour)
    assert cluster("ssh-check", str(hostfile), name=name).returncode == 0
    out = tmp_path / "ssh.jsonl"
    driver = [sys.executable, "-m", "bench.latency", "--model", "tiny", "--seq", "32", "--warmup", "1", "--iters", "2",
              "--strategies", "bp", "--out", str(out)]
    # the documented command: MPICH hydra (or Open MPI) over real ssh, the ranks' variables passed
    # with -genv (-x); the environment of the launcher is the caller's (Open MPI as root: allowed)
    mpiexec = launch.hostfile_command(hostfile, 2, driver, iface=state["bridge"], env=launch.mpi_env(state))
    env = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    proc = subprocess.run(mpiexec, cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    record = json.loads(out.read_text().splitlines()[-1])
    assert record["env"]["hostnames"] == [f"{name}-h0", f"{name}-h1"]          # one rank in each host
    assert record["max_abs_err"] == 0
    bus = record["bus_bytes_per_rank"]["total"]
    assert 1.0 <= record["wire_bytes_per_rank"] / bus <= 1.15, (record["wire_bytes_per_rank"], bus)  # on eth0, not shm
    assert all(h["rate_bit"] == 100_000_000 for h in record["network"]["per_host"])
    assert cluster("down", name=name).returncode == 0
    assert leftovers(name) == [] and not names.ssh_config.exists() and not names.state_dir.exists()   # keys too
    assert processes_mentioning(str(names.state_dir)) == []                                          # no sshd


@needs_sshd
def test_sigkill_during_up_with_sshd_leaves_no_sshd_behind(name):
    up = subprocess.Popen([sys.executable, "-m", "bench.cluster", "up", "--name", name, "--hosts", "2",
                           "--rate", "100mbit", "--sshd"], cwd=ROOT, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, "DETR_CLUSTER_FAULT": "stall-sshd"})
    try:
        assert "stalled" in up.stderr.readline()
        names = ClusterNames(name)
        assert names.ssh_config.exists() and processes_mentioning(str(names.state_dir))   # sshds running
        up.kill()
        up.wait(timeout=10)
    finally:
        if up.poll() is None:
            up.kill()
    proc = cluster("status", name=name)
    assert proc.returncode == 1 and "interrupted" in proc.stderr, proc.stdout + proc.stderr
    assert leftovers(name) == [] and processes_mentioning(str(names.state_dir)) == []


@needs_sshd
def test_ssh_check_names_unreachable_hosts_and_hosts_without_the_project(name, tmp_path):
    assert cluster("up", "--hosts", "1", "--rate", "100mbit", "--sshd", name=name).returncode == 0
    state = cluster_state.load(ClusterNames(name))
    absent = state["subnet"].rsplit(".", 1)[0] + ".99"             # in the cluster's /24, no host there
    hostfile = tmp_path / "hosts"
    hostfile.write_text(f"# two hosts\n{name}-h0:1\n{absent}:1\n")
    proc = cluster("ssh-check", str(hostfile), name=name, timeout=30)  # a hang would fail here
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "1 of 2 hosts" in proc.stderr and f"{absent}: ssh failed" in proc.stderr and f"{name}-h0" not in \
        proc.stderr.split("ready for an MPI launch:")[1]
    hostfile.write_text(f"{name}-h0\n")
    proc = cluster("ssh-check", str(hostfile), "--wdir", str(tmp_path / "nowhere"), name=name, timeout=30)
    assert proc.returncode == 2 and "no folder" in proc.stderr, proc.stderr
    proc = cluster("ssh-check", str(hostfile), "--wdir", "/", "--python", "/usr/bin/python3", name=name, timeout=30)
    assert proc.returncode == 2 and "cannot import bench,parallelism,kernels" in proc.stderr, proc.stderr
