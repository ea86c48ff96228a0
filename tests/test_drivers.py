"""Driver smoke tests: real jobs under mpiexec -n 2 on the tiny preset, few iterations."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.records import read_records
from mpi_launcher import is_open_mpi, mpiexec as find_mpiexec, program_lines

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
FIVE = {"dp", "pp", "tp", "sp", "bp"}
TINY = ["--model", "tiny", "--seq", "16", "--warmup", "1", "--iters", "2"]


def mpiexec() -> str:
    found = find_mpiexec()
    if not found:
        pytest.skip("mpiexec not found")
    return found


def run(args, n: int | None = 2, timeout=90, cwd=None, env=None):
    cmd = ([mpiexec(), "-n", str(n)] if n else []) + [sys.executable, "-m", *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd or ROOT, env=env)


def registered() -> set[str]:
    from parallelism import STRATEGIES
    return set(STRATEGIES)


def test_latency_all_strategies_p2(tmp_path):
    out, csv = tmp_path / "lat.jsonl", tmp_path / "lat.csv"
    r = run(["bench.latency", *TINY, "--out", str(out), "--csv", str(csv), "--compare-bare"])
    assert r.returncode == 0, r.stderr
    recs = read_records(out)
    want = FIVE & registered()
    assert {x["strategy"] for x in recs} == want
    for rec in recs:
        for field in ("bench", "strategy", "model", "world_size", "batch", "seq", "n_blocks", "n_div", "boundary",
                      "latency_s", "compute_s", "comm_s", "payload_bytes_per_rank", "bus_bytes_per_rank",
                      "expected_payload_bytes_per_rank", "messages_per_rank", "weights_bytes_per_rank",
                      "max_abs_err", "speedup_vs_serial", "network", "env", "wire_bytes_per_rank", "rate",
                      "harness_overhead_ratio"):
            assert field in rec, field
        assert rec["world_size"] == 2 and rec["max_abs_err"] <= 1e-4
        assert set(rec["latency_s"]) >= {"min", "p50", "p90", "p99", "mean", "max"}
        # the counting communicator and the formulas agree exactly
        assert rec["payload_bytes_per_rank"]["by_op"] == rec["expected_payload_bytes_per_rank"]["by_op"]
        assert rec["bus_bytes_per_rank"]["total"] == rec["expected_bus_bytes_per_rank"]["total"]
        assert rec["messages_per_rank"]["total"] == rec["expected_messages_per_rank"]["total"]
        for key in ("hostnames", "mpi_library", "mpi4py", "torch", "threads", "cpu_model", "git_commit", "utc_time"):
            assert key in rec["env"]
        # the launcher's library, printable (Open MPI's version string carries a trailing NUL)
        library = rec["env"]["mpi_library"]
        assert library.isprintable() and library.startswith("Open MPI") == is_open_mpi(), library
    assert "max_abs_err" in r.stdout and "[" in r.stdout  # table and progress lines
    assert len(csv.read_text().splitlines()) == len(recs) + 1


def test_latency_wire_dtypes_and_overlap_p2(tmp_path):
    """One job, every configuration: labels tell them apart, bytes follow the wire dtype
    (counted == analytic), and each record carries its error against the fp32 reference."""
    out = tmp_path / "wire.jsonl"
    r = run(["bench.latency", *TINY, "--strategies", "tp,bp", "--boundary", "replicate,tp",
             "--wire-dtype", "fp32,int8", "--overlap", "off,on", "--chunks", "2", "--out", str(out)])
    assert r.returncode == 0, r.stderr
    recs = {x["label"]: x for x in read_records(out)}
    assert set(recs) == {"tp", "tp(int8)", "tp(overlap2)", "tp(int8,overlap2)",
                         "bp(replicate)", "bp(replicate,int8)", "bp(replicate,overlap2)", "bp(replicate,int8,overlap2)",
                         "bp(tp)", "bp(tp,int8)", "bp(tp,overlap2)", "bp(tp,int8,overlap2)"}
    for label, rec in recs.items():
        assert rec["output_check"] == "ok"
        assert rec["bus_bytes_per_rank"]["by_op"] == rec["expected_bus_bytes_per_rank"]["by_op"]
        assert rec["messages_per_rank"]["by_op"] == rec["expected_messages_per_rank"]["by_op"]
        assert rec["overlap_chunks"] == (2 if "overlap" in label else 1)
        if rec["wire_dtype"] == "fp32":
            assert rec["max_abs_err"] <= 1e-4
        else:
            assert rec["mean_cosine"] >= 0.999
            fp32 = recs[label.replace("int8,", "").replace("(int8)", "").replace(",int8", "")]
            assert rec["bus_bytes_per_rank"]["total"] <= 0.3 * fp32["bus_bytes_per_rank"]["total"]


def test_latency_without_mpirun_runs_p1(tmp_path):
    out = tmp_path / "p1.jsonl"
    r = run(["bench.latency", *TINY, "--strategies", "tp,bp", "--out", str(out)], n=None)
    assert r.returncode == 0, r.stderr
    assert "mpiexec -n" in r.stdout
    assert {x["world_size"] for x in read_records(out)} == {1}


def test_latency_quiet_prints_nothing(tmp_path):
    r = run(["bench.latency", *TINY, "--strategies", "sp", "--quiet", "--out", str(tmp_path / "q.jsonl")])
    assert r.returncode == 0 and r.stdout == "", r.stdout + r.stderr
    rec = read_records(tmp_path / "q.jsonl")[0]
    assert rec["network"] is None and rec["wire_bytes_per_rank"] is None  # no interface named


def test_latency_wire_bytes_and_network_from_interface(tmp_path):
    """With an interface named (bench.cluster sets DETR_IFACE), records carry counters and tc state."""
    pytest.importorskip("bench.network")
    out = tmp_path / "w.jsonl"
    r = run(["bench.latency", *TINY, "--strategies", "tp", "--quiet", "--rate", "100mbit", "--out", str(out)],
            env={"DETR_IFACE": "lo"})
    assert r.returncode == 0, r.stderr
    rec = read_records(out)[0]
    assert isinstance(rec["wire_bytes_per_rank"], (int, float)) and rec["rate"] == "100mbit"
    assert rec["env"]["progress_interval_s"] == 500e-6   # the progress thread's default poke
    if rec["network"] is not None:  # None where tc cannot be read
        assert all(h["iface"] == "lo" for h in rec["network"]["per_host"])


@pytest.mark.parametrize("args, message", [
    (["--iters", "0"], "--iters"),
    (["--strategies", "warp"], "unknown strategy"),
    (["--model", "/no/such/folder"], "neither a preset"),
    (["--model", "tiny", "--seq", "16", "--strategies", "bp", "--ndiv", "3"], "n_div"),
    (["--model", "tiny", "--seq", "16", "--out", "/proc/no/such.jsonl"], "cannot write"),
    (["--strategies", "auto", "--trials", "0"], "--trials"),
    (["--strategies", "auto", "--trial-margin", "nan"], "--trial-margin"),
])
def test_bad_input_one_line_exit_2_on_every_rank(args, message, tmp_path):
    r = run(["bench.latency", "--out", str(tmp_path / "x.jsonl"), *args])
    assert r.returncode == 2, r.stdout + r.stderr
    lines = program_lines(r.stderr)
    assert len(lines) == 2 and all(line.startswith("error: ") and message in line for line in lines), r.stderr
    assert "Traceback" not in r.stderr + r.stdout


@pytest.mark.parametrize("value", ["abc", "-1", "nan"])
def test_bad_progress_interval_is_one_line_exit_2(value, tmp_path):
    out = tmp_path / "x.jsonl"
    r = run(["bench.latency", *TINY, "--strategies", "tp", "--out", str(out)], env={"DETR_PROGRESS_INTERVAL_S": value})
    assert r.returncode == 2, r.stdout + r.stderr
    lines = program_lines(r.stderr)
    assert len(lines) == 2 and all("DETR_PROGRESS_INTERVAL_S must be seconds" in line for line in lines), r.stderr
    assert not out.exists()


def test_explicit_misfit_errors_default_skips(tmp_path):
    # tiny has 4 heads: TP cannot use 3 ranks
    r = run(["bench.latency", *TINY, "--strategies", "tp", "--out", str(tmp_path / "x.jsonl")], n=3)
    assert r.returncode == 2 and r.stderr.count("error: tp") == 3, r.stderr
    out = tmp_path / "y.jsonl"
    # default list: misfits are skipped with the reason (tp: heads; sp: 2 tokens for 3 ranks, found
    # by the strategy at its first forward), the rest runs
    r = run(["bench.latency", *TINY, "--iters", "1", "--warmup", "0", "--seq", "2", "--out", str(out)], n=3)
    assert r.returncode == 0, r.stderr
    assert "skip tp" in r.stdout and "skip sp" in r.stdout
    assert {x["strategy"] for x in read_records(out)} == {"dp", "pp"}


def test_throughput_one_launch(tmp_path):
    out = tmp_path / "thr.jsonl"
    r = run(["bench.throughput", "--model", "tiny", "--seq", "16", "--requests", "4", "--warmup", "0",
             "--iters", "2", "--strategies", "dp,pp,bp", "--out", str(out)])
    assert r.returncode == 0, r.stderr
    recs = read_records(out)
    assert {(x["strategy"], x["devices"]) for x in recs} == {(s, p) for s in ("dp", "pp", "bp") for p in (1, 2)}
    for rec in recs:
        assert rec["throughput_rps"] > 0 and rec["max_abs_err"] <= 1e-4
        assert rec["efficiency"] == pytest.approx(1.0) if rec["devices"] == 1 else rec["efficiency"] > 0
    pp2 = next(x for x in recs if x["strategy"] == "pp" and x["devices"] == 2)
    assert pp2["messages_per_rank"]["by_op"]["send"] == 4  # one micro-batch per request
    r = run(["bench.throughput", "--model", "tiny", "--seq", "16", "--devices", "1,4", "--out", str(out)])
    assert r.returncode == 2 and r.stderr.count("error: --devices 4 exceeds") == 2, r.stderr


def test_comm_analytic_without_mpi_and_measured(tmp_path):
    out = tmp_path / "c.jsonl"
    r = run(["bench.comm", "--models", "tiny", "--world-sizes", "2,4", "--seqs", "16", "--out", str(out)], n=None)
    assert r.returncode == 0, r.stderr
    recs = read_records(out)
    assert {x["world_size"] for x in recs} == {2, 4} and not any(x["measured"] for x in recs)
    assert all(x["expected_bus_bytes_per_rank"] is not None for x in recs)
    tp = [x for x in recs if x["strategy"] == "tp"]
    assert all(x["bus_ratio_to_tp"] == 1.0 for x in tp)
    out2 = tmp_path / "c2.jsonl"
    # 4 ranks measure P=2 on a sub-communicator (ranks 2, 3 wait) and P=4 on all of them.
    r = run(["bench.comm", "--models", "tiny", "--world-sizes", "2,4", "--seqs", "16", "--out", str(out2)], n=4)
    assert r.returncode == 0, r.stderr
    recs = read_records(out2)
    assert {x["world_size"] for x in recs} == {2, 4}
    for rec in recs:
        assert rec["measured"], rec["label"]
        assert rec["bus_bytes_per_rank"]["total"] == rec["expected_bus_bytes_per_rank"]["total"]
        assert rec["max_abs_err"] <= 1e-4


def test_sweep_resumes_and_refuses_rates_locally(tmp_path):
    out = tmp_path / "sw.jsonl"
    args = ["bench.sweep", "--models", "tiny", "--seqs", "8,16", "-n", "2", "--out", str(out), "--",
            "--strategies", "tp", "--iters", "1", "--warmup", "0", "--quiet"]
    r = run(args, n=None, timeout=120)
    assert r.returncode == 0, r.stderr
    assert len(read_records(out)) == 2
    r = run(args, n=None)
    assert r.returncode == 0 and "2 already in" in r.stdout and "$ " not in r.stdout
    assert len(read_records(out)) == 2
    r = run(["bench.sweep", "--rates", "10mbit,1gbit"], n=None)
    assert r.returncode == 2 and r.stderr.startswith("error: --rates needs --launcher cluster")
    r = run(["bench.sweep", "--launcher", "cluster", "--rates", "10mbit,fast"], n=None)
    assert r.returncode == 2 and "fast" in r.stderr
    r = run(["bench.sweep", "--launcher", "cluster", "--rates", "10mbit,1gbit", "--dry-run",
             "--out", str(tmp_path / "d.jsonl")], n=None)
    assert r.returncode == 0 and r.stdout.count("bench.cluster shape --rate") == 2
    assert r.stdout.count("bench.cluster run -- ") == 2


def test_ctrl_c_keeps_finished_records(tmp_path):
    out = tmp_path / "int.jsonl"
    cmd = [mpiexec(), "-n", "2", sys.executable, "-m", "bench.latency", "--model", "tiny", "--seq", "16",
           "--strategies", "dp,pp,sp", "--warmup", "0", "--iters", "1500", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None and not (out.exists() and out.read_text().count("\n")):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    recs = read_records(out)
    if len(recs) == 3:
        pytest.skip("the run finished before it could be interrupted (machine too fast)")
    assert proc.returncode != 0
    assert len(recs) >= 1 and recs[0]["strategy"] == "dp"  # finished records intact
    assert "Traceback" not in err
    # Open MPI's launcher ends the ranks with SIGTERM instead of passing Ctrl-C on (mpi_launcher.py).
    assert is_open_mpi() or "interrupted" in err


def test_kernels_benchmark_records_ratio_and_refuses_bad_input(tmp_path):
    out = tmp_path / "k.jsonl"
    r = run(["bench.kernels", "--models", "tiny", "--seq", "16", "--threads", "1", "--warmup", "1", "--iters", "2",
             "--no-hf", "--out", str(out)], n=None)
    assert r.returncode == 0, r.stderr
    (rec,) = read_records(out)
    assert rec["bench"] == "kernels" and rec["model"] == "tiny" and rec["threads"] == 1
    assert rec["ratio_ours_vs_torch"] > 0 and rec["gflops_per_s"]["ours"] > 0 and "ours/torch" in r.stdout
    for bad, message in ((["--models", "nope"], "unknown model preset"), (["--iters", "0"], "--iters"),
                         (["--models", "tiny"], "exceeds the max positions")):
        r = run(["bench.kernels", *bad], n=None)
        assert r.returncode == 2 and r.stderr.startswith("error: ") and message in r.stderr, r.stderr
        assert "Traceback" not in r.stderr


def test_collectives_against_gloo_records_every_point(tmp_path):
    out = tmp_path / "c.jsonl"
    r = run(["bench.collectives", "--sizes", "4k,64k", "--iters", "3", "--jsonl", str(out)])
    assert r.returncode == 0, r.stderr
    recs = read_records(out)
    assert {(x["op"], x["bytes"], x["impl"]) for x in recs} == {
        (op, n, impl) for op in ("allreduce", "allgather", "sendrecv") for n in (4096, 65536) for impl in ("ours", "gloo")}
    allreduce = next(x for x in recs if x["op"] == "allreduce" and x["bytes"] == 4096)
    assert allreduce["bus_bytes"] == 4096 and allreduce["seconds"] > 0   # 2(P-1)/P x n at P=2
    assert "ours/gloo" in r.stdout


def test_collectives_overhead_reports_recording_share(tmp_path):
    out = tmp_path / "o.jsonl"
    r = run(["bench.collectives", "--bench", "overhead", "--overhead-iters", "1000", "--jsonl", str(out)])
    assert r.returncode == 0, r.stderr
    recs = {x["variant"]: x for x in read_records(out)}
    assert {"raw mpi4py, numpy view", "ours, counting off (spin)", "ours, wait=spin", "ours, wait=sleep",
            "recording share"} <= set(recs)
    assert recs["raw mpi4py, numpy view"]["ratio_to_raw_numpy"] == 1.0 and recs["ours, wait=spin"]["calls"] >= 1000
    assert "recording (counters + clocks)" in r.stdout


def test_collectives_overlap_reports_hidden_share(tmp_path):
    """The probe runs its four variants per size and writes what the table shows (no timing
    target: the share depends on the machine)."""
    out = tmp_path / "o.jsonl"
    r = run(["bench.collectives", "--bench", "overlap", "--sizes", "64k", "--overlap-rounds", "3", "--jsonl", str(out)])
    assert r.returncode == 0, r.stderr
    (rec,) = read_records(out)
    assert rec["bytes"] == 65536 and rec["ranks"] == 2 and rec["gemm_pairs"] >= 1
    assert all(rec[k] > 0 for k in ("comm_s", "compute_s", "sequential_s", "overlapped_s", "compute_inflation"))
    assert rec["hidden_share"] == pytest.approx((rec["sequential_s"] - rec["overlapped_s"]) / rec["comm_s"])
    assert "allreduce posted before GEMMs" in r.stdout and "hidden" in r.stdout


@pytest.mark.parametrize("bad, message", [
    (["--bench", "overlap", "--overlap-rounds", "0"], "--overlap-rounds"),
    (["--sizes", "3"], "invalid size '3'"), (["--ops", "alltoall"], "unknown op 'alltoall'"),
    (["--impls", "nccl"], "unknown implementation 'nccl'"), (["--rounds", "0"], "--rounds"),
    (["--bench", "overhead", "--overhead-iters", "999"], "--overhead-iters must be >= 1000")])
def test_collectives_bad_input_one_line_on_every_rank(tmp_path, bad, message):
    out = tmp_path / "bad.jsonl"
    r = run(["bench.collectives", *bad, "--jsonl", str(out)])
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    lines = program_lines(r.stderr)
    assert len(lines) == 2 and all(line.startswith("error: ") and message in line for line in lines), r.stderr
    assert not out.exists()


def test_closed_stdout_ends_quietly():
    """`python -m bench.comm | head`: exit 141 as a shell reports SIGPIPE, no traceback.
    (Under mpiexec the launcher, not the rank, owns the terminal's stdout.)"""
    cmd = [sys.executable, "-m", "bench.comm", "--models", "tiny", "--seqs", "16"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    proc.stdout.close()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 141, err
    assert "Traceback" not in err and "Exception ignored" not in err, err
