"""One transformer kernel layer (original BERT and decoupled), pure torch, no MPI."""

from .config import (FP32, PRESETS, ConfigError, ModelConfig, embedding_params, forward_flops, layer_flops,
                     layer_gemms, layer_index_params, layer_params, model_params, preset)
from .layers import (EmbeddingWeights, LayerWeights, additive_mask, attention, attention_residual,
                     embed, ffn, ffn_residual, layer_forward, layer_norm, project_qkv, split_qkv)
from .model import ReferenceModel, block_outputs, decoupled_layer_forward
from .weights import (LazyWeights, ModelWeights, config_from_checkpoint, init_embeddings, init_layer,
                      init_sub_block, init_weights, load_checkpoint, save_checkpoint, state_dict)

__all__ = [
    "FP32", "PRESETS", "ConfigError", "ModelConfig", "embedding_params", "forward_flops", "layer_flops",
    "layer_gemms", "layer_index_params", "layer_params", "model_params",
    "preset",
    "EmbeddingWeights", "LayerWeights", "additive_mask", "attention", "attention_residual", "embed",
    "ffn", "ffn_residual", "layer_forward", "layer_norm", "project_qkv", "split_qkv",
    "ReferenceModel", "block_outputs", "decoupled_layer_forward",
    "LazyWeights", "ModelWeights", "config_from_checkpoint", "init_embeddings", "init_layer", "init_sub_block",
    "init_weights", "load_checkpoint", "save_checkpoint", "state_dict",
]
