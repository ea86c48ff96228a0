"""The mpiexec the tests launch jobs with, and what the tests see differ between MPICH and Open MPI.

Open MPI (`make setup MPI=openmpi`) is not MPICH's hydra in three ways that show in a test:
- After a rank exits non-zero (also with exit 2 for bad input) or calls Abort, the launcher
  adds its own notice to stderr, boxed between lines of 74 dashes. The only setting that
  silences it (state_base_error_non_zero_exit=0) also makes the job exit 0, so the notice
  stays and `program_lines` leaves it out: what is checked is what the ranks printed.
- Ctrl-C reaches only the launcher (it starts each rank in a process group of its own); it
  ends the ranks with SIGTERM and forwards nothing they print after that.
- As root it refuses to start unless OMPI_ALLOW_RUN_AS_ROOT(_CONFIRM) are set (the Makefile
  sets them); `job_env` keeps them for nested jobs.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

# Set by a launcher for the job it started: a job started from inside that job must not inherit them.
OUTER_JOB_PREFIXES = ("PMI_", "PMIX_", "HYDRA_", "MPIR_", "OMPI_", "PRTE_")
KEPT = ("OMPI_ALLOW_RUN_AS_ROOT",)
BOX_EDGE = "-" * 74


def mpiexec() -> str | None:
    """The mpiexec next to this python (the venv's MPI), else the one on PATH."""
    beside = Path(sys.executable).parent / "mpiexec"
    return str(beside) if beside.exists() else shutil.which("mpiexec")


@functools.cache
def is_open_mpi() -> bool:
    launcher = mpiexec()
    if launcher is None:
        return False
    done = subprocess.run([launcher, "--version"], capture_output=True, text=True, timeout=30)
    return "Open MPI" in done.stdout


def job_env(**extra: str) -> dict[str, str]:
    """os.environ without the enclosing MPI job's variables (this pytest may run under mpiexec)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(OUTER_JOB_PREFIXES) or k.startswith(KEPT)}
    return {**env, **extra}


def program_lines(stderr: str) -> list[str]:
    """The non-empty stderr lines the ranks printed, without Open MPI's boxed launcher notices."""
    lines, in_box = [], False
    for line in stderr.splitlines():
        if line.strip() == BOX_EDGE:
            in_box = not in_box
        elif line.strip() and not in_box:
            lines.append(line)
    return lines
