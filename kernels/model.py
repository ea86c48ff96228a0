"""The serial reference: embeddings, then the layers arranged by N_b / N_div.

Every strategy's output is checked against this model's.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from .config import ModelConfig
from .layers import additive_mask, embed, layer_forward
from .weights import ModelWeights


def decoupled_layer_forward(slices: list[torch.Tensor], sub_blocks, mask, cfg: ModelConfig) -> list[torch.Tensor]:
    """Run each sub-block on its own slice; no sub-block reads another's."""
    return [layer_forward(x_i, w_i, mask, cfg.heads, cfg.ln_eps) for x_i, w_i in zip(slices, sub_blocks)]


def block_outputs(cfg: ModelConfig, weights: ModelWeights, input_ids: torch.Tensor,
                  attention_mask: torch.Tensor | None = None,
                  token_type_ids: torch.Tensor | None = None) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (layer index, (B, s, h) hidden state) after every block boundary (after every
    layer of an original model); the last one is the model's output. Weights holding only
    the first layers (a prefix) also yield the state after their last layer, decoupled or
    not. Not in inference mode: distillation (bench.decouple) trains through it."""
    mask = additive_mask(attention_mask)
    x = embed(input_ids, weights.embeddings, cfg.ln_eps, token_type_ids)
    slices = None  # the hidden state cut into N_div slices while inside decoupled layers
    for index, layer in enumerate(weights.layers):
        if cfg.is_boundary(index):
            if slices is not None:
                x, slices = torch.cat(slices, dim=-1), None
            x = layer_forward(x, layer, mask, cfg.heads, cfg.ln_eps)
            yield index, x
        else:
            if slices is None:
                slices = list(x.split(cfg.sub_width, dim=-1))
            slices = decoupled_layer_forward(slices, layer, mask, cfg)
    if slices is not None:  # a prefix that ends inside a block
        yield len(weights.layers) - 1, torch.cat(slices, dim=-1)


class ReferenceModel:
    def __init__(self, cfg: ModelConfig, weights: ModelWeights):
        self.cfg, self.weights = cfg, weights

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """(B, s) token ids, 1/0 padding mask and token types -> (B, s, h) final hidden state."""
        x = None
        for _, x in block_outputs(self.cfg, self.weights, input_ids, attention_mask, token_type_ids):
            pass
        return x

    __call__ = forward
