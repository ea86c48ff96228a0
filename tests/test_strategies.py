"""Every strategy equals the serial reference, and counts exactly the traffic it predicts.

MPI tests, size-agnostic: run with
    mpiexec -n N python -m pytest --with-mpi -p no:cacheprovider -m mpi tests/test_strategies.py
for N in 1..4. A case a strategy cannot run at this size (e.g. tp with 4
heads on 3 ranks) is skipped with the strategy's own UsageError as reason,
decided by the pure `check()`, so every rank skips alike. The few non-MPI
tests (stage balancing, registry) run under plain pytest.
"""

from __future__ import annotations

import pytest
import torch

import kernels as K
from conftest import padded_batch, tokenize
from parallelism import STRATEGIES, UsageError
from parallelism.pp import balance_stages

RTOL, ATOL = 1e-5, 1e-5
SHAPES = [(3, 12), (1, 7), (5, 9)]  # (batch, seq): padded rows; batch < P; uneven splits everywhere


def unequal_assignment(size: int) -> list[list[int]]:
    """4 sub-blocks over `size` ranks, unequal where possible and never in rank order,
    so that putting the slices back in sub-block order is really tested."""
    return {1: [[3, 1, 0, 2]], 2: [[3, 0, 2], [1]], 3: [[0, 2], [3], [1]],
            4: [[2], [0], [3], [1]]}[size]


ORIGINAL = dict()
DECOUPLED = dict(n_blocks=2, n_div=4)
CASES = [  # id -> (strategy, tiny overrides, options; "unequal" is filled in per size)
    ("dp", ORIGINAL, {}),
    ("pp", ORIGINAL, {}),
    ("pp-mb2", ORIGINAL, {"micro_batches": 2}),
    ("pp-mb3", ORIGINAL, {"micro_batches": 3}),
    ("tp", ORIGINAL, {}),
    ("sp", ORIGINAL, {}),
    ("bp-replicate", DECOUPLED, {"boundary": "replicate"}),
    ("bp-tp", DECOUPLED, {"boundary": "tp"}),
    ("bp-unequal-replicate", DECOUPLED, {"boundary": "replicate", "assignment": "unequal"}),
    ("bp-unequal-tp", DECOUPLED, {"boundary": "tp", "assignment": "unequal"}),
    ("bp-nb1", dict(n_blocks=1, n_div=4), {}),  # one block of 3 decoupled layers
]


def build(name: str, cfg, weights, comm, options: dict):
    cls = STRATEGIES[name.split("-")[0]]
    if options.get("assignment") == "unequal":
        options = {**options, "assignment": unequal_assignment(comm.size)}
    try:
        cls.check(cfg, comm.size, **options)
    except UsageError as err:
        pytest.skip(f"P={comm.size}: {err}")
    return cls(cfg, weights, comm, **options)


def traffic_of(comm) -> dict:
    return {op: (t.calls, t.payload, t.bus) for op, t in comm.counters.by_op().items()}


def expected_of(strategy, batch, seq) -> dict:
    return {op: (t.calls, t.payload, t.bus) for op, t in strategy.traffic_here(batch, seq).items()}


def run_and_check(strategy, comm, reference, ids, mask):
    comm.reset()
    out = strategy.forward(ids, mask)
    counted = traffic_of(comm)
    holders = comm.allgather_object(strategy.holds_output())
    p = comm.size
    assert holders == {"dp": [True] + [False] * (p - 1),   # gathered to rank 0
                       "pp": [False] * (p - 1) + [True],   # the last stage
                       }.get(strategy.name, [True] * p)    # tp, sp, bp: every rank
    if strategy.holds_output():
        assert out is not None and out.shape == reference.shape
        torch.testing.assert_close(out, reference, rtol=RTOL, atol=ATOL)
    else:
        assert out is None
    assert counted == expected_of(strategy, *ids.shape), f"rank {comm.rank}"


# -- tiny config, random weights ---------------------------------------------------
@pytest.mark.mpi
@pytest.mark.parametrize("batch,seq", SHAPES)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_tiny_matches_reference_and_traffic(comm, case, batch, seq):
    name, overrides, options = case
    cfg = K.preset("tiny", **overrides)
    weights = K.init_weights(cfg, seed=7)
    strategy = build(name, cfg, weights, comm, options)
    ids, mask = padded_batch(cfg.vocab, batch, seq)
    reference = K.ReferenceModel(cfg, weights)(ids, mask)
    run_and_check(strategy, comm, reference, ids, mask)
    # A second forward on the same object: buffers and counters do not leak between calls.
    run_and_check(strategy, comm, reference, ids, mask)


@pytest.mark.mpi
def test_unpadded_batch(comm):
    """attention_mask all ones (additive mask None) through every original-model strategy."""
    cfg = K.preset("tiny")
    weights = K.init_weights(cfg, seed=1)
    ids = torch.randint(1, cfg.vocab, (2, 10), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    reference = K.ReferenceModel(cfg, weights)(ids, mask)
    for name in ("dp", "pp", "tp", "sp"):
        try:
            STRATEGIES[name].check(cfg, comm.size)
        except UsageError:
            continue
        run_and_check(STRATEGIES[name](cfg, weights, comm), comm, reference, ids, mask)


# -- real MiniLM weights and real tokens --------------------------------------------
@pytest.fixture(scope="module")
def minilm(minilm_dir):
    cfg, weights = K.load_checkpoint(minilm_dir)
    ids, mask = tokenize(minilm_dir)
    ids, mask = ids[:3], mask[:3]  # 3 sentences of different lengths: a padded batch
    return cfg, weights, ids, mask, K.ReferenceModel(cfg, weights)(ids, mask)


@pytest.mark.mpi
@pytest.mark.parametrize("name,options", [("dp", {}), ("pp-mb2", {"micro_batches": 2}), ("tp", {}), ("sp", {})],
                         ids=["dp", "pp-mb2", "tp", "sp"])
def test_minilm_matches_reference_and_traffic(comm, minilm, name, options):
    cfg, weights, ids, mask, reference = minilm
    strategy = build(name, cfg, weights, comm, options)
    run_and_check(strategy, comm, reference, ids, mask)


# -- what each rank holds ----------------------------------------------------------------
@pytest.mark.mpi
def test_weights_are_split(comm):
    cfg = K.preset("tiny")
    weights = K.init_weights(cfg, seed=2)
    full = weights.nbytes()
    emb = K.layers.nbytes(weights.embeddings)
    pp = STRATEGIES["pp"](cfg, weights, comm)
    assert sum(comm.allgather_object(pp.held_bytes())) == full  # every layer on one stage, embeddings on the first
    assert pp.held_bytes() == pp.weights_bytes_here()
    if cfg.heads % comm.size == 0:
        tp = STRATEGIES["tp"](cfg, weights, comm)
        sharded = sum(t.nbytes for w in weights.layers for t in (
            w.qkv_weight, w.qkv_bias, w.out_weight, w.ffn_in_weight, w.ffn_in_bias, w.ffn_out_weight))
        # heads and FFN columns split, the rest replicated
        assert tp.held_bytes() == tp.weights_bytes_here() == full - sharded + sharded // comm.size
    dcfg = K.preset("tiny", **DECOUPLED)
    dweights = K.init_weights(dcfg, seed=2)
    for boundary_mode in ("replicate", "tp"):
        try:
            bp = STRATEGIES["bp"](dcfg, dweights, comm, assignment=unequal_assignment(comm.size),
                                  boundary=boundary_mode)
        except UsageError:
            continue
        assert bp.held_bytes() == bp.weights_bytes_here()
    bp = STRATEGIES["bp"](dcfg, dweights, comm, assignment=unequal_assignment(comm.size))
    boundary = sum(K.layers.nbytes(w) for w in dweights.layers if not isinstance(w, list))
    sub_blocks = comm.allgather_object(bp.held_bytes() - emb - boundary)
    assert sum(sub_blocks) == dweights.nbytes() - emb - boundary  # each sub-block on exactly one rank
    for name in ("dp", "sp", "serial"):
        strategy = STRATEGIES[name](cfg, weights, comm)
        assert strategy.held_bytes() == strategy.weights_bytes_here() == full


# -- no MPI needed ------------------------------------------------------------------------
def test_registry_names_every_strategy():
    assert set(STRATEGIES) >= {"serial", "dp", "pp", "tp", "sp", "bp"}
    assert all(name == cls.name for name, cls in STRATEGIES.items())


@pytest.mark.parametrize("layers,stages,expected", [
    (12, 4, [3, 3, 3, 3]), (4, 4, [1, 1, 1, 1]), (4, 3, [1, 1, 2]), (6, 4, [1, 1, 2, 2]), (5, 1, [5])])
def test_pipeline_stages_balanced_embeddings_first(layers, stages, expected):
    ranges = balance_stages([100] * layers, stages, first_extra=1)
    assert [len(r) for r in ranges] == expected
    assert [i for r in ranges for i in r] == list(range(layers))


def test_pipeline_stages_follow_cost():
    # One expensive layer gets a stage to itself.
    assert [len(r) for r in balance_stages([1, 1, 1, 10, 1, 1], 3)] == [3, 1, 2]
