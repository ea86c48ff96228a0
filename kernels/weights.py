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
# A checkpoint is a Hugging Face BERT folder: config.json + model.safetensors (or
# pytorch_model.bin). A decoupled checkpoint is the same folder with two more config keys,
# "n_blocks" and "n_div", and its decoupled layers stored per sub-block: sub-block j of
# layer i under "encoder.layer.{i}.sub_block.{j}." followed by the names an original layer
# uses (attention.self.query.weight ... output.LayerNorm.bias), with the sub-block's shapes:
#   attention.self.{query,key,value}.weight (h, h/N_div), .bias (h,)
#   attention.output.dense.weight (h/N_div, h), .bias (h/N_div,); attention.output.LayerNorm.* (h/N_div,)
#   intermediate.dense.weight (f, h/N_div), .bias (f,); output.dense.weight (h/N_div, f), .bias (h/N_div,)
#   output.LayerNorm.* (h/N_div,)
# Embeddings and the boundary (original) layers keep their Hugging Face names and shapes.
DECOUPLED_KEYS = ("n_blocks", "n_div")


def sub_block_prefix(layer: int, sub_block: int) -> str:
    return f"encoder.layer.{layer}.sub_block.{sub_block}."


def config_from_checkpoint(folder: str | Path) -> ModelConfig:
    """The model a checkpoint folder holds (decoupled if its config.json has n_blocks/n_div)."""
    folder = Path(folder)
    path = folder / "config.json"
    if not path.is_file():
        raise ConfigError(f"{folder}: no config.json (expected a Hugging Face BERT checkpoint folder)")
    try:
        hf = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid JSON ({err})") from None
    if hf.get("hidden_act", "gelu") != "gelu":
        raise ConfigError(f"{path}: hidden_act {hf['hidden_act']!r} unsupported (only erf GELU, 'gelu')")
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise ConfigError(f"{path}: only absolute position embeddings are supported")
    try:
        cfg = ModelConfig(
            name=folder.name or "checkpoint", layers=hf["num_hidden_layers"], hidden=hf["hidden_size"],
            heads=hf["num_attention_heads"], ffn=hf["intermediate_size"], vocab=hf["vocab_size"],
            max_positions=hf["max_position_embeddings"], type_vocab=hf.get("type_vocab_size", 2),
            ln_eps=float(hf.get("layer_norm_eps", 1e-12)),
            n_blocks=hf.get("n_blocks"), n_div=hf.get("n_div", 1))
    except KeyError as missing:
        raise ConfigError(f"{path}: missing key {missing}") from None
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    return cfg


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


def _embedding_names(e: EmbeddingWeights) -> dict[str, torch.Tensor]:
    return {"embeddings.word_embeddings.weight": e.word, "embeddings.position_embeddings.weight": e.position,
            "embeddings.token_type_embeddings.weight": e.token_type,
            "embeddings.LayerNorm.weight": e.ln_weight, "embeddings.LayerNorm.bias": e.ln_bias}


EMBEDDING_KEYS = tuple(_embedding_names(EmbeddingWeights(*[None] * 5)))  # in EmbeddingWeights' field order


def _layer_names(w: LayerWeights, p: str) -> dict[str, torch.Tensor]:
    """One layer (or sub-block) under Hugging Face's names after prefix `p`; q, k, v unfused."""
    state = {}
    for name, weight, bias in zip(("query", "key", "value"), w.qkv_weight.chunk(3), w.qkv_bias.chunk(3)):
        state[f"{p}attention.self.{name}.weight"], state[f"{p}attention.self.{name}.bias"] = weight, bias
    state.update({
        f"{p}attention.output.dense.weight": w.out_weight, f"{p}attention.output.dense.bias": w.out_bias,
        f"{p}attention.output.LayerNorm.weight": w.ln1_weight, f"{p}attention.output.LayerNorm.bias": w.ln1_bias,
        f"{p}intermediate.dense.weight": w.ffn_in_weight, f"{p}intermediate.dense.bias": w.ffn_in_bias,
        f"{p}output.dense.weight": w.ffn_out_weight, f"{p}output.dense.bias": w.ffn_out_bias,
        f"{p}output.LayerNorm.weight": w.ln2_weight, f"{p}output.LayerNorm.bias": w.ln2_bias})
    return state


def state_dict(weights: ModelWeights) -> dict[str, torch.Tensor]:
    """Our weights under Hugging Face BertModel's names (the inverse of `load_checkpoint`);
    a decoupled layer's sub-blocks under their `sub_block_prefix`."""
    state = _embedding_names(weights.embeddings)
    for i, layer in enumerate(weights.layers):
        if isinstance(layer, list):
            for j, w in enumerate(layer):
                state.update(_layer_names(w, sub_block_prefix(i, j)))
        else:
            state.update(_layer_names(layer, f"encoder.layer.{i}."))
    return state


def _layer_from(take, p: str) -> LayerWeights:
    qkv = [f"{p}attention.self.{name}" for name in ("query", "key", "value")]
    return LayerWeights(
        qkv_weight=torch.cat([take(f"{n}.weight") for n in qkv]), qkv_bias=torch.cat([take(f"{n}.bias") for n in qkv]),
        out_weight=take(f"{p}attention.output.dense.weight"), out_bias=take(f"{p}attention.output.dense.bias"),
        ln1_weight=take(f"{p}attention.output.LayerNorm.weight"), ln1_bias=take(f"{p}attention.output.LayerNorm.bias"),
        ffn_in_weight=take(f"{p}intermediate.dense.weight"), ffn_in_bias=take(f"{p}intermediate.dense.bias"),
        ffn_out_weight=take(f"{p}output.dense.weight"), ffn_out_bias=take(f"{p}output.dense.bias"),
        ln2_weight=take(f"{p}output.LayerNorm.weight"), ln2_bias=take(f"{p}output.LayerNorm.bias"))


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor name a checkpoint of `cfg` holds, with its shape (from the seeded init's shapes)."""
    h = cfg.hidden
    emb = EmbeddingWeights(*(torch.empty(shape, device="meta") for shape in (
        (cfg.vocab, h), (cfg.max_positions, h), (cfg.type_vocab, h), (h,), (h,))))
    layers: list[Layer] = []
    for i in range(cfg.layers):
        widths = [h] if cfg.is_boundary(i) else [cfg.sub_width] * cfg.n_div
        blocks = [_meta_layer(cfg, w) for w in widths]
        layers.append(blocks[0] if cfg.is_boundary(i) else blocks)
    return {k: tuple(v.shape) for k, v in state_dict(ModelWeights(emb, layers)).items()}


def _meta_layer(cfg: ModelConfig, width: int) -> LayerWeights:
    h, f = cfg.hidden, cfg.ffn
    shapes = [(3 * h, width), (3 * h,), (width, h), (width,), (width,), (width,),
              (f, width), (f,), (width, f), (width,), (width,), (width,)]
    return LayerWeights(*(torch.empty(s, device="meta") for s in shapes))


def load_checkpoint(folder: str | Path, cfg: ModelConfig | None = None) -> tuple[ModelConfig, ModelWeights]:
    """Load a checkpoint folder: an original Hugging Face `BertModel`, or a decoupled one
    (see the format above). Every tensor's shape is checked against the folder's config.

    A `cfg` of another shape than the folder's is refused: in particular a decoupled
    model needs trained decoupled weights (`python -m bench.decouple` makes them),
    not an original checkpoint.
    """
    folder = Path(folder)
    found = config_from_checkpoint(folder)
    if cfg is not None and (cfg.n_blocks, cfg.n_div if cfg.is_decoupled else 1) != \
            (found.n_blocks, found.n_div if found.is_decoupled else 1):
        held = (f"a decoupled model (n_blocks={found.n_blocks}, n_div={found.n_div})" if found.is_decoupled
                else "an original BERT")
        raise ConfigError(f"{folder} holds {held}; asked for {cfg.describe()}: a decoupled model needs "
                          "trained decoupled weights of its own shape (python -m bench.decouple makes them)")
    state = _read_state_dict(folder)
    shapes = expected_shapes(found)

    def take(key: str) -> torch.Tensor:
        if key not in state:
            raise ConfigError(f"{folder}: checkpoint has no tensor {key!r}")
        if tuple(state[key].shape) != shapes[key]:
            raise ConfigError(f"{folder}: tensor {key!r} has shape {tuple(state[key].shape)}, "
                              f"config.json implies {shapes[key]}")
        return state[key].contiguous()

    emb = EmbeddingWeights(*(take(k) for k in EMBEDDING_KEYS))
    layers: list[Layer] = []
    for i in range(found.layers):
        if found.is_boundary(i):
            layers.append(_layer_from(take, f"encoder.layer.{i}."))
        else:
            layers.append([_layer_from(take, sub_block_prefix(i, j)) for j in range(found.n_div)])
    return found, ModelWeights(emb, layers)


def save_checkpoint(folder: str | Path, cfg: ModelConfig, weights: ModelWeights, extra_config: dict | None = None,
                    base_config: dict | None = None) -> Path:
    """Write `weights` into checkpoint folder `folder` (config.json + model.safetensors;
    decoupled: n_blocks and n_div in config.json) so that `load_checkpoint` reads them back.
    `base_config` (e.g. the original's config.json) keeps the keys this model does not set.
    Each file is written under a temporary name and renamed, the weights first."""
    from safetensors.torch import save_file
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    hf = {**(base_config or {}), "architectures": ["BertModel"], "model_type": "bert",
          "num_hidden_layers": cfg.layers, "hidden_size": cfg.hidden, "num_attention_heads": cfg.heads,
          "intermediate_size": cfg.ffn, "vocab_size": cfg.vocab, "max_position_embeddings": cfg.max_positions,
          "type_vocab_size": cfg.type_vocab, "layer_norm_eps": cfg.ln_eps, "hidden_act": "gelu",
          "position_embedding_type": "absolute", **(extra_config or {})}
    for key in DECOUPLED_KEYS:
        hf.pop(key, None)
    if cfg.is_decoupled:
        hf.update(n_blocks=cfg.n_blocks, n_div=cfg.n_div)
    state = {k: v.detach().contiguous() for k, v in state_dict(weights).items()}
    partial = folder / "model.safetensors.partial"
    save_file(state, str(partial))
    partial.replace(folder / "model.safetensors")
    partial = folder / "config.json.partial"
    partial.write_text(json.dumps(hf, indent=2) + "\n")
    partial.replace(folder / "config.json")
    return folder
