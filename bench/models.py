"""Which model a run uses: a preset or a checkpoint folder, its original and decoupled
shapes, where its weights come from, and the inputs it is fed."""

from __future__ import annotations

import ctypes
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from kernels import ConfigError, LazyWeights, ModelConfig, PRESETS, preset
from kernels.weights import config_from_checkpoint, load_checkpoint
from parallelism import UsageError

DEFAULT_SEQ = 128
M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


def _mmap_threshold(nbytes: int) -> None:
    try:
        ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, nbytes)
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


@contextmanager
def weights_returned_when_freed():
    """While a strategy takes its shard of the weights: tensors of 1 MiB and more get
    mappings of their own, returned to the system when freed.

    glibc raises its mmap threshold after a large block is freed, so the full layers a rank
    draws and drops while taking its shard piled up on the heap: bert-large tp on 4 ranks
    peaked at 1.93 GB on one rank against 0.83 on the others, and at 0.80 on every
    non-reference rank with the fixed threshold (peak_rss_bytes_per_rank of bench.latency
    records, this machine). Outside, the threshold goes to glibc's largest (32 MiB) so that
    activations come from the heap: kept at 1 MiB, every forward's larger activations were
    fresh zeroed pages, and dp (the whole model on one rank) ran ~20% slower."""
    _mmap_threshold(1 << 20)
    try:
        yield
    finally:
        _mmap_threshold(32 << 20)


@dataclass
class Model:
    """The model a run uses: its original shape, its decoupled shape (bp), and where weights come from."""
    name: str
    original: ModelConfig
    decoupled: ModelConfig | None      # None when N_b/N_div do not fit this model
    decoupled_error: str | None
    checkpoint: Path | None
    seed: int
    original_error: str | None = None  # set when the checkpoint holds a decoupled model

    def config(self, decoupled: bool) -> ModelConfig:
        if not decoupled:
            if self.original_error:
                raise UsageError(self.original_error)
            return self.original
        if self.decoupled is None:
            raise UsageError(self.decoupled_error)
        return self.decoupled

    def weights(self, decoupled: bool):
        """Seeded weights are lazy (each rank draws only the layers its strategy keeps);
        a checkpoint is read whole."""
        if self.checkpoint is not None:  # the checkpoint's own shape; a mismatch names itself
            return read_checkpoint(self.checkpoint, self.config(decoupled))
        return LazyWeights(self.config(decoupled), self.seed)

    def default_seq(self) -> int:
        return min(DEFAULT_SEQ, self.original.max_positions)


def read_checkpoint(folder: Path, cfg: ModelConfig | None = None):
    """A checkpoint's weights; anything wrong with the folder is bad input (exit 2), not a crash."""
    try:
        return load_checkpoint(folder, cfg)[1]
    except (ConfigError, OSError, ValueError, RuntimeError) as err:  # safetensors/torch: unreadable files
        raise UsageError(f"--model {folder}: {err}") from None


def default_blocks(layers: int) -> int:
    if layers > 4 and layers % 4 == 0:
        return 4
    return max([d for d in range(1, layers) if layers % d == 0] or [1])


def resolve_model(spec: str, nb: int | None = None, ndiv: int = 4, seed: int = 0) -> Model:
    try:
        if spec in PRESETS:
            cfg, checkpoint = preset(spec), None
        elif Path(spec).is_dir():
            cfg, checkpoint = config_from_checkpoint(spec), Path(spec)
        else:
            raise UsageError(f"--model {spec!r}: neither a preset ({', '.join(PRESETS)}) nor a checkpoint folder")
    except ConfigError as err:
        raise UsageError(str(err)) from None
    except (OSError, ValueError) as err:  # an unreadable or malformed config.json
        raise UsageError(f"--model {spec}: {err}") from None
    decoupled, error = None, None
    nb = default_blocks(cfg.layers) if nb is None else nb
    try:
        decoupled = cfg.replace(n_blocks=nb, n_div=ndiv)
        if not decoupled.is_decoupled:
            decoupled, error = None, (f"--nb {nb} equals the layer count {cfg.layers}: that is the original "
                                      "model, bp needs N_b < layers")
    except ConfigError as err:
        error = f"decoupled {cfg.name} with --nb {nb} --ndiv {ndiv}: {err}"
    original_error = None
    if checkpoint is not None and cfg.is_decoupled:
        # A decoupled checkpoint (python -m bench.decouple): its own N_b/N_div, run by bp only.
        decoupled, error, cfg = cfg, None, cfg.original()
        original_error = (f"{checkpoint} holds a decoupled model (n_blocks={decoupled.n_blocks}, "
                          f"n_div={decoupled.n_div}): only bp runs it")
    elif checkpoint is not None:
        decoupled, error = None, (f"bp needs decoupled weights; {checkpoint} is an original BERT checkpoint "
                                  "(use a preset, or python -m bench.decouple to make a decoupled one)")
    name = cfg.name if checkpoint is None else "/".join(checkpoint.resolve().parts[-2:])
    return Model(name, cfg, decoupled, error, checkpoint, seed, original_error)


def make_inputs(cfg: ModelConfig, batch: int, seq: int, seed: int = 0):
    """Deterministic token ids (identical on every rank) and an all-ones mask."""
    if seq > cfg.max_positions:
        raise UsageError(f"--seq {seq} exceeds the model's max_positions {cfg.max_positions}")
    gen = torch.Generator().manual_seed(seed + 7919)
    ids = torch.randint(1, cfg.vocab, (batch, seq), generator=gen)
    return ids, torch.ones(batch, seq, dtype=torch.long)
