"""Interchangeable parallelism strategies over the kernels, all through one counting communicator."""

from .base import Strategy, Traffic
from .comm import CommError, Communicator, UsageError, main_guard
from .bp import BlockParallel
from .dp import DataParallel
from .pp import PipelineParallel
from .serial import Serial
from .sp import SequenceParallel
from .tp import TensorParallel

# name -> Strategy class; the drivers' --strategies choose from these.
STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (Serial, DataParallel, PipelineParallel, TensorParallel, SequenceParallel,
                              BlockParallel)}


def get_strategy(name: str) -> type[Strategy]:
    if name not in STRATEGIES:
        raise UsageError(f"unknown strategy {name!r} (choose from {', '.join(STRATEGIES)})")
    return STRATEGIES[name]


__all__ = ["STRATEGIES", "CommError", "Communicator", "Strategy", "Traffic", "UsageError",
           "get_strategy", "main_guard"]
