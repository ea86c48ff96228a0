"""Model weights: deterministic init from a seed, or a real BERT checkpoint.

Every tensor is drawn from its own generator seeded by (seed, layer, sub-block),
so any rank can build exactly the layers it needs, identical to what every
other rank (and the serial reference) builds, without communication.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import ConfigError, ModelConfig
from .layers import EmbeddingWeights, LayerWeights, nbytes, numel

# A decoupled layer is its N_div sub-blocks; an original layer is one LayerWeights.
Layer = LayerWeights | list[LayerWeights]


@dataclass
class ModelWeights:
    embeddings: EmbeddingWeights
    layers: list[Layer]

    def numel(self) -> int:
        return numel(self.embeddings) + sum(numel(w) for layer in self.layers for w in _blocks(layer))

    def nbytes(self) -> int:
        return nbytes(self.embeddings) + sum(nbytes(w) for layer in self.layers for w in _blocks(layer))

    def materialize(self) -> "ModelWeights":
        return self


def _blocks(layer: Layer) -> list[LayerWeights]:
    return layer if isinstance(layer, list) else [layer]


# -- deterministic init ---------------------------------------------------------
def _generator(seed: int, *path: int) -> torch.Generator:
    key = seed
    for part in path:
        key = key * 1_000_003 + part + 1
    return torch.Generator().manual_seed(key % (2**63))


def _normal(gen: torch.Generator, *shape: int, std: float = 0.02, mean: float = 0.0) -> torch.Tensor:
    return torch.randn(*shape, generator=gen) * std + mean


def _layer_weights(gen: torch.Generator, width: int, cfg: ModelConfig) -> LayerWeights:
    # Biases and LayerNorm parameters are random too (not 0/1) so that a
    # strategy that adds a bias twice or forgets a LayerNorm cannot pass.
    h, f = cfg.hidden, cfg.ffn
    return LayerWeights(
        qkv_weight=_normal(gen, 3 * h, width), qkv_bias=_normal(gen, 3 * h),
        out_weight=_normal(gen, width, h), out_bias=_normal(gen, width),
        ln1_weight=_normal(gen, width, std=0.1, mean=1.0), ln1_bias=_normal(gen, width, std=0.1),
        ffn_in_weight=_normal(gen, f, width), ffn_in_bias=_normal(gen, f),
        ffn_out_weight=_normal(gen, width, f), ffn_out_bias=_normal(gen, width),
        ln2_weight=_normal(gen, width, std=0.1, mean=1.0), ln2_bias=_normal(gen, width, std=0.1),
    )


def init_embeddings(cfg: ModelConfig, seed: int) -> EmbeddingWeights:
    gen = _generator(seed, 0)
    h = cfg.hidden
    return EmbeddingWeights(
        word=_normal(gen, cfg.vocab, h), position=_normal(gen, cfg.max_positions, h),
        token_type=_normal(gen, cfg.type_vocab, h),
        ln_weight=_normal(gen, h, std=0.1, mean=1.0), ln_bias=_normal(gen, h, std=0.1))


def init_sub_block(cfg: ModelConfig, seed: int, layer: int, sub_block: int) -> LayerWeights:
    """Sub-block `sub_block` of decoupled layer `layer` (h/N_div wide)."""
    return _layer_weights(_generator(seed, 1 + layer, 1 + sub_block), cfg.sub_width, cfg)


def init_layer(cfg: ModelConfig, seed: int, layer: int) -> Layer:
    if cfg.is_boundary(layer):
        return _layer_weights(_generator(seed, 1 + layer, 0), cfg.hidden, cfg)
    return [init_sub_block(cfg, seed, layer, i) for i in range(cfg.n_div)]


def init_weights(cfg: ModelConfig, seed: int = 0) -> ModelWeights:
    return ModelWeights(init_embeddings(cfg, seed), [init_layer(cfg, seed, i) for i in range(cfg.layers)])


class LazyLayers:
    """`layers[i]` draws layer i afresh on every access and keeps nothing: a strategy that
    takes its shard of each layer once holds only the shard (plus one layer in passing)."""

    def __init__(self, cfg: ModelConfig, seed: int):
        self.cfg, self.seed = cfg, seed

    def __len__(self) -> int:
        return self.cfg.layers

    def __getitem__(self, index: int) -> Layer:
        if not 0 <= index < self.cfg.layers:
            raise IndexError(index)
        return init_layer(self.cfg, self.seed, index)

    def __iter__(self):
        return (self[i] for i in range(self.cfg.layers))


class LazyWeights:
    """Seeded weights built on demand: each rank builds only what its strategy keeps.

    Same values as `init_weights(cfg, seed)` (every tensor has its own seeded generator).
    Strategies that hold the whole model call `materialize()`.
    """

    def __init__(self, cfg: ModelConfig, seed: int = 0):
        self.cfg, self.seed = cfg, seed
        self.layers = LazyLayers(cfg, seed)
        self._embeddings = None

    @property
    def embeddings(self) -> EmbeddingWeights:
        if self._embeddings is None:
            self._embeddings = init_embeddings(self.cfg, self.seed)
        return self._embeddings

    def materialize(self) -> ModelWeights:
        return ModelWeights(self.embeddings, list(self.layers))


# -- real checkpoints ---------------------------------------------------------------
def config_from_checkpoint(folder: str | Path) -> ModelConfig:
    folder = Path(folder)
    path = folder / "config.json"
    if not path.is_file():
        raise ConfigError(f"{folder}: no config.json (expected a Hugging Face BERT checkpoint folder)")
    hf = json.loads(path.read_text())
    if hf.get("hidden_act", "gelu") != "gelu":
        raise ConfigError(f"{path}: hidden_act {hf['hidden_act']!r} unsupported (only erf GELU, 'gelu')")
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise ConfigError(f"{path}: only absolute position embeddings are supported")
    try:
        return ModelConfig(
            name=folder.name or "checkpoint", layers=hf["num_hidden_layers"], hidden=hf["hidden_size"],
            heads=hf["num_attention_heads"], ffn=hf["intermediate_size"], vocab=hf["vocab_size"],
            max_positions=hf["max_position_embeddings"], type_vocab=hf.get("type_vocab_size", 2),
            ln_eps=float(hf.get("layer_norm_eps", 1e-12)))
    except KeyError as missing:
        raise ConfigError(f"{path}: missing key {missing}") from None


def _read_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    if (folder / "model.safetensors").is_file():
        from safetensors.torch import load_file
        state = load_file(str(folder / "model.safetensors"))
    elif (folder / "pytorch_model.bin").is_file():
        state = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise ConfigError(f"{folder}: neither model.safetensors nor pytorch_model.bin found")
    # BertForX checkpoints prefix the encoder with "bert."; BertModel ones do not.
    return {k.removeprefix("bert."): v.float() for k, v in state.items()}


def load_checkpoint(folder: str | Path, cfg: ModelConfig | None = None) -> tuple[ModelConfig, ModelWeights]:
    """Load a Hugging Face `BertModel` checkpoint folder into the original model.

    A decoupled `cfg` is refused: a decoupled model has other weight shapes,
    which come from training it, not from an original checkpoint.
    """
    folder = Path(folder)
    found = config_from_checkpoint(folder)
    if cfg is not None and cfg.is_decoupled:
        raise ConfigError(f"{folder} holds an original BERT; a decoupled model "
                          f"(n_blocks={cfg.n_blocks} < layers={cfg.layers}) needs trained decoupled "
                          "weights, not an original checkpoint: use a seed instead")
    state = _read_state_dict(folder)

    def take(key: str) -> torch.Tensor:
        if key not in state:
            raise ConfigError(f"{folder}: checkpoint has no tensor {key!r}")
        return state[key].contiguous()

    emb = EmbeddingWeights(
        word=take("embeddings.word_embeddings.weight"),
        position=take("embeddings.position_embeddings.weight"),
        token_type=take("embeddings.token_type_embeddings.weight"),
        ln_weight=take("embeddings.LayerNorm.weight"), ln_bias=take("embeddings.LayerNorm.bias"))
    layers: list[Layer] = []
    for i in range(found.layers):
        p = f"encoder.layer.{i}."
        qkv = [f"{p}attention.self.{name}" for name in ("query", "key", "value")]
        layers.append(LayerWeights(
            qkv_weight=torch.cat([take(f"{n}.weight") for n in qkv]),
            qkv_bias=torch.cat([take(f"{n}.bias") for n in qkv]),
            out_weight=take(f"{p}attention.output.dense.weight"),
            out_bias=take(f"{p}attention.output.dense.bias"),
            ln1_weight=take(f"{p}attention.output.LayerNorm.weight"),
            ln1_bias=take(f"{p}attention.output.LayerNorm.bias"),
            ffn_in_weight=take(f"{p}intermediate.dense.weight"), ffn_in_bias=take(f"{p}intermediate.dense.bias"),
            ffn_out_weight=take(f"{p}output.dense.weight"), ffn_out_bias=take(f"{p}output.dense.bias"),
            ln2_weight=take(f"{p}output.LayerNorm.weight"), ln2_bias=take(f"{p}output.LayerNorm.bias")))
    return found, ModelWeights(emb, layers)
