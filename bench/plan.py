"""bench.plan: which placement to run, predicted from a profile (no MPI, no ranks launched).

    python -m bench.plan --profile results/pl.json --model bert-base --seq 128 --batch 1
    python -m bench.plan --profile results/pl.json --memory-budget 300MiB
    python -m bench.plan --profile results/pl.json --project-hosts 8,16,32 --rates 100mbit,1gbit
    python -m bench.plan --profile results/pl.json --diff results/pl-again.json

Prints the candidate placements ranked by predicted latency (or throughput), with their
compute, CPU-quota waits and communication on the critical path, memory on the fullest host
and bytes per inference per rank; why the winner wins; and the placements refused and why.
Any of --project-hosts, --speeds, --cpu-quotas, --rate(s) makes it a projection: the same
model on a machine that was not measured, labelled as such.
"""

from __future__ import annotations

import json
import re

from kernels import ConfigError
from parallelism import UsageError

from . import cli, machine as M, planner, profiles
from .models import resolve_model
from .network import parse_rate

EPILOG = """Memory per host = weights (the strategy's weights_bytes) + activations and communication
buffers (estimated from the schedule) + a rank's runtime (measured by bench.profile).
On an emulated cluster the hosts share one machine's memory: give --memory-budget."""

_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(b|k|kb|kib|m|mb|mib|g|gb|gib)?", re.IGNORECASE)
_SCALE = {None: 1, "b": 1, "k": 2**10, "kb": 10**3, "kib": 2**10, "m": 2**20, "mb": 10**6, "mib": 2**20,
          "g": 2**30, "gb": 10**9, "gib": 2**30}


def memory_size(text: str) -> int:
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise UsageError(f"--memory-budget: expected sizes like 2GiB or 512MiB, got {text!r}")
    value = int(float(match.group(1)) * _SCALE[(match.group(2) or "").lower() or None])
    if value <= 0:
        raise UsageError(f"--memory-budget: must be positive, got {text!r}")
    return value


def float_list(flag: str, low: float):
    def parse(text: str) -> list[float]:
        try:
            values = [float(v) for v in text.split(",")]
        except ValueError:
            values = []
        if not values or any(not (v >= low and v < 1e9) for v in values):
            raise UsageError(f"{flag}: expected comma-separated numbers >= {low:g}, got {text!r}")
        return values
    return parse


def rate_list(text: str) -> list[int]:
    try:
        return [parse_rate(v) for v in text.split(",")]
    except ValueError as err:
        raise UsageError(f"--rates: {err}") from None


def make_parser():
    p = cli.ArgumentParser(prog="python -m bench.plan", description=__doc__, epilog=EPILOG)
    p.add_argument("--profile", required=True, help="a profile from python -m bench.profile")
    p.add_argument("--model", default=None, help="preset or checkpoint folder (default: the profile's model)")
    p.add_argument("--batch", type=cli.positive_int, default=1, help="sequences per request (default 1)")
    p.add_argument("--seq", type=cli.positive_int, default=None, help="tokens per sequence (default: the profile's)")
    p.add_argument("--objective", choices=("latency", "throughput"), default="latency",
                   help="rank by latency of one request, or by requests/s with a batch of --batch (default latency)")
    p.add_argument("--memory-budget", default=None,
                   help="bytes per host, one for all or one per host: 2GiB or 1GiB,1GiB,2GiB,2GiB "
                        "(default: each host's available memory from the profile)")
    p.add_argument("--hosts", default=None,
                   help="plan on these profiled hosts only: a count (the first N) or names h0,h2 (default all)")
    p.add_argument("--strategies", type=cli.name_list, default=None,
                   help="restrict to these strategies (default serial,dp,pp,tp,sp,bp)")
    p.add_argument("--nb", type=cli.positive_int, default=None, help="fix bp's N_b (a trained decoupled model)")
    p.add_argument("--ndiv", type=cli.positive_int, default=None, help="fix bp's N_div (with --nb)")
    g = p.add_argument_group("projection (the model on a machine that was not measured)")
    g.add_argument("--project-hosts", type=cli.int_list, default=None,
                   help="host counts, e.g. 8,16,32 (host i behaves like profiled host i mod N)")
    g.add_argument("--speeds", type=float_list("--speeds", 0.01), default=None,
                   help="device speed factors, one for all or one per host (kernel rates x factor)")
    g.add_argument("--cpu-quotas", type=float_list("--cpu-quotas", 0.01), default=None,
                   help="CPU quotas in cores, one for all or one per host")
    g.add_argument("--rates", type=rate_list, default=None, help="link rates, e.g. 10mbit,100mbit,1gbit")
    p.add_argument("--top", type=cli.positive_int, default=12, help="rows of the ranking (default 12)")
    p.add_argument("--driver-args", action="store_true",
                   help="print only the driver arguments of the best placement on all the hosts "
                        "(e.g. --strategies bp --nb 4 --ndiv 8 --boundary replicate --assignment 0/1/2,3/4,5,6,7)")
    p.add_argument("--diff", default=None, help="another profile of the same cluster: print every term's change")
    p.add_argument("--out", type=cli.output_path, default=None, help="write the ranking as JSON here")
    return p


def select_hosts(profile: dict, spec: str | None, path) -> dict:
    """The profile restricted to the chosen hosts (renumbered, links and fits that still apply)."""
    if spec is None:
        return profile
    names = [h["host"] for h in profile["hosts"]]
    if spec.isdigit():
        chosen = list(range(int(spec)))
        if not 1 <= len(chosen) <= len(names):
            raise UsageError(f"--hosts {spec}: the profile {path} has {len(names)} host(s) "
                             "(more hosts: --project-hosts)")
    else:
        unknown = [n for n in spec.split(",") if n not in names]
        if unknown:
            raise UsageError(f"--hosts: {','.join(unknown)} not in the profile {path} ({','.join(names)})")
        chosen = [names.index(n) for n in spec.split(",")]
    where = {old: new for new, old in enumerate(chosen)}
    hosts = [{**profile["hosts"][old], "rank": new} for new, old in enumerate(chosen)]
    links = [{**l, "a": where[l["a"]], "b": where[l["b"]]} for l in profile.get("links") or []
             if l["a"] in where and l["b"] in where]
    fits = [f for f in profile.get("collectives") or [] if f["world"] <= len(chosen)]
    return {**profile, "hosts": hosts, "links": links, "collectives": fits}


def budgets_of(text: str | None, count: int) -> list[int] | None:
    if text is None:
        return None
    values = [memory_size(v) for v in text.split(",")]
    if len(values) not in (1, count):
        raise UsageError(f"--memory-budget: {len(values)} values for {count} hosts (give one, or one per host)")
    return values * count if len(values) == 1 else values


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds < 10 else f"{seconds:.2f} s"


def ranking_rows(ranked, names, top: int) -> list[list]:
    rows = []
    for i, r in enumerate(ranked[:top], 1):
        p, t = r.prediction, r.prediction.timeline
        rows.append([i, r.placement.label(names), fmt_ms(p.latency_s), f"{p.throughput_rps:.2f}", fmt_ms(t.compute_s),
                     fmt_ms(t.throttled_s), fmt_ms(t.comm_s), f"{max(p.memory_by_host.values()) / 2**20:.0f} MiB",
                     f"{max(p.bus_bytes_by_rank) / 1e6:.2f} MB"])
    return rows


HEADERS = ["#", "placement", "latency", "req/s", "compute", "quota waits", "comm", "memory/host", "bus/rank"]


def run_plan(cfg, mach, args, budgets, model):
    return planner.plan(cfg, mach, args.batch, args.seq, budgets, args.objective, strategies=args.strategies,
                        **planner.limits(model, args.nb, args.ndiv))


def main(argv=None) -> int:
    from tabulate import tabulate
    args = make_parser().parse_args(argv)
    profile = profiles.load(args.profile)
    if args.diff:
        other = profiles.load(args.diff)
        rows = [[k, f"{a:.4g}", f"{b:.4g}", "-" if r is None else f"{r:.3f}"] for k, a, b, r in profiles.compare(profile, other)]
        print(tabulate(rows, headers=["term", args.profile, args.diff, "ratio"], tablefmt="github"))
        return 0
    model = resolve_model(args.model or profile["model"]["name"])
    cfg = model.original
    profiles.check_model(profile, cfg, args.profile)
    if args.nb or args.ndiv:
        if not (args.nb and args.ndiv):
            raise UsageError("--nb and --ndiv fix the decoupled model together: give both")
        try:
            cfg.replace(n_blocks=args.nb, n_div=args.ndiv)
        except ConfigError as err:
            raise UsageError(f"--nb {args.nb} --ndiv {args.ndiv}: {err}") from None
    args.seq = args.seq or profile["shapes"][0][1]
    if args.seq > cfg.max_positions:
        raise UsageError(f"--seq {args.seq} exceeds {cfg.name}'s max_positions {cfg.max_positions}")
    for name in args.strategies or []:
        if name not in planner.STRATEGIES:
            raise UsageError(f"--strategies: unknown strategy {name!r}")
    profile = select_hosts(profile, args.hosts, args.profile)
    host_counts = args.project_hosts or [len(profile["hosts"])]
    rates = args.rates or [None]
    results = []
    for count in host_counts:
        for rate in rates:
            mach = M.build(profile, count, args.speeds, args.cpu_quotas, rate)
            ranked, refused = run_plan(cfg, mach, args, budgets_of(args.memory_budget, count), model)
            results.append((count, rate, mach, ranked, refused))
    if args.driver_args:
        return print_driver_args(results[0][3], len(profile["hosts"]))
    if len(results) == 1:
        print_one(cfg, args, *results[0])
    else:
        print_sweep(cfg, args, results)
    if args.out:
        write_json(args.out, cfg, args, results)
    if any(not ranked for *_, ranked, _ in results):
        raise UsageError("no placement fits: every candidate was refused (see above); raise --memory-budget, "
                         "or use more hosts")
    return 0


def print_one(cfg, args, count, rate, mach, ranked, refused) -> None:
    from tabulate import tabulate
    names = [h.name for h in mach.hosts]
    print(f"bench.plan: {cfg.describe()}, batch {args.batch}, seq {args.seq}, {count} host(s), "
          f"objective {args.objective}, profile {args.profile}")
    if mach.is_projection:
        print("PROJECTION (not measured): " + "; ".join(mach.projection))
    for warning in mach.warnings:
        print(f"warning: {warning}")
    print(f"{len(ranked)} placement(s) predicted, {len(refused)} refused\n")
    print(tabulate(ranking_rows(ranked, names, args.top), headers=HEADERS, tablefmt="github", disable_numparse=True))
    print()
    for line in planner.why(ranked, names):
        print(line)
    if refused:
        print("\nrefused:")
        for r in refused[:40]:
            print(f"  {r.label}: {r.reason}")
        if len(refused) > 40:
            print(f"  ... and {len(refused) - 40} more")


def print_driver_args(ranked, hosts: int) -> int:
    """The best placement that uses every host, as bench.latency / bench.throughput arguments."""
    best = next((r.placement for r in ranked if len(r.placement.hosts) == hosts), None)
    if best is None:
        raise UsageError(f"no placement on all {hosts} hosts fits")
    o = best.opts
    out = ["--strategies", best.strategy]
    if best.n_blocks is not None:
        out += ["--nb", str(best.n_blocks), "--ndiv", str(best.n_div), "--boundary", o["boundary"]]
    for key, flag in (("assignment", "--assignment"), ("stages", "--stages"), ("micro_batches", "--micro-batches")):
        if o.get(key) and (key != "micro_batches" or o[key] > 1):
            out += [flag, str(o[key])]
    print(" ".join(out))
    return 0


def print_sweep(cfg, args, results) -> None:
    """One row per (hosts, rate): the winner, the best bp and the best of the rest, and what
    dominates bp's latency: where bp stops winning, and why."""
    from tabulate import tabulate
    projected = any(m.is_projection for *_, m, _, _ in results)
    print(f"bench.plan: {cfg.describe()}, batch {args.batch}, seq {args.seq}, objective {args.objective}"
          + ("  -- PROJECTION (not measured)" if projected else ""))
    rows = []
    for count, rate, mach, ranked, _ in results:
        row = [count, "profiled" if rate is None else f"{rate / 1e6:g} Mbit/s"]
        if not ranked:
            rows.append(row + ["nothing fits"] + [""] * 4)
            continue
        names = [h.name for h in mach.hosts]
        bp = next((r for r in ranked if r.placement.strategy == "bp"), None)
        other = next((r for r in ranked if r.placement.strategy != "bp"), None)
        show = lambda r: "-" if r is None else f"{r.placement.label(names)}: {fmt_ms(r.prediction.latency_s)}"  # noqa: E731
        row += [ranked[0].placement.label(names), show(bp), show(other)]
        if bp is None or other is None:
            row += ["-", "-"]
        else:
            t = bp.prediction.timeline
            row += [f"{other.prediction.latency_s / bp.prediction.latency_s:.2f}x",
                    f"{t.dominant()} ({100 * max(t.compute_s, t.throttled_s, t.comm_s) / t.latency_s:.0f}%)"]
        rows.append(row)
    print(tabulate(rows, headers=["hosts", "rate", "winner", "best bp", "best other", "other/bp",
                                  "bp's dominant term"], tablefmt="github", disable_numparse=True))


def write_json(path, cfg, args, results) -> None:
    out = []
    for count, rate, mach, ranked, refused in results:
        names = [h.name for h in mach.hosts]
        out.append({"hosts": count, "rate_bit": rate, "projection": mach.projection, "ranked": [
            {**r.placement.record(names), "label": r.placement.label(names),
             "predicted_latency_s": r.prediction.latency_s, "predicted_throughput_rps": r.prediction.throughput_rps,
             "compute_s": r.prediction.timeline.compute_s, "throttled_s": r.prediction.timeline.throttled_s,
             "comm_s": r.prediction.timeline.comm_s,
             "memory_by_host": {names[h]: m for h, m in r.prediction.memory_by_host.items()},
             "bus_bytes_by_rank": r.prediction.bus_bytes_by_rank} for r in ranked],
            "refused": [{"placement": r.label, "reason": r.reason} for r in refused]})
    with open(path, "w") as handle:
        json.dump({"model": profiles.model_of(cfg), "batch": args.batch, "seq": args.seq,
                   "objective": args.objective, "profile": args.profile, "results": out}, handle, indent=1)
        handle.write("\n")


if __name__ == "__main__":
    cli.guard(main)
