"""Unit tests of the shared harness: statistics, records (atomic append), options, model resolution."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from bench import records
from bench.records import append_csv, append_jsonl, read_records, stats


def test_stats_match_numpy_percentiles():
    np = pytest.importorskip("numpy")
    values = [0.31, 0.12, 0.5, 0.2, 0.27, 0.9, 0.33, 0.25, 0.18, 0.41, 0.22]
    got = stats(values)
    for q, k in ((50, "p50"), (90, "p90"), (99, "p99")):
        assert got[k] == pytest.approx(float(np.percentile(values, q)))
    assert got["min"] == 0.12 and got["max"] == 0.9 and got["n"] == len(values)
    assert got["mean"] == pytest.approx(sum(values) / len(values))


def test_stats_single_sample_and_empty():
    assert stats([2.0]) == {"min": 2.0, "p50": 2.0, "p90": 2.0, "p99": 2.0, "mean": 2.0, "max": 2.0, "n": 1}
    with pytest.raises(ValueError):
        stats([])


def test_append_jsonl_lines_and_nan(tmp_path):
    path = tmp_path / "sub" / "r.jsonl"
    append_jsonl(path, records.clean({"a": 1, "x": float("nan")}))
    append_jsonl(path, {"a": 2})
    text = path.read_text()
    assert text.endswith("\n") and text.count("\n") == 2
    assert [r["a"] for r in read_records(path)] == [1, 2]
    assert read_records(path)[0]["x"] == "nan"   # not null: null means "not computed"


def test_append_survives_kill_mid_run(tmp_path):
    """A writer killed with SIGKILL at a random moment leaves only complete, parseable lines."""
    path = tmp_path / "killed.jsonl"
    script = textwrap.dedent(f"""
        from bench.records import append_jsonl
        i = 0
        while True:
            append_jsonl({str(path)!r}, {{"i": i, "blob": "x" * 200000}})
            i += 1
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.time() + 20
    while time.time() < deadline and (not path.exists() or path.stat().st_size < 2_000_000):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    data = path.read_bytes()
    lines = data.split(b"\n")
    complete, tail = lines[:-1], lines[-1]
    assert len(complete) >= 5
    assert [json.loads(line)["i"] for line in complete] == list(range(len(complete)))
    # Whatever was cut (normally nothing) is skipped by the reader, never mis-parsed.
    assert len(read_records(path, warn=False)) == len(complete) + (1 if tail and _parses(tail) else 0)


def _parses(line: bytes) -> bool:
    try:
        json.loads(line)
        return True
    except ValueError:
        return False


def test_read_records_skips_truncated_line(tmp_path, capsys):
    path = tmp_path / "t.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": 3, "b": [1, 2\n')
    assert [r["a"] for r in read_records(path)] == [1, 2]
    assert "unreadable line skipped" in capsys.readouterr().err


def test_csv_header_once(tmp_path):
    path = tmp_path / "r.csv"
    rec = {"bench": "latency", "strategy": "tp", "latency_s": {"p50": 0.5}, "bus_bytes_per_rank": {"total": 7}}
    append_csv(path, rec)
    append_csv(path, rec)
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and lines[0].startswith("bench,strategy")
    assert lines[1] == lines[2]


def test_local_env_fields():
    env = records.local_env()
    for key in ("python", "torch", "threads", "cpu_model", "git_commit", "utc_time"):
        assert key in env


# -- options, model resolution and selection (import MPI: singleton, fine) --------------------
H = pytest.importorskip("bench.harness")
from parallelism import UsageError  # noqa: E402


def test_parser_errors_raise_usage_error():
    p = H.parser("latency", "test")
    with pytest.raises(UsageError):
        H.parse(p, ["--iters", "0"])
    with pytest.raises(UsageError):
        H.parse(p, ["--strategies", "nope"])
    with pytest.raises(UsageError):
        H.parse(p, ["--boundary", "sideways"])
    args = H.parse(p, ["--strategies", "tp,bp", "--assignment", "0,1/2,3", "--tag", "k=v"])
    assert args.strategies == ["tp", "bp"] and args.assignment == [[0, 1], [2, 3]] and args.tags == {"k": "v"}


def test_resolve_model_presets_and_defaults():
    m = H.resolve_model("tiny")
    assert m.original.layers == 4 and m.decoupled.n_blocks == 2 and m.decoupled.n_div == 4
    m = H.resolve_model("bert-base")
    assert m.decoupled.n_blocks == 4
    with pytest.raises(UsageError):
        H.resolve_model("no-such-model")
    m = H.resolve_model("tiny", nb=3)
    with pytest.raises(UsageError, match="layers % n_blocks"):
        m.config(True)


def test_checkpoint_refuses_bp(minilm_dir):
    m = H.resolve_model(str(minilm_dir))
    assert m.original.hidden == 384
    with pytest.raises(UsageError, match="decoupled"):
        m.config(True)
    with pytest.raises(UsageError, match="decoupled"):
        m.weights(True)


def test_select_default_skips_explicit_errors():
    from parallelism import STRATEGIES
    if "tp" not in STRATEGIES:
        pytest.skip("tp not registered")
    p = H.parser("latency", "test")
    m = H.resolve_model("tiny")
    skipped = []
    plans = H.select(H.parse(p, []), m, 3, say=skipped.append)  # tiny: 4 heads, not divisible by 3
    assert "tp" not in [pl.name for pl in plans] and any(s.startswith("skip tp") for s in skipped)
    with pytest.raises(UsageError, match="tp"):
        H.select(H.parse(p, ["--strategies", "tp"]), m, 3, say=skipped.append)


def test_make_inputs_deterministic_and_bounded():
    cfg = H.resolve_model("tiny").original
    a, _ = H.make_inputs(cfg, 2, 16, 0)
    b, mask = H.make_inputs(cfg, 2, 16, 0)
    assert (a == b).all() and mask.all() and a.max() < cfg.vocab
    with pytest.raises(UsageError):
        H.make_inputs(cfg, 1, cfg.max_positions + 1)


def test_analytic_traffic_without_mpi_ranks():
    """bench.comm builds strategies on meta weights with a stand-in communicator."""
    from parallelism import STRATEGIES
    if not {"tp", "bp"} <= set(STRATEGIES):
        pytest.skip("tp/bp not registered")
    from bench.comm import analytic
    m = H.resolve_model("bert-base")
    tp = analytic(H.Plan("tp", STRATEGIES["tp"], {}, "tp"), m.original, 4, 1, 128)
    bp = analytic(H.Plan("bp", STRATEGIES["bp"], {"boundary": "replicate"}, "bp"), m.decoupled, 4, 1, 128)
    T = 128 * 768 * 4
    assert tp["bus"]["by_op"]["allreduce"] == 2 * 12 * 2 * 3 * T // 4  # 2 allreduces/layer, 2(P-1)/P
    assert tp["bus"]["total"] / bp["bus"]["total"] == pytest.approx(12, rel=0.01)
    serial = analytic(H.Plan("serial", STRATEGIES["serial"], {}, "serial"), m.original, 4, 1, 128)
    assert serial["bus"]["total"] == 0 and serial["weights"]["max"] > 400e6
    assert tp["weights"]["max"] < serial["weights"]["max"] / 2  # a shard (+ replicated embeddings)
