"""Command-line plumbing shared by every tool: the argument parser, argument types, and
`run`, the one entry point that applies the suite's error convention (parallelism.errors).

Tools that never launch ranks (bench.sweep, bench.report, bench.compare, bench.plan) must
not import mpi4py: importing it initialises MPI, and a singleton MPI parent confuses the
mpiexec it launches. So nothing here imports it unless a tool runs with `mpi=True`.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

from parallelism.errors import UsageError

CliError = UsageError  # the name the non-MPI tools used; one class


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors raise UsageError (one line, exit 2) instead of printing usage.
    Under MPI only rank 0 prints --help (`quiet_rank`)."""

    def __init__(self, *args, quiet_rank: bool = False, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)
        self.quiet_rank = quiet_rank

    def error(self, message):
        raise UsageError(message)

    def _print_message(self, message, file=None):
        if not self.quiet_rank:
            super()._print_message(message, file)


# -- argument types (argparse `type=`) ----------------------------------------------
def _int_at_least(text: str, low: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < low:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    return _int_at_least(text, 1, "a positive integer")


def bounded_int(low: int, high: int, what: str = "an integer"):
    """An argparse type: an integer in [low, high] (upper bounds keep a typo from running
    for hours or overflowing a library)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected {what} from {low} to {high}, got {text!r}")
        return value
    return parse


def finite_float(low: float = -math.inf, high: float = math.inf):
    """An argparse type: a finite float in [low, high] (no NaN, no inf)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and low <= value <= high):
            raise argparse.ArgumentTypeError(f"expected a finite number from {low:g} to {high:g}, got {text!r}")
        return value
    return parse


def nonneg_int(text: str) -> int:
    return _int_at_least(text, 0, "an integer >= 0")


def int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


def output_path(text: str) -> str:
    """An argparse type for a results file name ('-' for stdout); whether it can be written
    is `unwritable()`'s question, asked before any work."""
    if text == "-":
        return text
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a file name, got an empty string")
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text!r} is a directory")
    return text


def unwritable(path: str | os.PathLike | None) -> str | None:
    """Why results cannot be appended to `path`, or None. Makes missing parent folders and
    probes them with a file of its own, but never creates `path` itself (bad input must not
    leave an empty results file behind). Character devices (/dev/null) and pipes pass."""
    if path is None or str(path) == "-":
        return None
    path = os.path.abspath(path)
    try:
        if os.path.exists(path):
            if os.path.isdir(path):
                return f"cannot write {path}: it is a directory"
            with open(path, "ab"):
                return None
        parent = os.path.dirname(path)
        os.makedirs(parent, exist_ok=True)
        probe = os.path.join(parent, f".detr-write-probe-{os.getpid()}")
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.unlink(probe)
    except OSError as err:
        return f"cannot write {path}: {err.strerror or err}"
    return None


def name_list(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
    return values


def stdout_gone() -> int:
    """The reader of stdout went away (`... | head`): print nothing more, no traceback
    (also not at interpreter exit, when Python flushes stdout again); exit 141 as a shell
    reports SIGPIPE."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 141


def _say(line: str) -> None:
    """One line to stderr in ONE write: print() writes the text and the newline separately,
    and the launcher's merged stderr interleaved ranks' lines ("error: aerror: a")."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def run(main, argv=None, mpi: bool = False) -> None:
    """Run a tool's `main(argv)` under the suite's error convention and exit.

    UsageError: `error: <message>`, exit 2. Ctrl-C: exit 130. A closed stdout: exit 141,
    no traceback. Anything else: one line naming the error (and the rank), exit 1.
    mpi=True (a tool running as MPI ranks): every rank that fails prints its line; if all
    ranks fail alike they exit quietly with the code, otherwise MPI Abort ends the whole
    job within seconds (a rank must never be left waiting in a collective).
    """
    rank = ""
    if mpi:
        from parallelism.comm import world_rank, world_size
        rank = f"rank {world_rank()}: " if world_size() > 1 else ""
    try:
        code = main(argv) or 0
        sys.stdout.flush()   # here, not at exit, so that a closed stdout lands below
    except UsageError as err:
        _say(f"error: {err}")
        code = 2
    except KeyboardInterrupt:
        _say(f"{rank}interrupted; finished records are kept")
        code = 130
    except BrokenPipeError:
        code = stdout_gone()
    except Exception as err:  # noqa: BLE001 - a failed operation: one line, exit 1, job ends
        _say(f"error: {rank}{type(err).__name__}: {err}")
        code = 1
    if code and mpi:
        from parallelism.comm import abort_job, end_job_on_error
        if code in (2, 130):
            end_job_on_error(code)
        else:
            # Give the launcher a moment to forward that line: on Abort, hydra tears the job
            # down at once and sometimes dropped the whole stderr (2 in 20 runs).
            time.sleep(0.3)
            abort_job(code)
    sys.exit(code)


def guard(main, argv=None) -> None:
    """A tool that never launches ranks."""
    run(main, argv)
