"""What every part of the cluster package shares: its two errors, external commands (argument
lists, never shell strings) and process helpers."""

from __future__ import annotations

import os
import signal
import subprocess

from parallelism.errors import UsageError  # noqa: F401 - re-exported: invalid input or environment: exit 2, nothing created


class ClusterError(Exception):
    """An operation failed after validation: exit 1."""


def run_cmd(cmd: list[str], check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        err = (proc.stderr or proc.stdout).strip().splitlines()
        raise ClusterError(f"`{' '.join(cmd)}` failed: {err[-1] if err else 'exit ' + str(proc.returncode)}")
    return proc


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat): with the
    pid it names one process, even after the pid is reused. None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            text = handle.read()
    except OSError:
        return None
    return int(text[text.rindex(")") + 2:].split()[19])   # fields after "(comm)" start at 3


def alive(pid: int, started: int | None) -> bool:
    return started is not None and start_time(pid) == started


def kill_all(pids: list[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
