"""The counting communicator: every op's result and its counted calls/payload/bus bytes.

MPI tests, any size (mpiexec -n N python -m pytest --with-mpi -p no:cacheprovider -m mpi
tests/test_comm.py); every test runs in both wait modes ('spin' and 'sleep'),
which must give the same results and the same counts.
"""

from __future__ import annotations

import pytest
import torch

from parallelism import CommError, Communicator

pytestmark = pytest.mark.mpi

INTS = [torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8]


@pytest.fixture(scope="module", params=["spin", "sleep"])
def comm(request):
    return Communicator(wait=request.param)


def counted(comm) -> dict:
    return {op: (t.calls, t.payload, t.bus) for op, t in comm.counters.by_op().items()}


def ring_allreduce(n, p):
    return 2 * (p - 1) * n // p


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_allreduce_sums_in_place(comm, dtype):
    p, r = comm.size, comm.rank
    t = torch.full((5, 3), float(r + 1), dtype=dtype)
    comm.reset()
    out = comm.allreduce(t)
    assert out is t
    torch.testing.assert_close(t, torch.full((5, 3), p * (p + 1) / 2, dtype=dtype))
    n = 15 * t.element_size()
    assert counted(comm) == {"allreduce": (1, n, ring_allreduce(n, p))}


def test_allgather_equal_parts(comm):
    p, r = comm.size, comm.rank
    part = torch.arange(6, dtype=torch.float32).view(2, 3) + 100 * r
    comm.reset()
    out = comm.allgather(part)
    expected = torch.cat([torch.arange(6, dtype=torch.float32).view(2, 3) + 100 * k for k in range(p)])
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert counted(comm) == {"allgather": (1, 24, 24 * (p - 1))}
    # Into a caller's buffer.
    buf = torch.empty(2 * p, 3)
    assert comm.allgather(part, out=buf) is buf
    torch.testing.assert_close(buf, expected, rtol=0, atol=0)


def test_allgather_wrong_output_size_refused(comm):
    with pytest.raises(CommError):
        comm.allgather(torch.zeros(2), out=torch.empty(2 * comm.size + 1))


def test_allgatherv_unequal_parts(comm):
    p, r = comm.size, comm.rank
    counts = [k + 1 for k in range(p)]
    part = torch.full((r + 1,), float(r))
    comm.reset()
    out = comm.allgatherv(part, counts)
    expected = torch.cat([torch.full((k + 1,), float(k)) for k in range(p)])
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    total = sum(counts) * 4
    assert counted(comm) == {"allgather": (1, (r + 1) * 4, total - (r + 1) * 4)}


def test_allgatherv_count_mismatch_refused(comm):
    with pytest.raises(CommError):
        comm.allgatherv(torch.zeros(comm.rank + 2), [k + 1 for k in range(comm.size)])


def test_reduce_scatter(comm):
    p, r = comm.size, comm.rank
    counts = [k + 2 for k in range(p)]
    total = sum(counts)
    t = torch.arange(total, dtype=torch.float32) * (r + 1)
    comm.reset()
    mine = comm.reduce_scatter(t, counts)
    start = sum(counts[:r])
    expected = torch.arange(start, start + counts[r], dtype=torch.float32) * (p * (p + 1) / 2)
    torch.testing.assert_close(mine, expected)
    assert counted(comm) == {"reduce_scatter": (1, total * 4, (total - counts[r]) * 4)}


def test_blocking_send_recv_pairs(comm):
    p, r = comm.size, comm.rank
    if p == 1:
        pytest.skip("blocking send/recv needs a partner rank")
    partner = r ^ 1
    comm.reset()
    got = torch.empty(4, dtype=torch.float32)
    if partner >= p:  # the odd rank out of an odd-sized world
        return
    mine = torch.full((4,), float(r))
    if r % 2 == 0:
        comm.send(mine, partner, tag=5)
        comm.recv(got, partner, tag=6)
    else:
        comm.recv(got, partner, tag=5)
        comm.send(mine, partner, tag=6)
    torch.testing.assert_close(got, torch.full((4,), float(partner)), rtol=0, atol=0)
    assert counted(comm) == {"send": (1, 16, 16), "recv": (1, 0, 0)}


@pytest.mark.parametrize("dtype", [torch.float32] + INTS)
def test_isend_irecv_ring(comm, dtype):
    p, r = comm.size, comm.rank
    comm.reset()
    got = torch.empty(3, 2, dtype=dtype)
    recv = comm.irecv(got, (r - 1) % p, tag=1)
    send = comm.isend(torch.full((3, 2), r + 1, dtype=dtype), (r + 1) % p, tag=1)
    assert recv.wait() is got
    send.wait()
    assert torch.equal(got, torch.full((3, 2), (r - 1) % p + 1, dtype=dtype))
    n = 6 * got.element_size()
    assert counted(comm) == {"send": (1, n, n), "recv": (1, 0, 0)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16] + INTS)
def test_bcast_from_last_rank(comm, dtype):
    p, r = comm.size, comm.rank
    root = p - 1
    t = torch.arange(7).to(dtype) if r == root else torch.zeros(7, dtype=dtype)
    comm.reset()
    assert comm.bcast(t, root) is t
    assert torch.equal(t, torch.arange(7).to(dtype))
    n = 7 * t.element_size() if r == root else 0
    assert counted(comm) == {"bcast": (1, n, n)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.int64, torch.int32])
def test_scatterv_gatherv_unequal(comm, dtype):
    p, r = comm.size, comm.rank
    counts = [2 * k + 1 for k in range(p)]  # unequal
    total = sum(counts)
    full = torch.arange(total).to(dtype) if r == 0 else None
    mine = torch.empty(counts[r], dtype=dtype)
    comm.reset()
    comm.scatterv(full, counts, mine, root=0)
    start = sum(counts[:r])
    assert torch.equal(mine, torch.arange(start, start + counts[r]).to(dtype))
    back = torch.empty(total, dtype=dtype) if r == 0 else None
    comm.gatherv(mine * 2, counts, back, root=0)
    if r == 0:
        assert torch.equal(back, torch.arange(total).to(dtype) * 2)
    size = mine.element_size()
    scattered = (total - counts[0]) * size if r == 0 else 0
    gathered = 0 if r == 0 else counts[r] * size
    assert counted(comm) == {"scatter": (1, scattered, scattered), "gather": (1, gathered, gathered)}


def test_allgather_integer_ids(comm):
    p, r = comm.size, comm.rank
    ids = torch.tensor([[r, 30000 + r]], dtype=torch.int64)
    out = comm.allgather(ids)
    assert torch.equal(out, torch.tensor([[k, 30000 + k] for k in range(p)], dtype=torch.int64))


def test_barrier_counted(comm):
    comm.reset()
    comm.barrier()
    assert counted(comm) == {"barrier": (1, 0, 0)}


# -- refusals (raised before any MPI call, identically on every rank) -----------------------------
@pytest.mark.parametrize("op", ["allreduce", "allgather", "bcast", "isend"])
def test_bfloat16_refused(comm, op):
    t = torch.ones(4, dtype=torch.bfloat16)
    args = {"allreduce": (t,), "allgather": (t,), "bcast": (t, 0), "isend": (t, comm.rank)}[op]
    comm.reset()
    with pytest.raises(CommError, match="bfloat16"):
        getattr(comm, op)(*args)
    assert counted(comm) == {}  # refused before anything was sent or counted


def test_integer_reduction_refused(comm):
    with pytest.raises(CommError):
        comm.allreduce(torch.ones(4, dtype=torch.int64))
    with pytest.raises(CommError):
        comm.reduce_scatter(torch.ones(comm.size, dtype=torch.int32), [1] * comm.size)


@pytest.mark.parametrize("op", ["allreduce", "allgather", "bcast", "isend", "irecv"])
def test_non_contiguous_refused(comm, op):
    t = torch.ones(4, 6).t()  # a transposed view would go out in memory order
    assert not t.is_contiguous()
    args = {"allreduce": (t,), "allgather": (t,), "bcast": (t, 0), "isend": (t, comm.rank),
            "irecv": (t, comm.rank)}[op]
    comm.reset()
    with pytest.raises(CommError, match="contiguous"):
        getattr(comm, op)(*args)
    assert counted(comm) == {}
