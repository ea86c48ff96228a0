"""bench.compare BASELINE NEW: regression check between two result files.

    python -m bench.compare results/baseline.jsonl results/new.jsonl
    python -m bench.compare base.jsonl new.jsonl --alpha 0.01 --threshold 0.05 --tol 1e-5

Points are matched by (bench, strategy label, model, P, batch, seq, N_b, N_div,
rate, requests, threads); the last record of a point in a file wins. A point
regresses when:
  - latency (or, for bench.throughput, requests/s): the per-iteration samples
    of the two runs (latency_samples_s) differ by a two-sided Mann-Whitney U
    test with p < --alpha (default 0.05) AND the p50 got worse by more than
    --threshold (default 10%): a significant change too small to matter is not
    a regression, nor a large one that the noise explains. When either record
    has no samples, or too few for the test to reach --alpha (3 and 3 cannot:
    the smallest p is 0.1), it falls back to the p50 alone with the margin
        max(--threshold, --spread-factor x spread)        (default max(10%, 2 x spread)),
    spread = the larger relative spread (p90 - p50) / p50 of the two runs, and
    says so in the `evidence` column;
  - a non-finite latency, throughput or max_abs_err in NEW (nan or inf,
    recorded as the strings "nan"/"inf", see bench.records): always;
  - bytes or messages: any change in payload, bus or message totals (measured,
    or analytic for bench.comm records), or in any op's payload;
  - max_abs_err above --tol (default 1e-4) in NEW, or an output the harness
    found non-finite or of the wrong shape (output_check).
Points only in one file are listed, not counted as regressions. Prints one
table; exit code 1 if anything regressed, 0 otherwise (2 on bad input).
"""

from __future__ import annotations

import argparse
import math
import os
import sys

from .cli import ArgumentParser, UsageError, finite_float, run
from .records import is_finite
from .report_data import Row, load
from .significance import mann_whitney_u, smallest_p

DEFAULT_ALPHA = 0.05
DEFAULT_THRESHOLD = 0.10
DEFAULT_SPREAD_FACTOR = 2.0
DEFAULT_TOL = 1e-4
HEADERS = ["point", "metric", "baseline", "new", "change", "allowed", "evidence", "verdict"]


def probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < 1:   # also rejects nan
        raise argparse.ArgumentTypeError(f"expected a probability between 0 and 1 (exclusive), got {text!r}")
    return value


def make_parser():
    p = ArgumentParser(prog="python -m bench.compare", description=__doc__.strip())
    p.add_argument("baseline", help="baseline JSONL result file (or folder)")
    p.add_argument("new", help="new JSONL result file (or folder)")
    p.add_argument("--alpha", type=probability, default=DEFAULT_ALPHA,
                   help=f"significance level of the U test on the samples (default {DEFAULT_ALPHA})")
    p.add_argument("--threshold", type=finite_float(0), default=DEFAULT_THRESHOLD,
                   help=f"minimum relative p50 change that counts (default {DEFAULT_THRESHOLD})")
    p.add_argument("--spread-factor", type=finite_float(0), default=DEFAULT_SPREAD_FACTOR,
                   help=f"without samples: multiple of the measured relative spread (p90-p50)/p50 that a "
                        f"change must exceed (default {DEFAULT_SPREAD_FACTOR})")
    p.add_argument("--tol", type=finite_float(0), default=DEFAULT_TOL,
                   help=f"max_abs_err above this is a regression (default {DEFAULT_TOL})")
    p.add_argument("--all", action="store_true", help="list every point, not only changed ones")
    return p


def spread(r: Row) -> float:
    return (r.p90 - r.p50) / r.p50 if r.p50 and r.p90 is not None else 0.0


def fmt(value, form: str = "{}", scale: float = 1) -> str:
    """A table cell: '-' for None, nan/inf as such, else `form` of value x scale."""
    if value is None:
        return "-"
    return form.format(value * scale) if is_finite(value) else str(value)


class Verdicts:
    """Collects the rows of the table and counts regressions."""

    def __init__(self, alpha=DEFAULT_ALPHA, threshold=DEFAULT_THRESHOLD, factor=DEFAULT_SPREAD_FACTOR,
                 tol=DEFAULT_TOL):
        self.alpha, self.threshold, self.factor, self.tol = alpha, threshold, factor, tol
        self.rows: list[list] = []
        self.regressions = 0

    def add(self, point, metric, base, new, change, allowed, evidence, verdict) -> None:
        self.rows.append([point, metric, base, new, change, allowed, evidence, verdict])
        self.regressions += verdict == "REGRESSION"

    def speed(self, point: str, rb: Row, rn: Row) -> None:
        """Latency (or throughput) of one point: U test on the samples, else the p50 rule."""
        if rn.bench == "throughput" and rn.throughput_rps is not None:
            metric, old, new, worse_sign = "throughput req/s", rb.throughput_rps, rn.throughput_rps, -1
            shown = [fmt(old, "{:.3f}"), fmt(new, "{:.3f}")]
        elif rn.p50 is not None:
            metric, old, new, worse_sign = "latency p50", rb.p50, rn.p50, 1
            shown = [fmt(old, "{:.2f} ms", 1e3), fmt(new, "{:.2f} ms", 1e3)]
        else:
            return
        if not (is_finite(new) and all(map(is_finite, rn.samples or ()))):
            self.add(point, metric, *shown, "", "finite", "new run has nan/inf", "REGRESSION")
        elif not (old and is_finite(old) and all(map(is_finite, rb.samples or ()))):
            if old is not None:
                self.add(point, metric, *shown, "", "", "baseline not finite/positive: not compared", "ok")
        else:
            worse = worse_sign * (new / old - 1)   # > 0: the new run is worse by that fraction
            evidence, significant, margin = self.evidence(rb, rn)
            verdict = ("REGRESSION" if significant and worse > margin else
                       "faster" if significant and -worse > margin else "ok")
            allowed = ("+" if worse_sign > 0 else "-") + f"{margin:.1%}" + \
                (f", p < {self.alpha:g}" if evidence.startswith("U test") else "")
            self.add(point, metric, *shown, f"{new / old - 1:+.1%}", allowed, evidence, verdict)

    def evidence(self, rb: Row, rn: Row) -> tuple[str, bool, float]:
        """(what the verdict rests on, whether the change is significant, the margin it must exceed)."""
        n1, n2 = len(rb.samples or ()), len(rn.samples or ())
        if n1 and n2 and smallest_p(n1, n2) < self.alpha:
            test = mann_whitney_u(rb.samples, rn.samples)
            return f"U test p={test.p:.3g}, n={n1}/{n2}", test.p < self.alpha, self.threshold
        margin = max(self.threshold, self.factor * max(spread(rb), spread(rn)))
        why = "no samples" if not (n1 and n2) else f"n={n1}/{n2} too few for the U test"
        return f"{why}: p50 vs max({self.threshold:.0%}, {self.factor:g} x spread)", True, margin

    def traffic(self, point: str, rb: Row, rn: Row) -> None:
        for field in sorted(set(rb.traffic) | set(rn.traffic)):
            old, new = rb.traffic.get(field), rn.traffic.get(field)
            if old != new or (new is not None and not is_finite(new)):
                self.add(point, field, fmt(old), fmt(new), "changed", "exact", "", "REGRESSION")

    def error(self, point: str, rb: Row, rn: Row) -> None:
        """The new output: wrong beyond --tol, non-finite, or failed the harness's check."""
        err, check = rn.max_abs_err, rn.output_check
        failed_check = check not in (None, "ok", "not held")
        non_finite = err is not None and not is_finite(err)
        if failed_check or non_finite or (err is not None and err > self.tol):
            why = f"output {check}" if failed_check else ("output has nan/inf" if non_finite else "")
            self.add(point, "max_abs_err", fmt(rb.max_abs_err, "{:.2e}"), fmt(err, "{:.2e}"), "",
                     f"<= {self.tol:g}", why, "REGRESSION")


def point_name(r: Row) -> str:
    return (f"{r.bench} {r.label} {r.model} P={r.world_size} b={r.batch} s={r.seq}"
            + (f" {r.rate}" if r.rate else ""))


def compare(base: list[Row], new: list[Row], alpha=DEFAULT_ALPHA, threshold=DEFAULT_THRESHOLD,
            factor=DEFAULT_SPREAD_FACTOR, tol=DEFAULT_TOL):
    """-> (rows, regressions, only_base, only_new); rows as HEADERS."""
    b, n = {r.key: r for r in base}, {r.key: r for r in new}
    verdicts = Verdicts(alpha, threshold, factor, tol)
    for k in [k for k in n if k in b]:
        point = point_name(n[k])
        verdicts.speed(point, b[k], n[k])
        verdicts.traffic(point, b[k], n[k])
        verdicts.error(point, b[k], n[k])
    only_base = [k for k in b if k not in n]
    only_new = [k for k in n if k not in b]
    return verdicts.rows, verdicts.regressions, only_base, only_new


def main(argv=None) -> int:
    args = make_parser().parse_args(argv)
    for path in (args.baseline, args.new):
        if not os.path.exists(path):
            raise UsageError(f"{path}: no such file or folder")
    base, new = load(args.baseline), load(args.new)
    if not base:
        raise UsageError(f"{args.baseline}: no records")
    if not new:
        raise UsageError(f"{args.new}: no records")
    rows, regressions, only_base, only_new = compare(base, new, args.alpha, args.threshold, args.spread_factor,
                                                     args.tol)
    shown = rows if args.all else [r for r in rows if r[-1] != "ok"]
    from tabulate import tabulate
    if shown:
        print(tabulate(shown, headers=HEADERS, tablefmt="github", disable_numparse=True))
    matched = len({r.key for r in new} & {r.key for r in base})
    print(f"{matched} matched point(s), {regressions} regression(s)"
          + (f", {len(only_base)} only in baseline" if only_base else "")
          + (f", {len(only_new)} only in new" if only_new else "")
          + f" (latency: U test p < {args.alpha:g} and a change beyond {args.threshold:.0%}; "
            f"without samples: beyond max({args.threshold:.0%}, {args.spread_factor:g} x spread))")
    if matched == 0:
        print("warning: no point in common", file=sys.stderr)
    return 1 if regressions else 0


if __name__ == "__main__":
    run(main)
