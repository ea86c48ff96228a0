"""Interchangeable parallelism strategies over the kernels, all through one counting communicator.

Importing this package loads nothing heavy: `parallelism.errors` (the error convention) and
`parallelism.traffic` (the byte rules) serve tools that never touch torch or MPI. The
strategies (torch) load on first use of `STRATEGIES` and friends; the communicator (mpi4py,
which initialises MPI) only when `Communicator` or `parallelism.comm` is used.
"""

from .errors import CommError, UsageError
from .traffic import Traffic

_LAZY = {"STRATEGIES": "registry", "get_strategy": "registry", "Strategy": "base", "Communicator": "comm"}


def __getattr__(name):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'parallelism' has no attribute {name!r}")


__all__ = ["STRATEGIES", "CommError", "Communicator", "Strategy", "Traffic", "UsageError", "get_strategy"]
