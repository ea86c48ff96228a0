"""Device speed of an emulated host: the rate at which it runs the model's GEMMs.

    python -m bench.cluster.device [--seconds 2] [--json]   # this process's GEMM rate (1 thread)
    python -m bench.cluster up --hosts 4 --rate 100mbit --device pi4   # every host at a Pi 4B's rate
    python -m bench.cluster up --hosts 4 --rate 100mbit --gflops 12    # any target, GFLOP/s per host

The GEMMs are the four linears of one bert-base layer at seq 128, batch 1 (fused qkv 768->2304,
attention output 768->768, FFN 768->3072 and 3072->768: 1.81 GFLOP), fp32, one thread, as every
rank of the emulated cluster runs them. `up` measures their rate per CPU-second on this machine
(CPU time, so that other load on the machine does not lower it) and gives each host the CPU
quota target / rate. A CFS quota runs a host at full speed for quota x 100 ms and then stops
it for the rest of each 100 ms period, so the achieved rate is measured over whole seconds
(many periods), never over one GEMM; `status` measures it inside each host.

A quota does not deliver its share of the calibrated rate exactly: the host's caches go cold
while it is throttled, hosts that share a core evict each other's caches, and the calibration
keeps the fastest of 5 runs. With the quota from the calibration alone, pi4 hosts reached
19.9-20.8 of 23.5 GFLOP/s (84-88%; stop-8 closing note) and, eight at once on another day,
17.4 (74%). So `up` takes up to two correction steps: it measures every host at once under
the quota and scales the quota by target / (median achieved rate), until the median is within
3% of the target. A step is only taken when it measures the quota and not a busy machine:
every host must have used at least 90% of its quota in CPU time (cpu_s / wall_s); a host that
got less competed with other work, and no quota is then the target's. The quotas never
add up to more than 96% of the machine's cores (the launcher and mpirun need the rest): a step
stops there, and `status` then shows how far from the target the hosts are. The step is
skipped when it would change the quota by more than a factor of 1.6 (no cache effect is that
large). Eight hosts at once lose most: their working sets no longer fit the shared last-level
cache, which a real board, with its own memory, does not suffer.

The Raspberry Pi 4B figure is an ESTIMATE, not a measurement of PyTorch on a Pi:
  peak: 4 Cortex-A72 cores x 1.5 GHz x 8 fp32 FLOP per cycle (one 4-wide NEON FMA per cycle;
        vfpbench measured 7.94 fp32 FLOP/cycle on one A72 core, wlog.flatlib.jp 2015-10-30)
        = 48 GFLOP/s;
  achieved fraction: 0.49, what High-Performance Linpack (fp64, GEMM-bound) reaches on a Pi 4B
        at 1.5 GHz with OpenBLAS: 11.68 of 24 fp64 GFLOP/s (4 cores x 1.5 GHz x 4 fp64 FLOP per
        cycle; github.com/geerlingguy/top500-benchmark issue 15); with BLIS 12.4-14.2
        (github.com/OpenMathLib/OpenBLAS issue 2230, 0.52-0.59);
  pi4 = 48 x 0.49 = 23.5 GFLOP/s for the whole board (its 4 cores), which the emulated host
  delivers with one thread under a quota. Replace it with a measurement of `python -m
  bench.cluster.device` under 4 threads on a real Pi (--gflops) when you have one.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

DEVICES = {"pi4": 23.5}          # GFLOP/s per board (see above: an estimate)
MODEL, SEQ = "bert-base", 128


def gemm_shapes(model: str = MODEL, seq: int = SEQ) -> list[tuple[int, int, int]]:
    """(tokens, in, out) of each linear of one layer of `model`."""
    from kernels.config import preset
    cfg = preset(model)
    h, f = cfg.hidden, cfg.ffn
    return [(seq, h, 3 * h), (seq, h, h), (seq, h, f), (seq, f, h)]


def measure(seconds: float = 2.0, warmup: float = 0.3, model: str = MODEL, seq: int = SEQ,
            start_at: float | None = None) -> dict:
    """Run the layer's linears back to back for `seconds` of wall time (after `warmup`, and not
    before the epoch time `start_at`, so that hosts measured together measure the same window):
    {gflops: per wall second, gflops_per_cpu_s: per second of this thread's CPU time, ...}."""
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    shapes = gemm_shapes(model, seq)
    inputs = [torch.randn(m, k, generator=gen) for m, k, _ in shapes]
    weights = [torch.randn(n, k, generator=gen) * k ** -0.5 for _, k, n in shapes]   # [out, in] like nn.Linear
    flop_per_set = sum(2 * m * k * n for m, k, n in shapes)

    def one_set():
        for x, w in zip(inputs, weights):
            F.linear(x, w)

    end = time.perf_counter() + max(warmup, (start_at or 0) - time.time())
    while time.perf_counter() < end:
        one_set()
    sets, start, cpu_start = 0, time.perf_counter(), time.thread_time()
    while time.perf_counter() - start < seconds:
        one_set()
        sets += 1
    wall, cpu = time.perf_counter() - start, time.thread_time() - cpu_start
    return {"gflops": sets * flop_per_set / wall / 1e9, "gflops_per_cpu_s": sets * flop_per_set / cpu / 1e9,
            "wall_s": wall, "cpu_s": cpu, "sets": sets, "gflop_per_set": flop_per_set / 1e9,
            "shapes": shapes, "model": model, "seq": seq}


def measure_command(seconds: float, repeat: int = 1, start_at: float | None = None) -> list[str]:
    return [sys.executable, "-m", "bench.cluster.device", "--json", "--seconds", str(seconds), "--repeat", str(repeat),
            *(["--start-at", f"{start_at:.3f}"] if start_at else [])]


def parse_result(proc: subprocess.CompletedProcess) -> dict:
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout or "").strip().splitlines()
        raise RuntimeError(lines[-1] if lines else f"exit {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def calibrate() -> dict:
    """This machine's GEMM rate per CPU-second, one thread, outside any emulated host: the
    fastest of 5 runs of 0.4 s (in a fresh process, so that bench.cluster never imports torch)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return parse_result(subprocess.run(measure_command(0.4, 5), capture_output=True, text=True, env=env))


def target_gflops(device: str | None, gflops: str | None) -> float | None:
    """The per-host target of --device NAME or --gflops X (ValueError if invalid), else None."""
    if device is not None and gflops is not None:
        raise ValueError("give --device or --gflops, not both")
    if device is not None:
        if device not in DEVICES:
            raise ValueError(f"unknown device {device!r} (known: {', '.join(DEVICES)}; or --gflops X)")
        return DEVICES[device]
    if gflops is None:
        return None
    try:
        value = float(gflops)
    except ValueError:
        value = float("nan")
    if not 0.1 <= value <= 10_000:         # also rejects nan and inf
        raise ValueError(f"invalid --gflops {gflops!r}: expected GFLOP/s per host from 0.1 to 10000")
    return value


def device_quota(target: float, calibration: dict, cores: int) -> float:
    """The CPU quota (cores) at which a host runs the GEMMs at `target` GFLOP/s."""
    per_core = calibration["gflops_per_cpu_s"]
    quota = target / per_core
    if not 0.01 <= quota <= cores:
        raise ValueError(f"{target:g} GFLOP/s per host needs a quota of {quota:.3g} cores at this machine's "
                         f"{per_core:.1f} GFLOP/s per core: outside 0.01 to {cores}")
    return round(quota, 4)


MAX_CORRECTION = 1.6      # per step; measured steps so far: x1.126 and x1.35 (see above)
MIN_CPU_SHARE = 0.9       # of its quota, in CPU time, that every host must have used
CLOSE_ENOUGH = 0.03       # no further step once the median is this close to the target
MAX_MACHINE_SHARE = 0.96  # of the machine's cores that all hosts' quotas may add up to (mpirun and
                          # the launcher need the rest); a correction stops there


def corrected_quota(target: float, quota: float, achieved: list[dict], hosts: int,
                    cores: int) -> tuple[float, str | None]:
    """One correction step from each host's measurement ({gflops, cpu_share} or {error}):
    (quota x target / median gflops, None), or (quota, why not)."""
    measured = [a for a in achieved if a.get("gflops", 0) > 0 and "cpu_share" in a]
    if len(measured) < len(achieved) or not measured:
        return quota, f"{len(achieved) - len(measured)} of {len(achieved)} hosts could not be measured"
    least = min(a["cpu_share"] for a in measured)
    if least < MIN_CPU_SHARE * quota:
        return quota, (f"a host used {least:.3f} of its {quota:g}-core quota: the machine is busy, "
                       "and a quota cannot correct that")
    median = statistics.median(a["gflops"] for a in measured)
    factor = target / median
    if not 1 / MAX_CORRECTION <= factor <= MAX_CORRECTION:
        return quota, (f"the hosts reached {median:.1f} of {target:g} GFLOP/s: a factor of {factor:.2f} is more "
                       "than a quota explains")
    new = round(quota * factor, 4)
    ceiling = round(cores * MAX_MACHINE_SHARE / hosts, 4)
    if new > ceiling:
        if ceiling <= quota:
            return quota, (f"{hosts} hosts at the corrected quota {new:g} need {new * hosts:.3g} of {cores} cores "
                           f"(at most {MAX_MACHINE_SHARE:.0%} of them are given to hosts)")
        new = ceiling
    return new, None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster.device", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=2.0, help="measured wall time (default %(default)s)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="measure this many times, keep the fastest per CPU-second (default %(default)s)")
    parser.add_argument("--start-at", type=float, default=None, metavar="EPOCH",
                        help="warm up until this time.time() before measuring (bench.cluster status starts "
                             "every host's window together with it)")
    parser.add_argument("--json", action="store_true", help="one JSON object")
    args = parser.parse_args(argv)
    if args.start_at is not None and not 0 <= args.start_at - time.time() <= 120:
        parser.error(f"--start-at {args.start_at}: expected an epoch time within the next 120 s")
    runs = [measure(min(max(args.seconds, 0.1), 60.0), start_at=args.start_at if i == 0 else None)
            for i in range(min(max(args.repeat, 1), 20))]
    result = max(runs, key=lambda r: r["gflops_per_cpu_s"])   # other load only ever slows a run down
    result["runs_gflops_per_cpu_s"] = [round(r["gflops_per_cpu_s"], 2) for r in runs]
    print(json.dumps(result) if args.json else
          f"{result['gflops']:.1f} GFLOP/s ({result['gflops_per_cpu_s']:.1f} per CPU-second) over "
          f"{result['wall_s']:.2f} s: {result['model']} s={result['seq']} linears, 1 thread")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
