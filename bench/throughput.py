"""bench.throughput: strong scaling of every strategy over device counts, in one launch.

    mpiexec -n 4 python -m bench.throughput                   # P = 1, 2, 4 in one job
    mpiexec -n 2 python -m bench.throughput --model tiny --requests 8 --seq 16 --strategies dp,pp

A fixed set of --requests requests (one sequence of --seq tokens each) is
processed as one offline batch by each strategy at every device count
P = 1, 2, 4, ... <= world size: the world communicator is split into a
sub-communicator of the first P ranks, the other ranks wait at a barrier
without spinning. DP spreads the requests over its ranks; PP pipelines them
as micro-batches (one request per micro-batch unless --micro-batches);
TP, SP and BP run the whole set through every rank.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass

from parallelism import UsageError

from . import auto as A, harness as H

DESCRIPTION = __doc__.strip() + """

Throughput = requests / (p50 time to finish the whole set, max over ranks);
efficiency = T(1) / (P x T(P)) with T(1) the same strategy on one device."""

EPILOG = """records: one JSON line per (strategy, P) with devices, requests, latency_s (time per set),
throughput_rps, efficiency, speedup_vs_1, bytes per rank per set, max_abs_err, env ..."""


def powers_of_two(limit: int) -> list[int]:
    out, p = [], 1
    while p <= limit:
        out.append(p)
        p *= 2
    if out[-1] != limit:
        out.append(limit)
    return out


@dataclass
class ThroughputOptions(H.Options):
    requests: int = 8
    devices: list[int] | None = None


def make_parser():
    p = H.parser("throughput", DESCRIPTION, H.Defaults(warmup=1, iters=3), EPILOG, batch=False)
    p.add_argument("--requests", type=H.cli.bounded_int(1, 65536, "a request count"), default=8,
                   help="requests in the set (default 8)")
    p.add_argument("--devices", type=H.int_list, default=None,
                   help="device counts to run, e.g. 1,2,4 (default: 1, 2, 4, ... and the world size)")
    return p


def main(argv=None) -> None:
    args = H.parse(make_parser(), argv, ThroughputOptions)
    model = H.resolve_model(args.model, args.nb, args.ndiv, args.seed)
    args.seq = args.seq or model.default_seq()
    session = world_session = H.Session("throughput", args)
    if args.auto:  # the planner's pick for this request set, on the hosts it uses (bench.auto)
        if args.devices:
            raise UsageError("--strategies auto chooses the devices itself: drop --devices")
        session, model, picked = A.enter(world_session, args, model, "throughput", args.requests, args.seq,
                                         lambda comm: H.Session("throughput", args, comm=comm))
        if session is None:
            return A.leave(world_session)
    elif args.profile:
        session.predict = A.predictor(session, args, model)
    world = session.comm
    devices = sorted(set(args.devices)) if args.devices else powers_of_two(world.size)
    if args.auto:
        devices = [world.size]
    if devices[-1] > world.size:
        raise UsageError(f"--devices {devices[-1]} exceeds the {world.size} launched rank(s) "
                         f"(launch with mpiexec -n {devices[-1]})")
    if world.size == 1:
        session.say("running on 1 rank: only P=1; for strong scaling launch: "
                    "mpiexec -n 4 python -m bench.throughput")
    ids, mask = H.make_inputs(model.original, args.requests, args.seq, args.seed)
    extra = {"micro_batches": args.micro_batches or args.requests}
    quiet_say = lambda message: None  # noqa: E731 - skips are reported once, at the largest P
    grid = {P: picked if args.auto else H.select(args, model, P, say=session.say if P == devices[-1] else quiet_say,
                                                 extra_options=extra, strict=False) for P in devices}
    if not any(grid.values()):
        raise UsageError(f"no strategy fits {model.original.describe()} at P in {devices}")
    session.plan(sum(len(v) for v in grid.values()))
    session.say(f"bench.throughput: {model.name}, {args.requests} requests of seq {args.seq}, P in {devices}, "
                f"warmup {args.warmup}, iters {args.iters} -> {session.out}")
    rows, base = [], {}
    with H.interrupt_note(session):
        for decoupled in (False, True):
            if not any(p.decoupled == decoupled for plans in grid.values() for p in plans):
                continue
            cfg = model.config(decoupled)
            weights = model.weights(decoupled)
            with session.point("serial reference"):
                ref = H.serial_reference(world, cfg, weights, ids, mask, 0, 1, time_it=False)
            for P in devices:
                plans = [p for p in grid[P] if p.decoupled == decoupled]
                if not plans:
                    continue
                sub = world.split(0 if world.rank < P else None, key=world.rank)
                if sub is not None:
                    for plan in plans:
                        with session.point(f"{plan.label} P={P}"):
                            result = run_point(session, args, model, cfg, weights, plan, sub, ids, mask, ref, P,
                                               base)
                        session.point_done(f"{plan.label} P={P}", result, rows, point_summary)
                    sub.free()
                else:
                    session.done += len(plans)  # keeps rank-local counters consistent
                world.idle_barrier()
            del weights
            gc.collect()
    session.table(rows, HEADERS, title=f"{model.name}  {args.requests} requests  seq {args.seq}  "
                                       f"(strong scaling, one launch of {world.size} ranks)")
    session.finish()
    if args.auto:
        A.leave(world_session)


def point_summary(record) -> str:
    eff = record["efficiency"]
    return f"{record['throughput_rps']:.2f} req/s" + ("" if eff is None else f", efficiency {eff:.2f}")


HEADERS = ["strategy", "P", "time/set p50", "req/s", "efficiency", "speedup vs P=1", "bus B/rank/set",
           "msgs/rank/set", "max_abs_err"]


def run_point(session, args, model, cfg, weights, plan, sub, ids, mask, ref, P, base):
    strategy = H.prepare(plan, cfg, weights, sub, ids, mask, strict=False, say=session.say)
    if strategy is None:
        return None
    fields, timing = H.measure_point(plan, strategy, sub, ids, mask, args.warmup, args.iters, args.requests,
                                     args.seq, session.iface)
    del strategy
    check = H.check_output(sub, timing.output, ref.output)
    err = check["max_abs_err"]
    t = fields["latency_s"]["p50"]
    if P == 1:
        base[plan.label] = t
    t1 = base.get(plan.label)
    efficiency = t1 / (P * t) if t1 else None
    record = session.base_record(
        model, cfg, **fields, batch=args.requests, seq=args.seq, requests=args.requests, devices=P,
        launched_ranks=session.size, threads=args.threads, throughput_rps=args.requests / t,
        efficiency=efficiency, speedup_vs_1=(t1 / t) if t1 else None, **check)
    record["world_size"] = P  # the ranks that ran this point (launched_ranks: the whole job)
    row = [plan.label, P, H.fmt_s(t), f"{args.requests / t:.2f}",
           "-" if efficiency is None else f"{efficiency:.2f}", "-" if not t1 else f"{t1 / t:.2f}x",
           H.fmt_bytes(record["bus_bytes_per_rank"]["total"]), f"{record['messages_per_rank']['total']:g}",
           "-" if err is None else f"{err:.1e}"]
    return record, row


if __name__ == "__main__":
    H.run_main(main)
