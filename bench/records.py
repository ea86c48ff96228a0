"""Result records: statistics, environment capture, atomic JSONL append, CSV, reading back.

A result file is JSON Lines: one complete record per line. Records are appended
with one `write()` of the whole line on a descriptor opened with O_APPEND, then
fsync, so a run killed at any moment leaves every finished record intact (at
worst a truncated last line, which `read_records` skips with a warning).
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

SCHEMA = 1
STAT_KEYS = ("min", "p50", "p90", "p99", "mean", "max")


# -- statistics ----------------------------------------------------------------------
def percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default) of an already sorted list."""
    if not sorted_values:
        raise ValueError("percentile of no samples")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def stats(samples) -> dict:
    """min/p50/p90/p99/mean/max of a non-empty sequence of numbers, plus n."""
    values = sorted(float(v) for v in samples)
    if not values:
        raise ValueError("stats of no samples")
    out = {"min": values[0], "p50": percentile(values, 50), "p90": percentile(values, 90),
           "p99": percentile(values, 99), "mean": sum(values) / len(values), "max": values[-1]}
    out["n"] = len(values)
    return out


# -- environment ----------------------------------------------------------------------
def fmt_s(seconds) -> str:
    if seconds is None:
        return "-"
    if seconds >= 100:
        return f"{seconds:.0f}s"
    if seconds >= 1:
        return f"{seconds:.2f}s"
    return f"{seconds * 1e3:.1f}ms"


def fmt_bytes(n) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.2f}{unit}"
        n /= 1000


def cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "processor\t: arm")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def git_commit() -> str | None:
    """HEAD of the repository the suite runs from (+ '-dirty' if tracked files changed)."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=5)
        if head.returncode:
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def loadavg() -> float | None:
    """1-minute load average of this host when the record is written (shows contention)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def local_env() -> dict:
    """What one process knows about itself (no MPI)."""
    import torch
    return {"python": platform.python_version(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "cpu_model": cpu_model(), "cpus": os.cpu_count(),
            "git_commit": git_commit(), "utc_time": utc_now()}


# -- writing ---------------------------------------------------------------------------
def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one record as one complete line: single write on O_APPEND, then fsync."""
    line = (json.dumps(record, sort_keys=False, default=_json_default, allow_nan=False) + "\n").encode()
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(line)
        while view:  # a regular file takes it in one write; loop only for pathological cases
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)


def _json_default(obj):
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def _finite(value):
    """JSON has no NaN/inf: map them to None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def clean(record: dict) -> dict:
    return _finite(record)


# Flat columns of --csv (nested values addressed with dots); the same for every bench
# so that one CSV file can take records of several runs.
CSV_COLUMNS = [
    "bench", "strategy", "model", "world_size", "devices", "batch", "seq", "n_blocks", "n_div", "boundary",
    "rate", "requests", "latency_s.min", "latency_s.p50", "latency_s.p90", "latency_s.p99", "latency_s.mean",
    "latency_s.max", "compute_s", "comm_s", "serial_latency_s", "speedup_vs_serial", "throughput_rps",
    "efficiency", "payload_bytes_per_rank.total", "bus_bytes_per_rank.total",
    "expected_payload_bytes_per_rank.total", "expected_bus_bytes_per_rank.total", "messages_per_rank.total",
    "wire_bytes_per_rank", "weights_bytes_per_rank.max", "max_abs_err", "env.utc_time", "env.git_commit",
]


def lookup(record: dict, dotted: str):
    value = record
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def append_csv(path: str | os.PathLike, record: dict) -> None:
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a", newline="") as f:
        writer = csv.writer(f)
        if new:
            writer.writerow(CSV_COLUMNS)
        writer.writerow(["" if (v := lookup(record, c)) is None else
                         (json.dumps(v) if isinstance(v, (dict, list)) else v) for c in CSV_COLUMNS])
        f.flush()
        os.fsync(f.fileno())


# -- reading ----------------------------------------------------------------------------
def read_records(paths, warn=True) -> list[dict]:
    """All records of one or more JSONL files (or folders of them), in file order.

    A line that does not parse (a run killed mid-write on a filesystem without
    atomic appends) is skipped with a warning on stderr.
    """
    out: list[dict] = []
    for path in _expand(paths):
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    if warn:
                        print(f"warning: {path}:{number}: unreadable line skipped", file=sys.stderr)
                    continue
                if isinstance(record, dict):
                    out.append(record)
    return out


def _expand(paths) -> list[Path]:
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found.extend(sorted(p.glob("*.jsonl")))
        else:
            found.append(p)
    return found
