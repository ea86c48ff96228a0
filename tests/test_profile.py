"""bench.profile and `--strategies auto` for real: under `mpiexec -n 2` on local ranks with
tiny settings. The profile passes the checks on load and bench.plan plans from it; the
drivers run the planner's pick (also when it leaves a slow host idle) and write the
prediction beside the measurement; bad input ends both ranks with one line and exit 2.
Subprocesses (the tools are MPI jobs); no timing is asserted."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import kernels as K
from bench import machine as M, planner, profiles, trial
from mpi_launcher import program_lines

ROOT = Path(__file__).resolve().parent.parent
MPIEXEC = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
pytestmark = pytest.mark.skipif(MPIEXEC is None, reason="mpiexec not found (pip install mpich)")


def mpi(module, *args, ranks=2):
    return subprocess.run([MPIEXEC, "-n", str(ranks), sys.executable, "-m", module, *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def tiny_profile(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("profile") / "tiny.json"
    proc = mpi("bench.profile", "--model", "tiny", "--shapes", "1x16", "--reps", "1", "--max-op-seconds", "0.01",
               "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    return out


def test_profile_on_two_ranks_feeds_the_planner(tiny_profile, tmp_path):
    profile = profiles.load(tiny_profile)
    assert [h["rank"] for h in profile["hosts"]] == [0, 1]
    assert {(f["op"], f["world"]) for f in profile["collectives"]} == {
        ("allreduce", 2), ("allgather", 2), ("gather", 2), ("send", 2)}
    assert all(f["beta_s_per_byte"] > 0 and f["alpha_s"] >= 0 for f in profile["collectives"])
    assert "qkv t16 w64 n4" in profile["hosts"][1]["kernels"]   # an original layer's projection
    assert "qkv t16 w64 n2" in profile["hosts"][1]["kernels"]   # tp's half of the heads
    plan = subprocess.run([sys.executable, "-m", "bench.plan", "--profile", str(tiny_profile), "--out",
                           str(tmp_path / "plan.json")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert plan.returncode == 0, plan.stderr
    ranked = json.loads((tmp_path / "plan.json").read_text())["results"][0]["ranked"]
    assert ranked and all(r["predicted_latency_s"] > 0 for r in ranked)


def test_auto_runs_the_pick_and_records_the_prediction(tiny_profile, tmp_path):
    out = tmp_path / "auto.jsonl"
    proc = mpi("bench.latency", "--model", "tiny", "--seq", "16", "--strategies", "auto", "--profile",
               str(tiny_profile), "--iters", "2", "--warmup", "1", "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    [rec] = records(out)
    assert rec["predicted_latency_s"] > 0 and rec["plan"]["strategy"] == rec["strategy"]
    assert rec["output_check"] == "ok"


def test_auto_times_the_near_ties_and_runs_the_fastest(tiny_profile, tmp_path):
    out = tmp_path / "trial.jsonl"
    proc = mpi("bench.latency", "--model", "tiny", "--seq", "16", "--strategies", "auto", "--profile",
               str(tiny_profile), "--trial-margin", "10", "--trials", "3", "--iters", "2", "--warmup", "1",
               "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    [rec] = records(out)
    rows = rec["trial"]
    assert len(rows) == 3 and len({r["plan"] for r in rows}) == 3
    assert all(r["trial_latency_s"] > 0 and r["predicted_latency_s"] > 0 for r in rows)
    fastest = min(rows, key=lambda r: r["trial_latency_s"])
    assert "in interleaved rounds" in proc.stdout     # three tiny models fit together
    assert rec["plan"]["label"] == fastest["plan"]
    assert rec["predicted_latency_s"] == fastest["predicted_latency_s"]   # the prediction of what ran
    assert rec["output_check"] == "ok"
    assert "trial " in proc.stdout
    untimed = tmp_path / "untimed.jsonl"
    proc = mpi("bench.latency", "--model", "tiny", "--seq", "16", "--strategies", "auto", "--profile",
               str(tiny_profile), "--trials", "1", "--iters", "1", "--warmup", "0", "--out", str(untimed), "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "trial" not in records(untimed)[0]


def test_auto_times_one_after_another_what_does_not_fit_together(tiny_profile, tmp_path):
    """The hosts' memory cut to what the largest contender needs on the machine (both local
    ranks share one): the trials run one after another, each freed before the next."""
    profile = json.loads(tiny_profile.read_text())
    mach = M.build(profiles.validate(profile))
    ranked, _ = planner.plan(K.preset("tiny"), mach, 1, 16)
    rivals = trial.contenders(ranked, 10.0, 3)
    assert len({h.machine for h in mach.hosts}) == 1 and len(rivals) == 3
    largest = max(sum(r.prediction.memory_by_host.values()) for r in rivals)
    for host in profile["hosts"]:
        host["memory_available_bytes"] = largest
    assert not trial.fit_together(rivals, M.build(profile).hosts)
    path, out = tmp_path / "small.json", tmp_path / "apart.jsonl"
    path.write_text(json.dumps(profile))
    proc = mpi("bench.latency", "--model", "tiny", "--seq", "16", "--strategies", "auto", "--profile", str(path),
               "--trial-margin", "10", "--trials", "3", "--iters", "2", "--warmup", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "one after another" in proc.stdout
    [rec] = records(out)
    assert len(rec["trial"]) == 3 and all(r["trial_latency_s"] > 0 for r in rec["trial"])
    assert rec["output_check"] == "ok"


def test_throughput_auto(tiny_profile, tmp_path):
    out = tmp_path / "thr.jsonl"
    proc = mpi("bench.throughput", "--model", "tiny", "--seq", "16", "--requests", "2", "--strategies", "auto",
               "--profile", str(tiny_profile), "--iters", "1", "--warmup", "0", "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    [rec] = records(out)
    assert rec["predicted_throughput_rps"] > 0 and rec["label"].startswith("auto:")


def test_auto_leaves_a_slow_host_idle(tiny_profile, tmp_path):
    slow = json.loads(tiny_profile.read_text())
    for entry in slow["hosts"][1]["kernels"].values():
        entry["seconds"] *= 1000.0    # host 1 a thousand times slower: nothing should run there
    path = tmp_path / "slow.json"
    path.write_text(json.dumps(slow))
    out = tmp_path / "idle.jsonl"
    proc = mpi("bench.latency", "--model", "tiny", "--seq", "16", "--strategies", "auto", "--profile", str(path),
               "--iters", "2", "--warmup", "1", "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    [rec] = records(out)
    assert rec["world_size"] == 1 and rec["plan"]["hosts"] == [0]


def test_every_record_carries_its_prediction(tiny_profile, tmp_path):
    out = tmp_path / "all.jsonl"
    proc = mpi("bench.latency", "--model", "tiny", "--seq", "16", "--strategies", "tp,bp", "--boundary",
               "replicate,tp", "--profile", str(tiny_profile), "--iters", "2", "--warmup", "1", "--out", str(out),
               "--quiet")
    assert proc.returncode == 0, proc.stderr
    recs = records(out)
    assert [r["label"] for r in recs] == ["tp", "bp(replicate)", "bp(tp)"]
    assert all(r["predicted_latency_s"] > 0 and r["plan"]["hosts"] == [0, 1] for r in recs)


def test_profile_of_other_hosts_is_refused(tiny_profile, tmp_path):
    out = tmp_path / "x.jsonl"
    proc = mpi("bench.latency", "--model", "tiny", "--seq", "16", "--strategies", "auto", "--profile",
               str(tiny_profile), "--out", str(out), ranks=1)
    assert proc.returncode == 2
    assert program_lines(proc.stderr) == [
        f"error: profile {tiny_profile} has 2 host(s), this run has 1 (wrong host count: profile the hosts you run on)"]


def test_profile_bad_input_one_line_on_every_rank(tmp_path):
    proc = mpi("bench.profile", "--model", "tiny", "--shapes", "1x999", "--out", str(tmp_path / "x.json"))
    assert proc.returncode == 2
    lines = program_lines(proc.stderr)
    assert len(lines) == 2 and all(l == "error: --shapes: seq 999 exceeds tiny's max_positions 64" for l in lines)
    assert not (tmp_path / "x.json").exists()


def test_sweep_auto_profiles_once_per_rate_and_model(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bench.sweep", "--models", "tiny", "--seqs", "16,32", "-n", "2",
                           "--strategies", "auto", "--dry-run", "--out", str(tmp_path / "s.jsonl")],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    commands = [l for l in proc.stdout.splitlines() if l.startswith("$ ")]
    assert len(commands) == 3 and "bench.profile" in commands[0] and "--shapes 1x16,1x32" in commands[0]
    assert all("--strategies auto --profile" in c for c in commands[1:])
