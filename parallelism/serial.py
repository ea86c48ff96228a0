"""Serial: the whole reference model on every rank, no communication.

The baseline every speedup is measured against (run it on a size-1 communicator).
"""

from __future__ import annotations

import torch

from kernels import ReferenceModel

from .base import Strategy, Traffic


class Serial(Strategy):
    name = "serial"

    def __init__(self, cfg, weights, comm, **options):
        super().__init__(cfg, weights, comm, **options)
        self.model = ReferenceModel(cfg, weights)
        self._bytes = weights.nbytes()

    @classmethod
    def check(cls, cfg, world_size, **options):
        pass  # any model, any communicator: every rank computes everything

    @torch.inference_mode()
    def forward(self, input_ids, attention_mask):
        return self.model.forward(input_ids, attention_mask)

    def weights_bytes(self) -> int:
        return self._bytes

    def expected_traffic(self, batch: int, seq: int) -> dict[str, Traffic]:
        return {}
