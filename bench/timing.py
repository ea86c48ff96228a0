"""Timing a strategy, checking its output, and summarising what it moved.

`measure()` runs warm-up forwards, then timed forwards each started after a barrier; an
iteration's latency is the maximum over ranks of the rank's forward time; per rank it
also keeps the time spent inside the communicator (compute = latency - communication of
the slowest rank). `measure_point()` turns that into the record fields every driver
shares; `check_output()` compares against the serial reference (a NaN or inf output is a
failure, never "not computed"); `serial_reference()` runs the serial model only on the
first rank and hands its output to the others.

Timing conventions (documented in every record): `latency_s` are seconds per forward (one
inference of `batch` sequences); `comm_s` is the slowest rank's time inside communicator
calls (including waiting for peers), averaged over iterations, and
`compute_s = latency_s.mean - comm_s`.
"""

from __future__ import annotations

import math
import resource
from dataclasses import dataclass
from time import perf_counter

import torch

from kernels import ReferenceModel
from parallelism.comm import Communicator, Counters

from . import network
from .models import weights_returned_when_freed
from .records import stats


@dataclass
class Timing:
    """What `measure` found; rank-local fields are this rank's, the rest are the same on every rank."""
    latency: list[float]             # per iteration: max over ranks of the forward time
    compute_slowest: list[float]     # per iteration: the slowest rank's forward time minus its comm time
    comm_slowest: list[float]        # per iteration: the slowest rank's time in communicator calls
    comm_by_rank: list[float]        # mean comm seconds per iteration, per rank
    counters: Counters               # this rank's counters over the timed iterations
    output: object                   # this rank's output of the last forward (None if not held)
    wire: dict | None = None         # {"tx": [...per rank], "rx": [...]} bytes per iteration, or None
    bare_s: float | None = None      # --compare-bare: mean over bare forwards of the slowest rank's time


def _read_wire(iface: str | None):
    return network.read_tx_rx(iface) if iface else (None, None)


@torch.inference_mode()
def measure(strategy, comm: Communicator, ids, mask, warmup: int, iters: int,
            wire_iface: str | None = None, bare: bool = False) -> Timing:
    """Warm-up, then `iters` barrier-synchronised forwards on every rank of `comm`.

    bare=True (--compare-bare) also times the harness's own cost: the timed
    iterations are split into up to 8 blocks, each followed by a block of as
    many bare forwards, so that drift in machine load hits both alike. A bare
    forward is what a hand-written latency loop does (barrier, clock, forward,
    clock) without the harness's bookkeeping; bare_s is the mean over those
    forwards of the slowest rank's time, the same statistic as the harness's.
    (A barrier-free back-to-back loop would measure something else: pp's
    stages would overlap consecutive requests, a throughput, not a latency.)
    """
    for _ in range(warmup):
        strategy.forward(ids, mask)
    comm.sync()
    comm.reset()
    local, local_comm = [], []
    tx0, rx0 = _read_wire(wire_iface)
    blocks = min(8, iters) if bare else 1
    sizes = [iters // blocks + (b < iters % blocks) for b in range(blocks)]
    bare_local, counters = [], Counters()
    out = None
    for size in sizes:
        for _ in range(size):
            comm.sync()
            c0 = comm.counters.seconds()
            t0 = perf_counter()
            out = strategy.forward(ids, mask)
            t1 = perf_counter()
            local.append(t1 - t0)
            local_comm.append(comm.counters.seconds() - c0)
        # Keep the bare forwards out of the counters and the wire bytes of the timed ones.
        counters.merge(comm.reset())
        for _ in range(size if bare else 0):
            comm.sync()
            t0 = perf_counter()
            strategy.forward(ids, mask)
            bare_local.append(perf_counter() - t0)
        comm.reset()
    wire_local = None
    if tx0 is not None and not bare:
        tx1, rx1 = _read_wire(wire_iface)
        wire_local = ((tx1 - tx0) / iters, (rx1 - rx0) / iters)
    everyone = comm.allgather_object((local, local_comm, wire_local, bare_local))
    bare_s = sum(max(r[3][i] for r in everyone) for i in range(iters)) / iters if bare else None
    latency, compute, comm_slow = [], [], []
    for i in range(iters):
        total, inside = max((r[0][i], r[1][i]) for r in everyone)
        latency.append(total)
        comm_slow.append(inside)
        compute.append(total - inside)
    comm_by_rank = [sum(r[1]) / iters for r in everyone]
    wire = None
    if all(r[2] is not None for r in everyone):
        wire = {"tx": [r[2][0] for r in everyone], "rx": [r[2][1] for r in everyone]}
    return Timing(latency, compute, comm_slow, comm_by_rank, counters,
                  out if strategy.holds_output() else None, wire, bare_s)


# -- correctness ---------------------------------------------------------------------------
def check_output(comm: Communicator, output, reference) -> dict:
    """max_abs_err and mean cosine (over token vectors) against the reference, worst over
    the ranks that hold an output, and a verdict: 'ok', 'non-finite' (NaN or inf in the
    output: a failure) or 'shape mismatch'; `max_abs_err` None only if no rank holds one."""
    local = (-1.0, -2.0, 0)  # (error, 1 - cosine, problem) - problem: 0 ok, 1 shape, 2 non-finite
    if output is not None and reference is not None:
        if tuple(output.shape) != tuple(reference.shape):
            local = (math.inf, 2.0, 1)
        elif not bool(torch.isfinite(output).all()):
            local = (math.inf, 2.0, 2)
        else:
            diff = (output.float() - reference.float()).abs().max()
            cos = torch.nn.functional.cosine_similarity(output.float().flatten(0, -2),
                                                        reference.float().flatten(0, -2), dim=-1).mean()
            local = (float(diff), 1.0 - float(cos), 0)
    worst = comm.allgather_object(local)
    error, one_minus_cos, problem = max(w[0] for w in worst), max(w[1] for w in worst), max(w[2] for w in worst)
    if error < 0:
        return {"max_abs_err": None, "mean_cosine": None, "output_check": "not held"}
    return {"max_abs_err": error, "mean_cosine": 1.0 - one_minus_cos,
            "output_check": ("ok", "shape mismatch", "non-finite")[problem]}


@dataclass
class Reference:
    output: object           # reference output on every rank (None if not computed)
    latency: dict | None     # stats of the serial forward on rank 0 (same on every rank)


def serial_reference(comm: Communicator, cfg, weights, ids, mask, warmup: int, iters: int,
                     time_it: bool = True) -> Reference:
    """The serial model on the first rank of `comm` only (the others wait without
    spinning and never build the whole model), timed like any strategy; its output is
    handed to every rank."""
    output, lat = None, None
    if comm.rank == 0:
        with weights_returned_when_freed():
            model = ReferenceModel(cfg, weights.materialize())
        with torch.inference_mode():
            for _ in range(warmup if time_it else 0):
                model.forward(ids, mask)
            samples = []
            for _ in range(iters if time_it else 1):
                t0 = perf_counter()
                output = model.forward(ids, mask)
                samples.append(perf_counter() - t0)
        lat = stats(samples) if time_it else None
        del model
    comm.idle_barrier()
    output, lat = comm.bcast_object((output, lat))
    return Reference(output, lat)


# -- traffic and memory summaries ------------------------------------------------------------
def _over_ranks(comm: Communicator, local: dict) -> dict:
    """{'total': max over ranks, 'mean': ..., 'by_rank': [...], 'by_op': {op: max over ranks}}."""
    everyone = comm.allgather_object(local)
    totals = [sum(r.values()) for r in everyone]
    ops = sorted({op for r in everyone for op in r})
    return {"total": max(totals) if totals else 0, "mean": sum(totals) / len(totals),
            "by_rank": totals, "by_op": {op: max(r.get(op, 0) for r in everyone) for op in ops}}


def _per_iter(value, iters: int):
    q = value / iters
    return int(q) if float(q).is_integer() else q


def traffic_summaries(comm: Communicator, table: dict, per: int = 1) -> dict:
    return {key: _over_ranks(comm, {op: _per_iter(getattr(t, attr), per) for op, t in table.items()})
            for key, attr in (("payload", "payload"), ("bus", "bus"), ("messages", "calls"))}


def peak_rss_bytes(comm: Communicator) -> dict:
    """Each rank's peak resident memory so far (ru_maxrss is in KiB on Linux)."""
    everyone = comm.allgather_object(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"max": max(everyone), "by_rank": everyone}


def measure_point(plan, strategy, comm: Communicator, ids, mask, warmup: int, iters: int, batch: int,
                  seq: int, wire_iface: str | None = None, bare: bool = False) -> tuple[dict, Timing]:
    """Time `strategy` (see `measure`) and summarise it into the record fields every driver shares.

    `warmup` counts the forward prepare() already ran.
    """
    timing = measure(strategy, comm, ids, mask, max(warmup - 1, 0), iters, wire_iface, bare)
    measured = traffic_summaries(comm, timing.counters.by_op(), iters)
    analytic = traffic_summaries(comm, strategy.traffic_here(batch, seq))
    weights = comm.allgather_object(int(strategy.weights_bytes_here()))
    fields = dict(
        strategy=plan.name, label=plan.label, options=plan.options, boundary=plan.options.get("boundary"),
        wire_dtype=strategy.wire.dtype, wire_reduce=strategy.wire.reduce, overlap_chunks=strategy.chunks,
        warmup=warmup, iters=iters,
        weights_bytes_per_rank={"max": max(weights), "total": sum(weights), "by_rank": weights},
        peak_rss_bytes_per_rank=peak_rss_bytes(comm),
        payload_bytes_per_rank=measured["payload"], bus_bytes_per_rank=measured["bus"],
        messages_per_rank=measured["messages"],
        expected_payload_bytes_per_rank=analytic["payload"], expected_bus_bytes_per_rank=analytic["bus"],
        expected_messages_per_rank=analytic["messages"],
        wire_bytes_per_rank=max(timing.wire["tx"]) if timing.wire else None,
        wire_rx_bytes_per_rank=max(timing.wire["rx"]) if timing.wire else None,
        reference="serial decoupled" if plan.decoupled else "serial")
    lat = stats(timing.latency)
    comm_s = sum(timing.comm_slowest) / len(timing.comm_slowest)
    fields.update(latency_s=lat, latency_samples_s=timing.latency, compute_s=lat["mean"] - comm_s,
                  comm_s=comm_s, comm_s_by_rank=timing.comm_by_rank)
    return fields, timing
