"""Every strategy's schedule of synchronisation points (`steps`) is its analytic model seen
step by step: summed over the steps, each rank's traffic equals `expected_traffic` and its
FLOPs equal `flops`, exactly. No MPI."""

import pytest

import kernels as K
from parallelism import STRATEGIES, UsageError
from parallelism.schedule import schedule_flops, schedule_traffic

TINY = K.preset("tiny")
TINY_D = K.preset("tiny", n_blocks=2, n_div=4)
BASE = K.preset("bert-base")
BASE_D = K.preset("bert-base", n_blocks=4, n_div=6)

CASES = [  # (strategy, cfg, P, batch, seq, options)
    ("serial", TINY, 1, 2, 8, {}),
    ("serial", TINY_D, 2, 1, 8, {}),
    ("dp", TINY, 3, 4, 8, {}),
    ("dp", TINY, 4, 1, 8, {}),
    ("dp", BASE, 4, 5, 128, {}),
    ("pp", TINY, 3, 3, 8, {"micro_batches": 2}),
    ("pp", TINY, 2, 1, 8, {"stages": "3,1"}),
    ("pp", BASE, 4, 4, 128, {"micro_batches": 4, "stages": [4, 3, 3, 2]}),
    ("tp", TINY, 2, 2, 8, {}),
    ("tp", BASE, 3, 1, 128, {}),
    ("sp", TINY, 3, 2, 8, {}),
    ("sp", BASE, 4, 1, 130, {}),
    ("bp", TINY_D, 2, 1, 8, {}),
    ("bp", TINY_D, 2, 2, 8, {"boundary": "tp"}),
    ("bp", TINY_D, 3, 1, 8, {"assignment": "0,1/2/3"}),
    ("bp", BASE_D, 4, 1, 128, {"assignment": "0,1/2,3/4/5", "boundary": "tp"}),
    ("bp", BASE_D, 3, 4, 128, {}),
    # wire dtypes and overlap: the same steps cut into token spans, bytes in the wire dtype
    ("dp", TINY, 3, 4, 8, {"wire_dtype": "int8"}),
    ("pp", BASE, 4, 4, 128, {"micro_batches": 2, "wire_dtype": "bf16"}),
    ("tp", BASE, 4, 1, 128, {"wire_dtype": "int8", "overlap": "on", "chunks": 3}),
    ("tp", TINY, 2, 2, 8, {"wire_dtype": "fp16", "wire_reduce": "mpi", "overlap": "on", "chunks": 2}),
    ("sp", BASE, 3, 1, 130, {"wire_dtype": "fp16", "overlap": "on", "chunks": 4}),
    ("bp", BASE_D, 4, 1, 128, {"assignment": "0,1/2,3/4/5", "boundary": "tp", "wire_dtype": "int8",
                               "overlap": "on", "chunks": 4}),
    ("bp", TINY_D, 2, 1, 8, {"wire_dtype": "bf16", "overlap": "on", "chunks": 3}),
]


@pytest.mark.parametrize("name,cfg,world,batch,seq,options", CASES,
                         ids=[f"{c[0]}-{c[1].name}-P{c[2]}-b{c[3]}-s{c[4]}-{i}" for i, c in enumerate(CASES)])
def test_steps_sum_to_the_analytic_model(name, cfg, world, batch, seq, options):
    cls = STRATEGIES[name]
    cls.check(cfg, world, **options)
    steps = cls.steps(cfg, world, batch, seq, **options)
    for rank in range(world):
        assert schedule_traffic(steps, world, rank) == {
            op: t for op, t in cls.expected_traffic(cfg, world, rank, batch, seq, **options).items() if t.calls}
        assert schedule_flops(steps, cfg, rank) == cls.flops(cfg, world, rank, batch, seq, **options)


def test_step_counts():
    assert len(STRATEGIES["tp"].steps(BASE, 4, 1, 128)) == 2 * 12
    assert len(STRATEGIES["sp"].steps(BASE, 4, 1, 128)) == 12 + 1
    assert len(STRATEGIES["bp"].steps(BASE_D, 3, 1, 128)) == 4 + 1
    assert len(STRATEGIES["bp"].steps(BASE_D, 3, 1, 128, boundary="tp")) == 4 * 3
    pipeline = STRATEGIES["pp"].steps(BASE, 4, 2, 128, micro_batches=2)
    assert [(s.src, s.dst, s.after) for s in pipeline[4:]] == [(0, 1, None), (1, 2, 4), (2, 3, 5), (None, None, 6)]


def test_uneven_stages():
    pp = STRATEGIES["pp"]
    assert [len(r) for r in pp.stage_layers(BASE, 4, "4,3,3,2")] == [4, 3, 3, 2]
    assert pp.weights_bytes(BASE, 4, 3, stages="4,3,3,2") == K.FP32 * 2 * K.layer_params(BASE, 768)
    assert pp.flops(BASE, 4, 0, 1, 128, stages="4,3,3,2") == 4 * K.layer_flops(BASE, 1, 128, False)
    for bad, message in (("4,4,4", "one layer count per rank"), ("4,4,4,1", "add up to the 12 layers"),
                         ("4,0,4,4", "must be >= 1"), ("a,b,c,d", "must be an integer")):
        with pytest.raises(UsageError, match=message):
            pp.check(BASE, 4, stages=bad)
