"""The collectives strategies call, in their wire dtype, each beside its analytic twin.

As Megatron's mappings name what crosses a region boundary, a strategy names the primitive
it uses (`allgather` of parts, `allreduce` of partial sums, `send`/`recv` of an activation,
`gather` of outputs) and the primitive decides how the bytes travel (parallelism/wire.py):
quantise before the call, dequantise after. A primitive returns a `Handle`: `wait()` gives
the result; with `post=True` the call is non-blocking and `test()` moves it along (MPICH
progresses non-blocking collectives only inside MPI calls, so a strategy that computes while
one is in flight calls `progress()` between its pieces of work).

Allreduce (`Wire.reduce`):
- `mpi`: MPI's own sum in the wire dtype: fp32, or fp16 (MPICH sums MPIX_C_FLOAT16 in fp16,
  rounding at each of its P-1 additions: 2048 + 1 + 1 + 1 over 4 ranks gave 2050 where one
  rounding of the exact 2051 gives 2052; an MPI without MPIX_C_FLOAT16 would refuse it: we did
  not check Open MPI). bf16 and int8 cannot go this way: MPI has no
  bf16 sum here, and adding int8 codes that carry different scales is meaningless and overflows.
- `split` (default for every dtype but fp32): one alltoall of the packed buffer (rank j gets
  everyone's chunk j: a reduce-scatter's traffic), a local sum in fp32 of the decoded chunks
  (in rank order, so every rank's share is summed the same way), and one allgather of the
  packed sums. Only bytes travel, nothing is reduced in 8 or 16 bits, nothing overflows; every
  rank decodes the same gathered bytes, so all ranks hold identical results. Chunks are whole
  int8 blocks of 128 values (as even as possible over the ranks). It is one operation of 2 calls
  (traffic rule `allreduce_split`, recorded under op `allreduce`).

Every rank decodes every part it gathers, its own included, so ranks that go on to compute the
same thing (bp's replicated boundary layer) hold bit-identical inputs.
"""

from __future__ import annotations

import weakref
from collections import deque
from dataclasses import dataclass

import torch

from .options import even_split
from .errors import UsageError
from .traffic import Traffic, charge
from .wire import INT8_BLOCK, check_dtype, int8_blocks, pack, unpack, wire_bytes

#: Option defaults, merged into the `options` of the strategies that take them.
WIRE_OPTIONS = {"wire_dtype": "fp32"}
REDUCE_OPTIONS = {"wire_reduce": "auto"}
REDUCE_MODES = ("auto", "mpi", "split")
MPI_SUMS = ("fp32", "fp16")  # wire dtypes MPI's own allreduce can sum (MPICH)


@dataclass(frozen=True)
class Wire:
    dtype: str = "fp32"
    reduce: str = "mpi"  # how an allreduce runs: mpi or split (resolved from 'auto')

    @classmethod
    def of(cls, who: str, options: dict) -> "Wire":
        dtype = check_dtype(who, options.get("wire_dtype", "fp32"))
        reduce = options.get("wire_reduce", "auto")
        if reduce not in REDUCE_MODES:
            raise UsageError(f"{who}: wire_reduce must be one of {', '.join(REDUCE_MODES)}, got {reduce!r}")
        if reduce == "auto":
            reduce = "mpi" if dtype == "fp32" else "split"
        if reduce == "mpi" and dtype not in MPI_SUMS:
            raise UsageError(f"{who}: wire_dtype {dtype} cannot travel through MPI's own allreduce "
                             f"(wire_reduce=mpi sums only {', '.join(MPI_SUMS)}): use wire_reduce=split")
        return cls(dtype, reduce)

    @property
    def packed(self) -> bool:
        return self.dtype != "fp32"

    def nbytes(self, n: int) -> int:
        return wire_bytes(n, self.dtype)


def offsets(sizes: list[int]) -> list[int]:
    return [sum(sizes[:i]) for i in range(len(sizes))]


# -- handles ------------------------------------------------------------------------------
class Handle:
    """An operation in flight (or done): `test()` moves it along, `wait()` finishes it."""

    def __init__(self, requests=(), finish=None, result=None):
        self._requests, self._finish, self._result = list(requests), finish, result

    def test(self) -> bool:
        return all([request.test() for request in self._requests])  # a list: test every one

    def wait(self):
        for request in self._requests:
            request.wait()
        if self._finish is not None:
            self._result, self._finish = self._finish(), None
        return self._result


def progress(handles) -> None:
    for handle in handles:
        handle.test()


# -- allgather ----------------------------------------------------------------------------
def allgather(comm, wire: Wire, part: torch.Tensor, counts: list[int], out: torch.Tensor,
              displs: list[int] | None = None, post: bool = False) -> Handle:
    """Rank r's counts[r] fp32 values (`part`, contiguous) land in every rank's flat `out` at
    element displs[r] (default: rank order). One allgatherv call of the packed parts."""
    if not wire.packed:
        if post:
            return Handle([comm.iallgatherv(part.view(-1), counts, out, displs)], result=out)
        return Handle(result=comm.allgatherv(part.view(-1), counts, out, displs))
    sizes = [wire.nbytes(c) for c in counts]
    gathered = torch.empty(sum(sizes), dtype=torch.uint8)
    packed = pack(part, wire.dtype)
    displs = offsets(counts) if displs is None else displs

    def finish():
        for at, size, d, n in zip(offsets(sizes), sizes, displs, counts):
            unpack(gathered[at:at + size], wire.dtype, out[d:d + n])
        return out
    if post:
        return Handle([comm.iallgatherv(packed, sizes, gathered)], finish)
    comm.allgatherv(packed, sizes, gathered)
    return Handle(finish=finish)


def allgather_traffic(wire: Wire, counts: list[int], rank: int, world: int) -> Traffic:
    sizes = [wire.nbytes(c) for c in counts]
    return charge("allgather", sizes[rank], sum(sizes), world)


# -- allreduce ----------------------------------------------------------------------------
def split_counts(n: int, world: int) -> list[int]:
    """Values of each rank's chunk of an n-value split allreduce: whole int8 blocks, as even
    as possible over the ranks, the last chunk ending at n."""
    ends = [min(n, INT8_BLOCK * sum(even_split(int8_blocks(n), world)[:r + 1])) for r in range(world)]
    return [end - start for start, end in zip([0] + ends[:-1], ends)]


def allreduce(comm, wire: Wire, x: torch.Tensor, post: bool = False) -> Handle:
    """In-place sum over ranks of contiguous fp32 `x`; the handle's wait() gives x."""
    if wire.reduce == "split":
        handle = SplitAllreduce(comm, wire, x)
        if not post:
            handle.wait()
        return handle
    if not wire.packed:
        return Handle([comm.iallreduce(x)], result=x) if post else Handle(result=comm.allreduce(x))
    half = x.to(torch.float16)  # wire_reduce=mpi, fp16: MPI sums the fp16 values
    if post:
        return Handle([comm.iallreduce(half)], lambda: x.copy_(half))
    comm.allreduce(half)
    return Handle(result=x.copy_(half))


# Per communicator: the split allreduces whose allgather phase is not posted yet, in the order
# their alltoall was posted (program order: the same on every rank).
_AWAITING_GATHER: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


class SplitAllreduce(Handle):
    """alltoall of packed chunks -> fp32 sum of this rank's chunk -> allgather of packed sums.

    When the allgather can be posted depends on when the alltoall has finished, which differs
    between ranks; MPI matches collectives by posting order, so the allgathers go on the
    communicator's `sibling` and strictly in the order of their alltoalls (a FIFO per
    communicator): the same order on every rank, whoever tests what when.
    """

    def __init__(self, comm, wire: Wire, x: torch.Tensor):
        self.comm, self.wire, self.x = comm, wire, x
        flat, rank, world = x.view(-1), comm.rank, comm.size
        self.counts = split_counts(flat.numel(), world)
        self.sizes = [wire.nbytes(c) for c in self.counts]
        if wire.packed:
            send = torch.empty(sum(self.sizes), dtype=torch.uint8)
            for start, at, n, size in zip(offsets(self.counts), offsets(self.sizes), self.counts, self.sizes):
                pack(flat[start:start + n], wire.dtype, send[at:at + size])
        else:
            send = flat.view(torch.uint8)  # fp32: the chunks are the buffer itself
        self.received = torch.empty(world * self.sizes[rank], dtype=torch.uint8)
        self.totals = comm.count("allreduce", self.sizes[rank], sum(self.sizes), rule="allreduce_split")
        self.first = comm.ialltoallv(send, self.sizes, self.received, [self.sizes[rank]] * world,
                                     totals=self.totals)
        self.second = None
        _AWAITING_GATHER.setdefault(comm, deque()).append(self)
        super().__init__()

    def _advance(self, block: bool) -> bool:
        """Post allgather phases in FIFO order up to this one's; False if an alltoall before
        it (or its own) has not finished and `block` is False."""
        queue = _AWAITING_GATHER[self.comm]
        while self.second is None:
            head = queue[0]
            if block:
                head.first.wait()
            elif not head.first.test():
                return False
            queue.popleft()
            head._sum_and_gather()
        return True

    def _sum_and_gather(self) -> None:
        size, n, dtype = self.sizes[self.comm.rank], self.counts[self.comm.rank], self.wire.dtype
        total, part = torch.zeros(n), torch.empty(n)
        for k in range(self.comm.size):  # rank order: the same sum on every rank
            total += unpack(self.received[k * size:(k + 1) * size], dtype, part)
        self.gathered = torch.empty(sum(self.sizes), dtype=torch.uint8)
        self.second = self.comm.sibling().iallgatherv(pack(total, dtype), self.sizes, self.gathered,
                                                      totals=self.totals)

    def test(self) -> bool:
        return self._advance(block=False) and self.second.test()

    def wait(self) -> torch.Tensor:
        self._advance(block=True)
        if self._result is None:
            self.second.wait()
            flat = self.x.view(-1)
            for start, at, n, size in zip(offsets(self.counts), offsets(self.sizes), self.counts, self.sizes):
                unpack(self.gathered[at:at + size], self.wire.dtype, flat[start:start + n])
            self._result = self.x
        return self._result


def allreduce_parts(wire: Wire, n: int, world: int) -> tuple[str, list[int], int]:
    """(traffic rule, each rank's part, whole) in bytes of an allreduce of n values."""
    if wire.reduce == "mpi":
        return "allreduce", [wire.nbytes(n)] * world, wire.nbytes(n)
    sizes = [wire.nbytes(c) for c in split_counts(n, world)]
    return "allreduce_split", sizes, sum(sizes)


def allreduce_traffic(wire: Wire, n: int, rank: int, world: int) -> Traffic:
    rule, parts, whole = allreduce_parts(wire, n, world)
    return charge(rule, parts[rank], whole, world)


# -- point to point and gather --------------------------------------------------------------
def send(comm, wire: Wire, x: torch.Tensor, dest: int, tag: int) -> Handle:
    """Post the send of contiguous fp32 `x` (packed first)."""
    return Handle([comm.isend(pack(x, wire.dtype) if wire.packed else x, dest, tag)])


def recv(comm, wire: Wire, out: torch.Tensor, source: int, tag: int) -> Handle:
    """Post the receive into contiguous fp32 `out`; wait() decodes and gives `out`."""
    if not wire.packed:
        return Handle([comm.irecv(out, source, tag)], result=out)
    packed = torch.empty(wire.nbytes(out.numel()), dtype=torch.uint8)
    return Handle([comm.irecv(packed, source, tag)], lambda: unpack(packed, wire.dtype, out))


def gather(comm, wire: Wire, part: torch.Tensor, counts: list[int], out: torch.Tensor | None, root: int):
    """Rank r's counts[r] fp32 values land at their rank-order offset in the root's flat `out`."""
    if not wire.packed:
        return comm.gatherv(part, counts, out, root)
    sizes = [wire.nbytes(c) for c in counts]
    gathered = torch.empty(sum(sizes), dtype=torch.uint8) if comm.rank == root else None
    comm.gatherv(pack(part, wire.dtype), sizes, gathered, root)
    if comm.rank == root:
        flat = out.view(-1)
        for at, size, d, n in zip(offsets(sizes), sizes, offsets(counts), counts):
            unpack(gathered[at:at + size], wire.dtype, flat[d:d + n])
    return out
