"""bench.report from a small fixture results file; bench.compare exit codes."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import compare, report
from bench.records import append_jsonl

ROOT = Path(__file__).resolve().parent.parent


def lat(strategy, P, p50, rate=None, bus=1000, err=1e-6, spread=0.02, label=None):
    return {"bench": "latency", "strategy": strategy, "label": label or strategy, "model": "tiny", "world_size": P,
            "batch": 1, "seq": 16, "n_blocks": 4, "n_div": 1, "boundary": None, "rate": rate, "threads": 1,
            "latency_s": {"min": p50 * 0.98, "p50": p50, "p90": p50 * (1 + spread), "p99": p50 * (1 + 2 * spread),
                          "mean": p50 * 1.01, "max": p50 * 1.1},
            "compute_s": p50 * 0.6, "comm_s": p50 * 0.41, "serial_latency_s": {"p50": 0.01},
            "speedup_vs_serial": 0.01 / p50, "reference": "serial",
            "payload_bytes_per_rank": {"total": bus // 2, "by_op": {"allreduce": bus // 2}},
            "bus_bytes_per_rank": {"total": bus, "by_op": {"allreduce": bus}},
            "messages_per_rank": {"total": 8, "by_op": {"allreduce": 8}},
            "expected_payload_bytes_per_rank": {"total": bus // 2, "by_op": {"allreduce": bus // 2}},
            "weights_bytes_per_rank": {"max": 10_000}, "max_abs_err": err, "wire_bytes_per_rank": None,
            "network": None, "env": {"hostnames": ["h0", "h1"], "utc_time": "2026-11-28T10:00:00Z", "torch": "2",
                                     "cpu_model": "cpu", "cpus": 2, "mpi_library": "MPICH", "git_commit": "abc"}}


def thr(strategy, P, rps, eff):
    r = lat(strategy, P, 8 / rps)
    r.update(bench="throughput", devices=P, requests=8, batch=8, throughput_rps=rps, efficiency=eff)
    return r


def comm_rec(strategy, P, bus, ratio):
    return {"bench": "comm", "strategy": strategy, "label": strategy, "model": "bert-base", "world_size": P,
            "batch": 1, "seq": 128, "expected_payload_bytes_per_rank": {"total": bus},
            "expected_bus_bytes_per_rank": {"total": bus}, "expected_messages_per_rank": {"total": 4},
            "bus_ratio_to_tp": ratio, "weights_bytes_per_rank": {"max": 1e8}, "measured": False,
            "env": {"utc_time": "2026-11-28T10:00:00Z"}}


@pytest.fixture
def fixture_file(tmp_path) -> Path:
    path = tmp_path / "fixture.jsonl"
    recs = []
    for rate, scale in (("10mbit", 10.0), ("100mbit", 2.0), ("1gbit", 1.0)):
        recs += [lat("tp", 4, 0.02 * scale, rate, bus=14_000_000), lat("bp", 4, 0.012 * scale ** 0.3, rate,
                                                                       bus=1_200_000)]
    recs += [lat("tp", 2, 0.015), lat("pp", 2, 0.02, bus=4000), lat("dp", 2, 0.03, bus=0)]
    recs += [thr("dp", 1, 10, 1.0), thr("dp", 2, 18, 0.9), thr("pp", 1, 10, 1.0), thr("pp", 2, 15, 0.75)]
    recs += [comm_rec("tp", 4, 14_000_000, 1.0), comm_rec("bp", 4, 1_180_000, 1 / 12)]
    for r in recs:
        append_jsonl(path, r)
    return path


def test_report_writes_markdown_and_pngs(fixture_file, tmp_path):
    out = tmp_path / "reports"
    assert report.main([str(fixture_file), "--name", "fx", "--out-dir", str(out), "--quiet"]) == 0
    md = (out / "fx.md").read_text()
    assert "## Latency" in md and "## Throughput" in md and "## Communication volume" in md
    assert "| tp |" in md and "eff 0.90" in md
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert any("latency-vs-bandwidth" in p for p in pngs) and any("throughput" in p for p in pngs)
    assert any("breakdown" in p for p in pngs) and "fx-bytes.png" in pngs
    for p in out.glob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
        assert f"({p.name})" in md


def test_report_rate_table_ratios_and_peer(fixture_file, tmp_path):
    peer = tmp_path / "peer.json"
    peer.write_text(json.dumps({"name": "their code", "short_name": "theirs", "source": "elsewhere",
                                "claims": ["up to 2.81x"], "model": "tiny", "seq": 16, "batch": 1,
                                "world_size": 4, "latency_s": {"100mbit": {"tp": 1.0, "bp": 0.25}},
                                "serial_s": 0.5}))
    out = tmp_path / "reports"
    assert report.main([str(fixture_file), "--name", "fx", "--out-dir", str(out), "--quiet",
                        "--peer", str(peer)]) == 0
    md = (out / "fx.md").read_text()
    assert "### Latency vs bandwidth: tiny, batch 1, seq 16, P=4" in md and "- up to 2.81x" in md
    rows = {}  # rate -> its row in the latency table (the first table keyed by rate)
    for line in md.splitlines():
        if line.startswith(("| 10mbit", "| 100mbit", "| 1gbit")):
            rows.setdefault(line.split(" | ")[0].strip("| "), line)
    tp10, bp10 = 0.02 * 10, 0.012 * 10 ** 0.3
    assert f"| {tp10 / bp10:.2f}x |" in rows["10mbit"]                  # tp / bp at 10 Mbit/s
    assert rows["100mbit"].endswith("| 1.00s | 250.0ms | 4.00x | 500.0ms |")   # the peer's tp, bp, tp/bp
    assert rows["10mbit"].endswith("| - | - | - | 500.0ms |")                     # the peer has no 10 Mbit/s point
    # records that are all at some rate (a sweep): no unshaped bar chart, no crash
    rated = tmp_path / "rated.jsonl"
    for line in fixture_file.read_text().splitlines():
        if '"rate": null' not in line:
            rated.open("a").write(line + "\n")
    assert report.main([str(rated), "--name", "rated", "--out-dir", str(out), "--quiet"]) == 0
    assert "latency-vs-bandwidth" in (out / "rated.md").read_text()
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(report.CliError, match="missing name"):
        report.main([str(fixture_file), "--out-dir", str(out), "--peer", str(bad)])


def test_report_bad_input_exit_2(tmp_path):
    r = subprocess.run([sys.executable, "-m", "bench.report", str(tmp_path / "missing.jsonl")],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr


def test_rate_parsing():
    assert report.rate_mbit("100mbit") == 100 and report.rate_mbit("1gbit") == 1000
    assert report.rate_mbit("500kbit") == 0.5 and report.rate_mbit("nonsense") is None


def run_compare(base: Path, new: Path, *extra):
    return subprocess.run([sys.executable, "-m", "bench.compare", str(base), str(new), *extra],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)


def test_compare_itself_is_clean(fixture_file):
    r = run_compare(fixture_file, fixture_file)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 regression(s)" in r.stdout


def _variant(src: Path, dst: Path, change) -> Path:
    recs = [json.loads(line) for line in src.read_text().splitlines()]
    change(recs)
    dst.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return dst


def test_compare_one_latency_50_percent_worse(fixture_file, tmp_path):
    def worse(recs):
        for k in ("min", "p50", "p90", "p99", "mean", "max"):
            recs[0]["latency_s"][k] *= 1.5
    r = run_compare(fixture_file, _variant(fixture_file, tmp_path / "worse.jsonl", worse))
    assert r.returncode == 1, r.stdout
    assert "REGRESSION" in r.stdout and "latency p50" in r.stdout and "1 regression(s)" in r.stdout


def test_compare_small_noise_is_not_a_regression(fixture_file, tmp_path):
    def noisy(recs):
        recs[0]["latency_s"]["p50"] *= 1.05
    assert run_compare(fixture_file, _variant(fixture_file, tmp_path / "n.jsonl", noisy)).returncode == 0


def test_compare_spread_widens_the_margin():
    base = [lat("tp", 2, 0.010, spread=0.30)]
    new = [lat("tp", 2, 0.015, spread=0.30)]   # +50% but the runs spread by 30%: margin 60%
    assert compare.compare(base, new)[1] == 0
    assert compare.compare(base, new, factor=1.0)[1] == 1


def test_compare_bytes_and_error(fixture_file, tmp_path):
    def more_bytes(recs):
        recs[1]["bus_bytes_per_rank"]["total"] += 4
    r = run_compare(fixture_file, _variant(fixture_file, tmp_path / "b.jsonl", more_bytes))
    assert r.returncode == 1 and "bus_bytes_per_rank" in r.stdout

    def wrong(recs):
        recs[2]["max_abs_err"] = 0.5
    r = run_compare(fixture_file, _variant(fixture_file, tmp_path / "e.jsonl", wrong))
    assert r.returncode == 1 and "max_abs_err" in r.stdout

    def slower_throughput(recs):
        for rec in recs:
            if rec["bench"] == "throughput" and rec["devices"] == 2 and rec["strategy"] == "dp":
                rec["throughput_rps"] *= 0.5
    r = run_compare(fixture_file, _variant(fixture_file, tmp_path / "t.jsonl", slower_throughput))
    assert r.returncode == 1 and "throughput" in r.stdout


def test_compare_bad_input(fixture_file, tmp_path):
    r = run_compare(fixture_file, tmp_path / "nope.jsonl")
    assert r.returncode == 2 and r.stderr.startswith("error: ")
    r = run_compare(fixture_file, fixture_file, "--threshold", "x")
    assert r.returncode == 2 and r.stderr.startswith("error: ")
