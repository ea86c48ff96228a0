"""bench.profile: measure the hosts and links a placement runs on, into one JSON profile.

    mpiexec -n 2 python -m bench.profile --model tiny --out results/profile-tiny.json
    python -m bench.cluster run --name pl -- python -m bench.profile --model bert-base --out results/pl.json

One rank per host. Per host (all at once): the CPU seconds of one call of each of the
model's own kernels (kernels.layers: fused qkv projection, attention, output projection +
residual + LayerNorm, FFN + residual + LayerNorm, embeddings) at every shape a candidate
placement uses (widths h, h/P and h/N_div, heads/P, tokens/P; bench.planner.kernel_shapes)
at the request shapes of --shapes and the thread count of --threads; CPU seconds are the
full-speed time, whatever the CPU quota (DETR_CPU_QUOTA, recorded) makes of it; available
memory and a rank's resident memory before any model tensor. Per link (pairs in rounds,
disjoint pairs at once): ping-pong latency (8 bytes) and large-transfer bandwidth. Per
collective the strategies use (allreduce, allgather, gather, send) at every world size
2..N (the first P hosts): a fit time = alpha + beta x bytes over sizes up to what the link
moves in --max-op-seconds, with its residual.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import time
from pathlib import Path
from time import perf_counter, process_time, sleep

import torch

from parallelism import UsageError

from . import cli, records
from .costmodel import cost_bytes
from .models import resolve_model
from .profiles import SCHEMA, model_of, validate
from .profile_kernels import calibrate, measure_kernels

EPILOG = """The profile feeds python -m bench.plan --profile FILE and the drivers' --strategies auto
--profile FILE. Target: under 60 s for 4 hosts at 100 Mbit/s with the default --shapes."""


def shape_list(text: str) -> list[tuple[int, int]]:
    out = []
    for part in text.split(","):
        try:
            batch, seq = (int(v) for v in part.lower().split("x"))
        except ValueError:
            batch = seq = 0
        if batch < 1 or seq < 1:
            raise UsageError(f"--shapes: expected BATCHxSEQ items like 1x128,4x128, got {part!r}")
        out.append((batch, seq))
    return out


def make_parser():
    from parallelism.comm import world_rank
    p = cli.ArgumentParser(prog="python -m bench.profile", description=__doc__, epilog=EPILOG,
                           quiet_rank=world_rank() != 0)
    p.add_argument("--model", default="bert-base", help="preset or checkpoint folder (default bert-base)")
    p.add_argument("--shapes", type=shape_list, default=None,
                   help="request shapes BATCHxSEQ the kernels are measured at (default 1x128, or 1 x the "
                        "model's max_positions when shorter)")
    p.add_argument("--nb", type=cli.positive_int, default=None, help="fix bp's N_b (default: every one)")
    p.add_argument("--ndiv", type=cli.positive_int, default=None, help="fix bp's N_div (default: every one)")
    p.add_argument("--threads", type=cli.positive_int, default=1, help="torch threads per rank (default 1)")
    p.add_argument("--reps", type=cli.bounded_int(1, 100, "repetitions"), default=3,
                   help="timed calls per kernel and per collective size (default 3)")
    p.add_argument("--max-op-seconds", type=cli.finite_float(0.01, 10), default=0.25,
                   help="largest collective size: what the slowest link moves in this time (default 0.25)")
    p.add_argument("--wait", choices=("auto", "spin", "sleep"), default="auto",
                   help="how ranks wait in MPI calls, as in the drivers (default auto: $DETR_COMM_WAIT, else "
                        "sleep when there are more ranks than CPUs, else spin)")
    p.add_argument("--out", type=cli.output_path, default=None,
                   help="profile JSON (default results/profile-<UTC time>.json)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


# -- this host ----------------------------------------------------------------------------------
def memory_available() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def resident_bytes() -> int:
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def cpu_quota() -> float | None:
    value = os.environ.get("DETR_CPU_QUOTA")
    try:
        return records.parse_cpu_quota(value)
    except ValueError:
        raise UsageError(f"DETR_CPU_QUOTA={value!r}: expected a positive number of cores or 'none'") from None


def machine_id() -> str | None:
    """The running kernel's boot id: hosts that report the same one share a machine's cores
    (emulated hosts in network namespaces, or local ranks), which the cost model accounts for."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


# -- links --------------------------------------------------------------------------------------
def rounds(n: int) -> list[list[tuple[int, int]]]:
    """Every pair of n hosts once, in rounds of disjoint pairs (the circle method)."""
    ids = list(range(n)) + ([None] if n % 2 else [])
    m, out = len(ids), []
    for _ in range(m - 1):
        pairs = [(ids[i], ids[m - 1 - i]) for i in range(m // 2)]
        out.append([tuple(sorted(p)) for p in pairs if None not in p])
        ids = [ids[0], ids[-1], *ids[1:-1]]
    return out


def ping_pong(comm, peer: int, nbytes: int, times: int, first: bool) -> float:
    """Median one-way time of `times` round trips of `nbytes` with `peer`."""
    buf = torch.zeros(max(nbytes // 4, 1))
    samples = []
    for _ in range(times + 1):
        t0 = perf_counter()
        if first:
            comm.send(buf, peer)
            comm.recv(buf, peer)
        else:
            comm.recv(buf, peer)
            comm.send(buf, peer)
        samples.append((perf_counter() - t0) / 2)
    return statistics.median(samples[1:])


def measure_links(comm, max_s: float) -> list[dict]:
    mine = []
    for pairs in rounds(comm.size):
        for a, b in pairs:
            if comm.rank in (a, b):
                peer, first = (b, True) if comm.rank == a else (a, False)
                latency = ping_pong(comm, peer, 8, 20, first)
                probe = 64 << 10
                guess = probe / max(ping_pong(comm, peer, probe, 2, first) - latency, 1e-6)
                # Both ends must agree on the size: the first one's guess decides.
                agreed = torch.tensor([int(min(8 << 20, max(probe, guess * max_s / 2)))])
                if first:
                    comm.send(agreed, peer)
                else:
                    comm.recv(agreed, peer)
                size = int(agreed)
                one_way = ping_pong(comm, peer, size, 2, first)
                if first:
                    mine.append({"a": a, "b": b, "latency_s": latency, "bytes": size,
                                 "bandwidth_Bps": size / max(one_way - latency, 1e-9)})
        comm.sync()
    return sorted((link for part in comm.allgather_object(mine) for link in part), key=lambda l: (l["a"], l["b"]))


# -- collectives --------------------------------------------------------------------------------
def fit(points: list[tuple[int, float]]) -> tuple[float, float, float]:
    """alpha, beta of alpha + beta x bytes by least squares (alpha >= 0, beta > 0), and the fit's
    RMS relative residual. Unweighted: the larger messages, which the strategies move and whose
    time is mostly beta, decide; tiny ones (which a shaper's burst or an eager protocol sends
    faster than the line) are left out by the caller."""
    n = len(points)
    mx, mt = sum(x for x, _ in points) / n, sum(t for _, t in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    beta = sum((x - mx) * (t - mt) for x, t in points) / sxx if sxx > 0 else 0.0
    alpha = mt - beta * mx
    if alpha < 0:  # through the origin
        alpha, beta = 0.0, sum(x * t for x, t in points) / max(sum(x * x for x, _ in points), 1)
    if beta <= 0:  # a flat line: time does not grow with size here
        alpha, beta = statistics.median(t for _, t in points), 1e-15
    timed = [(x, t) for x, t in points if t > 0]     # (a CPU fit may see zeros)
    residual = (sum(((alpha + beta * x - t) / t) ** 2 for x, t in timed) / max(len(timed), 1)) ** 0.5
    return alpha, max(beta, 1e-15), residual


def fitted_points(sizes: list[int], points: list, model_sizes) -> list:
    """The points a fit uses: sizes from 64 KiB (or the model's smallest message, if smaller)."""
    floor = min([64 << 10] + [s for s in model_sizes if s])
    kept = [p for size, p in zip(sizes, points) if size >= floor]
    return kept if len(kept) >= 2 else points[-2:]


def run_op(sub, op: str, whole: int, reps: int) -> tuple[int, float, float]:
    """(cost bytes, median seconds (max over ranks), this rank's median CPU seconds) of `op` on
    a `whole`-byte buffer."""
    world, n = sub.size, max(whole // 4, sub.size)
    counts = [n // world + (r < n % world) for r in range(world)]
    full, part = torch.zeros(n), torch.zeros(counts[sub.rank])
    if op == "allreduce":
        call, parts = (lambda: sub.allreduce(full)), [4 * n] * world
    elif op == "allgather":
        call, parts = (lambda: sub.allgatherv(part, counts, full)), [4 * c for c in counts]
    elif op == "gather":
        call = lambda: sub.gatherv(part, counts, full if sub.rank == 0 else None)  # noqa: E731
        parts = [0] + [4 * c for c in counts[1:]]
    else:  # send: one way of a ping-pong between the first two ranks
        nbytes = 4 * n
        return nbytes, ping_pong(sub, 1 - sub.rank, nbytes, reps, sub.rank == 0), 0.0
    times, cpu = [], []
    for i in range(reps + 1):
        sub.sync()
        c0, t0 = process_time(), perf_counter()
        call()
        wall = perf_counter() - t0
        if i:
            times.append(sub.max_over_ranks(wall))
            cpu.append(process_time() - c0)
    return cost_bytes(op, parts, 4 * n, world), statistics.median(times), statistics.median(cpu)


def wait_cpu_fraction(comm, seconds: float = 0.06, reps: int = 3) -> float:
    """CPU seconds per second that a rank burns while it waits in an MPI call for a late peer
    (the communicator's wait: spin or sleep-poll), the mean over the waiting ranks: the cost
    model charges it to every rank that arrives at a collective before the last one, and to
    every rank while the collective's bytes move (it polls then too)."""
    fractions = []
    for _ in range(reps):
        comm.sync()
        c0, t0 = process_time(), perf_counter()
        if comm.rank == 0:
            sleep(seconds)
        comm.sync()
        if comm.rank:
            fractions.append((process_time() - c0) / (perf_counter() - t0))
    per_rank = comm.allgather_object(statistics.median(fractions) if fractions else None)
    return statistics.mean(f for f in per_rank if f is not None)


def op_sizes(op: str, world: int, bandwidth: float, max_s: float, model_sizes) -> list[int]:
    grid = [16 << 10 << (2 * i) for i in range(6)]  # 16 KiB .. 16 MiB
    budget = bandwidth * max_s
    factor = {"allreduce": 2 * (world - 1) / world, "allgather": (world - 1) / world,
              "gather": (world - 1) / world, "send": 1}[op]
    fits = [s for s in grid if s * factor <= budget]
    sizes = set(fits if len(fits) >= 3 else grid[:3])
    sizes |= {s for s in model_sizes if s and s * factor <= 2 * budget}
    return sorted(sizes)


def measure_collectives(comm, links, model_sizes, reps: int, max_s: float, wait: float, say) -> list[dict]:
    bandwidth = min(link["bandwidth_Bps"] for link in links)
    out = []
    for world in range(2, comm.size + 1):
        sub = comm.split(0 if comm.rank < world else None, key=comm.rank)
        if sub is not None:
            for op in ("allreduce", "allgather", "gather") + (("send",) if world == 2 else ()):
                points, mine = [], []
                relevant = model_sizes.get((op, world), ())
                sizes = op_sizes(op, world, bandwidth, max_s, relevant)
                for size in sizes:
                    x, t, c = run_op(sub, op, size, reps)
                    points.append((x, t))
                    mine.append(c)
                cpu = [statistics.mean(c) for c in zip(*sub.allgather_object(mine))]   # mean over ranks
                alpha, beta, residual = fit(fitted_points(sizes, points, relevant))
                # CPU beyond waiting (copies, TCP, the MPI progress engine), fitted like the time
                busy = [(x, max(c - wait * t, 0.0)) for (x, t), c in zip(points, cpu)]
                cpu_alpha, cpu_beta, _ = fit(fitted_points(sizes, busy, relevant)) if op != "send" else (0.0, 0.0, 0)
                out.append({"op": op, "world": world, "alpha_s": alpha, "beta_s_per_byte": beta,
                            "residual": residual, "cpu_fraction": statistics.mean(c / t for (_, t), c in zip(points, cpu)),
                            "cpu_alpha_s": cpu_alpha, "cpu_beta_s_per_byte": cpu_beta,
                            "sizes": sizes, "points": [[x, t] for x, t in points], "cpu_s": cpu})
                say(f"  {op:9s} P={world}: alpha {alpha * 1e3:.2f} ms, {1 / beta / 1e6:.1f} MB/s "
                    f"(residual {residual:.1%}, {len(points)} sizes)")
            sub.free()
        comm.idle_barrier()
    return comm.bcast_object(out)


# -- the tool -----------------------------------------------------------------------------------
def run_profile(comm, cfg, shapes, reps: int = 3, max_op_seconds: float = 0.25, nb=None, ndiv=None,
                say=lambda m: None) -> dict:
    """Profile the hosts of `comm` (collective; every rank returns the same, validated profile)."""
    from bench.planner import kernel_shapes
    from parallelism.comm import processor_name

    from . import network
    start, runtime = perf_counter(), resident_bytes()
    quota = cpu_quota()
    works, model_sizes = kernel_shapes(cfg, comm.size, shapes, nb, ndiv)
    say(f"bench.profile: {cfg.describe()}, {comm.size} host(s), shapes "
        f"{','.join(f'{b}x{s}' for b, s in shapes)}, {len(works)} kernel shapes, {torch.get_num_threads()} thread(s)")
    kernels, share = measure_kernels(cfg, works, reps)
    say(f"kernels measured in {perf_counter() - start:.1f}s")
    calibration = calibrate(cfg, kernels, *shapes[0])
    say(f"whole forwards against their kernels in {perf_counter() - start:.1f}s: x"
        + ", x".join(f"{calibration[k]['factor']:.2f} {k}" for k in ("original", "decoupled") if k in calibration))
    iface = network.wire_iface()
    host = {"host": processor_name(), "machine_id": machine_id(), "cpus": os.cpu_count() or 1, "cpu_quota": quota,
            "cpu_model": records.cpu_model(), "memory_available_bytes": memory_available(),
            "runtime_bytes": runtime, "cpu_share": share, "network": network.describe_network(iface),
            "calibration": calibration, "kernels": kernels}
    hosts = [{"rank": r, **h} for r, h in enumerate(comm.allgather_object(host))]
    links, collectives, wait = [], [], 0.0
    if comm.size > 1:
        links = measure_links(comm, max_op_seconds)
        say(f"links measured ({len(links)}), {perf_counter() - start:.1f}s")
        wait = wait_cpu_fraction(comm)
        say(f"waiting in MPI costs {wait:.3f} of a core ({comm.wait})")
        collectives = measure_collectives(comm, links, model_sizes, reps, max_op_seconds, wait, say)
    profile = {"schema": SCHEMA, "model": model_of(cfg), "shapes": [list(s) for s in shapes],
               "threads": torch.get_num_threads(), "wait": comm.wait, "hosts": hosts, "links": links,
               "collectives": collectives, "wait_cpu_fraction": wait, "profiling_s": perf_counter() - start,
               "utc_time": records.utc_now(), "git_commit": records.git_commit(),
               "loadavg_1m": records.loadavg(), "launcher_host": socket.gethostname()}
    return validate(profile, "(just measured)")  # on every rank alike: a zero rate must not reach a file


def write_profile(profile: dict, out) -> Path:
    """A complete profile or none: written beside, then renamed."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(profile, indent=1) + "\n")
    os.replace(tmp, path)
    return path


def main(argv=None) -> None:
    from .session import make_comm

    args = make_parser().parse_args(argv)
    model = resolve_model(args.model)
    cfg = model.original
    if model.checkpoint is not None and model.decoupled is not None:  # a trained decoupled model: its shape
        args.nb, args.ndiv = model.decoupled.n_blocks, model.decoupled.n_div
    args.shapes = args.shapes or [(1, min(128, cfg.max_positions))]
    for batch, seq in args.shapes:
        if seq > cfg.max_positions:
            raise UsageError(f"--shapes: seq {seq} exceeds {cfg.name}'s max_positions {cfg.max_positions}")
    cpu_quota()  # a bad DETR_CPU_QUOTA is bad input, before any work
    out = args.out or f"results/profile-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    torch.set_num_threads(args.threads)
    comm = make_comm(args.wait)
    say = (lambda m: print(m, flush=True)) if comm.rank == 0 and not args.quiet else (lambda m: None)
    profile = run_profile(comm, cfg, args.shapes, args.reps, args.max_op_seconds, args.nb, args.ndiv, say)
    if comm.rank == 0:
        path = write_profile(profile, out)
        say(f"profile of {comm.size} host(s) in {profile['profiling_s']:.1f}s -> {path}")
    comm.sync()


if __name__ == "__main__":
    cli.run(main, mpi=True)
