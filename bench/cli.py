"""Command-line plumbing shared by the drivers and by the tools that never touch MPI
(bench.sweep, bench.report, bench.compare must not import mpi4py: importing it
initialises MPI, and a singleton MPI parent confuses the mpiexec it launches)."""

from __future__ import annotations

import argparse
import os
import sys


class CliError(Exception):
    """Bad input of a non-MPI tool: one line `error: ...`, exit 2."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors raise `error_class` instead of printing usage and exiting."""
    error_class: type[Exception] = CliError

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        raise self.error_class(message)


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


def guard(main, argv=None) -> None:
    """Run a non-MPI tool: CliError -> one line on stderr, exit 2; Ctrl-C -> exit 130."""
    try:
        code = main(argv)
        sys.stdout.flush()   # here, not at exit, so that a closed stdout lands below
    except BrokenPipeError:
        code = stdout_gone()
    except CliError as err:
        sys.stderr.write(f"error: {err}\n")  # one write: one line even when streams are merged
        sys.stderr.flush()
        sys.exit(2)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.stderr.flush()
        sys.exit(130)
    sys.exit(code or 0)
