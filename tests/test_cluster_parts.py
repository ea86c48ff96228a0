"""bench.cluster's parts that need no root: names, the cgroup v2 quota class on a fake of its
files, the launcher agent's argument handling, the journal, the launch command lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cluster import CgroupV1, CgroupV2, ClusterNames, CpuQuota, agent, launch, preflight, state as S
from bench.cluster.system import UsageError
from bench.cluster.system import start_time


def test_names_build_and_recognise():
    names = ClusterNames("dt1")
    assert (names.bridge, names.netns(3), names.veth(3), names.peer_tmp(3)) == ("dt1br", "dt1-h3", "dt1v3", "dt1p3")
    assert names.cgroup_dir == "detr-dt1" and names.cgroup_host(2) == "h2"
    assert names.state_dir.name == "dt1" and names.ssh_config.name == "detr-dt1.conf"
    assert names.host_of_netns("dt1-h12") == 12
    assert names.host_of_netns("dt1-h") is None and names.host_of_netns("dt10-h1") is None
    assert names.is_link("dt1br") and names.is_port("dt1v0") and names.is_port("dt1p7")
    assert not names.is_link("dt1v") and not names.is_link("dt10v1") and not names.is_link("dt1br0")
    with pytest.raises(ValueError):
        ClusterNames("Bad-Name")


def fake_v2(tmp_path: Path) -> Path:
    root = tmp_path / "cgroup2"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (root / "cgroup.subtree_control").write_text("")
    mounts = tmp_path / "mounts"
    mounts.write_text(f"proc /proc proc rw 0 0\ncgroup2 {root} cgroup2 rw,nosuid 0 0\n")
    return mounts


def test_cgroup_v2_logic_on_a_fake_of_its_files(tmp_path):
    # Not the kernel: a real cgroup2 would create cpu.max and cpu.stat itself. This machine has v1.
    cpu = CpuQuota.detect(str(fake_v2(tmp_path)))
    assert isinstance(cpu, CgroupV2) and cpu.version == "v2"
    parent, groups = cpu.groups("detr-dt1", ["h0", "h1"])
    cpu.create(parent, groups)
    assert (cpu.root / "cgroup.subtree_control").read_text() == "+cpu"
    assert (parent / "cgroup.subtree_control").read_text() == "+cpu" and all(g.is_dir() for g in groups)
    cpu.set(groups[0], 0.45)
    cpu.set(groups[1], None)
    assert (groups[0] / "cpu.max").read_text() == "45000 100000"
    assert (groups[1] / "cpu.max").read_text() == "max 100000"
    (groups[0] / "cpu.stat").write_text("usage_usec 10\nnr_periods 40\nnr_throttled 30\nthrottled_usec 2500000\n")
    assert cpu.read(groups[0]) == {"quota": 0.45, "nr_periods": 40, "nr_throttled": 30, "throttled_s": 2.5}
    assert cpu.read(groups[1])["quota"] is None
    (groups[0] / "cgroup.procs").write_text("12\n34\n")
    assert CpuQuota.pids(groups[0]) == [12, 34] and CpuQuota.pids(tmp_path / "none") == []


def test_cgroup_v1_files(tmp_path):
    cpu = CgroupV1(tmp_path)
    group = tmp_path / "g"
    group.mkdir()
    cpu.set(group, 0.25)
    assert (group / "cpu.cfs_quota_us").read_text() == "25000" and (group / "cpu.cfs_period_us").read_text() == "100000"
    (group / "cpu.stat").write_text("nr_periods 4\nnr_throttled 3\nthrottled_time 1500000000\n")
    assert cpu.read(group) == {"quota": 0.25, "nr_periods": 4, "nr_throttled": 3, "throttled_s": 1.5}
    cpu.set(group, None)
    assert cpu.read(group)["quota"] is None


def test_detect_prefers_nothing_it_cannot_use(tmp_path):
    mounts = tmp_path / "mounts"
    mounts.write_text("proc /proc proc rw 0 0\n")
    assert CpuQuota.detect(str(mounts)) is None


HOSTS = {"dt1-h0": {}, "dt1-h1": {}}


@pytest.mark.parametrize("argv, host, cmd", [
    (["-x", "dt1-h1", "--", "python", "-c", "print('a b')"], "dt1-h1", ["python", "-c", "print('a b')"]),
    # hydra quotes its words for a remote shell; the agent splits them again without a shell
    (["-x", "dt1-h0", "'/venv/bin/hydra_pmi_proxy'", "--control-port", "10.0.0.254:4000"], "dt1-h0",
     ["/venv/bin/hydra_pmi_proxy", "--control-port", "10.0.0.254:4000"]),
    (["-q", "-T", "dt1-h0", "echo", "$HOME;", "rm"], "dt1-h0", ["echo", "$HOME;", "rm"]),
])
def test_agent_parses_hydra_and_literal_commands(argv, host, cmd):
    assert agent.parse(argv, HOSTS) == (host, cmd)


@pytest.mark.parametrize("argv", [["-x", "other-h0", "--", "true"], ["-x", "dt1-h0"], ["-x", "dt1-h0", "--"], []])
def test_agent_rejects_unknown_hosts_and_empty_commands(argv):
    with pytest.raises(ValueError):
        agent.parse(argv, HOSTS)


def test_journal_tells_a_killed_up_from_a_running_or_finished_one(tmp_path, monkeypatch):
    names = ClusterNames("dtj")
    monkeypatch.setattr(ClusterNames, "state_dir", property(lambda self: tmp_path / self.name))
    journal = S.Journal(names)
    assert S.unfinished_up(names) is None
    journal.begin()
    journal.will_make("netns", "dtj-h0")
    assert S.unfinished_up(names) == {"pid": os.getpid(), "running": True, "made": [("netns", "dtj-h0")]}
    journal.done()
    assert S.unfinished_up(names) is None
    # an `up` by a process that is gone (a child that has exited)
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(child.stdout)
    with open(journal.path, "a") as handle:
        handle.write(json.dumps({"up": dead, "start": 1}) + "\n" + json.dumps({"make": "bridge", "name": "dtjbr"}) + "\n")
        handle.write('{"make": "netns", "na')           # cut by the kill
    assert S.unfinished_up(names) == {"pid": dead, "running": False, "made": [("bridge", "dtjbr")]}
    assert start_time(os.getpid()) is not None


def test_launch_command_lines():
    state = {"name": "dt1", "bridge": "dt1br", "netns": ["dt1-h0", "dt1-h1", "dt1-h2"], "addrs": ["10.213.9.1"]}
    cmd = launch.agent_command(state, 2, ["python", "-m", "bench.latency"], flavour="mpich")
    assert cmd[1:] == ["-launcher", "ssh", "-launcher-exec", str(ClusterNames("dt1").state_dir / "agent"),
                       "-iface", "dt1br", "-hosts", "dt1-h0,dt1-h1", "-n", "2", "python", "-m", "bench.latency"]
    env = launch.mpi_env(state)
    assert env["FI_TCP_IFACE"] == env["DETR_IFACE"] == "eth0" and env["MASTER_ADDR"] == "10.213.9.1"
    # ring algorithms for the non-blocking collectives sleep-mode waits use, unless the user set them
    assert env["MPIR_CVAR_IALLREDUCE_INTRA_ALGORITHM"] == env["MPIR_CVAR_IALLGATHERV_INTRA_ALGORITHM"] == "tsp_ring"
    cmd = launch.hostfile_command("hf", 4, ["python"], iface="eth0", env={"DETR_IFACE": "eth0"}, flavour="mpich")
    assert cmd[1:] == ["-f", "hf", "-launcher", "ssh", "-iface", "eth0", "-genv", "DETR_IFACE", "eth0", "-n", "4",
                       "python"]
    cmd = launch.hostfile_command("hf", 4, ["python"], env={"DETR_IFACE": "eth0"}, flavour="openmpi")
    assert cmd[1:4] == ["--hostfile", "hf", "-n"] and cmd[-3:] == ["-x", "PATH", "python"] and "DETR_IFACE=eth0" in cmd
    assert "ppr:1:node" in cmd and ["btl_tcp_if_include", "eth0"] == cmd[cmd.index("btl_tcp_if_include"):][:2]
    cmd = launch.agent_command(state, 2, ["python"], flavour="openmpi")
    assert cmd[1:6] == ["--mca", "plm_rsh_agent", f"{ClusterNames('dt1').state_dir / 'agent'} --shell", "--host",
                        "dt1-h0,dt1-h1"]
    assert launch.cluster_run_command(["x"], 2, "dt1")[1:] == ["-m", "bench.cluster", "run", "--name", "dt1", "-n",
                                                               "2", "--", "x"]
    assert launch.cluster_shape_command("10mbit")[1:] == ["-m", "bench.cluster", "shape", "--rate", "10mbit"]


def test_device_quota_correction_is_a_bounded_step_on_quota_bound_hosts():
    from bench.cluster import device as D

    def hosts(*rates, share=0.2):
        return [{"gflops": r, "cpu_share": share} for r in rates]
    quota, why = D.corrected_quota(20.0, 0.2, hosts(16.0, 17.0, 18.0), hosts=3, cores=2)
    assert why is None and quota == round(0.2 * 20 / 17, 4)
    quota, why = D.corrected_quota(20.0, 0.2, hosts(16.0, 18.0), hosts=2, cores=2)   # even count: mean of the middle two
    assert why is None and quota == round(0.2 * 20 / 17, 4)
    quota, why = D.corrected_quota(20.0, 0.2, hosts(14.8, 15.0), hosts=2, cores=2)   # x1.35, as measured once
    assert why is None and quota == round(0.2 * 20 / 14.9, 4)
    for achieved in (hosts(10.0, 10.0), [], [{"gflops": 0.0}], hosts(18.0) + [{"error": "x"}]):
        quota, why = D.corrected_quota(20.0, 0.2, achieved, hosts=2, cores=2)   # implausible / nothing measured
        assert quota == 0.2 and why
    quota, why = D.corrected_quota(20.0, 0.2, hosts(17.0, 17.0, share=0.15), hosts=2, cores=2)
    assert quota == 0.2 and "busy" in why                                      # the hosts did not get their quota
    quota, why = D.corrected_quota(20.0, 0.46, hosts(17.0, share=0.46), hosts=4, cores=2)
    assert why is None and quota == 0.48                                       # capped at 96% of the machine
    quota, why = D.corrected_quota(20.0, 0.48, hosts(17.0, share=0.48), hosts=4, cores=2)
    assert quota == 0.48 and "cores" in why                                    # already at the cap


def test_device_targets_and_quotas():
    from bench.cluster import device as D
    assert D.target_gflops("pi4", None) == D.DEVICES["pi4"] and D.target_gflops(None, "12.5") == 12.5
    assert D.target_gflops(None, None) is None
    for device, gflops in (("pi5", None), (None, "fast"), (None, "nan"), (None, "inf"), (None, "0"), ("pi4", "3")):
        with pytest.raises(ValueError):
            D.target_gflops(device, gflops)
    assert D.device_quota(25.0, {"gflops_per_cpu_s": 100.0}, cores=2) == 0.25
    with pytest.raises(ValueError):
        D.device_quota(250.0, {"gflops_per_cpu_s": 100.0}, cores=2)    # more than the machine has
    # the GEMMs are bert-base's four linears at s=128: 1.81 GFLOP
    assert sum(2 * m * k * n for m, k, n in D.gemm_shapes()) == 2 * 128 * 768 * (3 * 768 + 768 + 2 * 3072)


def test_hostfiles_mpich_and_open_mpi(tmp_path):
    path = tmp_path / "hosts"
    path.write_text("# Pis\npi4-0:1\npi4-1 slots=2\n\n10.0.0.3  # by address\npi4-0:1\n")
    assert preflight.read_hostfile(path) == ["pi4-0", "pi4-1", "10.0.0.3"]
    for text in ("", "# nothing\n", "-oProxyCommand=x\n", "a;b\n"):
        path.write_text(text)
        with pytest.raises(UsageError):
            preflight.read_hostfile(path)
    with pytest.raises(UsageError):
        preflight.read_hostfile(tmp_path / "missing")


def test_remote_check_quotes_every_path():
    script = preflight.remote_script("/opt/my venv/bin/python", "/home/pi/it's here", "/opt/mpi bin")
    assert "cd '/home/pi/it'\"'\"'s here'" in script and "test -x '/opt/my venv/bin/python'" in script
    assert "test -d '/opt/mpi bin'" in script


@pytest.mark.skipif(subprocess.run(["which", "ssh"], capture_output=True).returncode != 0, reason="no ssh client")
def test_ssh_check_unresolvable_host_is_one_line_exit_2(tmp_path):
    path = tmp_path / "hosts"
    path.write_text("nohost-detr.invalid:1\n")
    proc = subprocess.run([sys.executable, "-m", "bench.cluster", "ssh-check", str(path)], capture_output=True,
                          text=True, timeout=60, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "nohost-detr.invalid: ssh failed" in proc.stderr


def test_supervise_returns_the_code_and_restores_the_callers_signal_handlers():
    import signal
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
    assert launch.supervise([sys.executable, "-c", "raise SystemExit(7)"], dict(os.environ)) == 7
    assert {sig: signal.getsignal(sig) for sig in before} == before
