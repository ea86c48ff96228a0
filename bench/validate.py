"""bench.validate: the cost model's predictions against measurements, from driver records.

    python -m bench.validate results/rates.jsonl [more.jsonl ...] [--out summary.json]
    python -m bench.validate old-records.jsonl --profile results/p.json   # predict them now

Reads the records that carry `predicted_latency_s` (runs with --profile or --strategies auto),
or predicts every latency record with --profile (at a record's own link rate: a projection
when it is not the profiled one), and prints, per record, measured latency (p50) against
predicted, the relative error, and
for each point (model, shape, rate, hosts) whether the planner's pick (an `auto:` record: the
placement `--strategies auto` ran after timing the near-ties) is
within 5% of the best measured placement there, or is that placement itself (then the ratio is
the spread of one placement between two jobs). Summary: median absolute error and the
worst, the targets being 10% and 25%.
"""

from __future__ import annotations

import json
import statistics

from . import cli, records
from .plan import fmt_ms
from .report_data import quotas_text
from .significance import mann_whitney_u

MEDIAN_TARGET, WORST_TARGET, PICK_TARGET = 0.10, 0.25, 0.05


def point_of(rec: dict) -> tuple:
    env = rec.get("env") or {}
    # An auto run may use only some hosts: its point is the hosts it was planned over.
    hosts = (rec.get("plan") or {}).get("of_hosts") or env.get("hostnames") or ()
    return point_key(rec.get("model"), rec.get("batch"), rec.get("seq"), rec.get("rate"),
                     len(hosts) or rec.get("world_size"), env.get("cpu_quotas") or (), env.get("argv") or ())


def point_key(model, batch, seq, rate, hosts: int, quotas, argv) -> tuple:
    """What makes records comparable for the pick check: the model, the shape, the link rate
    and the hosts. Records predicted from one profile (`--profile P` in their command line)
    are of the same hosts, whatever subset of them an auto run used; otherwise the hosts are
    told apart by their number and CPU quotas."""
    argv = list(argv)
    if "--profile" in argv[:-1]:
        hosts_id = "profile " + argv[argv.index("--profile") + 1]
    else:
        hosts_id = quotas_text(quotas) or "-"
    return model, batch, seq, rate or "-", hosts, hosts_id


def u_test_p(pick: dict, best: dict) -> float | None:
    """The U test's p-value that the pick's per-forward latencies differ from the best's (None
    without samples): a pick 8% off the best in medians of 8 forwards each on a shared machine
    may be a draw of the noise, and p says how likely (bench.compare uses the same test)."""
    a, b = pick.get("samples") or (), best.get("samples") or ()
    return mann_whitney_u(a, b).p if len(a) >= 2 and len(b) >= 2 else None


def same_placement(pick: dict, other: dict) -> bool:
    """Whether two records ran one placement (placement_of)."""
    return pick.get("placement") is not None and pick.get("placement") == other.get("placement")


def placement_of(plan_label, host_names, wire_dtype, wire_reduce, overlap_chunks) -> tuple | None:
    """What makes a run: the plan (its label names the strategy, options and decoupled shape;
    the host list, which a label of many hosts abbreviates) and the wire (dtype, how it sums,
    overlap). None for a record without a plan."""
    if not plan_label:
        return None
    return plan_label, tuple(host_names or ()), wire_dtype or "fp32", wire_reduce or "auto", overlap_chunks or 1


def judge(items) -> dict:
    """Predictions against measurements. `items`: dicts with point, label, measured (p50 s),
    predicted (s or None), dominant, pick (the planner's placement, for an auto run), samples
    (per-forward seconds, optional), placement (placement_of, optional) -> {"rows",
    "median_abs_error", "worst_abs_error", "picks"}; a pick is within the target when it is at
    most 5% slower than the best measured, or is that placement itself;
    bench.report shows the same."""
    rows, points = [], {}
    for item in items:
        points.setdefault(item["point"], []).append(item)
        if item["predicted"] is not None:
            rows.append({**item, "error": item["predicted"] / item["measured"] - 1})
    errors = [abs(r["error"]) for r in rows]
    picks = []
    for point, group in points.items():
        auto = [i for i in group if i["pick"]]
        others = [i for i in group if not i["pick"]]
        if auto and others:
            best = min(others, key=lambda i: i["measured"])
            ratio = auto[-1]["measured"] / best["measured"]
            # The pick IS the best measured placement: it chose right, and the ratio is only the
            # spread of one placement between two jobs (run 6: sp 1019 and 1212 ms).
            same = same_placement(auto[-1], best)
            picks.append({"point": list(point), "pick": auto[-1]["pick"], "best_measured": best["label"],
                          "pick_over_best": ratio, "same_placement": same,
                          "within_target": ratio <= 1 + PICK_TARGET or same,
                          "u_test_p": u_test_p(auto[-1], best)})
    return {"rows": rows, "records": len(errors), "picks": picks,
            "median_abs_error": statistics.median(errors) if errors else None,
            "worst_abs_error": max(errors) if errors else None}


def item_of(rec: dict) -> dict:
    auto = str(rec.get("label", "")).startswith("auto:")
    plan = rec.get("plan") or {}
    return {"point": point_of(rec), "label": rec.get("label"), "measured": rec["latency_s"]["p50"],
            "samples": rec.get("latency_samples_s"),
            "predicted": rec.get("predicted_latency_s"), "dominant": (rec.get("predicted") or {}).get("dominant"),
            "pick": plan.get("label") if auto else None,
            "placement": placement_of(plan.get("label"), plan.get("host_names"), rec.get("wire_dtype"),
                                      rec.get("wire_reduce"), rec.get("overlap_chunks")),
            "rate": rec.get("rate") or "-", "world_size": rec.get("world_size"),
            "shape": f"{rec.get('batch')}x{rec.get('seq')}"}


def verdict_text(pick: dict) -> str:
    return "yes (the same placement)" if pick["same_placement"] else "yes" if pick["within_target"] else "NO"


def picks_summary(picks: list[dict]) -> str:
    good = sum(p["within_target"] for p in picks)
    by_ratio = sum(p["pick_over_best"] <= 1 + PICK_TARGET for p in picks)
    return (f"{good} of {len(picks)} picks within {100 * PICK_TARGET:.0f}% of the best measured placement or "
            f"that placement itself ({by_ratio} of {len(picks)} by the ratio alone)")


def fmt_p(p: float | None) -> str:
    return "-" if p is None else f"{p:.3f}"


def predict_all(recs: list[dict], path: str) -> None:
    """Each record's prediction from the profile, at the record's own link rate."""
    from . import machine as M, profiles
    from .auto import predict_record
    from .models import resolve_model
    from .network import parse_rate
    profile = profiles.load(path)
    machines, models = {}, {}
    for rec in recs:
        if rec.get("bench") != "latency":
            continue
        if rec["model"] not in models:
            models[rec["model"]] = resolve_model(rec["model"]).original
            profiles.check_model(profile, models[rec["model"]], path)
        rate = parse_rate(rec["rate"]) if rec.get("rate") else None
        if rate not in machines:
            base = M.profiled_rate_bit(profile)
            machines[rate] = M.build(profile, rate_bit=None if rate is None or rate == base else rate)
        rec.update(predict_record(rec, models[rec["model"]], machines[rate], (rec.get("plan") or {}).get("hosts")))


def main(argv=None) -> int:
    p = cli.ArgumentParser(prog="python -m bench.validate", description=__doc__)
    p.add_argument("results", nargs="+", help="JSONL record files")
    p.add_argument("--out", type=cli.output_path, default=None, help="write the summary as JSON here")
    p.add_argument("--profile", default=None,
                   help="predict every record with this profile (replacing predictions they carry)")
    args = p.parse_args(argv)
    recs = []
    for path in args.results:
        recs += [r for r in records.read_records(path) if r.get("latency_s")]
    if args.profile:
        predict_all(recs, args.profile)
    from tabulate import tabulate
    verdict = judge(item_of(rec) for rec in recs)
    if not verdict["records"]:
        raise cli.UsageError("no record carries predicted_latency_s: run the drivers with --profile or "
                             "--strategies auto")
    print(tabulate([[r["label"], r["rate"], r["world_size"], r["shape"], fmt_ms(r["measured"]),
                     fmt_ms(r["predicted"]), f"{100 * r['error']:+.1f}%", r["dominant"] or "-"]
                    for r in verdict["rows"]],
                   headers=["placement", "rate", "P", "shape", "measured p50", "predicted", "error",
                            "predicted dominant"], tablefmt="github", disable_numparse=True))
    print(f"\n{verdict['records']} predictions: median |error| {100 * verdict['median_abs_error']:.1f}% "
          f"(target {100 * MEDIAN_TARGET:.0f}%), worst {100 * verdict['worst_abs_error']:.1f}% "
          f"(target {100 * WORST_TARGET:.0f}%)")
    picks = verdict["picks"]
    if picks:
        print()
        print(tabulate([[" ".join(map(str, p["point"])), p["pick"], p["best_measured"], f"{p['pick_over_best']:.3f}",
                         verdict_text(p), fmt_p(p["u_test_p"])] for p in picks],
                       headers=["point (model batch seq rate hosts, profile or CPU quotas)", "planner's pick", "best measured",
                                "pick/best", f"within {100 * PICK_TARGET:.0f}%", "U test p"], tablefmt="github",
                       disable_numparse=True))
        print(f"\n{picks_summary(picks)}")
    summary = {k: verdict[k] for k in ("records", "median_abs_error", "worst_abs_error")}
    summary["picks"] = picks
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(summary, handle, indent=1)
    return 0


if __name__ == "__main__":
    cli.guard(main)
