"""Serial: the whole reference model on every rank, no communication.

The baseline every speedup is measured against (run it on a size-1 communicator).
"""

from __future__ import annotations

import torch

from kernels import FP32, ReferenceModel, forward_flops, model_params

from .base import Strategy
from .schedule import Step, embedding, model_layers, same_everywhere


class Serial(Strategy):
    name = "serial"

    def __init__(self, cfg, weights, comm, **options):
        super().__init__(cfg, weights, comm, **options)
        weights = weights.materialize()
        self.model = ReferenceModel(cfg, weights)
        self._bytes = weights.nbytes()

    @classmethod
    def check(cls, cfg, world_size, **options):
        pass  # any model, any communicator: every rank computes everything

    @torch.inference_mode()
    def forward(self, input_ids, attention_mask, token_type_ids=None):
        return self.model.forward(input_ids, attention_mask, token_type_ids)

    def held_bytes(self) -> int:
        return self._bytes

    @classmethod
    def expected_traffic(cls, cfg, world, rank, batch, seq, **options):
        return {}

    @classmethod
    def weights_bytes(cls, cfg, world, rank, **options):
        return FP32 * model_params(cfg)

    @classmethod
    def flops(cls, cfg, world, rank, batch, seq, **options):
        return forward_flops(cfg, batch, seq)


    @classmethod
    def steps(cls, cfg, world, batch, seq, **options):
        return [Step(same_everywhere(world, embedding(cfg, batch, seq) + model_layers(cfg, batch, seq)))]
