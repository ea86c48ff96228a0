"""The traffic model and the strategies' pure formulas, against numbers computed by hand.

No MPI: the formulas are functions of (config, P, rank, options, batch, seq). The MPI tests
(test_strategies.py) check that the communicator counts exactly these numbers.
"""

import pytest

import kernels as K
from parallelism import STRATEGIES, UsageError
from parallelism.traffic import Traffic, charge, total

BERT_BASE_S128 = 128 * 768 * 4  # one fp32 activation, batch 1: 393,216 bytes


def bus(name, cfg, world, rank=0, batch=1, seq=128, **options):
    return total(STRATEGIES[name].expected_traffic(cfg, world, rank, batch, seq, **options)).bus


def test_rules_by_hand():
    assert charge("allreduce", whole=1000, world=4) == Traffic(1, 1000, 1500)       # 2(P-1)/P
    assert charge("allgather", 250, 1000, 4) == Traffic(1, 250, 750)                # (P-1)/P
    assert charge("reduce_scatter", 250, 1000, 4) == Traffic(1, 1000, 750)
    assert charge("send", 64, calls=3) == Traffic(3, 192, 192)
    assert charge("recv", calls=2) == Traffic(2, 0, 0)


def test_bert_base_bytes_per_rank_by_hand():
    """The figures of the communication-volume report (P=4, N_b=4, N_div=4, s=128, b=1)."""
    base = K.preset("bert-base")
    decoupled = base.replace(n_blocks=4, n_div=4)
    assert bus("tp", base, 4) == 12 * 2 * (2 * 3 * BERT_BASE_S128 // 4) == 14_155_776
    assert bus("bp", decoupled, 4) == 4 * 3 * BERT_BASE_S128 // 4 == 1_179_648
    assert bus("bp", decoupled, 4, boundary="tp") == 1_179_648 + 4 * 2 * 589_824 == 5_898_240
    assert bus("sp", base, 4) == 12 * 2 * 96 * 768 * 4 + 96 * 768 * 4 == 7_372_800
    assert bus("pp", base, 4) == BERT_BASE_S128 and bus("pp", base, 4, rank=3) == 0
    assert bus("tp", base, 4) / bus("bp", decoupled, 4) == 12.0


def test_unequal_parts():
    cfg = K.preset("tiny", n_blocks=2, n_div=4)  # slice: 16 columns
    slice_bytes = 8 * 16 * 4
    table = STRATEGIES["bp"].expected_traffic(cfg, 2, 0, 1, 8, assignment="0,1,2/3")
    assert table == {"allgather": Traffic(2, 2 * 3 * slice_bytes, 2 * 1 * slice_bytes)}
    dp = [STRATEGIES["dp"].expected_traffic(cfg.original(), 3, r, 4, 8) for r in range(3)]
    assert dp[0]["scatter"].payload == (4 - 2) * 3 * 8 * 4   # rows 2,1,1: the root hands out 2 rows of ids, mask, types
    assert dp[1]["gather"].payload == 1 * 8 * 64 * 4


def test_weights_and_flops_add_up():
    cfg = K.preset("bert-base")
    full = K.FP32 * K.model_params(cfg)
    assert full == 4 * (30522 * 768 + 512 * 768 + 2 * 768 + 2 * 768 + 12 * 7_087_872)
    assert sum(STRATEGIES["pp"].weights_bytes(cfg, 4, r) for r in range(4)) == full
    assert sum(STRATEGIES["pp"].flops(cfg, 4, r, 1, 128) for r in range(4)) == K.forward_flops(cfg, 1, 128)
    assert STRATEGIES["tp"].flops(cfg, 4, 0, 1, 128) * 4 == K.forward_flops(cfg, 1, 128)
    d = cfg.replace(n_blocks=4, n_div=4)
    # Sub-blocks are spread over the ranks, boundary layers replicated.
    sub_block_flops = sum(STRATEGIES["bp"].flops(d, 4, r, 1, 128) for r in range(4))
    assert sub_block_flops == K.forward_flops(d, 1, 128) + 3 * 4 * K.layer_flops(d, 1, 128, False)


def test_formulas_refuse_what_the_strategy_refuses():
    with pytest.raises(UsageError, match="n_div % P"):
        STRATEGIES["bp"].expected_traffic(K.preset("tiny", n_blocks=2, n_div=4), 3, 0, 1, 8)
    with pytest.raises(UsageError, match="ranks must be <= tokens"):
        STRATEGIES["sp"].expected_traffic(K.preset("tiny"), 4, 0, 1, 2)
