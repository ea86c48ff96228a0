"""bench.netem against a real veth inside a network namespace (an emulated host of bench.cluster)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from bench import network as N
from test_cluster import REASON, ROOT, cluster, leftovers, unique_name

pytestmark = [pytest.mark.root, pytest.mark.slow]
needs_root = pytest.mark.skipif(REASON is not None, reason=REASON or "")


@pytest.fixture(scope="module")
def name():
    if REASON is not None:
        pytest.skip(REASON)
    name = unique_name()
    proc = cluster("up", "--hosts", "2", "--rate", "100mbit", name=name)
    assert proc.returncode == 0, proc.stderr
    yield name
    assert cluster("down", name=name).returncode == 0
    assert leftovers(name) == []


def netem(name: str, *args: str, host: int = 0) -> subprocess.CompletedProcess:
    return cluster("exec", "--host", str(host), "--", sys.executable, "-m", "bench.netem", *args, name=name)


def shown(name: str, host: int = 0) -> dict:
    proc = netem(name, "show", "--iface", "eth0", "--json", host=host)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["state"]


def test_show_parses_the_real_qdisc(name):
    state = shown(name)
    assert state["iface"] == "eth0" and state["qdiscs"] == ["tbf"] and state["rate_bit"] == 100_000_000
    assert state["burst"] > 30_000 and state["host"] == f"{name}-h0"


def test_set_rate_then_clear(name):
    proc = netem(name, "set", "--iface", "eth0", "--rate", "20mbit", host=1)
    assert proc.returncode == 0, proc.stderr
    assert shown(name, 1)["rate_bit"] == 20_000_000
    proc = netem(name, "clear", "--iface", "eth0", host=1)
    assert proc.returncode == 0 and "cleared tbf" in proc.stdout
    assert shown(name, 1)["rate_bit"] is None
    proc = netem(name, "clear", "--iface", "eth0", host=1)          # clearing twice is fine
    assert proc.returncode == 0 and "nothing was set" in proc.stdout


def test_delay_loss_missing_netem_is_reported_not_crashed_on(name):
    proc = netem(name, "set", "--iface", "eth0", "--rate", "50mbit", "--delay", "2ms", "--jitter", "0.5ms",
                 "--loss", "0.1%", host=1)
    assert "Traceback" not in proc.stderr + proc.stdout
    state = shown(name, 1)
    assert state["rate_bit"] == 50_000_000
    if N.netem_available() is False:
        assert proc.returncode == 3, proc.stdout + proc.stderr
        assert "qdisc netem is missing from this kernel" in proc.stdout
        assert "cannot emulate delay 2ms, jitter 500us, loss 0.1%" in proc.stdout
        assert state["delay_us"] is None and state["netem_available"] is False
    else:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert state["delay_us"] == pytest.approx(2000) and state["loss_pct"] == pytest.approx(0.1)


@pytest.mark.parametrize("args, word", [
    (["set", "--iface", "eth0", "--rate", "fast"], "rate"),
    (["set", "--iface", "eth 0", "--rate", "10mbit"], "interface name"),
    (["set", "--iface", "nosuch0", "--rate", "10mbit"], "no interface"),
    (["set", "--iface", "eth0", "--jitter", "1ms"], "needs --delay"),
    (["set", "--iface", "eth0", "--loss", "150%"], "loss"),
    (["set", "--iface", "eth0"], "nothing to set"),
])
def test_invalid_arguments(name, args, word):
    before = shown(name)
    proc = netem(name, *args)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ") and word in proc.stderr, proc.stderr
    assert shown(name) == before


NETEM_FILES = ["bench/__init__.py", "bench/cli.py", "bench/netem.py", "bench/network.py",
               "parallelism/__init__.py", "parallelism/errors.py", "parallelism/traffic.py"]


@pytest.fixture
def world_readable_copy():
    """bench.netem's own files in a folder any user can read: the checkout may sit in a 0700 folder
    (a home directory) that `nobody` cannot enter."""
    folder = Path(tempfile.mkdtemp(prefix="detr-netem-"))
    try:
        for rel in NETEM_FILES:
            (folder / rel).parent.mkdir(exist_ok=True)   # parallelism/ loads nothing heavy on import
            shutil.copy(ROOT / rel, folder / rel)
        for path in [folder, *folder.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        yield folder
    finally:
        shutil.rmtree(folder)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run as the user nobody")
def test_not_root_is_a_clear_error(world_readable_copy):
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv not installed: cannot drop root for this check")
    python = os.path.realpath(sys.executable)     # the interpreter itself, not a venv folder nobody may enter
    as_nobody = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", python, "-E", "-s"]
    if subprocess.run([*as_nobody, "-c", "pass"], cwd=world_readable_copy, capture_output=True).returncode != 0:
        pytest.skip(f"user nobody cannot run {python}")
    proc = subprocess.run([*as_nobody, "-m", "bench.netem", "set", "--iface", "lo", "--rate", "10mbit"],
                          cwd=world_readable_copy, capture_output=True, text=True)
    assert proc.returncode == 2 and "needs root" in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr


def test_under_mpi_one_process_per_host_acts(name):
    proc = cluster("run", "--", sys.executable, "-m", "bench.netem", "show", "--iface", "eth0", "--json",
                   name=name, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.strip().splitlines()]
    assert sorted(r["host"] for r in lines) == [f"{name}-h0", f"{name}-h1"]


@pytest.mark.parametrize("args", [["set", "--bogus"], ["frobnicate"], []])
def test_argparse_errors_are_one_line_exit_2(args):
    proc = subprocess.run([sys.executable, "-m", "bench.netem", *args], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr


def test_closed_stdout_exits_141_without_traceback():
    read_end, write_end = os.pipe()
    os.close(read_end)                                  # `... | head -0`: nobody reads
    try:
        proc = subprocess.run([sys.executable, "-m", "bench.netem", "show", "--iface", "lo"], cwd=ROOT,
                              stdout=write_end, stderr=subprocess.PIPE, text=True)
    finally:
        os.close(write_end)
    assert proc.returncode == 141 and "Traceback" not in proc.stderr, proc.stderr
