"""Every failure is clean: the defects found by trying the suite as a new user would.

Each test names the defect of issue 10 it pins down. Real jobs under mpiexec on the tiny model.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.mpi_launcher import program_lines
from tests.test_drivers import ROOT, TINY, mpiexec, run

pytestmark = pytest.mark.slow
PY = [sys.executable, "-m"]


def job_env():
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def one_line_error(done, needle: str) -> None:
    lines = program_lines(done.stderr)
    assert done.returncode == 2, done.stderr
    assert lines and all(line.startswith("error: ") for line in lines), done.stderr
    assert needle in lines[0], done.stderr
    assert "Traceback" not in done.stderr


def test_defect1_bad_input_on_one_rank_ends_the_job(tmp_path):
    """mpiexec -n 1 ... --model GOOD : -n 1 ... --model MISSING used to hang forever."""
    out = tmp_path / "x.jsonl"
    good = [*PY, "bench.latency", *TINY, "--out", str(out)]
    bad = [*PY, "bench.latency", "--model", str(tmp_path / "missing"), "--seq", "16", "--out", str(out)]
    start = time.monotonic()
    done = subprocess.run([mpiexec(), "-n", "1", *good, ":", "-n", "1", *bad], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, env=job_env())
    assert time.monotonic() - start < 30
    assert done.returncode == 2, done.stderr
    assert "neither a preset" in done.stderr and "Traceback" not in done.stderr


def test_defect2_a_cut_off_point_is_measured_again(tmp_path):
    out = tmp_path / "sweep.jsonl"
    key = "latency|tiny|seq=16|batch=1|rate=-|n=2"
    # A point cut off half-way: one record with its tag, no line in <out>.points.
    out.write_text(json.dumps({"bench": "latency", "tags": {"sweep_point": key}}) + "\n")
    done = run(["bench.sweep", "--models", "tiny", "--seqs", "16", "-n", "2", "--out", str(out), "--dry-run"],
               n=None)
    assert done.returncode == 0, done.stderr
    assert "0 already in" in done.stdout and "1 to run" in done.stdout
    Path(str(out) + ".points").write_text(json.dumps({"point": key}) + "\n")
    done = run(["bench.sweep", "--models", "tiny", "--seqs", "16", "-n", "2", "--out", str(out), "--dry-run"],
               n=None)
    assert "1 already in" in done.stdout and "0 to run" in done.stdout


def test_defect3_non_finite_output_fails_the_run():
    """A NaN output is a failure, never 'not computed' (check_output's verdict)."""
    done = subprocess.run([mpiexec(), "-n", "2", sys.executable, str(ROOT / "tests" / "mpi_scripts" /
                                                                     "check_output.py")],
                          capture_output=True, text=True, timeout=60, cwd=ROOT, env=job_env())
    assert done.returncode == 0, done.stderr
    verdicts = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert {v["case"]: v["output_check"] for v in verdicts} == {
        "ok": "ok", "nan": "non-finite", "inf": "non-finite", "shape": "shape mismatch"}
    assert all(v["max_abs_err"] is None or v["max_abs_err"] >= 0 for v in verdicts)


def _children_of(pid: int) -> list[int]:
    try:
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    except FileNotFoundError:
        pytest.skip("ps not installed")
    kids = [int(p) for p in out.split()]
    return kids + [g for k in kids for g in _children_of(k)]


def _alive(pids) -> list[int]:
    alive = []
    for pid in pids:
        try:
            os.kill(pid, 0)
            state = Path(f"/proc/{pid}/stat").read_text().split()[2]
            if state != "Z":
                alive.append(pid)
        except (ProcessLookupError, FileNotFoundError):
            pass
    return alive


def test_defect4_sigterm_to_sweep_ends_its_job(tmp_path):
    out = tmp_path / "sweep.jsonl"
    cmd = [*PY, "bench.sweep", "--models", "tiny", "--seqs", "16", "-n", "2", "--out", str(out), "--",
           "--strategies", "tp", "--warmup", "0", "--iters", "100000", "--timeout", "0"]
    sweep = subprocess.Popen(cmd, cwd=ROOT, env=job_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    ranks = []
    while time.monotonic() < deadline and len(ranks) < 3:   # mpiexec, its proxy, ranks
        time.sleep(0.5)
        ranks = _children_of(sweep.pid)
    assert ranks, "the sweep started no job"
    time.sleep(2)
    sweep.send_signal(signal.SIGTERM)
    sweep.wait(timeout=30)
    deadline = time.monotonic() + 15
    while _alive(ranks) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _alive(ranks), "mpiexec or ranks outlived the sweep"
    assert sweep.returncode != 0


def test_defect6_sweep_refuses_devices_as_results(tmp_path):
    for device in ("/dev/zero", "/dev/full"):
        done = run(["bench.sweep", "--models", "tiny", "--out", device, "--dry-run"], n=None, timeout=30)
        one_line_error(done, "not a regular file")


def test_defect10_kernels_checks_out_before_running(tmp_path):
    # Under a regular file no folder can be made, even by root.
    blocker = tmp_path / "file"
    blocker.write_text("")
    done = run(["bench.kernels", "--models", "tiny", "--seq", "8", "--out", str(blocker / "k.jsonl")], n=None)
    one_line_error(done, "cannot write")
    assert not done.stdout.strip()  # refused before anything was timed
    bad = tmp_path / "bad.jsonl"
    done = run(["bench.kernels", "--models", "nope", "--out", str(bad)], n=None, timeout=30)
    assert done.returncode == 2 and not bad.exists()


@pytest.mark.parametrize("args,needle", [
    (["bench.comm", "--world-sizes", "100000", "--measure", "never"], "device counts go up to"),
    (["bench.kernels", "--threads", "100000"], "thread counts go up to"),
    (["bench.latency", "--seed", str(2**70)], "--seed"),
    (["bench.latency", "--out", ""], "empty string"),
    (["bench.latency", "--iters", "10000000"], "--iters"),
])
def test_defect11_15_bounds_and_empty_names(args, needle):
    done = run(args, n=None, timeout=60)
    one_line_error(done, needle)


def test_defect13_a_stopped_rank_ends_the_job(tmp_path):
    """SIGSTOP on one rank (a frozen board): the others' watchdog ends the job with a message."""
    tag = f"stopme{os.getpid()}"
    cmd = [mpiexec(), "-n", "2", *PY, "bench.latency", "--model", "tiny", "--seq", "16", "--strategies", "tp",
           "--warmup", "0", "--iters", "5000", "--timeout", "5", "--tag", f"t={tag}",
           "--out", str(tmp_path / "s.jsonl")]
    job = subprocess.Popen(cmd, cwd=ROOT, env=job_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = job.stdout.readline()  # printed once every rank is past start-up
    assert first.startswith("bench.latency:"), first
    ranks = [pid for pid in _children_of(job.pid) if tag in Path(f"/proc/{pid}/cmdline").read_text()]
    assert len(ranks) >= 2, "ranks not found"
    os.kill(ranks[-1], signal.SIGSTOP)
    try:
        _, err = job.communicate(timeout=60)
    finally:
        for pid in _alive(ranks):
            os.kill(pid, signal.SIGKILL)
    assert job.returncode != 0
    assert "took longer than --timeout 5 s" in err, err


def test_defect15_tiny_runs_with_default_seq_and_names_once(tmp_path):
    out = tmp_path / "t.jsonl"
    done = run(["bench.latency", "--model", "tiny", "--warmup", "0", "--iters", "1", "--strategies", "tp,tp",
                "--out", str(out)])
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["strategy"] for r in records] == ["tp"] and records[0]["seq"] == 64
    done = run(["bench.latency", "--model", "tiny", "--strategies", "tp", "--seq", "16", "--out", str(out)], n=3)
    assert done.returncode == 2
    assert "tp: tp:" not in done.stderr and "error: tp: heads % P must be 0" in done.stderr, done.stderr


@pytest.mark.parametrize("field,value", [("intermediate_size", 1000), ("vocab_size", 40000)])
def test_defect9_checkpoint_config_checked_against_its_tensors(tmp_path, minilm_dir, field, value):
    """A wrong intermediate_size used to run and be recorded wrong; a larger vocab failed later
    with IndexError. Both are bad input: one error line, exit 2."""
    config = json.loads((minilm_dir / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, field: value}))
    (tmp_path / "model.safetensors").symlink_to(minilm_dir / "model.safetensors")
    out = tmp_path / "r.jsonl"
    done = run(["bench.latency", "--model", str(tmp_path), "--strategies", "tp", "--seq", "16", "--iters", "1",
                "--out", str(out)], n=None, timeout=120)
    one_line_error(done, "has shape")
    assert not out.exists()
