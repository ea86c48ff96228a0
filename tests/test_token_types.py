"""Token type ids through every strategy, on real MiniLM and real sentence pairs.

MPI tests (size-agnostic, like tests/test_strategies.py):
    mpiexec -n N python -m pytest --with-mpi -p no:cacheprovider -m mpi tests/test_token_types.py
The original-model strategies (dp, pp, tp, sp) are checked against Hugging Face
`BertModel` itself (token_type_ids passed), to 1e-4 at every position. Hugging Face has
no decoupled BERT, so bp is checked against the serial decoupled reference on the same
pairs (a MiniLM decoupled by bench.decouple's init, no training needed), and the pair's
token types must change its output (they are really used).
"""

from __future__ import annotations

import pytest
import torch

import kernels as K
from conftest import SENTENCES
from parallelism import STRATEGIES, Communicator, UsageError

TOLERANCE = 1e-4
SECONDS = ["A fox is quick and brown.", "The links are slow.", "Boundaries only.", "Hi there, how are you today?"]


@pytest.fixture(scope="module")
def comm():
    world = Communicator()
    if world.size > 1:
        torch.set_num_threads(1)
    return world


@pytest.fixture(scope="module")
def pairs(minilm_dir):
    """A padded batch of 4 real sentence pairs: ids, mask, token types (0 then 1)."""
    tokenizers = pytest.importorskip("tokenizers", reason="tokenizers not installed (test extra)")
    tok = tokenizers.Tokenizer.from_file(str(minilm_dir / "tokenizer.json"))
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    encoded = tok.encode_batch(list(zip(SENTENCES, SECONDS)))
    ids, mask, types = (torch.tensor([getattr(e, f) for e in encoded]) for f in ("ids", "attention_mask", "type_ids"))
    assert not bool(mask.all()) and bool((types == 1).any()), "need padding and second segments"
    return ids, mask, types


@pytest.fixture(scope="module")
def hugging_face_output(minilm_dir, pairs):
    transformers = pytest.importorskip("transformers", reason="transformers not installed (test extra)")
    hf = transformers.BertModel.from_pretrained(str(minilm_dir), local_files_only=True,
                                                add_pooling_layer=False).eval()
    ids, mask, types = pairs
    with torch.no_grad():
        return hf(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state


def build(name, cfg, weights, comm, **options):
    try:
        STRATEGIES[name].check(cfg, comm.size, **options)
    except UsageError as err:
        pytest.skip(f"P={comm.size}: {err}")
    return STRATEGIES[name](cfg, weights, comm, **options)


@pytest.mark.mpi
@pytest.mark.parametrize("name,options", [("serial", {}), ("dp", {}), ("pp", {"micro_batches": 2}), ("tp", {}),
                                          ("sp", {})], ids=["serial", "dp", "pp-mb2", "tp", "sp"])
def test_pairs_match_hugging_face(comm, minilm_dir, pairs, hugging_face_output, name, options):
    cfg, weights = K.load_checkpoint(minilm_dir)
    strategy = build(name, cfg, weights, comm, **options)
    out = strategy.forward(*pairs)
    if strategy.holds_output():
        diff = float((out - hugging_face_output).abs().max())
        assert diff <= TOLERANCE, f"{name} on P={comm.size}: max abs diff {diff:.3g} vs Hugging Face"


@pytest.mark.mpi
@pytest.mark.parametrize("boundary", ["replicate", "tp"])
def test_pairs_bp_matches_decoupled_reference(comm, minilm_dir, pairs, boundary):
    from bench.decouple import decoupled_from
    original_cfg, original = K.load_checkpoint(minilm_dir)
    cfg = original_cfg.replace(n_blocks=3, n_div=4)
    weights = decoupled_from(cfg, original)
    strategy = build("bp", cfg, weights, comm, boundary=boundary)
    reference = K.ReferenceModel(cfg, weights)
    expected = reference(*pairs)
    out = strategy.forward(*pairs)
    diff = float((out - expected).abs().max())
    assert diff <= TOLERANCE, f"bp({boundary}) on P={comm.size}: max abs diff {diff:.3g} vs serial decoupled"
    ids, mask, _ = pairs
    assert float((reference(ids, mask) - expected).abs().max()) > 1e-2, "token types changed nothing"
