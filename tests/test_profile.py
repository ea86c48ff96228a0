"""bench.profile for real: under `mpiexec -n 2` on local ranks with tiny settings, its profile
passes the checks on load and bench.plan plans from it; bad input ends both ranks with one
line and exit 2. Subprocesses (the tool is an MPI job); no timing is asserted."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench import profiles

ROOT = Path(__file__).resolve().parent.parent
MPIEXEC = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
pytestmark = pytest.mark.skipif(MPIEXEC is None, reason="mpiexec not found (pip install mpich)")


def launch(*args, ranks=2):
    return subprocess.run([MPIEXEC, "-n", str(ranks), sys.executable, "-m", "bench.profile", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_profile_on_two_ranks_feeds_the_planner(tmp_path):
    out = tmp_path / "tiny.json"
    proc = launch("--model", "tiny", "--shapes", "1x16", "--reps", "1", "--max-op-seconds", "0.01",
                  "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    profile = profiles.load(out)
    assert [h["rank"] for h in profile["hosts"]] == [0, 1]
    assert {(f["op"], f["world"]) for f in profile["collectives"]} == {
        ("allreduce", 2), ("allgather", 2), ("gather", 2), ("send", 2)}
    assert all(f["beta_s_per_byte"] > 0 and f["alpha_s"] >= 0 for f in profile["collectives"])
    assert "qkv t16 w64 n4" in profile["hosts"][1]["kernels"]   # an original layer's projection
    assert "qkv t16 w64 n2" in profile["hosts"][1]["kernels"]   # tp's half of the heads
    plan = subprocess.run([sys.executable, "-m", "bench.plan", "--profile", str(out), "--out",
                           str(tmp_path / "plan.json")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert plan.returncode == 0, plan.stderr
    ranked = json.loads((tmp_path / "plan.json").read_text())["results"][0]["ranked"]
    assert ranked and all(r["predicted_latency_s"] > 0 for r in ranked)


def test_profile_bad_input_one_line_on_every_rank(tmp_path):
    proc = launch("--model", "tiny", "--shapes", "1x999", "--out", str(tmp_path / "x.json"))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 2 and all(l == "error: --shapes: seq 999 exceeds tiny's max_positions 64" for l in lines)
    assert not (tmp_path / "x.json").exists()
