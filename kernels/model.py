"""The serial reference: embeddings, then the layers arranged by N_b / N_div.

Every strategy's output is checked against this model's.
"""

from __future__ import annotations

import torch

from .config import ModelConfig
from .layers import additive_mask, embed, layer_forward
from .weights import ModelWeights


def decoupled_layer_forward(slices: list[torch.Tensor], sub_blocks, mask, cfg: ModelConfig) -> list[torch.Tensor]:
    """Run each sub-block on its own slice; no sub-block reads another's."""
    return [layer_forward(x_i, w_i, mask, cfg.heads, cfg.ln_eps) for x_i, w_i in zip(slices, sub_blocks)]


class ReferenceModel:
    def __init__(self, cfg: ModelConfig, weights: ModelWeights):
        self.cfg, self.weights = cfg, weights

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """(B, s) token ids and 1/0 padding mask -> (B, s, h) final hidden state."""
        cfg = self.cfg
        mask = additive_mask(attention_mask)
        x = embed(input_ids, self.weights.embeddings, cfg.ln_eps, token_type_ids)
        slices = None  # the hidden state cut into N_div slices while inside decoupled layers
        for index, layer in enumerate(self.weights.layers):
            if cfg.is_boundary(index):
                if slices is not None:
                    x, slices = torch.cat(slices, dim=-1), None
                x = layer_forward(x, layer, mask, cfg.heads, cfg.ln_eps)
            else:
                if slices is None:
                    slices = list(x.split(cfg.sub_width, dim=-1))
                slices = decoupled_layer_forward(slices, layer, mask, cfg)
        return x

    __call__ = forward
