"""The strategy interface: a parallelization plan applied to the unchanged kernels.

A strategy is built from a model config, its weights (a seeded init or a real
checkpoint, already materialized as `ModelWeights`; the strategy keeps only
what its rank needs), the counting communicator and its own options. All
ranks construct it with identical arguments.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch

from kernels import ModelConfig, ModelWeights

from .comm import Communicator, UsageError


@dataclass(frozen=True)
class Traffic:
    """Analytic totals of one op for one forward on one rank (same units as
    `comm.OpTotals`: calls, payload bytes, bus bytes)."""
    calls: int
    payload: int
    bus: int

    def __add__(self, other: "Traffic") -> "Traffic":
        return Traffic(self.calls + other.calls, self.payload + other.payload, self.bus + other.bus)


def add_traffic(table: dict[str, Traffic], op: str, calls: int, payload: int, bus: int) -> None:
    table[op] = table.get(op, Traffic(0, 0, 0)) + Traffic(calls, payload, bus)


def ring_allreduce_bus(nbytes: int, world: int) -> int:
    return 2 * (world - 1) * nbytes // world


class Strategy(ABC):
    name: ClassVar[str]
    #: True if the strategy runs the decoupled model (config with n_blocks < layers).
    decoupled: ClassVar[bool] = False
    #: Options accepted (name -> default), e.g. {"boundary": "replicate"}.
    options: ClassVar[dict] = {}

    def __init__(self, cfg: ModelConfig, weights: ModelWeights, comm: Communicator, **options):
        unknown = set(options) - set(self.options)
        if unknown:
            raise UsageError(f"{self.name}: unknown option(s) {', '.join(sorted(unknown))}")
        self.cfg, self.comm = cfg, comm
        self.opts = {**self.options, **options}
        self.check(cfg, comm.size, **self.opts)

    @classmethod
    def check(cls, cfg: ModelConfig, world_size: int, **options) -> None:
        """Raise UsageError naming the constraint if this strategy cannot run
        `cfg` on `world_size` ranks. Pure: same verdict on every rank, before
        any communication."""
        if cls.decoupled != cfg.is_decoupled:
            kind = "a decoupled" if cls.decoupled else "an original"
            raise UsageError(f"{cls.name} runs {kind} model, got {cfg.describe()}")

    @abstractmethod
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor | None:
        """(B, s) ids and mask, identical on every rank -> (B, s, h) output on
        the ranks where `holds_output` is true, None elsewhere."""

    def holds_output(self) -> bool:
        return True

    @abstractmethod
    def weights_bytes(self) -> int:
        """Bytes of weights this rank holds."""

    @abstractmethod
    def expected_traffic(self, batch: int, seq: int) -> dict[str, Traffic]:
        """op -> analytic calls/payload/bus of one forward on this rank, from the
        formulas (never from running)."""

    def __call__(self, input_ids, attention_mask):
        return self.forward(input_ids, attention_mask)
