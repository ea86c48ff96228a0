"""bench.latency: one request at a time, every strategy back to back in one job.

    mpiexec -n 4 python -m bench.latency                      # defaults: bert-base, seq 128, batch 1
    mpiexec -n 2 python -m bench.latency --model tiny --iters 5 --strategies tp,bp
    python -m bench.latency                                   # P=1 (says how to launch more ranks)

Per strategy: latency of a whole forward (per iteration the max over ranks)
as min/p50/p90/p99/mean/max, compute vs communication, payload/bus bytes and
messages per rank per inference (measured and analytic), weights per rank, the
serial latency measured in the same job, the speedup, and max_abs_err and mean
cosine of the output vs the fp32 serial reference computed in the same job (bp:
vs the serial decoupled model). `--wire-dtype fp32,fp16,bf16,int8` and
`--overlap off,on` run every strategy in each configuration it takes.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass

from parallelism import UsageError

from . import auto as A, harness as H

DESCRIPTION = __doc__.split("\n\n")[0] + """

Defaults (bert-base, seq 128, batch 1, --warmup 2 --iters 10, 1 thread per rank)
keep `mpiexec -n 4 python -m bench.latency` within about a minute on a 2-core
machine. The serial reference runs on rank 0 while the other ranks wait
without spinning. Strategies that do not fit the world size or the model are
skipped with the reason (an explicit --strategies list makes that an error)."""

EPILOG = """records: one JSON line per strategy appended to --out (fields: latency_s, compute_s, comm_s,
payload/bus/messages per rank by op, expected_*, weights_bytes_per_rank, serial_latency_s,
speedup_vs_serial, max_abs_err, mean_cosine, output_check, wire_dtype, wire_reduce,
overlap_chunks, wire_bytes_per_rank, network, rate, env ...).

--compare-bare measures the harness's own overhead: the timed iterations are split into
up to 8 blocks, each followed by as many forwards of a bare hand-written loop (barrier,
clock, forward, clock; no bookkeeping), so load drift hits both alike; the record gets
bare_latency_s (mean of the slowest rank's time per forward, as for latency_s) and
harness_overhead_ratio = latency_s.mean / bare_latency_s (target <= 1.02)."""


@dataclass
class LatencyOptions(H.Options):
    compare_bare: bool = False


def make_parser():
    p = H.parser("latency", DESCRIPTION, H.Defaults(warmup=2, iters=10), EPILOG)
    p.add_argument("--compare-bare", action="store_true",
                   help="also time a bare loop of the same forward and record the harness overhead ratio")
    return p


def main(argv=None) -> None:
    args = H.parse(make_parser(), argv, LatencyOptions)
    model = H.resolve_model(args.model, args.nb, args.ndiv, args.seed)
    args.seq = args.seq or model.default_seq()
    ids, mask = H.make_inputs(model.original, args.batch, args.seq, args.seed)
    session = world_session = H.Session("latency", args)
    if session.size == 1:
        session.say("running on 1 rank (P=1); for P ranks launch: mpiexec -n 4 python -m bench.latency")
    if args.auto:  # the planner's pick, on the hosts it uses (bench.auto)
        session, model, plans = A.enter(world_session, args, model, "latency", args.batch, args.seq,
                                        lambda comm: H.Session("latency", args, comm=comm))
        if session is None:
            return A.leave(world_session)
    else:
        plans = H.select(args, model, session.size, say=session.say)
        if args.profile:
            session.predict = A.predictor(session, args, model)
    if not plans:
        raise UsageError(f"no strategy fits {model.original.describe()} on {session.size} rank(s)")
    explicit = args.explicit_strategies
    kinds = [d for d in (False, True) if any(p.decoupled == d for p in plans)]
    session.plan(len(plans) + len(kinds))
    session.say(f"bench.latency: {model.name}, batch {args.batch}, seq {args.seq}, P={session.size}, "
                f"warmup {args.warmup}, iters {args.iters}, {args.threads} thread(s)/rank -> {session.out}")
    rows, original_serial = [], None
    with H.interrupt_note(session):
        for decoupled in kinds:
            cfg = model.config(decoupled)
            weights = model.weights(decoupled)
            with session.point(f"serial ({'decoupled' if decoupled else 'original'})"):
                ref = H.serial_reference(session.comm, cfg, weights, ids, mask, args.warmup, args.iters)
            if not decoupled:
                original_serial = ref.latency
            kind = "decoupled" if decoupled else "original"
            session.tick(f"serial ({kind}, rank 0): p50 {H.fmt_s(ref.latency['p50'])}")
            for plan in (p for p in plans if p.decoupled == decoupled):
                with session.point(plan.label):
                    result = run_one(session, args, model, cfg, weights, plan, ids, mask, ref, original_serial,
                                     explicit)
                session.point_done(plan.label, result, rows, point_summary)
            del weights
            gc.collect()
    session.table(rows, HEADERS, title=f"{model.name}  batch {args.batch}  seq {args.seq}  P={session.size}"
                                       + (f"  rate {session.rate}" if session.rate else "")
                                       + "  (latency = max over ranks per forward)")
    session.finish()
    if args.auto:
        A.leave(world_session)


def point_summary(record) -> str:
    err = record["max_abs_err"]
    return f"p50 {H.fmt_s(record['latency_s']['p50'])}" + ("" if err is None else f", err {err:.1e}, "
                                                          f"cosine {record['mean_cosine']:.6f}")


HEADERS = ["strategy", "p50", "p90", "p99", "compute", "comm", "serial p50", "speedup", "bus B/rank",
           "expected bus", "msgs/rank", "weights/rank", "max_abs_err", "cosine"]


def run_one(session, args, model, cfg, weights, plan, ids, mask, ref, original_serial, explicit):
    comm = session.comm
    strategy = H.prepare(plan, cfg, weights, comm, ids, mask, explicit, say=session.say)
    if strategy is None:
        return None
    fields, timing = H.measure_point(plan, strategy, comm, ids, mask, args.warmup, args.iters, args.batch,
                                     args.seq, session.iface, args.compare_bare)
    del strategy
    check = H.check_output(comm, timing.output, ref.output)
    err = check["max_abs_err"]
    lat, serial = fields["latency_s"], ref.latency
    record = session.base_record(
        model, cfg, **fields, batch=args.batch, seq=args.seq, threads=args.threads,
        serial_latency_s=serial, speedup_vs_serial=serial["p50"] / lat["p50"],
        speedup_vs_original_serial=(original_serial["p50"] / lat["p50"]) if original_serial else None,
        **check)
    if timing.bare_s is not None:
        record["bare_latency_s"] = timing.bare_s
        record["harness_overhead_ratio"] = lat["mean"] / timing.bare_s
    row = [plan.label, H.fmt_s(lat["p50"]), H.fmt_s(lat["p90"]), H.fmt_s(lat["p99"]),
           H.fmt_s(record["compute_s"]), H.fmt_s(record["comm_s"]), H.fmt_s(serial["p50"]),
           f"{serial['p50'] / lat['p50']:.2f}x", H.fmt_bytes(record["bus_bytes_per_rank"]["total"]),
           H.fmt_bytes(record["expected_bus_bytes_per_rank"]["total"]),
           f"{record['messages_per_rank']['total']:g}",
           H.fmt_bytes(record["weights_bytes_per_rank"]["max"]), "-" if err is None else f"{err:.1e}",
           "-" if err is None else f"{record['mean_cosine']:.6f}"]
    if timing.bare_s is not None:
        row[0] += f" [overhead x{lat['mean'] / timing.bare_s:.3f}]"
    if record.get("predicted_latency_s") is not None:
        row[0] += f" [predicted {H.fmt_s(record['predicted_latency_s'])}]"
    return record, row


if __name__ == "__main__":
    H.run_main(main)
