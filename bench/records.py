"""Result records: statistics, environment capture, atomic JSONL and CSV appends, reading back.

A result file is JSON Lines: one complete record per line. Records are appended
with one `write()` of the whole line on a descriptor opened with O_APPEND, then
fsync (regular files only: a pipe, /dev/null or /dev/stdout cannot be synced), so
a run killed at any moment leaves every finished record intact (at worst a
truncated last line, which `read_records` skips with a warning). A CSV file gets
its header row from whichever writer finds it empty while holding an exclusive
lock on it, so two writers creating one file never write two headers.

Non-finite numbers. JSON has no NaN or infinity, and null means "not computed".
`clean` therefore writes a non-finite float as the string "nan", "inf" or "-inf"
(a NaN output's max_abs_err stays visible instead of looking like "no reference");
`number` reads a numeric field back, either form, as a float. bench.report and
bench.compare read every numeric field through `number`, and bench.compare counts
any non-finite latency, throughput or max_abs_err as a regression.

Reading is bounded: a results file may hold at most MAX_FILE_BYTES and a line at
most MAX_LINE_BYTES (a record is a few KiB), so `bench.report /dev/zero` ends with
one error line instead of filling memory.
"""

from __future__ import annotations

import csv
import fcntl
import io
import itertools
import json
import math
import os
import platform
import stat
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from parallelism.errors import UsageError

SCHEMA = 1
STAT_KEYS = ("min", "p50", "p90", "p99", "mean", "max")
MAX_FILE_BYTES = 256 * 1024**2
MAX_LINE_BYTES = 16 * 1024**2


# -- statistics ----------------------------------------------------------------------
def stats(samples) -> dict:
    """min/p50/p90/p99/mean/max of a non-empty sequence of numbers (numpy's linear
    percentiles), plus n."""
    values = np.asarray([float(v) for v in samples], dtype=np.float64)
    if values.size == 0:
        raise ValueError("stats of no samples")
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {"min": float(values.min()), "p50": float(p50), "p90": float(p90), "p99": float(p99),
            "mean": float(values.mean()), "max": float(values.max()), "n": int(values.size)}


# -- numbers in records ------------------------------------------------------------------
_NONFINITE = {"nan": math.nan, "inf": math.inf, "+inf": math.inf, "-inf": -math.inf,
              "infinity": math.inf, "-infinity": -math.inf}


def number(value):
    """A numeric record field as written: int/float as is, "nan"/"inf"/"-inf" (see the
    module docstring) as floats, None as None. Anything else raises TypeError."""
    if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
        return value
    if isinstance(value, str) and value.strip().lower() in _NONFINITE:
        return _NONFINITE[value.strip().lower()]
    raise TypeError(f"expected a number, got {type(value).__name__} {_short(value)}")


def is_finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _short(value, width: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."


def _encode(value):
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    return value


def clean(record: dict) -> dict:
    """The record with every non-finite float written as "nan", "inf" or "-inf"."""
    return _encode(record)


# -- formatting -------------------------------------------------------------------------
def fmt_s(seconds) -> str:
    if seconds is None:
        return "-"
    if not math.isfinite(seconds):
        return str(seconds)
    if seconds >= 100:
        return f"{seconds:.0f}s"
    if seconds >= 1:
        return f"{seconds:.2f}s"
    return f"{seconds * 1e3:.1f}ms"


def fmt_bytes(n) -> str:
    if n is None:
        return "-"
    if not math.isfinite(n):
        return str(n)
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.2f}{unit}"
        n /= 1000


# -- environment ----------------------------------------------------------------------
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


def parse_cpu_quota(value: str | None) -> float | None:
    """DETR_CPU_QUOTA (set per emulated host by bench.cluster's agent): cores, or None for
    unset/'none'/'max'; ValueError for anything else."""
    value = (value or "").strip().lower()
    if value in ("", "none", "max"):
        return None
    quota = float(value)
    if not 0 < quota < 1e6:
        raise ValueError(f"{value!r} is not a positive number of cores")
    return quota


def cpu_quota_env() -> float | None:
    """This process's CPU quota in cores (DETR_CPU_QUOTA), for records: unreadable -> None."""
    try:
        return parse_cpu_quota(os.environ.get("DETR_CPU_QUOTA"))
    except ValueError:
        return None


def env_block(base: dict | None = None, **extra) -> dict:
    """The `env` every tool writes into every record: `base` (a process's `local_env()`,
    taken once per run), the MPI facts a tool has (`extra`: hostnames, mpi_library, wait),
    the command line, and the time and load when the record is written."""
    return {**(base or local_env()), **extra, "argv": sys.argv[1:], "utc_time": utc_now(),
            "loadavg_1m": loadavg()}


# -- writing ---------------------------------------------------------------------------
def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one record as one complete line: single write on O_APPEND, then fsync."""
    line = json.dumps(record, sort_keys=False, default=_json_default, allow_nan=False) + "\n"
    _append(path, line.encode())


def _json_default(obj):
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


_headers_sent: set[str] = set()  # CSV streams (pipes, /dev/stdout) that got their header from us


def _append(path, data: bytes, header: bytes | None = None) -> None:
    """One write of `data` on O_APPEND; `header` first if the file is empty. The emptiness
    check and the write happen under an exclusive flock, so of two writers creating one
    file only the first writes the header. fsync only a regular file: a pipe or a
    character device (/dev/null, /dev/stdout on a terminal) rejects it with EINVAL."""
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
        if header is not None and regular:
            fcntl.flock(fd, fcntl.LOCK_EX)  # released by close
            if os.fstat(fd).st_size == 0:
                data = header + data
        elif header is not None and str(path) not in _headers_sent:
            _headers_sent.add(str(path))
            data = header + data
        view = memoryview(data)
        while view:  # a regular file takes it in one write; loop only for pipes and such
            view = view[os.write(fd, view):]
        if regular:
            os.fsync(fd)
    finally:
        os.close(fd)


# Flat columns of --csv (nested values addressed with dots); the same for every bench
# so that one CSV file can take records of several runs.
CSV_COLUMNS = [
    "bench", "strategy", "model", "world_size", "devices", "batch", "seq", "n_blocks", "n_div", "boundary",
    "wire_dtype", "overlap_chunks",
    "rate", "requests", "latency_s.min", "latency_s.p50", "latency_s.p90", "latency_s.p99", "latency_s.mean",
    "latency_s.max", "compute_s", "comm_s", "serial_latency_s", "speedup_vs_serial", "throughput_rps",
    "efficiency", "payload_bytes_per_rank.total", "bus_bytes_per_rank.total",
    "expected_payload_bytes_per_rank.total", "expected_bus_bytes_per_rank.total", "messages_per_rank.total",
    "wire_bytes_per_rank", "weights_bytes_per_rank.max", "max_abs_err", "mean_cosine", "env.utc_time", "env.git_commit",
]


def lookup(record: dict, dotted: str):
    value = record
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _csv_line(cells) -> bytes:
    text = io.StringIO()
    csv.writer(text).writerow(cells)
    return text.getvalue().encode()


def append_csv(path: str | os.PathLike, record: dict) -> None:
    """Append the record as one CSV row (one write, like append_jsonl); header if new."""
    row = ["" if (v := lookup(record, c)) is None else (json.dumps(v) if isinstance(v, (dict, list)) else v)
           for c in CSV_COLUMNS]
    _append(path, _csv_line(row), header=_csv_line(CSV_COLUMNS))


# -- reading ----------------------------------------------------------------------------
def read_records(paths, warn=True) -> list[dict]:
    """All records of one or more JSONL files (or folders of them), in file order.

    A line that does not parse (a run killed mid-write on a filesystem without
    atomic appends) is skipped with a warning on stderr. A file that is not a
    results file (not UTF-8, a line over MAX_LINE_BYTES, more than MAX_FILE_BYTES,
    unreadable) raises UsageError with one line naming it.
    """
    return [record for _, record in iter_records(paths, warn)]


def iter_records(paths, warn=True):
    """(origin 'path:line', record) for every record of `paths`, as read_records."""
    for path in _expand(paths):
        try:
            f = open(path, "rb")
        except OSError as err:
            raise UsageError(f"{path}: {err.strerror or err}") from None
        with f:
            yield from _file_records(path, f, warn)


def _file_records(path: Path, f, warn: bool):
    size = os.fstat(f.fileno()).st_size
    if size > MAX_FILE_BYTES:
        raise UsageError(f"{path}: {size} bytes, more than a results file may hold ({_mib(MAX_FILE_BYTES)})")
    total, skipped = 0, 0
    for number in itertools.count(1):
        try:
            line = f.readline(MAX_LINE_BYTES + 1)
        except OSError as err:
            raise UsageError(f"{path}: {err.strerror or err}") from None
        if not line:
            return
        total += len(line)
        if total > MAX_FILE_BYTES:
            raise UsageError(f"{path}: more than a results file may hold ({_mib(MAX_FILE_BYTES)})")
        if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
            raise UsageError(f"{path}:{number}: a line longer than {_mib(MAX_LINE_BYTES)}: not a results file")
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            raise UsageError(f"{path}:{number}: not UTF-8 text: not a results file") from None
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except (ValueError, RecursionError):
            skipped += 1
            if warn and skipped <= 3:
                print(f"warning: {path}:{number}: unreadable line skipped", file=sys.stderr)
            continue
        if isinstance(record, dict):
            yield f"{path}:{number}", record
    if warn and skipped > 3:
        print(f"warning: {path}: {skipped - 3} more unreadable line(s) skipped", file=sys.stderr)


def _mib(n: int) -> str:
    return f"{n // 1024**2} MiB"


def _expand(paths) -> list[Path]:
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    found: list[Path] = []
    for p in map(Path, paths):
        try:
            is_dir = p.is_dir()
        except OSError as err:
            raise UsageError(f"{p}: {err.strerror or err}") from None
        found.extend(sorted(p.glob("*.jsonl")) if is_dir else [p])
    return found


def read_text(path: str | os.PathLike, what: str, limit: int = MAX_LINE_BYTES) -> str:
    """A small UTF-8 input file (notes, a peer's JSON) read whole, at most `limit` bytes."""
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as err:
        raise UsageError(f"{what} {path}: {err.strerror or err}") from None
    if len(data) > limit:
        raise UsageError(f"{what} {path}: larger than {_mib(limit)}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{what} {path}: not UTF-8 text") from None
