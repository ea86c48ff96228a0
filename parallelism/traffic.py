"""The traffic model: one table of per-operation byte rules that every byte count comes from.

The nccl-tests habit: a collective's cost is its *bus* bytes, the bytes one rank sends
under a bandwidth-optimal (ring) algorithm. The communicator's counters, the strategies'
analytic traffic, bench.collectives' rate bounds, the planner's cost model and the tests'
oracles all call `charge` below; no other module writes a bus factor.

For one operation on one rank of P, in bytes:

- `part`: what this rank contributes (allgather: its part; reduce-scatter: the share it
  keeps; send: the message; bcast: the buffer on the root, 0 elsewhere; scatter: what the
  root hands out to the others; gather: what a non-root hands in, 0 on the root);
- `whole`: the whole buffer of the collective (allreduce: the buffer; allgather: the
  gathered result; reduce-scatter: the input).

| op               | payload | bus            | nccl-tests bus factor     |
|------------------|---------|----------------|---------------------------|
| allreduce        | whole   | 2(P-1)/P whole | 2(P-1)/P                  |
| allgather        | part    | whole - part   | (P-1)/P with equal parts  |
| reduce_scatter   | whole   | whole - part   | (P-1)/P with equal parts  |
| alltoall         | whole   | whole - part   | (P-1)/P with equal parts  |
| allreduce_split  | whole   | 2 (whole - part) | 2(P-1)/P with equal parts; 2 calls |
| bcast, scatter, gather, send | part | part | 1                        |
| recv, barrier    | 0       | 0              | (the sender counts)       |

`allreduce_split` is an allreduce made of two MPI calls (parallelism/wire_ops.py: an
alltoall of the compressed buffer, a local fp32 sum of the rank's share, an allgather of the
compressed sums): `part` is the rank's share of the compressed buffer, `whole` the compressed
buffer; it is one operation of 2 calls (`CALLS`), recorded under op `allreduce`.

*payload* is what a rank puts into the operation; *bus* is the traffic per rank that sets
the time on a link of a given rate (time >= bus x 8 / rate).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Traffic:
    """Totals of one op on one rank: calls, payload bytes, bus bytes."""
    calls: int = 0
    payload: int = 0
    bus: int = 0

    def __add__(self, other: "Traffic") -> "Traffic":
        return Traffic(self.calls + other.calls, self.payload + other.payload, self.bus + other.bus)

    def __mul__(self, times: int) -> "Traffic":
        return Traffic(self.calls * times, self.payload * times, self.bus * times)

    __rmul__ = __mul__


def _allreduce(part: int, whole: int, world: int) -> tuple[int, int]:
    return whole, 2 * (world - 1) * whole // world


def _gather_like(part: int, whole: int, world: int) -> tuple[int, int]:
    return part, whole - part


def _reduce_scatter(part: int, whole: int, world: int) -> tuple[int, int]:
    return whole, whole - part


def _one_way(part: int, whole: int, world: int) -> tuple[int, int]:
    return part, part


def _nothing(part: int, whole: int, world: int) -> tuple[int, int]:
    return 0, 0


def _allreduce_split(part: int, whole: int, world: int) -> tuple[int, int]:
    return whole, 2 * (whole - part)


#: op -> (part, whole, P) -> (payload, bus). The only bus factors of the suite.
RULES = {
    "allreduce": _allreduce,
    "allreduce_split": _allreduce_split,
    "allgather": _gather_like,
    "reduce_scatter": _reduce_scatter,
    "alltoall": _reduce_scatter,
    "bcast": _one_way,
    "scatter": _one_way,
    "gather": _one_way,
    "send": _one_way,
    "recv": _nothing,
    "barrier": _nothing,
}


#: MPI calls per operation where an operation is more than one call.
CALLS = {"allreduce_split": 2}


def charge(op: str, part: int = 0, whole: int = 0, world: int = 1, calls: int = 1) -> Traffic:
    """The traffic of `calls` identical `op`s with this rank's `part` of a `whole` (see the table)."""
    payload, bus = RULES[op](part, whole, world)
    return Traffic(calls * CALLS.get(op, 1), payload * calls, bus * calls)


def bus_bytes(op: str, part: int, whole: int, world: int) -> int:
    return RULES[op](part, whole, world)[1]


def add(table: dict[str, Traffic], op: str, traffic: Traffic) -> dict[str, Traffic]:
    """table[op] += traffic (in place; returns the table)."""
    table[op] = table.get(op, Traffic()) + traffic
    return table


def total(table: dict[str, Traffic]) -> Traffic:
    out = Traffic()
    for traffic in table.values():
        out = out + traffic
    return out
