"""bench.sweep: run bench.latency (or bench.throughput) over a grid of points, resumably.

    python -m bench.sweep --bench latency -n 4 --seqs 64,128 --out results/sweep.jsonl
    python -m bench.sweep --launcher cluster --rates 10mbit,50mbit,100mbit,1gbit --out results/rates.jsonl
    python -m bench.sweep --seqs 16 --models tiny -n 2 -- --strategies tp,bp --iters 5

Every point of models x seqs x batches x rates is one job (argument lists,
never shell strings):
  local:   mpiexec -n P python -m bench.<bench> --model M --seq S --batch B ...
  cluster: python -m bench.cluster shape --rate R       (before each new rate)
           python -m bench.cluster run -- python -m bench.<bench> ... --rate R
           (the emulated cluster decides the rank count: one per host)
Arguments after `--` go to every driver run. For --bench throughput the
--batches values are the request-set sizes (--requests).

--strategies auto (or --predict): before the points of each rate and model the hosts are
profiled once (bench.profile at every seq x batch of the sweep) and every driver run gets
--profile, so every record carries predicted_latency_s beside its measurement.

Resumable: every record a point writes carries the tag sweep_point=<key>; a
point counts as done only once its whole job finished (exit 0) and is listed in
<out>.points; a point that was cut off is measured again (its partial records
stay in --out, tagged with its key). Rates need --launcher cluster: a local
launch cannot shape the network. Killing the sweep (Ctrl-C, SIGTERM, even
SIGKILL) ends the running job and its ranks.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from itertools import product
from pathlib import Path

from . import records
from .cli import ArgumentParser, UsageError, bounded_int, output_path, run
from .cluster.launch import cluster_run_command, cluster_shape_command, local_command, supervise
from .network import parse_rate

MAX_MARKER_BYTES = 64 * 1024**2  # <out>.points holds one short line per finished point


def csv_of(kind, text):
    items = [v.strip() for v in text.split(",") if v.strip()]
    if not items:
        raise UsageError(f"empty list {text!r}")
    if kind is int:
        try:
            values = [int(v) for v in items]
        except ValueError:
            raise UsageError(f"expected comma-separated positive integers, got {text!r}") from None
        if any(not 1 <= v <= 1_000_000 for v in values):
            raise UsageError(f"expected comma-separated integers from 1 to 1000000, got {text!r}")
        return values
    return items


def make_parser():
    p = ArgumentParser(prog="python -m bench.sweep", description=__doc__.strip())
    p.add_argument("--bench", choices=("latency", "throughput"), default="latency",
                   help="driver to run at every point (default latency)")
    p.add_argument("-n", "--ranks", type=bounded_int(1, 4096, "a rank count"), default=None,
                   help="ranks per job (local: default 4; cluster: passed to bench.cluster run -n, "
                        "default one per emulated host)")
    p.add_argument("--launcher", choices=("local", "cluster"), default="local",
                   help="local: mpiexec next to this python; cluster: python -m bench.cluster run (default local)")
    p.add_argument("--models", default="bert-base", help="comma-separated presets or folders (default bert-base)")
    p.add_argument("--seqs", default="128", help="comma-separated sequence lengths (default 128)")
    p.add_argument("--batches", default="1",
                   help="comma-separated batch sizes (throughput: request-set sizes) (default 1)")
    p.add_argument("--rates", default=None,
                   help="comma-separated link rates, e.g. 10mbit,50mbit,100mbit,1gbit (needs --launcher cluster)")
    p.add_argument("--strategies", default=None,
                   help="passed to every driver run; 'auto' = the planner's pick at every point, from a "
                        "profile made once per rate and model (see --predict)")
    p.add_argument("--predict", action="store_true",
                   help="profile the hosts once per rate and model (python -m bench.profile, kept as "
                        "<out>.profile-<model>-<rate>-n<ranks>.json and reused on resume) and pass it to every "
                        "driver run, so every record carries predicted_latency_s beside latency_s")
    p.add_argument("--profile", default=None, help="use this profile for every point instead of profiling")
    p.add_argument("--out", type=output_path, default=None,
                   help="JSONL result file shared by all points, a regular file (default results/sweep-<time>.jsonl)")
    p.add_argument("--keep-going", action="store_true", help="go on after a failed point (exit 1 at the end)")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("driver_args", nargs="*", help="after `--`: arguments for every driver run")
    return p


def point_key(bench, model, seq, batch, rate, ranks) -> str:
    return f"{bench}|{model}|seq={seq}|batch={batch}|rate={rate or '-'}|n={ranks}"


def check_out(out: Path) -> None:
    """The sweep resumes from files next to --out: they must be regular files of sane size
    (not /dev/zero, /dev/full or a pipe)."""
    for path in (out, Path(str(out) + ".points")):
        if path.exists() and not path.is_file():
            raise UsageError(f"--out {out}: {path} is not a regular file (the sweep resumes from it)")
    marker = Path(str(out) + ".points")
    if marker.exists() and marker.stat().st_size > MAX_MARKER_BYTES:
        raise UsageError(f"{marker} is larger than {MAX_MARKER_BYTES // 1024**2} MiB: not a sweep's list of points")


def done_points(out: Path) -> set[str]:
    """Points whose job finished: the only proof is their line in <out>.points (a point with
    some records in --out may have been cut off half-way)."""
    marker = Path(str(out) + ".points")
    if not marker.exists():
        return set()
    return {rec.get("point") for rec in records.read_records(marker, warn=False)}


def launched(args, cmd: list[str]) -> list[str]:
    """`cmd` as an MPI job on the sweep's launcher."""
    if args.launcher == "cluster":
        return cluster_run_command(cmd, args.ranks)
    return local_command(args.ranks or 4, cmd)


def driver_command(args, model, seq, batch, rate, key, out, profile=None) -> list[str]:
    cmd = [sys.executable, "-m", f"bench.{args.bench}", "--model", model, "--seq", str(seq)]
    cmd += ["--requests" if args.bench == "throughput" else "--batch", str(batch)]
    cmd += ["--out", str(out), "--tag", f"sweep_point={key}"]
    if rate:
        cmd += ["--rate", rate]
    if args.strategies:
        cmd += ["--strategies", args.strategies]
    if profile:
        cmd += ["--profile", str(profile)]
    return launched(args, cmd + args.driver_args)


def profile_command(args, model, shapes, path) -> list[str]:
    """bench.profile of the hosts for `model` at every request shape of the sweep (the same
    thread count as the drivers)."""
    cmd = [sys.executable, "-m", "bench.profile", "--model", model, "--out", str(path),
           "--shapes", ",".join(f"{b}x{s}" for b, s in shapes)]
    if "--threads" in args.driver_args:
        cmd += ["--threads", args.driver_args[args.driver_args.index("--threads") + 1]]
    return launched(args, cmd)


def profile_for(args, model, rate, shapes, out, made: dict):
    """The profile the points of (model, rate) use: --profile, or made once (and kept)."""
    if args.profile or not (args.predict or args.strategies == "auto"):
        return args.profile
    path = Path(f"{out}.profile-{re.sub(r'[^A-Za-z0-9.-]+', '_', model)}-{rate or 'local'}-n{args.ranks or 'all'}.json")
    if (model, rate) in made or path.exists():
        made[(model, rate)] = path
        return path
    cmd = profile_command(args, model, shapes, path)
    print("$ " + " ".join(cmd), flush=True)
    if not args.dry_run and supervise(cmd, {**os.environ, "PYTHONUNBUFFERED": "1"}):
        raise UsageError(f"profiling the hosts for {model} at {rate or 'the local links'} failed (see above)")
    made[(model, rate)] = path
    return path


def main(argv=None) -> int:
    args = make_parser().parse_args(argv)
    models, seqs = csv_of(str, args.models), csv_of(int, args.seqs)
    batches = csv_of(int, args.batches)
    rates = csv_of(str, args.rates) if args.rates else [None]
    for rate in rates:
        if rate is not None:
            try:
                parse_rate(rate)
            except ValueError as err:
                raise UsageError(f"--rates: {err}") from None
    if args.rates and args.launcher != "cluster":
        raise UsageError("--rates needs --launcher cluster: a local launch cannot shape the network "
                       "(bring up the emulated cluster with python -m bench.cluster up)")
    if "auto" in (args.strategies or "").split(",") and args.strategies != "auto":
        raise UsageError("--strategies auto runs the planner's pick alone: do not list other strategies")
    for flag in ("--out", "--model", "--seq", "--batch", "--requests", "--rate"):
        if flag in args.driver_args:
            raise UsageError(f"{flag} is set by the sweep for every point; do not pass it after --")
    for flag, given in (("--strategies", args.strategies), ("--profile", args.profile or args.predict)):
        if given and flag in args.driver_args:
            raise UsageError(f"{flag} is given to the sweep, which passes it on: do not pass it after -- too")
    out = Path(args.out or f"results/sweep-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.jsonl")
    check_out(out)
    done = done_points(out)
    points = [(m, s, b, r) for r, m, s, b in product(rates, models, seqs, batches)]  # rate outermost
    ranks_label = args.ranks or (4 if args.launcher == "local" else "all")
    if args.strategies:  # another strategy list is another point
        ranks_label = f"{ranks_label}|strategies={args.strategies}"
    todo = [p for p in points if point_key(args.bench, *p, ranks_label) not in done]
    shapes = [(b, s) for s in seqs for b in batches]
    profiles_made = {}
    print(f"bench.sweep: {len(points)} point(s), {len(points) - len(todo)} already in {out}, "
          f"{len(todo)} to run", flush=True)
    start, failed, shaped = time.monotonic(), [], None
    for index, (model, seq, batch, rate) in enumerate(todo, 1):
        key = point_key(args.bench, model, seq, batch, rate, ranks_label)
        if args.launcher == "cluster" and rate and rate != shaped:
            shape = cluster_shape_command(rate)
            print("$ " + " ".join(shape), flush=True)
            if not args.dry_run:
                if supervise(shape, dict(os.environ)):
                    raise UsageError(f"could not shape the emulated cluster to {rate} (is it up?)")
            shaped = rate
        profile = profile_for(args, model, rate, shapes, out, profiles_made)
        cmd = driver_command(args, model, seq, batch, rate, key, out, profile)
        print("$ " + " ".join(cmd), flush=True)
        if args.dry_run:
            continue
        t0 = time.monotonic()
        code = supervise(cmd, {**os.environ, "PYTHONUNBUFFERED": "1"})
        if code == 0:
            records.append_jsonl(str(out) + ".points", {"point": key, "utc_time": records.utc_now(),
                                                        "seconds": round(time.monotonic() - t0, 3)})
        else:
            failed.append(key)
            print(f"point {key} failed (exit {code})", file=sys.stderr, flush=True)
            if code >= 128 or code < 0 or not args.keep_going:  # killed or interrupted: stop
                print(f"stopping; finished points are kept in {out} (rerun to resume)", file=sys.stderr)
                return 1
        elapsed = time.monotonic() - start
        eta = elapsed / index * (len(todo) - index)
        print(f"[{index}/{len(todo)}] {key} | elapsed {elapsed:.0f}s, ETA {eta:.0f}s", flush=True)
    if failed:
        print(f"{len(failed)} point(s) failed: {json.dumps(failed)}", file=sys.stderr)
        return 1
    print(f"sweep done: results in {out}", flush=True)
    return 0


if __name__ == "__main__":
    run(main)
