"""Model shapes: one frozen dataclass, its presets and the arithmetic on it.

`n_blocks` (N_b) and `n_div` (N_div) describe docs/DESIGN.md, "The decoupled model":
the `layers` form `n_blocks` blocks; in each block every layer but the last is
a decoupled layer of `n_div` independent sub-blocks, the last is an original
BERT layer. `n_blocks == layers` is the original model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


class ConfigError(ValueError):
    """An impossible model shape; the message names the violated constraint."""


@dataclass(frozen=True)
class ModelConfig:
    name: str
    layers: int
    hidden: int
    heads: int
    ffn: int
    vocab: int = 30522
    max_positions: int = 512
    type_vocab: int = 2
    ln_eps: float = 1e-12
    n_blocks: int | None = None  # None: original model (n_blocks == layers)
    n_div: int = 1

    def __post_init__(self):
        if self.n_blocks is None:
            object.__setattr__(self, "n_blocks", self.layers)
        self.validate()

    def validate(self) -> None:
        for field in ("layers", "hidden", "heads", "ffn", "vocab", "max_positions",
                      "type_vocab", "n_blocks", "n_div"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{field} must be a positive integer, got {value!r}")
        if not (isinstance(self.ln_eps, float) and self.ln_eps > 0):
            raise ConfigError(f"ln_eps must be a positive float, got {self.ln_eps!r}")
        if self.hidden % self.heads:
            raise ConfigError(f"hidden % heads must be 0 (hidden={self.hidden}, heads={self.heads})")
        if self.n_blocks > self.layers:
            raise ConfigError(f"n_blocks <= layers required (n_blocks={self.n_blocks}, layers={self.layers})")
        if self.layers % self.n_blocks:
            raise ConfigError(f"layers % n_blocks must be 0 (layers={self.layers}, n_blocks={self.n_blocks})")
        if self.is_decoupled and self.hidden % self.n_div:
            raise ConfigError(f"hidden % n_div must be 0 (hidden={self.hidden}, n_div={self.n_div})")

    # -- derived shapes -------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def is_decoupled(self) -> bool:
        return self.n_blocks < self.layers

    @property
    def layers_per_block(self) -> int:
        return self.layers // self.n_blocks

    @property
    def sub_width(self) -> int:
        """Width h/N_div of one sub-block's slice of the hidden state."""
        return self.hidden // self.n_div

    def is_boundary(self, layer: int) -> bool:
        """True for the original layer that closes each block."""
        return (layer + 1) % self.layers_per_block == 0

    def layer_kinds(self) -> list[str]:
        return ["original" if self.is_boundary(i) else "decoupled" for i in range(self.layers)]

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def original(self) -> "ModelConfig":
        """The same shape as an original (not decoupled) model."""
        return self.replace(n_blocks=self.layers, n_div=1)

    def describe(self) -> str:
        shape = f"L={self.layers} h={self.hidden} heads={self.heads} ffn={self.ffn}"
        if self.is_decoupled:
            shape += f" N_b={self.n_blocks} N_div={self.n_div}"
        return f"{self.name} ({shape})"


PRESETS = {
    "bert-base": dict(layers=12, hidden=768, heads=12, ffn=3072),
    "bert-large": dict(layers=24, hidden=1024, heads=16, ffn=4096),
    "minilm-l6": dict(layers=6, hidden=384, heads=12, ffn=1536),
    # Small enough for exhaustive multi-rank tests, big enough for every split:
    # 4 heads and 4 sub-blocks, 4 layers (N_b = 1, 2 or 4).
    "tiny": dict(layers=4, hidden=64, heads=4, ffn=256, vocab=512, max_positions=64),
}


def preset(name: str, **overrides) -> ModelConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r} (choose from {', '.join(PRESETS)})")
    return ModelConfig(name=name, **{**PRESETS[name], **overrides})


# -- arithmetic ------------------------------------------------------------------
# Pure functions of the shapes: the strategies' FLOP and weight counts and the planner's
# cost model are built from these, never from a second copy of the formulas.
FP32 = 4  # bytes per weight and per activation value


def layer_gemms(cfg: ModelConfig, batch: int, queries: int, keys: int, width: int,
                heads: int | None = None, ffn: int | None = None) -> dict[str, int]:
    """FLOPs (2 per multiply-add) of one layer's matmuls, by kernel.

    `width` is the layer's input/output width (h for an original layer, h/N_div for a
    decoupled sub-block); `heads` and `ffn` the heads and FFN columns it computes (a
    tensor-parallel shard has fewer); `queries` the tokens it computes, `keys` the
    tokens they attend to (sequence parallelism: its own tokens against all).
    """
    heads = cfg.heads if heads is None else heads
    ffn = cfg.ffn if ffn is None else ffn
    t, inner = batch * queries, heads * cfg.head_dim
    return {"qkv": 2 * t * width * 3 * inner,
            "attention": 2 * 2 * batch * queries * keys * inner,  # scores and context
            "out": 2 * t * inner * width,
            "ffn": 2 * 2 * t * width * ffn}


def layer_flops(cfg: ModelConfig, batch: int, seq: int, decoupled: bool) -> int:
    """FLOPs of one whole layer's forward (all its sub-blocks when decoupled).

    A decoupled layer has the same projection FLOPs as an original one (its
    weights are the same size), but each of its N_div sub-blocks computes
    attention over all heads, so scores and context cost N_div times more.
    """
    if not decoupled:
        return sum(layer_gemms(cfg, batch, seq, seq, cfg.hidden).values())
    return cfg.n_div * sum(layer_gemms(cfg, batch, seq, seq, cfg.sub_width).values())


def forward_flops(cfg: ModelConfig, batch: int, seq: int) -> int:
    return sum(layer_flops(cfg, batch, seq, kind == "decoupled") for kind in cfg.layer_kinds())


def layer_params(cfg: ModelConfig, width: int, heads: int | None = None, ffn: int | None = None) -> int:
    """Parameters of one layer of `width` (see `layer_gemms`): weights, biases, LayerNorms."""
    heads = cfg.heads if heads is None else heads
    ffn = cfg.ffn if ffn is None else ffn
    inner = heads * cfg.head_dim
    qkv = 3 * inner * width + 3 * inner
    attention_out = width * inner + width + 2 * width    # weight, bias, LayerNorm 1
    feed_forward = 2 * ffn * width + ffn + width + 2 * width  # in, out, LayerNorm 2
    return qkv + attention_out + feed_forward


def embedding_params(cfg: ModelConfig) -> int:
    return (cfg.vocab + cfg.max_positions + cfg.type_vocab) * cfg.hidden + 2 * cfg.hidden


def layer_index_params(cfg: ModelConfig, index: int) -> int:
    """Parameters of layer `index`: an original layer, or a decoupled layer's N_div sub-blocks."""
    if cfg.is_boundary(index):
        return layer_params(cfg, cfg.hidden)
    return cfg.n_div * layer_params(cfg, cfg.sub_width)


def model_params(cfg: ModelConfig) -> int:
    return embedding_params(cfg) + sum(layer_index_params(cfg, i) for i in range(cfg.layers))
