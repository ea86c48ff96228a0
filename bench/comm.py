"""bench.comm: communication volume per inference per rank, analytic and measured.

    python -m bench.comm                                        # analytic: bert-base,bert-large x P=2,4
    python -m bench.comm --models bert-base --world-sizes 4 --seqs 128,512
    mpiexec -n 4 python -m bench.comm --models bert-base        # + measured at P=2 and 4 (one forward each)

For each strategy, model preset, P and seq: payload and bus bytes, messages
(per op and total) from each strategy's `expected_traffic` formulas, the
ratio of its bus bytes to TP's, and the weights each rank would hold.

The analytic numbers need no MPI ranks and no memory: they are the strategies'
pure formulas (`Strategy.expected_traffic`, `weights_bytes`) evaluated for
every rank index of P. When the job has at
least P ranks (and --measure is not 'never'), every strategy is also run for
real on the first P ranks (--iters forwards, seeded weights; the other ranks
wait) and the counted bytes/messages are recorded next to the formulas, with
the bytes on the wire when the network layer reports interface counters.
"""

from __future__ import annotations

import argparse
import gc
from dataclasses import dataclass, field

from parallelism import UsageError

from . import harness as H

EPILOG = """records: one JSON line per (strategy, model, P, seq): expected_{payload,bus,messages}_per_rank
(total = max over ranks, by_op, by_rank), bus_ratio_to_tp, weights_bytes_per_rank, measured
payload/bus/messages_per_rank and wire_bytes_per_rank when measured (else null).

memory: the formulas need no weights at all; measuring materializes the seeded weights on every
rank (bert-base 0.44 GB, bert-large 1.34 GB per rank, plus the strategy's shard), one model kind
at a time. Use --measure never (or --models bert-base) on small hosts."""


def analytic(plan: H.Plan, cfg, size: int, batch: int, seq: int) -> dict:
    """Expected traffic and weights of every rank index, from the strategy's pure formulas."""
    tables = [plan.cls.expected_traffic(cfg, size, rank, batch, seq, **plan.options) for rank in range(size)]
    out = {}
    for key, attr in (("payload", "payload"), ("bus", "bus"), ("messages", "calls")):
        per_rank = [{op: getattr(t, attr) for op, t in table.items()} for table in tables]
        totals = [sum(t.values()) for t in per_rank]
        ops = sorted({op for t in per_rank for op in t})
        out[key] = {"total": max(totals), "mean": sum(totals) / size, "by_rank": totals,
                    "by_op": {op: max(t.get(op, 0) for t in per_rank) for op in ops}}
    wb = [plan.cls.weights_bytes(cfg, size, rank, **plan.options) for rank in range(size)]
    out["weights"] = {"max": max(wb), "total": sum(wb), "by_rank": wb}
    return out


@dataclass
class CommOptions(H.Options):
    models: list[str] = field(default_factory=lambda: ["bert-base", "bert-large"])
    world_sizes: list[int] = field(default_factory=lambda: [2, 4])
    seqs: list[int] = field(default_factory=lambda: [128])
    measure: str = "auto"


def world_sizes(text: str) -> list[int]:
    values = H.int_list(text)
    if max(values) > H.options.MAX_RANKS:
        raise argparse.ArgumentTypeError(f"device counts go up to {H.options.MAX_RANKS}, got {text!r}")
    return values


def make_parser():
    p = H.parser("comm", __doc__.strip(), H.Defaults(warmup=0, iters=1), EPILOG, shape=False)
    p.add_argument("--models", type=H.name_list, default=["bert-base", "bert-large"],
                   help="comma-separated presets (default bert-base,bert-large)")
    p.add_argument("--world-sizes", type=world_sizes, default=[2, 4],
                   help=f"device counts P (default 2,4; at most {H.options.MAX_RANKS})")
    p.add_argument("--seqs", type=H.int_list, default=[128], help="sequence lengths (default 128)")
    p.add_argument("--batch", type=H.cli.bounded_int(1, 65536, "a batch size"), default=1,
                   help="sequences per request (default 1)")
    p.add_argument("--measure", choices=("auto", "never"), default="auto",
                   help="auto: also run for real when the world size equals P (default); never: formulas only")
    return p


def main(argv=None) -> None:
    args = H.parse(make_parser(), argv, CommOptions)
    session = H.Session("comm", args)
    models = []
    for name in args.models:
        if name not in H.PRESETS:
            raise UsageError(f"--models: {name!r} is not a preset ({', '.join(H.PRESETS)})")
        models.append(H.resolve_model(name, args.nb, args.ndiv, args.seed))
    for m in models:
        for seq in args.seqs:
            if seq > m.original.max_positions:
                raise UsageError(f"--seqs {seq} exceeds {m.name}'s max_positions {m.original.max_positions}")
    grid = []
    for m in models:
        for P in args.world_sizes:
            plans = H.select(args, m, P, say=lambda msg, m=m, P=P: session.say(f"{m.name} P={P}: {msg}"),
                             strict=False)
            grid.extend((m, P, seq, plans) for seq in args.seqs)
    session.plan(len(grid))
    measuring = args.measure == "auto" and session.size > 1
    if args.measure == "auto" and not measuring:
        session.say("formulas only (to also measure, launch with mpiexec -n P: every P <= the launched ranks "
                    "is measured)")
    rows, summary = [], []
    with H.interrupt_note(session):
        for m, P, seq, plans in grid:
            results = []
            for plan in plans:
                cfg = m.config(plan.decoupled)
                try:
                    a, why = analytic(plan, cfg, P, args.batch, seq), None
                except UsageError as err:
                    a, why = None, str(err)
                results.append((plan, cfg, a, why))
            measured = {}
            if measuring and P <= session.size:
                # The first P ranks measure on a sub-communicator; the others wait without spinning.
                sub = session.comm.split(0 if session.rank < P else None, key=session.rank)
                if sub is not None:
                    with session.point(f"{m.name} P={P} seq {seq}"):
                        measured = measure_all(session, sub, args, m, seq, plans)
                    sub.free()
                session.comm.idle_barrier()
            # The paper's baseline: TP with fp32 on the wire.
            tp_bus = next((a["bus"]["total"] for plan, _, a, _ in results
                           if plan.name == "tp" and "wire_dtype" not in plan.options and a), None)
            for plan, cfg, a, why in results:
                got = measured.get(plan.label)
                bus = a["bus"]["total"] if a else (got["bus"]["total"] if got else None)
                ratio = bus / tp_bus if (bus is not None and tp_bus) else None
                record = session.base_record(
                    m, cfg, strategy=plan.name, label=plan.label, options=plan.options,
                    boundary=plan.options.get("boundary"), batch=args.batch, seq=seq,
                    expected_payload_bytes_per_rank=a["payload"] if a else None,
                    expected_bus_bytes_per_rank=a["bus"] if a else None,
                    expected_messages_per_rank=a["messages"] if a else None,
                    analytic_error=why, weights_bytes_per_rank=a["weights"] if a else None,
                    bus_ratio_to_tp=ratio, measured=got is not None,
                    payload_bytes_per_rank=got["payload"] if got else None,
                    bus_bytes_per_rank=got["bus"] if got else None,
                    messages_per_rank=got["messages"] if got else None,
                    wire_bytes_per_rank=got["wire"] if got else None,
                    max_abs_err=got["max_abs_err"] if got else None,
                    output_check=got["output_check"] if got else None)
                record["world_size"] = P
                session.emit(record)
                rows.append([m.name, P, seq, plan.label,
                             H.fmt_bytes(a["payload"]["total"]) if a else "-",
                             H.fmt_bytes(a["bus"]["total"]) if a else "-",
                             f"{a['messages']['total']}" if a else "-",
                             "-" if ratio is None else f"{ratio:.3f}",
                             H.fmt_bytes(got["bus"]["total"]) if got else "-",
                             f"{got['messages']['total']:g}" if got else "-",
                             H.fmt_bytes(got["wire"]) if got and got["wire"] is not None else "-",
                             H.fmt_bytes(a["weights"]["max"]) if a else "-"])
            for plan, _, a, _ in results:
                if plan.name == "bp" and a and tp_bus:
                    summary.append([m.name, P, seq, plan.label, f"{tp_bus / a['bus']['total']:.2f}"])
            session.tick(f"{m.name} P={P} seq {seq}: {len(results)} strategies")
    session.table(rows, HEADERS, title=f"bytes per inference per rank (batch {args.batch}; "
                                       "total = max over ranks; 'vs TP' = bus bytes / TP's)")
    session.table(summary, ["model", "P", "seq", "bp", "fp32 TP/BP bus bytes"], title="fp32 TP / BP bus-byte ratio")
    session.finish()


HEADERS = ["model", "P", "seq", "strategy", "payload", "bus", "msgs", "vs TP", "measured bus", "measured msgs",
           "wire", "weights/rank"]


def measure_all(session, comm, args, m, seq, plans) -> dict:
    """Run every plan for real on `comm` (P ranks); label -> measured traffic."""
    out = {}
    ids, mask = H.make_inputs(m.original, args.batch, seq, args.seed)
    for decoupled in (False, True):
        group = [p for p in plans if p.decoupled == decoupled]
        if not group:
            continue
        cfg = m.config(decoupled)
        weights = m.weights(decoupled)
        ref = H.serial_reference(comm, cfg, weights, ids, mask, 0, 1, time_it=False)
        for plan in group:
            strategy = H.prepare(plan, cfg, weights, comm, ids, mask, strict=False, say=session.say)
            if strategy is None:
                continue
            timing = H.measure(strategy, comm, ids, mask, args.warmup, args.iters, session.iface)
            t = H.timing.traffic_summaries(comm, timing.counters.by_op(), args.iters)
            t["wire"] = max(timing.wire["tx"]) if timing.wire else None
            t.update(H.check_output(comm, timing.output, ref.output))
            out[plan.label] = t
            del strategy, timing
            gc.collect()
        del weights, ref
        gc.collect()
    return out


if __name__ == "__main__":
    H.run_main(main)
