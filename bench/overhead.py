"""bench.collectives --bench overhead: the communicator's own cost on a 1 KiB float32
allreduce, against raw mpi4py (its peers live in parallelism.comm, the only module that
imports mpi4py). Run it on local ranks: over shaped links (or with more spinning ranks than
cores) the wire and the scheduler, not the bookkeeping, decide."""

from __future__ import annotations

import statistics
import time

import torch

from parallelism.comm import Communicator, raw_allreduce_peers


class _Uncounted(Communicator):
    """Our communicator with the recording removed (still one no-op call, so this slightly
    overstates the buffer path and understates the recording)."""

    def _count(self, op, part, whole, start):
        return None


def bench_overhead(args, comm: Communicator, write_jsonl) -> None:
    from tabulate import tabulate
    mpi = comm.mpi
    ours_spin = Communicator(mpi, wait="spin")
    ours_uncounted = _Uncounted(mpi, wait="spin")
    ours_sleep = Communicator(mpi, wait="sleep")
    tensor = torch.zeros(256)                 # 1 KiB float32
    variants = {
        **raw_allreduce_peers(comm, tensor),
        "ours, counting off (spin)": lambda: ours_uncounted.allreduce(tensor),
        "ours, wait=spin": lambda: ours_spin.allreduce(tensor),
        "ours, wait=sleep": lambda: ours_sleep.allreduce(tensor),
    }
    samples = {name: [] for name in variants}
    block = 100
    blocks = max(1, -(-args.overhead_iters // block))
    for fn in variants.values():
        for _ in range(20):
            fn()
    clock = time.perf_counter
    for _ in range(blocks):
        for name, fn in variants.items():
            ours_spin.sync()
            out = samples[name]
            for _ in range(block):
                start = clock()
                fn()
                out.append(clock() - start)
    medians = {name: statistics.median(s) for name, s in samples.items()}
    all_medians = comm.gather_object(medians)
    if comm.rank == 0:
        base = "raw mpi4py, numpy view"
        rows, records = [], []
        for name in variants:
            worst = max(m[name] for m in all_medians)
            ref = max(m[base] for m in all_medians)
            rows.append([name, f"{worst * 1e6:.2f}", f"{worst / ref:.3f}", len(samples[name])])
            records.append({"bench": "overhead", "variant": name, "median_s": worst, "ratio_to_raw_numpy": worst / ref,
                            "calls": len(samples[name]), "ranks": comm.size, "bytes": 1024})
        spin = max(m["ours, wait=spin"] for m in all_medians)
        uncounted = max(m["ours, counting off (spin)"] for m in all_medians)
        share = (spin - uncounted) / spin
        records.append({"bench": "overhead", "variant": "recording share", "share": share,
                        "recording_s": spin - uncounted, "ranks": comm.size, "bytes": 1024})
        print(f"1 KiB float32 allreduce, {comm.size} ranks, median per call (max over ranks)")
        print(tabulate(rows, headers=["variant", "median us", "/ raw numpy", "calls"]))
        print(f"recording (counters + clocks): {(spin - uncounted) * 1e6:.2f} us per call, "
              f"{share:.1%} of ours (spin)")
        write_jsonl(args.out, records)
