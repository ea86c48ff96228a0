"""Wire dtypes and overlap: codecs, bytes by formula, bad combinations, and every strategy
x wire dtype x overlap against the serial reference with counted == analytic traffic.

The codec, byte-ratio and refusal tests need no MPI. The MPI tests are size-agnostic:
    mpiexec -n N python -m pytest --with-mpi -p no:cacheprovider -m mpi tests/test_wire.py
"""

from __future__ import annotations

import pytest
import torch

import kernels as K
from conftest import padded_batch, tokenize
from parallelism import STRATEGIES, UsageError
from parallelism.traffic import total
from parallelism.wire import INT8_BLOCK, WIRE_DTYPES, pack, roundtrip, unpack, wire_bytes
from parallelism.wire_ops import split_counts

# Output tolerances against the fp32 serial reference, per wire dtype (fp32: as every
# strategy test; the others: what one quantisation per communication costs, measured on tiny
# at P=2-4: fp16 max_abs_err <= 1.4e-3, bf16 <= 1.1e-2, int8 <= 2.6e-2, with a margin).
MAX_ABS_ERR = {"fp32": 1e-5, "fp16": 5e-3, "bf16": 4e-2, "int8": 8e-2}
MIN_COSINE = {"fp32": 1 - 1e-7, "fp16": 0.9999, "bf16": 0.9999, "int8": 0.999}


# -- codecs (no MPI) -------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", WIRE_DTYPES)
@pytest.mark.parametrize("n", [1, 63, 64, 65, 1000])
def test_pack_is_wire_bytes_and_error_is_bounded(dtype, n):
    x = torch.randn(n, generator=torch.Generator().manual_seed(n)) * 3
    packed = pack(x, dtype)
    assert packed.dtype == torch.uint8 and packed.numel() == wire_bytes(n, dtype)
    err = (unpack(packed, dtype, torch.empty(n)) - x).abs()
    # round to nearest: half an ulp of an 11- or 8-bit mantissa
    bound = x.abs() * {"fp32": 0.0, "fp16": 2.0**-11, "bf16": 2.0**-8, "int8": 2.0**-8}[dtype]
    if dtype == "int8":  # but the block's largest value: half a step of its scale, (the others' max|x|) / 254
        blocks = torch.nn.functional.pad(x.abs(), (0, -n % INT8_BLOCK)).view(-1, INT8_BLOCK)
        others = blocks.topk(min(2, n), dim=1).values[:, -1] if n > 1 else torch.zeros(1)
        largest = blocks.argmax(1) + torch.arange(blocks.shape[0]) * INT8_BLOCK
        step = (others / 254).repeat_interleave(INT8_BLOCK)[:n] * (1 + 1e-6)
        step[largest[largest < n]] = bound[largest[largest < n]]
        bound = step
    assert bool((err <= bound + 1e-7).all())


def test_wire_bytes_by_hand():
    # int8: per block of 128 values an fp32 scale, a bf16 largest value and its uint8 index
    assert [wire_bytes(128, d) for d in WIRE_DTYPES] == [512, 256, 256, 128 + 7]
    assert wire_bytes(129, "int8") == 129 + 2 * 7        # a second, shorter block
    assert wire_bytes(98_304, "int8") / wire_bytes(98_304, "fp32") == 0.263671875


def test_zeros_and_non_finite_values():
    assert bool((roundtrip(torch.zeros(100), "int8") == 0).all())  # scale 0: no division by zero
    for dtype in WIRE_DTYPES:  # a NaN or inf never comes out finite: the output check sees it
        for bad in (float("nan"), float("inf")):
            x = torch.ones(130)
            x[70] = bad
            assert not bool(torch.isfinite(roundtrip(x, dtype)).all()), (dtype, bad)


def test_unaligned_parts_of_a_gathered_buffer():
    x = torch.randn(200)
    buffer = torch.zeros(1 + wire_bytes(200, "int8"), dtype=torch.uint8)
    pack(x, "int8", buffer[1:])  # scales at an odd offset
    assert torch.equal(unpack(buffer[1:], "int8", torch.empty(200)), roundtrip(x, "int8"))


def test_int8_keeps_each_blocks_largest_value_apart():
    x = torch.full((256,), 0.5)
    x[3], x[200] = 300.0, -40.0  # one outlier per block: the rest keeps its fine scale
    y = roundtrip(x, "int8")
    assert float(y[3]) == 300.0 and float(y[200]) == -40.0
    assert float((y - x).abs().max()) <= 0.5 / 254 + 1e-7


def test_split_counts_are_whole_blocks():
    assert split_counts(4 * 192 * 128, 4) == [192 * 128] * 4
    assert split_counts(300, 4) == [128, 128, 44, 0]
    assert sum(split_counts(12345, 3)) == 12345


# -- bytes by formula (no MPI) ------------------------------------------------------------------
BASE = K.preset("bert-base")
FORMULA_CASES = [  # (strategy, config, options)
    ("dp", BASE, {}), ("pp", BASE, {"micro_batches": 2}), ("tp", BASE, {}), ("sp", BASE, {}),
    ("bp", BASE.replace(n_blocks=4, n_div=4), {"boundary": "replicate"}),
    ("bp", BASE.replace(n_blocks=4, n_div=4), {"boundary": "tp"})]
OVERLAPS = [{}, {"overlap": "on", "chunks": 4}]


def table(name, cfg, rank, options, batch=4, seq=128, world=4):
    return STRATEGIES[name].expected_traffic(cfg, world, rank, batch, seq, **options)


@pytest.mark.parametrize("overlap", OVERLAPS, ids=["off", "on"])
@pytest.mark.parametrize("name,cfg,options", FORMULA_CASES,
                         ids=["dp", "pp", "tp", "sp", "bp-replicate", "bp-tp"])
def test_bytes_follow_the_wire_dtype(name, cfg, options, overlap):
    """fp16 and bf16 exactly 0.5x fp32, int8 <= 0.27x (scales included), payload and bus, on
    every rank and op; only dp's token ids (int32, not activations) keep their size."""
    if overlap and "overlap" not in STRATEGIES[name].options:
        pytest.skip(f"{name} has no overlap option")
    for rank in range(4):
        fp32 = table(name, cfg, rank, {**options, **overlap})
        for dtype, limit in (("fp16", 0.5), ("bf16", 0.5), ("int8", 0.27)):
            wired = table(name, cfg, rank, {**options, **overlap, "wire_dtype": dtype})
            assert set(wired) == set(fp32)
            for op, t in wired.items():
                base = fp32[op]
                if name == "dp" and op == "scatter":
                    assert t == base
                    continue
                for field in ("payload", "bus"):
                    wire_b, fp32_b = getattr(t, field), getattr(base, field)
                    ok = 2 * wire_b == fp32_b if limit == 0.5 else wire_b <= limit * fp32_b
                    assert ok and (wire_b > 0) == (fp32_b > 0), (rank, op, dtype, field, wire_b, fp32_b)


@pytest.mark.parametrize("name,cfg,options", FORMULA_CASES[2:], ids=["tp", "sp", "bp-replicate", "bp-tp"])
def test_overlap_moves_the_same_bytes_in_more_messages(name, cfg, options):
    for rank in range(4):
        off, on = total(table(name, cfg, rank, options)), total(table(name, cfg, rank, {**options, **OVERLAPS[1]}))
        assert (on.payload, on.bus, on.calls) == (off.payload, off.bus, 4 * off.calls)


def test_split_allreduce_is_two_calls_with_allreduce_bytes():
    fp32 = table("tp", BASE, 0, {})["allreduce"]
    split = table("tp", BASE, 0, {"wire_reduce": "split"})["allreduce"]
    half = table("tp", BASE, 0, {"wire_dtype": "fp16", "wire_reduce": "mpi"})["allreduce"]
    assert (split.payload, split.bus, split.calls) == (fp32.payload, fp32.bus, 2 * fp32.calls)
    assert (half.payload * 2, half.bus * 2, half.calls) == (fp32.payload, fp32.bus, fp32.calls)


# -- bad combinations: one line, UsageError (exit 2 through bench.cli.run) ----------------------------
TINY, DECOUPLED = K.preset("tiny"), K.preset("tiny", n_blocks=2, n_div=4)
REFUSED = [  # (strategy, config, options, seq, message)
    ("tp", TINY, {"wire_dtype": "int8", "wire_reduce": "mpi"}, 8,
     "tp: wire_dtype int8 cannot travel through MPI's own allreduce"),
    ("bp", DECOUPLED, {"wire_dtype": "bf16", "wire_reduce": "mpi", "boundary": "tp"}, 8,
     "bp: wire_dtype bf16 cannot travel through MPI's own allreduce"),
    ("sp", TINY, {"wire_dtype": "fp8"}, 8, "sp: wire_dtype must be one of fp32, fp16, bf16, int8"),
    ("tp", TINY, {"wire_reduce": "ring"}, 8, "tp: wire_reduce must be one of auto, mpi, split"),
    ("bp", DECOUPLED, {"overlap": "yes"}, 8, "bp: overlap must be off or on"),
    ("tp", TINY, {"overlap": "on", "chunks": 0}, 8, "tp: option chunks must be >= 1"),
    ("tp", TINY, {"overlap": "on", "chunks": 9}, 8, r"tp: chunks \(9\) must be <= the sequence length \(8\)"),
    ("bp", DECOUPLED, {"overlap": "on", "chunks": 9}, 8, r"bp: chunks \(9\) must be <= the sequence length"),
    ("sp", TINY, {"overlap": "on", "chunks": 3}, 8, r"sp: chunks \(3\) must be <= the tokens of each rank \(2\)"),
]


@pytest.mark.parametrize("name,cfg,options,seq,message", REFUSED, ids=[f"{c[0]}-{i}" for i, c in enumerate(REFUSED)])
def test_bad_combinations_are_refused_in_one_line(name, cfg, options, seq, message):
    with pytest.raises(UsageError, match=message) as info:
        STRATEGIES[name].check(cfg, 4, **options)
        STRATEGIES[name].expected_traffic(cfg, 4, 0, 1, seq, **options)  # span checks need seq
    assert "\n" not in str(info.value)


# -- every strategy x wire dtype x overlap, for real (MPI) --------------------------------------
MPI_CASES = [  # (id, strategy, config, options)
    ("dp", "dp", TINY, {}), ("pp-mb2", "pp", TINY, {"micro_batches": 2}), ("tp", "tp", TINY, {}),
    ("sp", "sp", TINY, {}), ("bp-replicate", "bp", DECOUPLED, {}), ("bp-tp", "bp", DECOUPLED, {"boundary": "tp"}),
    ("bp-unequal-tp", "bp", DECOUPLED, {"boundary": "tp", "assignment": "unequal"}),
    ("tp-fp16-mpi", "tp", TINY, {"wire_reduce": "mpi"})]
UNEQUAL = {1: "3,1,0,2", 2: "3,0,2/1", 3: "0,2/3/1", 4: "2/0/3/1"}


def check_output(out, reference, dtype, max_abs_err=MAX_ABS_ERR) -> tuple[float, float]:
    """Finite and within the dtype's tolerance (cosine, and max_abs_err if bounds are given);
    returns (max_abs_err, mean cosine over token vectors)."""
    assert out is not None and out.shape == reference.shape and bool(torch.isfinite(out).all())
    err = float((out - reference).abs().max())
    cosine = float(torch.nn.functional.cosine_similarity(out.flatten(0, -2), reference.flatten(0, -2), dim=-1).mean())
    assert cosine >= MIN_COSINE[dtype], (dtype, err, cosine)
    assert max_abs_err is None or err <= max_abs_err[dtype], (dtype, err, cosine)
    return err, cosine


def run_case(comm, name, cfg, weights, options, ids, mask, reference, dtype):
    cls = STRATEGIES[name]
    if options.get("assignment") == "unequal":
        options = {**options, "assignment": UNEQUAL[comm.size]}
    try:
        cls.check(cfg, comm.size, **options)
        cls.expected_traffic(cfg, comm.size, comm.rank, *ids.shape, **options)
    except UsageError as err:
        pytest.skip(f"P={comm.size}: {err}")
    strategy = cls(cfg, weights, comm, **options)
    for _ in range(2):  # a second forward: no state leaks between calls
        comm.reset()
        out = strategy.forward(ids, mask)
        counted = {op: (t.calls, t.payload, t.bus) for op, t in comm.counters.by_op().items()}
        expected = {op: (t.calls, t.payload, t.bus) for op, t in strategy.traffic_here(*ids.shape).items()}
        assert counted == expected, f"rank {comm.rank}"
        if strategy.holds_output():
            check_output(out, reference, dtype)
        if name in ("tp", "sp", "bp"):  # every rank holds the same output, bit for bit
            first = comm.bcast_object(out if comm.rank == 0 else None)
            assert torch.equal(out, first)


@pytest.mark.mpi
@pytest.mark.parametrize("overlap", ["off", "on"])
@pytest.mark.parametrize("dtype", WIRE_DTYPES)
@pytest.mark.parametrize("case", MPI_CASES, ids=[c[0] for c in MPI_CASES])
def test_wire_and_overlap_match_reference_and_traffic(comm, case, dtype, overlap):
    key, name, cfg, options = case
    if overlap == "on" and "overlap" not in STRATEGIES[name].options:
        pytest.skip(f"{name} has no overlap option (pp pipelines micro-batches instead)")
    if options.get("wire_reduce") == "mpi" and dtype not in ("fp32", "fp16"):
        pytest.skip("wire_reduce=mpi sums fp32 and fp16 only (refusal tested above)")
    options = {**options, "wire_dtype": dtype, "overlap": overlap, "chunks": 3} if overlap == "on" \
        else {**options, "wire_dtype": dtype}
    weights = K.init_weights(cfg, seed=7)
    ids, mask = padded_batch(cfg.vocab, 3, 12)
    reference = K.ReferenceModel(cfg, weights)(ids, mask)
    run_case(comm, name, cfg, weights, options, ids, mask, reference, dtype)


# -- the cost in error on real MiniLM weights and text ---------------------------------------------
@pytest.mark.mpi
@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["fp16", "bf16", "int8"])
def test_minilm_error_per_wire_dtype(comm, minilm_dir, dtype):
    """fp16 cosine >= 0.9999 and int8 >= 0.999 against fp32 on real weights and sentences;
    prints the measured figures (pytest -s)."""
    cfg, weights = K.load_checkpoint(minilm_dir)
    ids, mask = tokenize(minilm_dir)
    reference = K.ReferenceModel(cfg, weights)(ids, mask)
    for name, options in (("dp", {}), ("pp", {"micro_batches": 2}), ("tp", {}), ("sp", {"overlap": "on", "chunks": 2})):
        try:
            STRATEGIES[name].check(cfg, comm.size, **options)
        except UsageError:
            continue
        strategy = STRATEGIES[name](cfg, weights, comm, wire_dtype=dtype, **options)
        out = strategy.forward(ids, mask)
        if strategy.holds_output():
            err, cosine = check_output(out, reference, dtype, max_abs_err=None)  # real activations are larger
            print(f"\nminilm P={comm.size} {name} {dtype}: max_abs_err {err:.2e}, mean cosine {cosine:.7f}")
