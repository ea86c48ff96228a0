"""bench.compare BASELINE NEW: regression check between two result files.

    python -m bench.compare results/baseline.jsonl results/new.jsonl
    python -m bench.compare base.jsonl new.jsonl --threshold 0.05 --spread-factor 2 --tol 1e-5

Points are matched by (bench, strategy label, model, P, batch, seq, N_b, N_div,
rate, requests, threads); the last record of a point in a file wins. A point
regresses when:
  - latency: NEW's p50 exceeds BASELINE's p50 by more than
        max(--threshold, --spread-factor x spread)        (default max(10%, 2 x spread))
    where spread = the larger relative spread (p90 - p50) / p50 of the two
    runs: noisy measurements need a larger change to count;
  - throughput (bench.throughput): requests/s drops by more than that margin;
  - bytes or messages: any change in payload, bus or message totals (measured,
    or analytic for bench.comm records), or in any op's payload;
  - max_abs_err above --tol (default 1e-4) in NEW.
Points only in one file are listed, not counted as regressions. Prints one
table; exit code 1 if anything regressed, 0 otherwise (2 on bad input).
"""

from __future__ import annotations

import sys
from pathlib import Path

from . import records
from .cli import ArgumentParser, CliError, guard
from .report import dedup, key, label

DEFAULT_THRESHOLD = 0.10
DEFAULT_SPREAD_FACTOR = 2.0
DEFAULT_TOL = 1e-4


def make_parser():
    p = ArgumentParser(prog="python -m bench.compare", description=__doc__.strip())
    p.add_argument("baseline", help="baseline JSONL result file (or folder)")
    p.add_argument("new", help="new JSONL result file (or folder)")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                   help=f"minimum relative latency change that counts (default {DEFAULT_THRESHOLD})")
    p.add_argument("--spread-factor", type=float, default=DEFAULT_SPREAD_FACTOR,
                   help=f"multiple of the measured relative spread (p90-p50)/p50 that a change must "
                        f"exceed (default {DEFAULT_SPREAD_FACTOR})")
    p.add_argument("--tol", type=float, default=DEFAULT_TOL,
                   help=f"max_abs_err above this is a regression (default {DEFAULT_TOL})")
    p.add_argument("--all", action="store_true", help="list every point, not only changed ones")
    return p


def spread(r) -> float:
    lat = r.get("latency_s") or {}
    p50, p90 = lat.get("p50"), lat.get("p90")
    return (p90 - p50) / p50 if p50 and p90 is not None else 0.0


def traffic_signature(r) -> dict:
    out = {}
    for field in ("payload_bytes_per_rank", "bus_bytes_per_rank", "messages_per_rank",
                  "expected_payload_bytes_per_rank", "expected_bus_bytes_per_rank", "expected_messages_per_rank"):
        v = r.get(field)
        if isinstance(v, dict):
            out[field] = v.get("total")
            for op, n in (v.get("by_op") or {}).items():
                out[f"{field}.{op}"] = n
    return out


def compare(base: list[dict], new: list[dict], threshold=DEFAULT_THRESHOLD, factor=DEFAULT_SPREAD_FACTOR,
            tol=DEFAULT_TOL):
    """-> (rows, regressions, only_base, only_new); rows: [point, metric, base, new, change, allowed, verdict]."""
    b, n = {key(r): r for r in dedup(base)}, {key(r): r for r in dedup(new)}
    rows, regressions = [], 0
    for k in [k for k in n if k in b]:
        rb, rn = b[k], n[k]
        point = f"{rn.get('bench')} {label(rn)} {rn.get('model')} P={rn.get('world_size')} " \
                f"b={rn.get('batch')} s={rn.get('seq')}" + (f" {rn['rate']}" if rn.get("rate") else "")
        margin = max(threshold, factor * max(spread(rb), spread(rn)))
        lb, ln = (rb.get("latency_s") or {}).get("p50"), (rn.get("latency_s") or {}).get("p50")
        if rn.get("bench") == "throughput" and rb.get("throughput_rps") and rn.get("throughput_rps"):
            change = rn["throughput_rps"] / rb["throughput_rps"] - 1
            bad = change < -margin
            regressions += bad
            rows.append([point, "throughput req/s", f"{rb['throughput_rps']:.3f}", f"{rn['throughput_rps']:.3f}",
                         f"{change:+.1%}", f"-{margin:.1%}", "REGRESSION" if bad else "ok"])
        elif lb and ln:
            change = ln / lb - 1
            bad = change > margin
            regressions += bad
            rows.append([point, "latency p50", f"{lb * 1e3:.2f} ms", f"{ln * 1e3:.2f} ms", f"{change:+.1%}",
                         f"+{margin:.1%}", "REGRESSION" if bad else ("faster" if change < -margin else "ok")])
        sb, sn = traffic_signature(rb), traffic_signature(rn)
        for field in sorted(set(sb) | set(sn)):
            if sb.get(field) != sn.get(field):
                regressions += 1
                rows.append([point, field, sb.get(field), sn.get(field), "changed", "exact", "REGRESSION"])
        err = rn.get("max_abs_err")
        if err is not None and err > tol:
            regressions += 1
            rows.append([point, "max_abs_err", rb.get("max_abs_err"), f"{err:.2e}", "", f"<= {tol:g}",
                         "REGRESSION"])
    only_base = [k for k in b if k not in n]
    only_new = [k for k in n if k not in b]
    return rows, regressions, only_base, only_new


def main(argv=None) -> int:
    args = make_parser().parse_args(argv)
    for path in (args.baseline, args.new):
        if not Path(path).exists():
            raise CliError(f"{path}: no such file or folder")
    if args.threshold < 0 or args.spread_factor < 0 or args.tol < 0:
        raise CliError("--threshold, --spread-factor and --tol must be >= 0")
    base, new = records.read_records(args.baseline), records.read_records(args.new)
    if not base:
        raise CliError(f"{args.baseline}: no records")
    if not new:
        raise CliError(f"{args.new}: no records")
    rows, regressions, only_base, only_new = compare(base, new, args.threshold, args.spread_factor, args.tol)
    shown = rows if args.all else [r for r in rows if r[-1] != "ok"]
    from tabulate import tabulate
    if shown:
        print(tabulate(shown, headers=["point", "metric", "baseline", "new", "change", "allowed", "verdict"],
                       tablefmt="github", disable_numparse=True))
    matched = len({r[0] for r in rows})
    print(f"{matched} matched point(s), {regressions} regression(s)"
          + (f", {len(only_base)} only in baseline" if only_base else "")
          + (f", {len(only_new)} only in new" if only_new else "")
          + f" (latency margin: max({args.threshold:.0%}, {args.spread_factor:g} x spread))")
    if matched == 0:
        print("warning: no point in common", file=sys.stderr)
    return 1 if regressions else 0


if __name__ == "__main__":
    guard(main)
