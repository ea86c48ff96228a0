"""bench.collectives --bench overlap: how much of an allreduce hides behind GEMMs on these hosts.

Per size (bytes per rank of the allreduce vector), interleaved round by round, each after a
barrier, medians over the rounds, max over ranks:
- comm: a blocking allreduce (the communicator's own wait mode);
- compute: k span-sized GEMM pairs ((64 x 768) @ (768 x 768), twice: a BERT-base FFN span
  sharded over 4 ranks), k chosen once so that compute takes about as long as comm;
- sequential: compute, then the blocking allreduce;
- overlapped: the allreduce posted (non-blocking, moved along by the progress thread:
  parallelism/comm.py, `_Progress`), compute, then wait.
hidden = (sequential - overlapped) / comm: the share of communication overlap hides (what a
strategy's `--overlap on` can gain at best for this much compute per byte); inflation =
overlapped compute / compute alone: what the in-flight communication costs the GEMMs (on a
host whose CPU quota also pays for the TCP work and the progress thread's pokes). cpu = the
process's CPU time per blocking allreduce over its wall time (cores).
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

from parallelism.comm import Communicator, progress_interval

from .report_wire import hidden_share

ROWS, WIDTH = 64, 768


def bench_overlap(args, comm: Communicator, write_jsonl) -> None:
    from tabulate import tabulate
    clock = time.perf_counter
    weights = (torch.randn(WIDTH, WIDTH), torch.randn(WIDTH, WIDTH))
    x = torch.randn(ROWS, WIDTH)

    def compute(k: int) -> None:
        for _ in range(k):
            F.linear(F.linear(x, weights[0]), weights[1])

    def piece_s() -> float:
        compute(3)
        start = clock()
        compute(10)
        return (clock() - start) / 10

    from bench.collectives import link_rate
    from bench.network import wire_iface
    rate_bit, _ = link_rate(comm, wire_iface())
    rows, records = [], []
    for size in args.sizes:
        buf = torch.zeros(size // 4)   # sums stay 0: no overflow however many rounds
        for _ in range(max(1, args.warmup)):
            comm.allreduce(buf)
        comm.sync()
        start = clock()
        comm.allreduce(buf)
        comm_guess = comm.max_over_ranks(clock() - start)
        k = comm.bcast_object(max(1, round(comm_guess / piece_s())) if comm.rank == 0 else None)
        times = {name: [] for name in ("comm", "compute", "sequential", "overlapped", "overlapped compute")}
        cpu_per_op = []
        for _ in range(args.overlap_rounds):
            comm.sync()
            start, cpu = clock(), time.process_time()
            comm.allreduce(buf)
            times["comm"].append(clock() - start)
            cpu_per_op.append(time.process_time() - cpu)
            comm.sync()
            start = clock()
            compute(k)
            times["compute"].append(clock() - start)
            comm.sync()
            start = clock()
            compute(k)
            comm.allreduce(buf)
            times["sequential"].append(clock() - start)
            comm.sync()
            start = clock()
            request = comm.iallreduce(buf)
            compute(k)
            times["overlapped compute"].append(clock() - start)
            request.wait()
            times["overlapped"].append(clock() - start)
        mine = {name: statistics.median(values) for name, values in times.items()}
        mine["cpu"] = statistics.median(cpu_per_op) / mine["comm"]
        everyone = comm.gather_object(mine)
        if comm.rank != 0:
            continue
        m = {name: max(e[name] for e in everyone) for name in mine}
        hidden = hidden_share(m["sequential"], m["overlapped"], m["comm"])
        inflation = m["overlapped compute"] / m["compute"]
        rows.append([size, k] + [f"{m[n] * 1e3:.2f}" for n in ("comm", "compute", "sequential", "overlapped")]
                    + [f"{100 * hidden:+.0f}%", f"{inflation:.2f}x", f"{m['cpu']:.2f}"])
        records.append({"bench": "overlap", "bytes": size, "ranks": comm.size, "gemm_pairs": k,
                        "rounds": args.overlap_rounds, "progress_interval_s": progress_interval(),
                        **{f"{n.replace(' ', '_')}_s": m[n] for n in times}, "hidden_share": hidden,
                        "compute_inflation": inflation, "comm_cpu_cores": m["cpu"], "wait": comm.wait,
                        "rate_bit": rate_bit})
    if comm.rank == 0:
        interval = progress_interval()
        poke = f"progress thread every {interval * 1e6:.0f} us" if interval else "no progress thread"
        print(f"allreduce posted before GEMMs ({comm.size} ranks, wait={comm.wait}, {poke}; ms = median over "
              f"{args.overlap_rounds} rounds, max over ranks)")
        print(tabulate(rows, headers=["bytes", "GEMM pairs", "comm ms", "compute ms", "sequential ms",
                                      "overlapped ms", "hidden", "compute inflation", "comm cpu cores"]))
        write_jsonl(args.out, records)
