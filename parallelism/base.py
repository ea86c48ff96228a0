"""The strategy interface: a parallelization plan applied to the unchanged kernels.

A strategy is built from a model config, its weights (`kernels.ModelWeights`, or
`kernels.LazyWeights`, which draws each layer when the strategy takes it: a
strategy keeps only what its rank needs, and one that needs everything calls
`weights.materialize()`), the counting communicator and its own options. All
ranks construct it with identical arguments.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar

import torch

from kernels import ModelConfig, ModelWeights

from .errors import UsageError
from .options import overlap_chunks
from .traffic import Traffic
from .wire_ops import Wire

if TYPE_CHECKING:  # the communicator imports mpi4py; the formulas must not need it
    from .comm import Communicator
    from .schedule import Step


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
        # How activations travel (parallelism/wire_ops.py) and how many chunks a forward's
        # communication is cut into to overlap it with compute (1: no overlap).
        self.wire = Wire.of(self.name, self.opts)
        self.chunks = overlap_chunks(self.name, self.opts)

    @classmethod
    def check(cls, cfg: ModelConfig, world_size: int, **options) -> None:
        """Raise UsageError naming the constraint if this strategy cannot run
        `cfg` on `world_size` ranks. Pure: same verdict on every rank, before
        any communication."""
        if cls.decoupled != cfg.is_decoupled:
            kind = "a decoupled" if cls.decoupled else "an original"
            raise UsageError(f"{cls.name} runs {kind} model, got {cfg.describe()}")
        options = {**cls.options, **options}
        Wire.of(cls.name, options)
        overlap_chunks(cls.name, options)

    @abstractmethod
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor | None:
        """(B, s) ids, mask and token types (None: all 0), identical on every rank ->
        (B, s, h) output on the ranks where `holds_output` is true, None elsewhere."""

    def holds_output(self) -> bool:
        return True

    # -- the analytic model: pure functions of (config, P, rank, options, batch, seq) ----------
    # No built strategy, communicator or weights needed: the drivers' expected_* fields, the
    # communication-volume report and the planner call these for any P, on any machine.
    @classmethod
    @abstractmethod
    def expected_traffic(cls, cfg: ModelConfig, world: int, rank: int, batch: int, seq: int,
                         **options) -> dict[str, Traffic]:
        """op -> analytic calls/payload/bus of one forward on `rank` (from parallelism.traffic)."""

    @classmethod
    @abstractmethod
    def weights_bytes(cls, cfg: ModelConfig, world: int, rank: int, **options) -> int:
        """Bytes of weights `rank` holds."""

    @classmethod
    @abstractmethod
    def flops(cls, cfg: ModelConfig, world: int, rank: int, batch: int, seq: int, **options) -> int:
        """Matmul FLOPs `rank` computes in one forward."""

    @classmethod
    @abstractmethod
    def steps(cls, cfg: ModelConfig, world: int, batch: int, seq: int, **options) -> list[Step]:
        """One forward as its synchronisation points (parallelism.schedule): per step each
        rank's compute by kernel and shape, then one communication. Sums to exactly
        `expected_traffic` and `flops` on every rank (tests/test_schedule.py)."""

    @abstractmethod
    def held_bytes(self) -> int:
        """Bytes of the weight tensors this instance really holds (the tests check
        `weights_bytes` against it)."""

    def traffic_here(self, batch: int, seq: int) -> dict[str, Traffic]:
        """This rank's expected traffic (the pure formula at this communicator's P and rank)."""
        return type(self).expected_traffic(self.cfg, self.comm.size, self.comm.rank, batch, seq, **self.opts)

    def weights_bytes_here(self) -> int:
        return type(self).weights_bytes(self.cfg, self.comm.size, self.comm.rank, **self.opts)

    def __call__(self, input_ids, attention_mask, token_type_ids=None):
        return self.forward(input_ids, attention_mask, token_type_ids)

