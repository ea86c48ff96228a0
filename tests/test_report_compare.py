"""bench.report from a small fixture results file; bench.compare verdicts (the U test on the
samples, the fallback without them) and exit codes; clean errors on bad input."""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import math
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from bench import compare, records, report, report_data, validate
from parallelism.errors import UsageError
from bench.records import append_jsonl
from bench.significance import mann_whitney_u, smallest_p

ROOT = Path(__file__).resolve().parent.parent


def lat(strategy, P, p50, rate=None, bus=1000, err=1e-6, spread=0.02, label=None, samples=None):
    if samples is not None:
        p50 = records.stats(samples)["p50"]
    rec = {"bench": "latency", "strategy": strategy, "label": label or strategy, "model": "tiny", "world_size": P,
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
    if samples is not None:   # as the harness writes them: the stats of the samples, and the samples
        rec.update(latency_s=records.stats(samples), latency_samples_s=list(samples))
    return rec


def cells(line: str) -> list[str]:
    """The cells of one Markdown table row."""
    return [c.strip() for c in line.strip().strip("|").split("|")]


def rows_of(recs) -> list:
    return report_data.tidy((f"test:{i}", r) for i, r in enumerate(recs, 1))


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
    assert any(cells(line)[0] == "tp" for line in md.splitlines() if line.startswith("|")) and "eff 0.90" in md
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
    rows = {}  # rate -> the cells of its row in the latency table (the first table keyed by rate)
    for line in md.splitlines():
        if line.startswith("|") and cells(line)[0] in ("10mbit", "100mbit", "1gbit"):
            rows.setdefault(cells(line)[0], cells(line))
    tp10, bp10 = 0.02 * 10, 0.012 * 10 ** 0.3
    assert f"{tp10 / bp10:.2f}x" in rows["10mbit"]                          # tp / bp at 10 Mbit/s
    assert rows["100mbit"][-4:] == ["1.00s", "250.0ms", "4.00x", "500.0ms"]   # the peer's tp, bp, tp/bp
    assert rows["10mbit"][-4:] == ["-", "-", "-", "500.0ms"]                  # the peer has no 10 Mbit/s point
    # records that are all at some rate (a sweep): no unshaped bar chart, no crash
    rated = tmp_path / "rated.jsonl"
    for line in fixture_file.read_text().splitlines():
        if '"rate": null' not in line:
            rated.open("a").write(line + "\n")
    assert report.main([str(rated), "--name", "rated", "--out-dir", str(out), "--quiet"]) == 0
    assert "latency-vs-bandwidth" in (out / "rated.md").read_text()
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(UsageError, match="missing name"):
        report.main([str(fixture_file), "--out-dir", str(out), "--peer", str(bad)])


def test_report_bad_input_exit_2(tmp_path):
    r = subprocess.run([sys.executable, "-m", "bench.report", str(tmp_path / "missing.jsonl")],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr


def test_rates_parsed_by_the_suites_one_parser():
    assert report_data.rate_bits("100mbit") == 100_000_000 and report_data.rate_bits("1gbit") == 10**9
    assert report_data.rate_bits("500kbit") == 500_000 and report_data.rate_bits("nonsense") is None
    assert report_data.rate_bits(None) is None
    assert not hasattr(report, "rate_mbit") and report_data.parse_rate.__module__ == "bench.network"


def run_compare(base: Path, new: Path, *extra) -> subprocess.CompletedProcess:
    """bench.compare in this process (a subprocess would import torch again for every call)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = compare.main([str(base), str(new), *extra])
    return subprocess.CompletedProcess(["bench.compare"], code, out.getvalue(), "")


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


def test_compare_spread_widens_the_margin_without_samples():
    base = rows_of([lat("tp", 2, 0.010, spread=0.30)])
    new = rows_of([lat("tp", 2, 0.015, spread=0.30)])   # +50% but the runs spread by 30%: margin 60%
    rows, regressions, _, _ = compare.compare(base, new)
    assert regressions == 0 and rows[0][6].startswith("no samples")
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
    r = subprocess.run([sys.executable, "-m", "bench.compare", str(fixture_file), str(tmp_path / "nope.jsonl")],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 2 and r.stderr == f"error: {tmp_path / 'nope.jsonl'}: no such file or folder\n"
    with pytest.raises(UsageError, match="argument --threshold: expected a finite number"):
        run_compare(fixture_file, fixture_file, "--threshold", "x")


# -- the U test ---------------------------------------------------------------------------------
def test_mann_whitney_u_exact_against_enumeration_and_published_values():
    x, y = [0.3, 0.1, 0.7, 0.45], [0.2, 0.9, 0.5, 0.8, 0.35]
    pooled, observed = x + y, mann_whitney_u(x, y)
    as_extreme = total = 0
    for chosen in itertools.combinations(range(len(pooled)), len(x)):  # every split equally likely
        u = sum(pooled[i] > pooled[j] for i in chosen for j in range(len(pooled)) if j not in chosen)
        as_extreme += max(u, 20 - u) >= max(observed.u, 20 - observed.u)
        total += 1
    assert observed.method == "exact" and observed.p == pytest.approx(as_extreme / total)
    # scipy.stats.mannwhitneyu's documented example (males vs females): U 17, p 0.1111 exact,
    # 0.11134688653314041 asymptotic with continuity correction
    males, females = [19, 22, 16, 29, 24], [20, 11, 17, 12]
    assert mann_whitney_u(males, females).u == 17 and mann_whitney_u(males, females).p == pytest.approx(1 / 9)
    tied = mann_whitney_u(males + [20], females)          # a tie: the normal approximation
    assert tied.method == "asymptotic" and 0 < tied.p < 1
    assert mann_whitney_u([1.0] * 4, [1.0] * 4).p == 1.0
    assert smallest_p(5, 5) == pytest.approx(2 / 252) and smallest_p(3, 3) == pytest.approx(0.1)


BASE_5 = [0.0100, 0.0102, 0.0104, 0.0106, 0.0148]   # one slow iteration: (p90-p50)/p50 = 26%


def test_compare_catches_50_percent_regression_of_5_iterations():
    """Item 7: +50% on a 5-iteration point with a large p90-p50 spread passed the spread rule."""
    base = rows_of([lat("tp", 2, None, samples=BASE_5)])
    new = rows_of([lat("tp", 2, None, samples=[v * 1.5 for v in BASE_5])])
    rows, regressions, _, _ = compare.compare(base, new)
    assert regressions == 1 and rows[0][-1] == "REGRESSION", rows
    assert rows[0][6] == "U test p=0.00794, n=5/5"
    stripped = rows_of([{k: v for k, v in r.items() if k != "latency_samples_s"}
                        for r in (lat("tp", 2, None, samples=BASE_5), lat("tp", 2, None, samples=[v * 1.5 for v in BASE_5]))])
    assert compare.compare(stripped[:1], stripped[1:])[1] == 0   # what the p50 rule alone says


def test_compare_small_shift_within_noise_passes():
    base = [0.0100, 0.0105, 0.0098, 0.0112, 0.0101, 0.0103, 0.0099, 0.0107]
    interleaved = [0.0102, 0.0106, 0.0099, 0.0115, 0.0104, 0.0100, 0.0108, 0.0103]   # +1.5%, not significant
    rows, regressions, _, _ = compare.compare(rows_of([lat("tp", 2, None, samples=base)]),
                                              rows_of([lat("tp", 2, None, samples=interleaved)]))
    assert regressions == 0 and rows[0][-1] == "ok" and float(rows[0][6].split("p=")[1].split(",")[0]) > 0.05
    small = [v * 1.04 for v in base]               # all slower (p = 0.0002) but only by 4%: below the threshold
    rows, regressions, _, _ = compare.compare(rows_of([lat("tp", 2, None, samples=base)]),
                                              rows_of([lat("tp", 2, None, samples=small)]))
    assert regressions == 0 and rows[0][-1] == "ok" and "U test" in rows[0][6]


def test_compare_falls_back_clearly_without_enough_samples():
    few = [0.010, 0.0101, 0.0102]
    rows, regressions, _, _ = compare.compare(rows_of([lat("tp", 2, None, samples=few)]),
                                              rows_of([lat("tp", 2, None, samples=[v * 1.5 for v in few])]))
    assert regressions == 1 and rows[0][6].startswith("n=3/3 too few for the U test: p50 vs max(10%, 2 x spread)")
    rows, _, _, _ = compare.compare(rows_of([lat("tp", 2, 0.01)]), rows_of([lat("tp", 2, None, samples=few)]))
    assert rows[0][6].startswith("no samples")


def test_compare_with_samples_itself_is_clean(tmp_path):
    path = tmp_path / "s.jsonl"
    for r in (lat("tp", 2, None, samples=BASE_5), lat("bp", 2, None, samples=[v * 0.5 for v in BASE_5])):
        append_jsonl(path, r)
    r = run_compare(path, path, "--all")
    assert r.returncode == 0 and "0 regression(s)" in r.stdout and "U test p=1, n=5/5" in r.stdout, r.stdout


# -- defects ------------------------------------------------------------------------------------
def test_nonfinite_error_or_latency_is_a_failure(fixture_file, tmp_path, capsys):
    """Defect 3: a NaN max_abs_err was recorded as null and bench.compare ignored it."""
    def broken(recs):   # written as the harness writes records (through records.clean)
        recs[2] = records.clean({**recs[2], "max_abs_err": math.nan})
        recs[3]["latency_s"] = records.clean({**recs[3]["latency_s"], "p50": math.inf})
    bad = _variant(fixture_file, tmp_path / "nan.jsonl", broken)
    assert compare.main([str(fixture_file), str(bad)]) == 1
    failed = {tuple(cells(line)[1:4:2]) for line in capsys.readouterr().out.splitlines() if "REGRESSION" in line}
    assert failed == {("max_abs_err", "nan"), ("latency p50", "inf")}, failed
    literal = tmp_path / "literal.jsonl"   # a writer that let json emit a bare NaN
    literal.write_text(fixture_file.read_text().replace('"max_abs_err": 1e-06', '"max_abs_err": NaN', 1))
    assert compare.main([str(fixture_file), str(literal)]) == 1
    mismatch = _variant(fixture_file, tmp_path / "shape.jsonl",   # the harness's own verdict counts too
                        lambda recs: recs[0].update(max_abs_err="inf", output_check="shape mismatch"))
    assert compare.compare(report_data.load(fixture_file), report_data.load(mismatch))[1] == 1
    out = tmp_path / "reports"
    assert report.main([str(bad), "--name", "nan", "--out-dir", str(out), "--quiet"]) == 0
    tp_rows = [cells(line) for line in (out / "nan.md").read_text().splitlines() if line.startswith("| tp ")]
    assert any(row[12] == "nan" for row in tp_rows), tp_rows    # the max_abs_err column


def _limited_memory():
    """At most 4 GiB of address space: a regression must not take the shared machine's memory."""
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = 4 * 1024**3 if hard == resource.RLIM_INFINITY else min(4 * 1024**3, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


@pytest.mark.parametrize("tool", ["bench.report", "bench.compare"])
def test_dev_zero_is_a_one_line_error(tool, tmp_path):
    """Defect 6: bench.report read /dev/zero without a size limit."""
    args = ["/dev/zero", "--out-dir", str(tmp_path)] if tool == "bench.report" else ["/dev/zero", "/dev/zero"]
    r = subprocess.run([sys.executable, "-m", tool, *args], capture_output=True, text=True, cwd=ROOT, timeout=60,
                       preexec_fn=_limited_memory)
    assert r.returncode == 2 and r.stderr.startswith("error: /dev/zero:1: a line longer than 16 MiB")
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def _both_tools(path: Path, tmp_path: Path):
    """bench.report and bench.compare on `path`: each must raise UsageError (one line, exit 2)."""
    messages = []
    for run in (lambda: report.main([str(path), "--out-dir", str(tmp_path / "out"), "--quiet"]),
                lambda: compare.main([str(path), str(path)])):
        with pytest.raises(UsageError) as err:
            run()
        messages.append(str(err.value))
    return messages


def test_non_utf8_inputs_are_one_line_errors(fixture_file, tmp_path):
    """Defect 7: UnicodeDecodeError tracebacks for a non-UTF-8 results or notes file."""
    binary = tmp_path / "bin.jsonl"
    binary.write_bytes(fixture_file.read_bytes() + b"\x89PNG\r\n\x1a\n\xff\xfe\n")
    assert all("not UTF-8" in m for m in _both_tools(binary, tmp_path))
    notes = tmp_path / "notes.md"
    notes.write_bytes(b"caf\xe9\n")
    with pytest.raises(UsageError, match="--notes .*not UTF-8"):
        report.main([str(fixture_file), "--out-dir", str(tmp_path / "out"), "--notes", str(notes)])


@pytest.mark.parametrize("field, value", [
    ("latency_s.p50", "fast"), ("latency_s", [0.1, 0.2]), ("env", ["vm"]), ("max_abs_err", "small"),
    ("messages_per_rank", {"total": [8]}), ("bus_bytes_per_rank", {"total": 1, "by_op": [1]}),
    ("latency_samples_s", "0.1,0.2"), ("world_size", "4"),
])
def test_records_of_unexpected_types_are_one_line_errors(field, value, tmp_path):
    """Defect 7: a string latency, a list where an object belongs... were tracebacks."""
    rec = lat("tp", 2, 0.01)
    parent, _, leaf = field.rpartition(".")
    (rec[parent] if parent else rec)[leaf] = value
    path = tmp_path / "odd.jsonl"
    path.write_text(json.dumps(lat("pp", 2, 0.01)) + "\n" + json.dumps(rec) + "\n")
    for message in _both_tools(path, tmp_path):
        assert message.startswith(f"{path}:2: {field}") and "expected" in message, message


def test_unusable_out_dir_is_a_one_line_error(fixture_file, tmp_path):
    """Defect 7: an --out-dir that is a file, or that cannot be written, was a traceback."""
    a_file = tmp_path / "file"
    a_file.write_text("")
    read_only = tmp_path / "ro"
    read_only.mkdir(mode=0o500)
    if os.geteuid() == 0:          # root writes through mode bits; sysfs refuses even root
        read_only = Path("/sys")
    for out_dir in (a_file, a_file / "sub", read_only):
        with pytest.raises(UsageError, match=f"--out-dir {out_dir}: "):
            report.main([str(fixture_file), "--out-dir", str(out_dir), "--quiet"])
    assert not list(tmp_path.glob("**/*.png"))


@pytest.mark.parametrize("option", ["--threshold", "--spread-factor", "--tol"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1"])
def test_compare_rejects_nonfinite_options(option, value, fixture_file):
    """Defect 8: nan and inf were accepted for --threshold, --spread-factor and --tol."""
    with pytest.raises(UsageError, match=f"argument {option}: expected a finite number from 0 to inf"):
        compare.main([str(fixture_file), str(fixture_file), f"{option}={value}"])


def test_report_predictions_host_classes_and_tagged_arms(tmp_path):
    """Predicted vs measured with the median/worst verdict and the pick check; hosts at other
    CPU quotas and --tag arms are points of their own; a P measured in a separate launch gets
    its efficiency against the P=1 beside it."""
    def on(rec, quotas, predicted=None, tags=None):
        rec["env"] = {**rec["env"], "cpu_quotas": quotas}
        if predicted is not None:
            rec.update(predicted_latency_s=predicted, predicted={"dominant": "communication"})
        if tags:
            rec["tags"] = tags
        return rec
    equal, unequal = [0.45] * 2, [0.2, 0.45]
    recs = [on(lat("tp", 2, 1.0, rate="100mbit"), equal, 1.05), on(lat("bp", 2, 0.5, rate="100mbit"), equal, 0.6),
            on(lat("tp", 2, 2.0, rate="100mbit"), unequal, 2.1),          # another host class: not a duplicate
            on(lat("bp", 2, 0.8, rate="100mbit"), unequal, tags={"arm": "even", "sweep_point": "x"}),
            on(lat("bp", 2, 0.6, rate="100mbit"), unequal, tags={"arm": "planner"})]
    auto = on(lat("bp", 2, 0.51, rate="100mbit", label="auto:bp(replicate)"), equal, 0.55)
    auto["plan"] = {"label": "bp(replicate) on h0,h1", "of_hosts": ["h0", "h1"]}
    recs.append(auto)
    recs += [on(thr("tp", 1, 1.0, 1.0), [0.2] * 4), on(thr("tp", 2, 1.8, 0.9), [0.2] * 4),
             on(thr("tp", 3, 2.4, None), [0.2] * 3)]                   # P=3 from its own launch
    path = tmp_path / "r.jsonl"
    for r in recs:
        append_jsonl(path, r)
    report.main([str(path), "--name", "p", "--out-dir", str(tmp_path), "--quiet"])
    md = (tmp_path / "p.md").read_text()
    assert "CPU quota 0.45" in md and "CPU quotas 0.2,0.45" in md
    assert "bp [arm=even]" in md and "bp [arm=planner]" in md and "sweep_point" not in md
    assert "4 predictions: median |error| 6.4%" in md          # +5%, +20%, +7.8%, +5%
    assert "worst 20.0%" in md and "1 of 1 picks within 5%" in md and "U test p" in md
    assert "2.40 req/s (eff 0.80*)" in md                      # 2.4 / (3 x 1.0)
    assert (tmp_path / "p-predicted-vs-measured.png").stat().st_size > 0


def test_pick_against_best_with_the_u_test():
    """validate.judge: pick / best of the medians, and the U test on their per-forward samples
    (all 8 of the pick above all 8 of the best: exact p = 2 / C(16, 8))."""
    point = ("bert-base", 1, 128, "1gbit", 4, "-")
    def item(label, samples, pick=None):
        return {"point": point, "label": label, "measured": sorted(samples)[len(samples) // 2], "predicted": 0.3,
                "dominant": "compute", "pick": pick, "samples": samples}
    best = item("bp(tp)", [0.30 + 0.001 * i for i in range(8)])
    slow = item("auto:bp(tp)", [0.34 + 0.001 * i for i in range(8)], pick="bp(tp) N_b=1")
    [p] = validate.judge([best, slow])["picks"]
    assert p["pick_over_best"] == pytest.approx(0.344 / 0.304) and not p["within_target"]
    assert p["u_test_p"] == pytest.approx(2 / math.comb(16, 8))
    mixed = item("auto:bp(tp)", [0.30 + 0.001 * i + 0.0005 for i in range(8)], pick="bp(tp) N_b=1")
    assert validate.judge([best, mixed])["picks"][0]["u_test_p"] > 0.5      # interleaved: not told apart
    bare = {**mixed, "samples": None}
    assert validate.judge([best, bare])["picks"][0]["u_test_p"] is None


def test_a_pick_of_the_best_measured_placement_itself_is_within_the_target():
    """The pick ran the placement that measured best, 19% slower in its own job (run 6: sp):
    the choice was right, the ratio is the spread between jobs; another wire dtype is not it."""
    point = ("bert-base", 1, 512, "1gbit", 4, "-")
    hosts = ["h0", "h1", "h2", "h3"]
    where = validate.placement_of("sp on h0,h1,h2,h3", hosts, None, None, None)
    best = {"point": point, "label": "sp", "measured": 1.019, "predicted": 1.14, "dominant": "compute",
            "pick": None, "placement": where}
    pick = {**best, "label": "auto:sp", "measured": 1.212, "pick": "sp on h0,h1,h2,h3"}
    [p] = validate.judge([best, pick])["picks"]
    assert p["pick_over_best"] == pytest.approx(1.212 / 1.019) and p["same_placement"] and p["within_target"]
    assert validate.verdict_text(p) == "yes (the same placement)"
    assert validate.picks_summary([p]) == ("1 of 1 picks within 5% of the best measured placement or that "
                                           "placement itself (0 of 1 by the ratio alone)")
    for other in (validate.placement_of("sp on h0,h1,h2,h3", hosts, "fp16", None, None),
                  validate.placement_of("sp on h0,h1,h2,h3", hosts, None, "split", None),
                  validate.placement_of("sp on h0,h1,h2,h3", hosts[::-1], None, None, None)):
        [p] = validate.judge([best, {**pick, "placement": other}])["picks"]
        assert not p["same_placement"] and not p["within_target"] and validate.verdict_text(p) == "NO"
    unknown = {**pick, "placement": None}
    assert not validate.judge([{**best, "placement": None}, unknown])["picks"][0]["same_placement"]


def test_report_wire_section_hidden_share_and_best_bp(tmp_path):
    """Hand-made records of one rate: the family table's ratios, the overlap share
    (T_off - T_on) / comm_off and the fastest BP against fp32 bp(replicate), by hand."""
    def rec(strategy, boundary, dtype, chunks, p50, comm, bus, cosine=0.99999):
        label = strategy + "(" + ",".join([x for x in (boundary, None if dtype == "fp32" else dtype,
                                                         f"overlap{chunks}" if chunks > 1 else None) if x]) + ")"
        r = lat(strategy, 4, p50, rate="1gbit", bus=bus, label=label.replace("()", ""))
        r.update(boundary=boundary, wire_dtype=dtype, overlap_chunks=chunks, comm_s=comm, mean_cosine=cosine)
        return r
    recs = [rec("tp", None, "fp32", 1, 0.300, 0.200, 4000), rec("tp", None, "fp32", 2, 0.200, 0.050, 4000),
            rec("tp", None, "int8", 1, 0.150, 0.060, 1056),
            rec("bp", "replicate", "fp32", 1, 0.400, 0.100, 1000), rec("bp", "replicate", "int8", 1, 0.390, 0.030, 264),
            rec("bp", "tp", "fp16", 2, 0.250, 0.080, 2000), rec("bp", "tp", "fp32", 1, 0.350, 0.150, 4000)]
    path = tmp_path / "wire.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    out = tmp_path / "reports"
    assert report.main([str(path), "--name", "w", "--out-dir", str(out), "--quiet"]) == 0
    md = (out / "w.md").read_text()
    rows = {}  # the first row of each name: tp's family table comes first
    for line in md.split("## Wire dtypes and overlap")[1].splitlines():
        if line.startswith("|"):
            rows.setdefault(cells(line)[0], cells(line))
    assert rows["int8"][1:3] == ["150.0ms (0.50x)", "0.264x"]          # tp int8: 0.15 / 0.30, 1056 / 4000 bytes
    assert rows["tp fp32+overlap2"][1].startswith("+50% ")             # (0.300 - 0.200) / 0.200
    assert rows["1gbit"][2:5] == ["bp(tp,fp16,overlap2)", "250.0ms", "0.62x"]   # 0.250 / 0.400
    assert "#### bp(replicate)" in md and "#### bp(tp)" in md
