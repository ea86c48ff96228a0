"""Interchangeable parallelism strategies over the kernels, all through one counting communicator."""

from .base import Strategy, Traffic
from .comm import CommError, Communicator, UsageError, main_guard
from .serial import Serial

# name -> Strategy class; the drivers' --strategies choose from these.
STRATEGIES: dict[str, type[Strategy]] = {cls.name: cls for cls in (Serial,)}


def get_strategy(name: str) -> type[Strategy]:
    if name not in STRATEGIES:
        raise UsageError(f"unknown strategy {name!r} (choose from {', '.join(STRATEGIES)})")
    return STRATEGIES[name]


__all__ = ["STRATEGIES", "CommError", "Communicator", "Strategy", "Traffic", "UsageError",
           "get_strategy", "main_guard"]
