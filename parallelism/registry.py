"""name -> Strategy class; the drivers' --strategies choose from these."""

from .base import Strategy
from .bp import BlockParallel
from .dp import DataParallel
from .errors import UsageError
from .pp import PipelineParallel
from .serial import Serial
from .sp import SequenceParallel
from .tp import TensorParallel

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (Serial, DataParallel, PipelineParallel, TensorParallel, SequenceParallel,
                              BlockParallel)}


def get_strategy(name: str) -> type[Strategy]:
    if name not in STRATEGIES:
        raise UsageError(f"unknown strategy {name!r} (choose from {', '.join(STRATEGIES)})")
    return STRATEGIES[name]
