"""Impossible combinations end the job with one line and exit 2; a crash ends it in seconds.

Not MPI-marked: plain pytest runs these. The check() verdicts are tested in
process (pure, no communication); a representative set is then run for real
as `mpiexec -n 2 python tests/mpi_scripts/run_strategy.py ...` subprocesses
(several at once, to keep the suite fast), which must print `error: ...` on
both ranks and exit 2. Two jobs make one rank raise mid-forward while the
other waits in a collective / a receive: the job must end non-zero within
10 s of the failure (main_guard -> MPI Abort).
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import kernels as K
from mpi_launcher import job_env, mpiexec, program_lines
from parallelism import STRATEGIES, UsageError, get_strategy

SCRIPT = Path(__file__).parent / "mpi_scripts" / "run_strategy.py"
DECOUPLED = ["n_blocks=2", "n_div=4"]


# -- the pure verdicts, in process ----------------------------------------------------------
CHECKS = [  # (strategy, tiny overrides, options, P, message fragment)
    ("tp", {"heads": 1}, {}, 2, r"heads % P must be 0 \(heads=1, P=2\)"),
    ("tp", {}, {}, 3, r"heads % P must be 0 \(heads=4, P=3\)"),
    ("tp", {"ffn": 255}, {}, 2, r"ffn % P must be 0 \(ffn=255, P=2\)"),
    ("tp", {"n_blocks": 2, "n_div": 4}, {}, 2, "tp runs an original model"),
    ("dp", {"n_blocks": 2, "n_div": 4}, {}, 2, "dp runs an original model"),
    ("sp", {"n_blocks": 2, "n_div": 4}, {}, 2, "sp runs an original model"),
    ("pp", {"layers": 2, "n_blocks": 2}, {}, 3, r"stages \(P=3\) must be <= layers \(2\)"),
    ("pp", {}, {"micro_batches": 0}, 2, "micro_batches must be >= 1"),
    ("pp", {}, {"micro_batches": "two"}, 2, "micro_batches must be an integer"),
    ("sp", {"max_positions": 2}, {}, 3, "ranks must be <= tokens"),
    ("bp", {}, {}, 2, "bp runs a decoupled model"),
    ("bp", {"n_blocks": 2, "n_div": 4}, {}, 3, r"n_div % P must be 0 \(n_div=4, P=3\)"),
    ("bp", {"n_blocks": 2, "n_div": 4}, {"boundary": "ring"}, 2, "boundary must be one of replicate, tp"),
    ("bp", {"n_blocks": 2, "n_div": 4}, {"boundary": "tp", "assignment": "0,1;2;3"}, 3,
     r"bp boundary=tp: heads % P must be 0"),
    ("bp", {"n_blocks": 2, "n_div": 4}, {"assignment": "0,1/1,2,3"}, 2, "exactly once"),
    ("bp", {"n_blocks": 2, "n_div": 4}, {"assignment": "0,1/2"}, 2, "exactly once"),
    ("bp", {"n_blocks": 2, "n_div": 4}, {"assignment": "0,1,2,3"}, 2, "one sub-block list per rank"),
    ("bp", {"n_blocks": 2, "n_div": 4}, {"assignment": [[0, 1, 2, 3], []]}, 2, "no sub-block"),
    ("bp", {"n_blocks": 2, "n_div": 4}, {"assignment": "0,x/2,3"}, 2, "assignment must look like"),
]


@pytest.mark.parametrize("name,overrides,options,world,message", CHECKS,
                         ids=[f"{c[0]}-P{c[3]}-{i}" for i, c in enumerate(CHECKS)])
def test_check_refuses_with_the_constraint(name, overrides, options, world, message):
    cfg = K.preset("tiny", **overrides)
    with pytest.raises(UsageError, match=message) as info:
        STRATEGIES[name].check(cfg, world, **options)
    assert "\n" not in str(info.value)  # one line


@pytest.mark.parametrize("name,overrides,options,world", [
    ("tp", {}, {}, 4), ("pp", {}, {"micro_batches": "3"}, 4), ("sp", {}, {}, 4), ("dp", {}, {}, 4),
    ("bp", {"n_blocks": 2, "n_div": 4}, {"boundary": "tp"}, 2),
    ("bp", {"n_blocks": 2, "n_div": 4}, {"assignment": "0,1,2;3"}, 2),
    ("bp", {"n_blocks": 2, "n_div": 4}, {"assignment": [[3], [0, 2], [1]]}, 3)])
def test_check_accepts_valid_combinations(name, overrides, options, world):
    STRATEGIES[name].check(K.preset("tiny", **overrides), world, **options)


def test_unknown_strategy_refused():
    with pytest.raises(UsageError, match="unknown strategy 'xx'"):
        get_strategy("xx")


# -- the real thing under mpiexec -----------------------------------------------------------
def run_job(args: list[str], timeout: float = 60) -> tuple[subprocess.CompletedProcess, float]:
    launcher = mpiexec()
    if launcher is None:
        pytest.skip("no mpiexec found")
    cmd = [launcher, "-n", "2", sys.executable, str(SCRIPT), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=job_env(OMP_NUM_THREADS="1"))
    return done, time.time()


JOBS = {  # id -> (script arguments, the one-line error both ranks print)
    "tp-heads": (["--strategy", "tp", "--set", "heads=1"], "tp: heads % P must be 0 (heads=1, P=2)"),
    "tp-ffn": (["--strategy", "tp", "--set", "ffn=255"], "tp: ffn % P must be 0 (ffn=255, P=2)"),
    "bp-ndiv": (["--strategy", "bp", "--set", "n_blocks=2", "n_div=1"],
                "bp: n_div % P must be 0 (n_div=1, P=2)"),
    "bp-assignment": (["--strategy", "bp", "--set", *DECOUPLED, "--opt", "assignment=0,1/1,2,3"],
                      "bp: assignment must use every sub-block 0..3 exactly once"),
    "bp-boundary-tp": (["--strategy", "bp", "--set", *DECOUPLED, "heads=1", "--opt", "boundary=tp"],
                       "bp boundary=tp: heads % P must be 0 (heads=1, P=2)"),
    "bp-original": (["--strategy", "bp"], "bp runs a decoupled model"),
    "pp-stages": (["--strategy", "pp", "--set", "layers=1", "n_blocks=1"],
                  "pp: stages (P=2) must be <= layers (1)"),
    "sp-tokens": (["--strategy", "sp", "--seq", "1"], "sp: ranks must be <= tokens (P=2, seq=1)"),
    "unknown-option": (["--strategy", "dp", "--opt", "foo=1"], "dp: unknown option(s) foo"),
    "tp-int8-mpi-sum": (["--strategy", "tp", "--opt", "wire_dtype=int8", "wire_reduce=mpi"],
                        "tp: wire_dtype int8 cannot travel through MPI's own allreduce (wire_reduce=mpi sums "
                        "only fp32, fp16): use wire_reduce=split"),
    # found at forward time (the sequence length), on every rank before any communication
    "bp-chunks": (["--strategy", "bp", "--set", *DECOUPLED, "--seq", "8", "--opt", "overlap=on", "chunks=9"],
                  "bp: chunks (9) must be <= the sequence length (8)"),
}


@pytest.fixture(scope="module")
def usage_jobs():
    """Run every invalid-combination job, three at a time (they mostly wait on imports)."""
    if mpiexec() is None:
        pytest.skip("no mpiexec found")
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {key: pool.submit(run_job, args) for key, (args, _) in JOBS.items()}
        return {key: future.result()[0] for key, future in futures.items()}


@pytest.mark.slow
@pytest.mark.parametrize("key", list(JOBS))
def test_invalid_combination_exits_2_with_one_line_on_every_rank(usage_jobs, key):
    done = usage_jobs[key]
    message = JOBS[key][1]
    lines = program_lines(done.stderr)
    assert done.returncode == 2, done.stderr
    # Exactly one line per rank, the same on both, naming the constraint; nothing else (no traceback).
    assert done.stderr.count(f"error: {message}") == 2, done.stderr
    assert len(lines) == 2 and lines[0] == lines[1], done.stderr
    assert not done.stdout.strip()


FAILURES = {  # a rank raising mid-forward while the other waits in communication
    # rank 1 raises at its 2nd allreduce; rank 0 is inside that allreduce
    "tp-allreduce": ["--strategy", "tp", "--fail-rank", "1", "--fail-after", "1"],
    # the first stage raises before sending; the last stage waits in its receive
    "pp-recv": ["--strategy", "pp", "--fail-rank", "0", "--fail-after", "0"],
}


@pytest.mark.slow
@pytest.mark.parametrize("key", list(FAILURES))
def test_rank_raising_mid_forward_ends_the_job_quickly(key):
    done, ended = run_job(FAILURES[key], timeout=60)
    assert done.returncode != 0, done.stderr
    found = re.search(r"rank (\d): RuntimeError: injected failure .* at t=([0-9.]+)", done.stderr)
    assert found, done.stderr
    assert ended - float(found.group(2)) < 10, "the job outlived the failure by 10 s or more"
    assert "ok" not in done.stdout
