"""Interchangeable parallelism strategies over the kernels, all through one counting communicator.

Importing this package does not import mpi4py (which initialises MPI): the strategies'
analytic model (traffic, weights, FLOPs) serves tools that never launch ranks, such as the
planner. `Communicator` and the MPI helpers load on first use (`parallelism.comm`).
"""

from .base import Strategy
from .bp import BlockParallel
from .dp import DataParallel
from .errors import CommError, UsageError
from .pp import PipelineParallel
from .serial import Serial
from .sp import SequenceParallel
from .tp import TensorParallel
from .traffic import Traffic

# name -> Strategy class; the drivers' --strategies choose from these.
STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (Serial, DataParallel, PipelineParallel, TensorParallel, SequenceParallel,
                              BlockParallel)}


def get_strategy(name: str) -> type[Strategy]:
    if name not in STRATEGIES:
        raise UsageError(f"unknown strategy {name!r} (choose from {', '.join(STRATEGIES)})")
    return STRATEGIES[name]


def __getattr__(name):
    if name == "Communicator":
        from .comm import Communicator
        return Communicator
    raise AttributeError(f"module 'parallelism' has no attribute {name!r}")


__all__ = ["STRATEGIES", "CommError", "Communicator", "Strategy", "Traffic", "UsageError", "get_strategy"]
