"""Collectives through our communicator against torch.distributed gloo: same processes, same
links, same run, interleaved size by size.

    python -m bench.cluster run -- python -m bench.collectives --sizes 64k,256k,1m,4m \\
        --ops allreduce,allgather,sendrecv [--jsonl results/collectives.jsonl]
    python -m bench.cluster run -- python -m bench.collectives --bench overhead
    python -m bench.cluster run -- python -m bench.collectives --bench overlap --sizes 384k,1536k
    mpiexec -n 4 python -m bench.collectives          # local ranks (no shaping: no bound)

Sizes are per rank: the allreduce vector, each rank's allgather part, the send/recv message
(ring shift: rank r sends to r+1 and receives from r-1). Bus bytes per rank (what a
bandwidth-optimal algorithm sends): allreduce 2(P-1)/P n, allgather (P-1) n, sendrecv n.
Bound = bus bytes x 8 / link rate (the lowest rate in force over the ranks' interfaces, read
with bench.network.describe_network; every link is full duplex). Efficiency = bound /
measured. Time per op = mean over the timed iterations, max over ranks. wire/bus = bytes that
left this rank's interface per op (/proc/net/dev, mean over ranks) / bus bytes. cpu = cores
used by a rank while timing (process CPU time incl. threads / wall time, mean over ranks):
what the wait costs under a CPU quota.

`--bench overhead`: the communicator's bookkeeping on a 1 KiB float32 allreduce, median of
>= 1000 calls each, interleaved in blocks: raw mpi4py on a pre-made numpy view, raw mpi4py
given the torch tensor (DLPack), ours with the counting switched off (the cost of turning a
tensor into an MPI buffer and of the call), ours in spin mode and ours in sleep mode. The
recording share is (spin - counting off) / spin: what the counters and clocks cost per call.

`--bench overlap`: an allreduce posted before GEMMs of about its duration, against the GEMMs
then the allreduce: the share of communication hidden and what it costs the GEMMs
(bench/overlap.py).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import sys
import time
from datetime import timedelta

os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")  # gloo warns it cannot reverse-resolve namespace addresses

import torch  # noqa: E402

from bench import cli, network as N  # noqa: E402
from bench.records import append_jsonl, env_block, local_env  # noqa: E402
from parallelism.comm import Communicator, mpi_versions, processor_name, progress_interval, world_rank  # noqa: E402
from parallelism.errors import UsageError  # noqa: E402
from parallelism.traffic import bus_bytes as rule_bus_bytes  # noqa: E402

OPS = ("allreduce", "allgather", "sendrecv")
IMPLS = ("ours", "gloo")


def parse_sizes(text: str) -> list[int]:
    """'64k,1m' -> [65536, 1048576] (argparse type: its errors become one-line UsageErrors)."""
    sizes = []
    for part in text.split(","):
        match = re.fullmatch(r"(\d+)([kmg]?)(i?b)?", part.strip().lower())
        if not match:
            raise argparse.ArgumentTypeError(f"invalid size {part!r}: expected e.g. 64k, 1m, 4096")
        size = int(match.group(1)) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[match.group(2)]
        if size < 4 or size % 4 or size > 1024**3:
            raise argparse.ArgumentTypeError(f"invalid size {part!r}: a multiple of 4 bytes (float32), at most 1g")
        sizes.append(size)
    return sizes


def format_size(n: int) -> str:
    for unit, scale in (("MiB", 1024**2), ("KiB", 1024)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} B"


def bus_bytes(op: str, n: int, size: int) -> int:
    """Bus bytes per rank of one op with n bytes per rank (parallelism.traffic's rules)."""
    if op == "allreduce":
        return rule_bus_bytes("allreduce", n, n, size)
    if op == "allgather":
        return rule_bus_bytes("allgather", n, size * n, size)
    return rule_bus_bytes("send", n, n, size) if size > 1 else 0


def wire_address(iface: str | None) -> str:
    """This host's IPv4 address on `iface` (127.0.0.1 without one)."""
    if not iface:
        return "127.0.0.1"
    import subprocess
    proc = subprocess.run(["ip", "-j", "-4", "addr", "show", "dev", iface], capture_output=True, text=True,
                          check=False)
    try:
        return json.loads(proc.stdout)[0]["addr_info"][0]["local"]
    except (json.JSONDecodeError, LookupError):
        return socket.gethostbyname(socket.gethostname())


def init_gloo(comm: Communicator):
    import torch.distributed as dist
    iface = N.wire_iface()
    if iface:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", iface)
    addr, port = None, None
    if comm.rank == 0:
        addr = wire_address(iface)
        with socket.socket() as sock:
            sock.bind((addr, 0))
            port = sock.getsockname()[1]
    addr, port = comm.bcast_object((addr, port))
    dist.init_process_group("gloo", init_method=f"tcp://{addr}:{port}", rank=comm.rank,
                            world_size=comm.size, timeout=timedelta(seconds=120))
    return dist


class Runner:
    """One op on one implementation, buffers allocated once."""

    def __init__(self, impl: str, op: str, n: int, comm: Communicator, dist):
        self.impl, self.op, self.comm, self.dist = impl, op, comm, dist
        rank, size = comm.rank, comm.size
        elems = n // 4
        self.buf = torch.zeros(elems)
        self.out = torch.empty(size * elems) if op == "allgather" else None
        self.recv = torch.empty(elems) if op == "sendrecv" else None
        self.dst, self.src = (rank + 1) % size, (rank - 1) % size
        self.step = getattr(self, f"{impl}_{op}")

    def ours_allreduce(self):
        self.comm.allreduce(self.buf)

    def ours_allgather(self):
        self.comm.allgather(self.buf, self.out)

    def ours_sendrecv(self):
        rreq = self.comm.irecv(self.recv, self.src)
        sreq = self.comm.isend(self.buf, self.dst)
        rreq.wait()
        sreq.wait()

    def gloo_allreduce(self):
        self.dist.all_reduce(self.buf)

    def gloo_allgather(self):
        self._gather(self.out, self.buf)

    @property
    def _gather(self):
        return getattr(self.dist, "all_gather_single", None) or self.dist.all_gather_into_tensor

    def gloo_sendrecv(self):
        rreq = self.dist.irecv(self.recv, self.src)
        sreq = self.dist.isend(self.buf, self.dst)
        rreq.wait()
        sreq.wait()

    def barrier(self):
        self.comm.sync()

    def check(self):
        """One call on known data: ours and gloo must both give the exact answer."""
        rank, size = self.comm.rank, self.comm.size
        self.buf.fill_(rank + 1)
        self.step()
        if self.op == "allreduce":
            ok = bool((self.buf == size * (size + 1) / 2).all())
        elif self.op == "allgather":
            want = torch.arange(1, size + 1, dtype=torch.float32).repeat_interleave(self.buf.numel())
            ok = torch.equal(self.out, want)
        else:
            ok = bool((self.recv == self.src + 1).all())
        self.buf.zero_()
        return ok


def time_runner(runner: Runner, iters: int, iface: str | None) -> tuple[float, float | None, float]:
    """(wall seconds, wire bytes sent, CPU seconds of this process incl. its threads) per call."""
    runner.barrier()
    tx0 = N.read_tx_rx(iface)[0] if iface else None
    cpu0, start = time.process_time(), time.perf_counter()
    for _ in range(iters):
        runner.step()
    seconds = (time.perf_counter() - start) / iters
    cpu = (time.process_time() - cpu0) / iters
    wire = (N.read_tx_rx(iface)[0] - tx0) / iters if iface else None
    return seconds, wire, cpu


def bench_collectives(args, comm: Communicator) -> None:
    from tabulate import tabulate
    sizes, ops, impls = args.sizes, list(args.ops), list(args.impls)
    if comm.size < 2:
        ops = [o for o in ops if o != "sendrecv"]
    iface = N.wire_iface()
    rate_bit, net = link_rate(comm, iface)
    dist = init_gloo(comm) if "gloo" in impls else None
    host = processor_name()
    hosts = comm.allgather_object(host)
    records, rows = [], []
    for op in ops:
        for n in sizes:
            runners = {impl: Runner(impl, op, n, comm, dist) for impl in impls}
            result = {}
            for impl, runner in runners.items():
                if not runner.check():
                    raise RuntimeError(f"{impl} {op} {n} B gave a wrong result")
            # Probe one call per impl (after a warm-up call) to size the iteration count.
            probe = {}
            for impl, runner in runners.items():
                for _ in range(args.warmup):
                    runner.step()
                probe[impl] = time_runner(runner, 1, None)[0]
            worst = comm.max_over_ranks(max(probe.values()))
            iters = args.iters or max(args.min_iters, min(args.max_iters, int(args.budget_s / max(worst, 1e-6))))
            # Interleave the implementations in rounds so that noise hits both.
            acc = {impl: [0.0, 0.0, 0, 0.0] for impl in impls}
            rounds = max(1, min(args.rounds, iters))
            per_round = max(1, iters // rounds)
            for _ in range(rounds):
                for impl, runner in runners.items():
                    seconds, wire, cpu = time_runner(runner, per_round, iface)
                    acc[impl][0] += seconds * per_round
                    acc[impl][1] += (wire or 0.0) * per_round
                    acc[impl][2] += per_round
                    acc[impl][3] += cpu * per_round
            bus = bus_bytes(op, n, comm.size)
            bound = bus * 8 / rate_bit if rate_bit else None
            for impl in impls:
                total, wire_total, count, cpu_total = acc[impl]
                seconds = comm.max_over_ranks(total / count)
                cores = comm.allgather_object(cpu_total / total if total else 0.0)   # CPU used while waiting
                wires = comm.allgather_object(wire_total / count if iface else None)
                wire = None if any(w is None for w in wires) else sum(wires) / len(wires)
                result[impl] = seconds
                records.append({"bench": "collectives", "op": op, "impl": impl, "bytes": n, "ranks": comm.size,
                                "iters": count, "seconds": seconds, "bus_bytes": bus, "bound_s": bound,
                                "efficiency": bound / seconds if bound else None,
                                "wire_bytes_per_rank": wire, "wire_over_bus": wire / bus if wire and bus else None,
                                "cpu_cores": sum(cores) / len(cores), "rate_bit": rate_bit, "wait": comm.wait if impl == "ours" else "gloo",
                                "cpu_quota": os.environ.get("DETR_CPU_QUOTA"), "hosts": hosts,
                                "network": net})
            if comm.rank == 0:
                mine = [r for r in records if r["op"] == op and r["bytes"] == n]
                ours = next((r for r in mine if r["impl"] == "ours"), None)
                gloo = next((r for r in mine if r["impl"] == "gloo"), None)
                rows.append([op, format_size(n), f"{bound * 1e3:.3g}" if bound else "-"]
                            + [f"{r['seconds'] * 1e3:.3g}" if r else "-" for r in (ours, gloo)]
                            + [f"{r['efficiency']:.2f}" if r and r["efficiency"] else "-" for r in (ours, gloo)]
                            + [f"{ours['seconds'] / gloo['seconds']:.2f}" if ours and gloo else "-",
                               f"{ours['wire_over_bus']:.3f}" if ours and ours["wire_over_bus"] else "-"]
                            + [f"{r['cpu_cores']:.2f}" if r else "-" for r in (ours, gloo)]
                            + [(ours or gloo)["iters"]])
                write_jsonl(args.out, mine)   # each point kept as soon as it is measured
                print(f"  {op} {format_size(n)}: done", file=sys.stderr, flush=True)
    if comm.rank == 0:
        print(f"{comm.size} ranks on {len(set(hosts))} hosts, link {N.format_rate(rate_bit) if rate_bit else 'unshaped'}"
              f"{' (' + iface + ')' if iface else ''}, ours wait={comm.wait}, "
              f"cpu quota {os.environ.get('DETR_CPU_QUOTA', '-')}")
        print(tabulate(rows, headers=["op", "size/rank", "bound ms", "ours ms", "gloo ms", "ours eff",
                                      "gloo eff", "ours/gloo", "wire/bus", "ours cpu", "gloo cpu",
                                      "iters"]))
    if dist is not None:
        dist.destroy_process_group()


ENV: dict = {}  # the run's env block (bench.records.env_block), filled in by main


def link_rate(comm: Communicator, iface) -> tuple[int | None, dict | None]:
    """(the lowest shaped rate over the ranks' interfaces, None if any is unshaped or unknown;
    this rank's network description)."""
    net = N.describe_network(iface)
    rates = comm.allgather_object(net["rate_bit"] if net else None)
    return (None if any(r is None for r in rates) else min(rates)), net


def write_jsonl(path: str | None, records: list[dict]) -> None:
    """Each record one atomic line (bench.records.append_jsonl), or JSON lines on stdout for '-'."""
    if not path:
        return
    for record in records:
        record = {**record, "env": env_block(ENV)}
        if path == "-":
            print(json.dumps(record))
        else:
            append_jsonl(path, record)


def main(argv=None) -> None:
    parser = cli.ArgumentParser(prog="python -m bench.collectives", description=__doc__,
                                quiet_rank=world_rank() != 0)
    parser.add_argument("--bench", choices=("collectives", "overhead", "overlap"), default="collectives",
                        help="collectives: ours against gloo; overhead: our bookkeeping; overlap: an allreduce "
                             "posted before GEMMs against GEMMs then the allreduce (default %(default)s)")
    parser.add_argument("--sizes", type=parse_sizes, default="64k,256k,1m,4m",
                        help="bytes per rank (default %(default)s)")
    parser.add_argument("--ops", type=cli.name_list, default=list(OPS), help=f"default {','.join(OPS)}")
    parser.add_argument("--impls", type=cli.name_list, default=list(IMPLS), help=f"default {','.join(IMPLS)}")
    parser.add_argument("--iters", type=cli.nonneg_int, default=0, help="timed iterations (default: from --budget-s)")
    parser.add_argument("--budget-s", type=cli.finite_float(0), default=1.0, help="target seconds per op, size and impl")
    parser.add_argument("--min-iters", type=cli.positive_int, default=3)
    parser.add_argument("--max-iters", type=cli.positive_int, default=200)
    parser.add_argument("--rounds", type=cli.positive_int, default=3, help="interleaved rounds of ours/gloo per point")
    parser.add_argument("--warmup", type=cli.nonneg_int, default=1)
    parser.add_argument("--overhead-iters", type=cli.positive_int, default=2000, help="calls per variant (>= 1000)")
    parser.add_argument("--overlap-rounds", type=cli.positive_int, default=15,
                        help="--bench overlap: interleaved rounds per size (default %(default)s)")
    parser.add_argument("--out", "--jsonl", dest="out", type=cli.output_path,
                        help="append one JSON record per point to this file ('-' for stdout)")
    args = parser.parse_args(argv)
    if args.bench == "overhead" and args.overhead_iters < 1000:
        raise UsageError("--overhead-iters must be >= 1000")
    bad = [o for o in args.ops if o not in OPS]
    if bad:
        raise UsageError(f"unknown op {bad[0]!r}: choose among {', '.join(OPS)}")
    bad = [i for i in args.impls if i not in IMPLS]
    if bad:
        raise UsageError(f"unknown implementation {bad[0]!r}: choose among {', '.join(IMPLS)}")
    if not (args.budget_s > 0 and args.budget_s < 3600):
        raise UsageError(f"--budget-s must be > 0 and < 3600, got {args.budget_s}")
    if args.min_iters > args.max_iters:
        raise UsageError(f"--min-iters {args.min_iters} exceeds --max-iters {args.max_iters}")
    problem = cli.unwritable(args.out)
    if problem:
        raise UsageError(problem)
    torch.set_num_threads(1)
    comm = Communicator()
    ENV.update(local_env(), hostnames=comm.allgather_object(processor_name()), **mpi_versions(), wait=comm.wait,
               progress_interval_s=progress_interval())
    if args.bench == "overhead":
        from bench.overhead import bench_overhead
        bench_overhead(args, comm, write_jsonl)
    elif args.bench == "overlap":
        from bench.overlap import bench_overlap
        bench_overlap(args, comm, write_jsonl)
    else:
        bench_collectives(args, comm)


if __name__ == "__main__":
    cli.run(main, mpi=True)
