"""bench.records: non-finite numbers kept distinguishable from null, appends to pipes and
devices, one CSV header under concurrent writers, bounded reading."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bench import records
from parallelism.errors import UsageError
from bench.records import append_csv, append_jsonl, read_records

ROOT = Path(__file__).resolve().parent.parent
RECORD = {"bench": "latency", "strategy": "tp", "latency_s": {"p50": 0.5}, "max_abs_err": 0.0}


def test_clean_keeps_nonfinite_distinguishable_from_null(tmp_path):
    """Defect 3 (records side): a NaN max_abs_err was written as null, the same as 'not computed'."""
    rec = records.clean({"max_abs_err": math.nan, "samples": [0.1, math.inf, -math.inf], "none": None,
                         "nested": {"x": math.nan}})
    assert rec == {"max_abs_err": "nan", "samples": [0.1, "inf", "-inf"], "none": None, "nested": {"x": "nan"}}
    path = tmp_path / "r.jsonl"
    append_jsonl(path, rec)
    (back,) = read_records(path)
    assert back["none"] is None and back["max_abs_err"] == "nan"
    assert math.isnan(records.number(back["max_abs_err"])) and records.number(back["samples"][1]) == math.inf
    assert records.number(None) is None and records.number(3) == 3
    with pytest.raises(TypeError):
        records.number("fast")


def test_append_to_dev_null_and_pipes():
    """Defect 5: fsync on /dev/null or a pipe raised EINVAL after the whole measurement."""
    append_jsonl("/dev/null", RECORD)
    append_csv("/dev/null", RECORD)
    read_fd, write_fd = os.pipe()
    try:
        append_jsonl(f"/dev/fd/{write_fd}", RECORD)
        append_csv(f"/dev/fd/{write_fd}", RECORD)
        append_csv(f"/dev/fd/{write_fd}", RECORD)
        os.close(write_fd)
        text = os.read(read_fd, 1 << 16).decode()
    finally:
        os.close(read_fd)
    lines = text.splitlines()
    assert json.loads(lines[0]) == RECORD
    assert lines[1].startswith("bench,strategy") and len(lines) == 4   # one header for this stream
    out = subprocess.run([sys.executable, "-c", "from bench.records import append_jsonl\n"
                          "append_jsonl('/dev/stdout', {'a': 1})"], capture_output=True, text=True, cwd=ROOT,
                         timeout=60)
    assert out.returncode == 0 and out.stdout == '{"a": 1}\n', out.stderr


def test_csv_two_racing_writers_write_one_header(tmp_path):
    """Defect 12: two processes creating one CSV file could both write the header row."""
    files = 300
    script = textwrap.dedent(f"""
        import os, sys, time
        from bench.records import append_csv
        open({str(tmp_path)!r} + "/ready-" + sys.argv[1], "w").close()
        while not os.path.exists({str(tmp_path / 'go')!r}):
            time.sleep(0.001)
        for i in range(1, {files + 1}):
            append_csv({str(tmp_path)!r} + f"/{{i}}.csv", {RECORD!r})
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(n)], cwd=ROOT) for n in range(2)]
    deadline = time.monotonic() + 120   # both imported and waiting, so that they race on every file
    while len(list(tmp_path.glob("ready-*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    (tmp_path / "go").touch()
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    for i in range(1, files + 1):
        lines = (tmp_path / f"{i}.csv").read_text().splitlines()
        assert lines[0].startswith("bench,strategy") and len(lines) == 3, (i, lines)
        assert sum(line.startswith("bench,strategy") for line in lines) == 1, (i, lines)


def test_read_records_bounds(tmp_path, monkeypatch):
    """Defect 6 (records side): a line or a file over the caps is one UsageError, read no further."""
    monkeypatch.setattr(records, "MAX_LINE_BYTES", 100)
    monkeypatch.setattr(records, "MAX_FILE_BYTES", 1000)
    long_line = tmp_path / "line.jsonl"
    long_line.write_text('{"a": 1}\n{"blob": "' + "x" * 200 + '"}\n')
    with pytest.raises(UsageError, match=r"line.jsonl:2: a line longer than"):
        read_records(long_line)
    big = tmp_path / "big.jsonl"
    big.write_text('{"a": 1}\n' * 200)
    with pytest.raises(UsageError, match="more than a results file may hold"):
        read_records(big)
    fifo = tmp_path / "fifo.jsonl"          # no size up front: counted while reading
    os.mkfifo(fifo)
    writer = subprocess.Popen([sys.executable, "-c", f"open({str(fifo)!r}, 'w').write('{{\"a\": 1}}\\n' * 200)"])
    try:
        with pytest.raises(UsageError, match="more than a results file may hold"):
            read_records(fifo)
    finally:
        writer.kill()
        writer.wait()


def test_read_records_not_utf8(tmp_path):
    """Defect 7 (records side): a non-UTF-8 file was a UnicodeDecodeError traceback."""
    path = tmp_path / "bin.jsonl"
    path.write_bytes(b'{"a": 1}\n\xff\xfe\x00garbage\n')
    with pytest.raises(UsageError, match=r"bin.jsonl:2: not UTF-8"):
        read_records(path)


def test_stats_use_numpy_percentiles():
    np = pytest.importorskip("numpy")
    values = [3.0, 1.0, 2.0, 10.0]
    got = records.stats(values)
    assert [got[k] for k in ("p50", "p90", "p99")] == [float(v) for v in np.percentile(values, [50, 90, 99])]
    assert set(got) == set(records.STAT_KEYS) | {"n"}
