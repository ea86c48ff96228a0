"""The one communicator every strategy talks through: zero-copy mpi4py buffer
calls on torch tensors, each counted.

Nothing outside this module imports mpi4py. Every operation works on the
memory of contiguous tensors (no pickling) and adds to per-op counters:
`calls` (one per collective call, one per point-to-point message), `payload`
and `bus` bytes as `parallelism.traffic` defines them (the same rules the
strategies' analytic traffic uses), and `seconds` of wall time inside the
calls. Uncounted calls serve the harness: `sync` (a barrier that waits the
communicator's way), `idle_barrier` (for ranks with nothing to do), the
pickled metadata helpers (never in a hot loop) and `free`.
"""

from __future__ import annotations

import atexit
import os
import threading
from time import perf_counter, sleep
from dataclasses import dataclass, field

import torch
from mpi4py import MPI

from .errors import CommError, UsageError
from .traffic import CALLS, RULES

# torch dtype -> MPI datatype (via the numpy type code MPI knows it by).
_MPI_TYPES = {dtype: MPI.Datatype.fromcode(code) for dtype, code in [
    (torch.float32, "f"), (torch.float16, "e"), (torch.float64, "d"), (torch.int64, "q"),
    (torch.int32, "i"), (torch.int16, "h"), (torch.int8, "b"), (torch.uint8, "B"), (torch.bool, "?")]}
REDUCE_DTYPES = (torch.float32, torch.float16)
_REDUCE_TYPES = {dtype: _MPI_TYPES[dtype] for dtype in REDUCE_DTYPES}
_fromaddress = MPI.buffer.fromaddress


def _buffer(tensor: torch.Tensor, op: str, types=_MPI_TYPES) -> tuple[list, int]:
    """The tensor's own memory as an MPI buffer spec [memory, datatype], and its byte size.

    Built from the data pointer (no copy, ~0.3 us; `tensor.numpy()` costs
    twice that and mpi4py's DLPack path ten times that).
    """
    mpi_type = types.get(tensor.dtype)
    if mpi_type is None:
        allowed = ", ".join(str(d).removeprefix("torch.") for d in types)
        raise CommError(f"{op}: dtype {tensor.dtype} not supported (allowed: {allowed}); "
                        "MPI cannot reduce bfloat16 correctly, move it as int16 if you must")
    if not tensor.is_contiguous():
        # A transposed tensor would silently go out in memory order: refuse it.
        raise CommError(f"{op}: tensor must be contiguous (call .contiguous())")
    nbytes = tensor.nbytes
    return [_fromaddress(tensor.data_ptr(), nbytes), mpi_type], nbytes


@dataclass
class OpTotals:
    calls: int = 0
    payload: int = 0
    bus: int = 0
    seconds: float = 0.0

    def add(self, other: "OpTotals") -> None:
        self.calls += other.calls
        self.payload += other.payload
        self.bus += other.bus
        self.seconds += other.seconds


@dataclass
class Counters:
    """What one rank communicated: op -> OpTotals."""
    ops: dict = field(default_factory=dict)

    def by_op(self) -> dict[str, OpTotals]:
        return self.ops

    def total(self) -> OpTotals:
        out = OpTotals()
        for totals in self.ops.values():
            out.add(totals)
        return out

    def seconds(self) -> float:
        return sum(t.seconds for t in self.ops.values())

    def merge(self, other: "Counters") -> None:
        for op, totals in other.ops.items():
            self.ops.setdefault(op, OpTotals()).add(totals)


def _displacements(counts: list[int]) -> list[int]:
    return [sum(counts[:r]) for r in range(len(counts))]


class _Progress:
    """Keeps MPI moving while the caller computes: MPICH advances a non-blocking collective
    only inside MPI calls, so a ring allgather posted before a GEMM would sit after its first
    step until the next call. While any collective posted with `background=True` is in flight
    this thread pokes MPI's progress engine (an Iprobe on a communicator of its own; Iprobe on
    COMM_SELF does not progress) every `interval` seconds, sleeping in between (torch releases
    the GIL in its kernels, so the GEMMs run meanwhile). Measured here (2 local ranks, a 64 MiB
    Iallreduce posted before 1.5 s of matmuls): Wait afterwards took 70-76 ms without it, 0.0 ms
    with it. Its own cost while a request is pending (2 local ranks, loaded machine): 4.2% of a
    core poking every 200 us, 3.0% every 500 us, 2.0% every 1 ms; 500 us adds at most half a
    millisecond per ring step, a step of a 100 KiB part taking ~0.8 ms even at 1 Gbit/s.
    Needs MPI_THREAD_MULTIPLE (mpi4py's default); without it there is no thread. The interval
    comes from $DETR_PROGRESS_INTERVAL_S (default 500e-6; 0: no thread, so only the strategies'
    own tests between token spans move a posted operation). Under a CPU quota the thread's
    pokes and the TCP work they trigger are paid from the same quota as the GEMMs
    (docs/DESIGN.md, "Overlap under a CPU quota")."""

    def __init__(self, interval: float = 500e-6):
        self.interval, self.outstanding = interval, 0
        self._lock, self._wake, self._stop, self._thread = threading.Lock(), threading.Event(), False, None

    def add(self) -> None:
        with self._lock:
            self.outstanding += 1
            self._wake.set()
            if self._thread is None and self.interval > 0 and MPI.Query_thread() == MPI.THREAD_MULTIPLE:
                self._thread = threading.Thread(target=self._run, name="mpi-progress", daemon=True)
                self._thread.start()

    def done(self) -> None:
        with self._lock:
            self.outstanding -= 1
            if self.outstanding == 0:
                self._wake.clear()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            if self._stop:
                return
            _PROGRESS.Iprobe(MPI.ANY_SOURCE, MPI.ANY_TAG)
            sleep(self.interval)

    def stop(self) -> None:
        """Before MPI finalizes (atexit): no MPI call may follow."""
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)


def progress_interval() -> float:
    """Seconds between the progress thread's pokes: $DETR_PROGRESS_INTERVAL_S, default 500e-6."""
    value = os.environ.get("DETR_PROGRESS_INTERVAL_S", "500e-6")
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= 1:
        raise UsageError(f"DETR_PROGRESS_INTERVAL_S must be seconds in [0, 1] (0: no progress thread), got {value!r}")
    return seconds


class Request:
    """A non-blocking operation; `wait()` charges the waiting time to its op and returns its tensor.

    `test()` completes it if it is done (and lets MPI move it along). Collectives posted with
    `background=True` are also moved along by the progress thread (`_Progress`) until done.
    """

    def __init__(self, comm: "Communicator", request, totals: OpTotals, tensor: torch.Tensor, *keep,
                 background: bool = False):
        # Holding the tensors keeps their memory alive until the transfer completes.
        self._comm, self._request, self._totals, self._tensor, self._keep = comm, request, totals, tensor, keep
        self._done, self._background = False, background
        if background:
            PROGRESS.add()

    def _finished(self) -> None:
        self._done = True
        if self._background:
            PROGRESS.done()

    def test(self) -> bool:
        if not self._done:
            start = perf_counter()
            if self._request.Test():
                self._finished()
            self._totals.seconds += perf_counter() - start
        return self._done

    def wait(self) -> torch.Tensor:
        if not self._done:
            start = perf_counter()
            self._comm._complete(self._request)
            self._totals.seconds += perf_counter() - start
            self._finished()
        return self._tensor


class Communicator:
    """Counting, zero-copy wrapper over an mpi4py communicator.

    wait: "spin" lets MPI busy-poll inside blocking calls (fastest on idle
    cores); "sleep" issues non-blocking calls and polls them with short
    sleeps, so that a rank under a CPU quota does not burn its budget waiting
    (docs/DESIGN.md, "Waiting under a CPU quota"). Default: $DETR_COMM_WAIT, else "spin".
    """

    def __init__(self, mpi_comm=None, wait: str | None = None, sleep_s: float = 50e-6):
        self.mpi = mpi_comm if mpi_comm is not None else MPI.COMM_WORLD
        self.rank, self.size = self.mpi.Get_rank(), self.mpi.Get_size()
        self.wait = wait or os.environ.get("DETR_COMM_WAIT", "spin")
        if self.wait not in ("spin", "sleep"):
            raise UsageError(f"wait mode must be 'spin' or 'sleep', got {self.wait!r}")
        self._spin = self.wait == "spin"
        self.sleep_s = sleep_s
        PROGRESS.interval = progress_interval()   # checked here: a bad value ends every rank at start-up
        self._sibling = None
        self.reset()

    # -- bookkeeping ------------------------------------------------------------
    def reset(self) -> Counters:
        """Start counting afresh; returns what was counted so far."""
        old = getattr(self, "counters", None)
        self.counters = Counters()
        self._ops = self.counters.ops
        return old

    def _count(self, op: str, part: int, whole: int, start: float, rule: str | None = None) -> OpTotals:
        # The hot path: two dict lookups, one rule and four additions.
        totals = self._ops.get(op)
        if totals is None:
            totals = self._ops[op] = OpTotals()
        payload, bus = RULES[rule or op](part, whole, self.size)
        totals.seconds += perf_counter() - start
        totals.calls += CALLS.get(rule, 1) if rule else 1
        totals.payload += payload
        totals.bus += bus
        return totals

    def count(self, op: str, part: int, whole: int, rule: str) -> OpTotals:
        """Count one operation made of uncounted calls (`totals=` below) by traffic rule `rule`
        under op name `op` (e.g. a split allreduce: rule 'allreduce_split', op 'allreduce')."""
        return self._count(op, part, whole, perf_counter(), rule)

    def _post(self, totals: OpTotals | None, op: str, part: int, whole: int, start: float) -> OpTotals:
        """A posted call's totals: counted now as `op`, or (part of a counted operation) only timed."""
        if totals is None:
            return self._count(op, part, whole, start)
        totals.seconds += perf_counter() - start
        return totals

    def _complete(self, request) -> None:
        """Finish `request`: MPI's own (spinning) Wait, or a test loop that sleeps with backoff.

        Sleep mode: MPICH only progresses a non-blocking collective inside Test, so every
        sleep can leave a link idle for up to its length once a step's data has arrived.
        Hence: poll without sleeping for ~20 us (small or local ops finish here), then sleep
        `sleep_s`, growing 1.25x per unfinished poll but never beyond 1/256 of the time waited
        so far nor 200 us. The idle time added per step thus stays under ~0.5% of the
        operation, while a long wait (10 Mbit/s, MiBs) wakes ~5000 times a second.
        Measured (4 emulated hosts, 0.45-core quota, 1 MiB allreduce): ~0.06 core at
        10-100 Mbit/s, ~0.26 at 1 Gbit/s (mostly the kernel's TCP work) instead of a whole
        core. A 1/64 and 500 us cap left links idle between steps: 1.10x gloo's time at 1 Gbit/s
        against 0.95-1.02x now.
        """
        if self._spin:
            request.Wait()
            return
        if request.Test():
            return
        start = perf_counter()
        while perf_counter() - start < 20e-6:
            if request.Test():
                return
        nap = self.sleep_s
        while True:
            sleep(nap)
            if request.Test():
                return
            nap = min(nap * 1.25, max(self.sleep_s, min(200e-6, (perf_counter() - start) / 256)))

    # -- collectives ----------------------------------------------------------------
    def allreduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """In-place sum over ranks."""
        buf, n = _buffer(tensor, "allreduce", _REDUCE_TYPES)
        start = perf_counter()
        if self._spin:
            self.mpi.Allreduce(MPI.IN_PLACE, buf, MPI.SUM)
        else:
            self._complete(self.mpi.Iallreduce(MPI.IN_PLACE, buf, MPI.SUM))
        self._count("allreduce", n, n, start)
        return tensor

    def allgather(self, part: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Equal parts: out is (P * part.shape[0], ...), rank r's part at rows [r*n0, (r+1)*n0)."""
        if out is None:
            out = part.new_empty((self.size * part.shape[0], *part.shape[1:]))
        send, n = _buffer(part, "allgather")
        recv, total = _buffer(out, "allgather")
        if total != self.size * n:
            raise CommError(f"allgather: output holds {total} bytes, needs {self.size} x {n}")
        start = perf_counter()
        if self._spin:
            self.mpi.Allgather(send, recv)
        else:
            self._complete(self.mpi.Iallgather(send, recv))
        self._count("allgather", n, total, start)
        return out

    def allgatherv(self, part: torch.Tensor, counts: list[int], out: torch.Tensor | None = None,
                   displs: list[int] | None = None) -> torch.Tensor:
        """Unequal parts (counted as op 'allgather'): rank r contributes counts[r]
        elements; they land in 1-D `out` at element displs[r] (default: concatenated in rank
        order, out of sum(counts) elements)."""
        if out is None:
            out = part.new_empty(sum(counts))
        send, recv, n, whole = self._gatherv_specs(part, counts, out, displs)
        start = perf_counter()
        if self._spin:
            self.mpi.Allgatherv(send, recv)
        else:
            self._complete(self.mpi.Iallgatherv(send, recv))
        self._count("allgather", n, whole, start)
        return out

    def iallgatherv(self, part: torch.Tensor, counts: list[int], out: torch.Tensor,
                    displs: list[int] | None = None, totals: OpTotals | None = None) -> Request:
        """Non-blocking `allgatherv`: returns a Request whose wait() gives `out`. With `totals`
        the call is one step of an operation counted by `count` and only adds its time there.
        Moved along in the background (`_Progress`) until done."""
        send, recv, n, whole = self._gatherv_specs(part, counts, out, displs)
        start = perf_counter()
        request = self.mpi.Iallgatherv(send, recv)
        return Request(self, request, self._post(totals, "allgather", n, whole, start), out, part, background=True)

    def _gatherv_specs(self, part, counts, out, displs):
        if part.numel() != counts[self.rank]:
            raise CommError(f"allgatherv: rank {self.rank} part has {part.numel()} elements, "
                            f"counts say {counts[self.rank]}")
        displs = _displacements(counts) if displs is None else displs
        if out.dim() != 1 or any(d + c > out.numel() for d, c in zip(displs, counts)):
            raise CommError(f"allgatherv: 1-D output of {out.numel()} elements cannot hold parts {counts} "
                            f"at {displs}")
        send, n = _buffer(part, "allgather")
        (memory, mpi_type), _ = _buffer(out, "allgather")
        return send, [memory, (counts, displs), mpi_type], n, sum(counts) * out.element_size()

    def iallreduce(self, tensor: torch.Tensor) -> Request:
        """Non-blocking in-place sum over ranks; wait() gives the tensor. Moved along in the
        background (`_Progress`) until done."""
        buf, n = _buffer(tensor, "allreduce", _REDUCE_TYPES)
        start = perf_counter()
        request = self.mpi.Iallreduce(MPI.IN_PLACE, buf, MPI.SUM)
        return Request(self, request, self._count("allreduce", n, n, start), tensor, background=True)

    def ialltoallv(self, send: torch.Tensor, send_counts: list[int], recv: torch.Tensor,
                   recv_counts: list[int], totals: OpTotals | None = None) -> Request:
        """Non-blocking: rank r sends elements [sum(send_counts[:j]), +send_counts[j]) of flat
        `send` to rank j and receives rank j's share at recv[sum(recv_counts[:j]), ...);
        counted as op 'alltoall' (part: what it keeps, whole: what it sends), or, with `totals`,
        one step of an operation counted by `count`."""
        (send_memory, send_type), n = _buffer(send, "alltoall")
        (recv_memory, recv_type), _ = _buffer(recv, "alltoall")
        if sum(send_counts) != send.numel() or sum(recv_counts) != recv.numel():
            raise CommError(f"alltoallv: counts {send_counts} / {recv_counts} do not match buffers of "
                            f"{send.numel()} / {recv.numel()} elements")
        start = perf_counter()
        request = self.mpi.Ialltoallv([send_memory, (send_counts, _displacements(send_counts)), send_type],
                                      [recv_memory, (recv_counts, _displacements(recv_counts)), recv_type])
        kept = send_counts[self.rank] * send.element_size()
        return Request(self, request, self._post(totals, "alltoall", kept, n, start), recv, send, background=True)

    def reduce_scatter(self, tensor: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """Sum over ranks of flat `tensor`; rank r keeps elements [sum(counts[:r]), +counts[r])."""
        send, n = _buffer(tensor, "reduce_scatter", _REDUCE_TYPES)
        out = tensor.new_empty(counts[self.rank])
        recv, mine = _buffer(out, "reduce_scatter", _REDUCE_TYPES)
        start = perf_counter()
        if self._spin:
            self.mpi.Reduce_scatter(send, recv, counts, MPI.SUM)
        else:
            self._complete(self.mpi.Ireduce_scatter(send, recv, counts, MPI.SUM))
        self._count("reduce_scatter", mine, n, start)
        return out

    def bcast(self, tensor: torch.Tensor, root: int = 0) -> torch.Tensor:
        buf, n = _buffer(tensor, "bcast")
        n = n if self.rank == root else 0
        start = perf_counter()
        if self._spin:
            self.mpi.Bcast(buf, root)
        else:
            self._complete(self.mpi.Ibcast(buf, root))
        self._count("bcast", n, n, start)
        return tensor

    def scatterv(self, full: torch.Tensor | None, counts: list[int], out: torch.Tensor, root: int = 0) -> torch.Tensor:
        """The root hands rank r elements [sum(counts[:r]), +counts[r]) of flat `full`; they land in `out`."""
        recv, mine = _buffer(out, "scatter")
        send, payload = None, 0
        if self.rank == root:
            (memory, mpi_type), total = _buffer(full, "scatter")
            send, payload = [memory, (counts, _displacements(counts)), mpi_type], total - mine
        start = perf_counter()
        if self._spin:
            self.mpi.Scatterv(send, recv, root)
        else:
            self._complete(self.mpi.Iscatterv(send, recv, root))
        self._count("scatter", payload, payload, start)
        return out

    def gatherv(self, part: torch.Tensor, counts: list[int], out: torch.Tensor | None, root: int = 0):
        """Rank r's flat `part` (counts[r] elements) lands at its offset in the root's `out`."""
        send, payload = _buffer(part, "gather")
        recv = None
        if self.rank == root:
            (memory, mpi_type), _ = _buffer(out, "gather")
            recv, payload = [memory, (counts, _displacements(counts)), mpi_type], 0
        start = perf_counter()
        if self._spin:
            self.mpi.Gatherv(send, recv, root)
        else:
            self._complete(self.mpi.Igatherv(send, recv, root))
        self._count("gather", payload, payload, start)
        return out

    def barrier(self) -> None:
        start = perf_counter()
        if self._spin:
            self.mpi.Barrier()
        else:
            self._complete(self.mpi.Ibarrier())
        self._count("barrier", 0, 0, start)

    # -- point to point -------------------------------------------------------------
    def send(self, tensor: torch.Tensor, dest: int, tag: int = 0) -> None:
        self.isend(tensor, dest, tag).wait()

    def recv(self, tensor: torch.Tensor, source: int, tag: int = 0) -> torch.Tensor:
        return self.irecv(tensor, source, tag).wait()

    def isend(self, tensor: torch.Tensor, dest: int, tag: int = 0) -> Request:
        buf, n = _buffer(tensor, "send")
        start = perf_counter()
        request = self.mpi.Isend(buf, dest, tag)
        return Request(self, request, self._count("send", n, n, start), tensor)

    def irecv(self, tensor: torch.Tensor, source: int, tag: int = 0) -> Request:
        buf, _ = _buffer(tensor, "recv")
        start = perf_counter()
        request = self.mpi.Irecv(buf, source, tag)
        return Request(self, request, self._count("recv", 0, 0, start), tensor)

    # -- structure and metadata --------------------------------------------------------
    def split(self, color: int | None, key: int = 0) -> "Communicator | None":
        """Sub-communicator of the ranks passing the same color; None for color None."""
        sub = self.mpi.Split(MPI.UNDEFINED if color is None else color, key)
        if sub == MPI.COMM_NULL:
            return None
        return Communicator(sub, wait=self.wait, sleep_s=self.sleep_s)

    # -- uncounted calls for the harness -------------------------------------------------
    def sync(self) -> None:
        """Barrier outside the counters, waiting the communicator's way (spin or sleep-poll)."""
        if self.size == 1:
            return
        if self._spin:
            self.mpi.Barrier()
        else:
            self._complete(self.mpi.Ibarrier())

    def idle_barrier(self, sleep_s: float = 1e-3) -> None:
        """Barrier for ranks with nothing to do: polls with 1 ms sleeps so that waiting
        ranks leave the cores to the working ones (MPICH's blocking calls spin)."""
        if self.size == 1:
            return
        request = self.mpi.Ibarrier()
        while not request.Test():
            sleep(sleep_s)

    def sibling(self) -> "Communicator":
        """A second communicator over the same ranks (made once, collectively, on first use) for
        operations whose posting time is decided at run time, so that they are never matched
        with this communicator's own (MPI matches collectives by posting order): the allgather
        phase of a split allreduce (parallelism/wire_ops.py), counted there, on this one."""
        if self._sibling is None:
            self._sibling = Communicator(self.mpi.Dup(), wait=self.wait, sleep_s=self.sleep_s)
        return self._sibling

    def free(self) -> None:
        """Release a communicator made by `split` (never the world) and its sibling."""
        if self._sibling is not None:
            self._sibling.mpi.Free()
            self._sibling = None
        if self.mpi != MPI.COMM_WORLD:
            self.mpi.Free()

    # Small pickled metadata (timings, records, host names): uncounted, never in a hot loop.
    def max_over_ranks(self, value: float) -> float:
        return self.mpi.allreduce(value, op=MPI.MAX)

    def gather_object(self, obj, root: int = 0):
        return self.mpi.gather(obj, root=root)

    def allgather_object(self, obj):
        return self.mpi.allgather(obj)

    def bcast_object(self, obj, root: int = 0):
        return self.mpi.bcast(obj, root=root)


def raw_allreduce_peers(comm: Communicator, tensor: torch.Tensor) -> dict:
    """In-place SUM allreduce of `tensor` through raw mpi4py, as peers of the communicator's
    own cost (bench.collectives --bench overhead): on a ready-made numpy view, and given the
    torch tensor (mpi4py's DLPack path)."""
    mpi, view = comm.mpi, tensor.numpy()
    return {"raw mpi4py, numpy view": lambda: mpi.Allreduce(MPI.IN_PLACE, view, MPI.SUM),
            "raw mpi4py, torch tensor (DLPack)": lambda: mpi.Allreduce(MPI.IN_PLACE, tensor, MPI.SUM)}


def world(wait: str | None = None) -> Communicator:
    return Communicator(MPI.COMM_WORLD, wait=wait)


def world_rank() -> int:
    return MPI.COMM_WORLD.Get_rank()


def world_size() -> int:
    return MPI.COMM_WORLD.Get_size()


def mpi_versions() -> dict:
    # Open MPI's version string ends in its C terminator ("...2026\x00"): drop it.
    return {"mpi_library": MPI.Get_library_version().replace("\0", "").strip().splitlines()[0],
            "mpi4py": __import__("mpi4py").__version__}


def processor_name() -> str:
    return MPI.Get_processor_name()


# -- ending a job on an error ---------------------------------------------------------------
# A communicator of its own, so that the failure handshake can never match a collective the
# healthy ranks are in. Dup is collective: every rank imports this module at start-up.
_FAILURES = MPI.COMM_WORLD.Dup()
# Probed by the progress thread (never sent on, so its Iprobe matches nothing).
_PROGRESS = MPI.COMM_WORLD.Dup()
PROGRESS = _Progress()
atexit.register(PROGRESS.stop)


def end_job_on_error(code: int, agree_s: float = 2.0) -> None:
    """Called on a rank that failed (after printing its one line). If every rank fails
    alike (bad input seen by all) they meet on a barrier of `_FAILURES` within `agree_s`
    and each exits with `code` quietly; if some rank does not come (it is healthy and
    waiting in a collective, or stopped), MPI Abort ends the whole job within seconds."""
    if MPI.COMM_WORLD.Get_size() == 1:
        return
    request = _FAILURES.Ibarrier()
    deadline = perf_counter() + agree_s
    while perf_counter() < deadline:
        if request.Test():
            return
        sleep(0.01)
    MPI.COMM_WORLD.Abort(code)


def abort_job(code: int) -> None:
    """End every rank now (a watchdog's verdict, or a crash on one rank)."""
    if MPI.COMM_WORLD.Get_size() > 1:
        MPI.COMM_WORLD.Abort(code)
