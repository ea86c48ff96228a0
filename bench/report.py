"""bench.report: turn result files into reports/<name>.md with tables and PNG plots.

    python -m bench.report results/latency-*.jsonl results/throughput-*.jsonl --name edge-2core
    python -m bench.report results/ --name sweep --out-dir reports

Reads JSONL records of bench.latency, bench.throughput and bench.comm (files or
folders of *.jsonl; a point measured twice counts once: the last record wins)
and writes, for what the records hold:
  - latency tables per (model, batch, seq, P, rate); `<name>-latency-vs-bandwidth.png`
    (p50 latency per strategy over link rates, the paper's figures a/b) when
    the records cover two or more rates, else `<name>-latency.png` (p50 per
    strategy and P, serial for reference);
  - `<name>-breakdown.png`: compute vs communication per strategy (stacked bars);
  - throughput tables and `<name>-throughput.png`: requests/s and efficiency vs
    device count per strategy (figures c/d);
  - `<name>-bytes.png`: bus bytes per inference per rank per strategy (log scale),
    from bench.comm records (analytic) or else from latency records (measured).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path

from . import records
from .cli import ArgumentParser, CliError, guard

STRATEGY_ORDER = ["serial", "dp", "pp", "tp", "sp", "bp", "bp(replicate)", "bp(tp)"]
COLORS = {"serial": "#555555", "dp": "#1f77b4", "pp": "#ff7f0e", "tp": "#d62728", "sp": "#9467bd",
          "bp": "#2ca02c", "bp(replicate)": "#2ca02c", "bp(tp)": "#17becf"}


def label(r: dict) -> str:
    return r.get("label") or r.get("strategy") or "?"


def order(labels) -> list[str]:
    return sorted(set(labels), key=lambda s: (STRATEGY_ORDER.index(s) if s in STRATEGY_ORDER else 99, s))


def rate_mbit(rate) -> float | None:
    """'100mbit', '1gbit', '500kbit', '100Mbit/s', '1e8' (bit/s) -> Mbit/s; None if unknown."""
    if rate is None:
        return None
    m = re.match(r"^\s*([\d.]+(?:e[+-]?\d+)?)\s*([kmgt]?)(bit|bps|b)?(?:/s)?\s*$", str(rate), re.IGNORECASE)
    if not m:
        return None
    value = float(m.group(1))
    scale = {"": 1e-6, "k": 1e-3, "m": 1.0, "g": 1e3, "t": 1e6}[m.group(2).lower()]
    if m.group(3) and m.group(3).lower() == "bps" and m.group(2):
        scale *= 8  # e.g. 'mbps' written by tc means megabytes per second
    return value * scale


def key(r: dict) -> tuple:
    return (r.get("bench"), label(r), r.get("model"), r.get("world_size"), r.get("batch"), r.get("seq"),
            r.get("n_blocks"), r.get("n_div"), r.get("rate"), r.get("requests"), r.get("threads"))


def dedup(recs: list[dict]) -> list[dict]:
    out: OrderedDict = OrderedDict()
    for r in recs:
        out.pop(key(r), None)
        out[key(r)] = r
    return list(out.values())


s, b = records.fmt_s, records.fmt_bytes


def tot(r, field):
    v = r.get(field)
    return v.get("total") if isinstance(v, dict) else v


def md_table(headers, rows) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def group(recs, *fields) -> "OrderedDict[tuple, list]":
    out: OrderedDict = OrderedDict()
    for r in recs:
        out.setdefault(tuple(r.get(f) for f in fields), []).append(r)
    return out


# -- other implementations measured elsewhere (e.g. the paper's artifact) -----------------
def load_peer(path: str) -> dict:
    """A JSON file of another implementation's latencies: name, short_name, source, the point
    it was measured at (model, seq, batch, world_size) and latency_s {rate: {strategy: s}}."""
    import json
    try:
        peer = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise CliError(f"--peer {path}: {err}") from None
    need = ("name", "short_name", "model", "seq", "batch", "world_size", "latency_s")
    missing = [k for k in need if k not in peer]
    if missing:
        raise CliError(f"--peer {path}: missing {', '.join(missing)}")
    return peer


def peer_matches(peer: dict, r: dict) -> bool:
    return all(peer[k] == r.get(k) for k in ("model", "seq", "batch", "world_size"))


def peer_series(peer: dict) -> dict:
    """strategy -> [(Mbit/s, seconds)] sorted by rate."""
    out: dict = {}
    for rate, by_strategy in peer["latency_s"].items():
        for strategy, seconds in by_strategy.items():
            out.setdefault(strategy, []).append((rate_mbit(rate), seconds))
    return {k: sorted(v) for k, v in out.items()}


def rate_tables(rs, model, batch, seq, P, peers=()) -> list[str]:
    """Latency p50 per strategy at each link rate, TP/BP and best-other/BP, the peers'
    latencies at the same rates, and wire/bus bytes per strategy."""
    labs = order(label(r) for r in rs)
    by_rate = group(sorted(rs, key=lambda r: rate_mbit(r.get("rate")) or 0), "rate")
    bps = [l for l in labs if l.startswith("bp")]
    peers = [p for p in peers if peer_matches(p, rs[0])]
    head = ["rate", "serial"] + labs + [f"tp / {l}" for l in bps] + [f"best other / {l}" for l in bps]
    for peer in peers:
        head += [f"{st}: {peer['short_name']}" for st in order({k for v in peer["latency_s"].values() for k in v})]
        head += [f"tp / bp: {peer['short_name']}"]
        if peer.get("serial_s"):
            head += [f"serial: {peer['short_name']}"]
    rows, wire_rows = [], []
    for (rate,), group_rs in by_rate.items():
        if not rate_mbit(rate):
            continue
        p50 = {label(r): r["latency_s"]["p50"] for r in group_rs}
        serial = [r["serial_latency_s"]["p50"] for r in group_rs
                  if r.get("reference") == "serial" and r.get("serial_latency_s")]
        row = [rate, s(serial[0] if serial else None)] + [s(p50.get(l)) for l in labs]
        for l in bps:
            row.append(f"{p50['tp'] / p50[l]:.2f}x" if "tp" in p50 and l in p50 else "-")
        for l in bps:
            others = [v for k, v in p50.items() if not k.startswith("bp")]
            row.append(f"{min(others) / p50[l]:.2f}x" if others and l in p50 else "-")
        for peer in peers:
            mine = next((v for k, v in peer["latency_s"].items() if rate_mbit(k) == rate_mbit(rate)), {})
            for st in order({k for v in peer["latency_s"].values() for k in v}):
                row.append(s(mine.get(st)))
            row.append(f"{mine['tp'] / mine['bp']:.2f}x" if "tp" in mine and "bp" in mine else "-")
            if peer.get("serial_s"):
                row.append(s(peer["serial_s"]))
        rows.append(row)
        wire = []
        for l in labs:
            r = next((r for r in group_rs if label(r) == l), None)
            bus, w = (tot(r, "bus_bytes_per_rank"), r.get("wire_bytes_per_rank")) if r else (None, None)
            wire.append(f"{w / bus:.3f}" if bus and w else "-")
        wire_rows.append([rate] + wire)
    out = [f"### Latency vs bandwidth: {model}, batch {batch}, seq {seq}, P={P}", "",
           "p50 latency per forward (max over ranks). `serial`: the original model on one host, "
           "measured in the same job (it tracks the machine's speed at that moment; on a shared "
           "machine it drifts between jobs). `tp / bp` > 1: BP is that many times faster than TP; "
           "`best other / bp`: against the fastest of dp, pp, tp, sp at that rate (dp at batch 1 is "
           "one host running the whole model).", ""]
    for peer in peers:
        out += [f"`{peer['short_name']}` = {peer['name']}: {peer.get('source', '')}", ""]
        out += [f"- {claim}" for claim in peer.get("claims", [])] + ([""] if peer.get("claims") else [])
    out += [md_table(head, rows), "",
            "Wire / bus bytes per strategy (interface tx bytes per forward, max over ranks, over "
            "the bus bytes of the communicator; headers and TCP acks make it > 1):", "",
            md_table(["rate"] + labs, wire_rows), ""]
    return out


# -- plots ----------------------------------------------------------------------------
def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_latency_vs_rate(lat, path: Path, title: str, peers=()) -> bool:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = False
    r0 = lat[0]
    for peer in peers:
        if not peer_matches(peer, r0):
            continue
        for strategy, pts in peer_series(peer).items():
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "x--", lw=1, color=COLORS.get(strategy),
                    label=f"{strategy}: {peer['short_name']}")
    for lab in order(label(r) for r in lat):
        pts = sorted((rate_mbit(r.get("rate")), r["latency_s"]["p50"]) for r in lat
                     if label(r) == lab and rate_mbit(r.get("rate")))
        if len(pts) >= 2:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=lab, color=COLORS.get(lab))
            drawn = True
    serial = [r["serial_latency_s"]["p50"] for r in lat if r.get("serial_latency_s") and r.get("reference") == "serial"]
    if serial:
        ax.axhline(sum(serial) / len(serial), ls="--", color="#555555", label="serial (1 device)")
    if not drawn:
        plt.close(fig)
        return False
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("link rate (Mbit/s)")
    ax.set_ylabel("latency p50 (s, max over ranks)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_latency_bars(lat, path: Path, title: str) -> None:
    plt = _plt()
    sizes = sorted({r["world_size"] for r in lat})
    labs = order(label(r) for r in lat)
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(labs) * len(sizes) / 2 + 3), 4.5))
    width = 0.8 / max(1, len(sizes))
    for j, P in enumerate(sizes):
        xs, ys = [], []
        for i, lab in enumerate(labs):
            r = next((r for r in lat if label(r) == lab and r["world_size"] == P), None)
            if r:
                xs.append(i + (j - (len(sizes) - 1) / 2) * width)
                ys.append(r["latency_s"]["p50"])
        bars = ax.bar(xs, ys, width, label=f"P={P}")
        ax.bar_label(bars, labels=[f"{y * 1e3:.0f}" if y < 10 else f"{y:.0f}s" for y in ys], fontsize=7)
    serial = [r["serial_latency_s"]["p50"] for r in lat if r.get("serial_latency_s") and r.get("reference") == "serial"]
    if serial:
        ax.axhline(sum(serial) / len(serial), ls="--", color="#555555", label="serial (1 device)")
    ax.set_xticks(range(len(labs)), labs)
    ax.set_ylabel("latency p50 (s, max over ranks); labels in ms")
    _save_bars(plt, fig, ax, path, title, max([r["latency_s"]["p50"] for r in lat] + serial + [0.0]), ncol=3)


def _save_bars(plt, fig, ax, path: Path, title: str, top: float, ncol: int) -> None:
    """Shared finish of the bar charts: headroom above the tallest bar for the legend."""
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_ylim(0, 1.25 * max(top, 1e-9))
    ax.legend(loc="upper left", ncol=ncol)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_breakdown(lat, path: Path, title: str) -> None:
    plt = _plt()
    items = sorted(lat, key=lambda r: (r["world_size"], order([label(x) for x in lat]).index(label(r)),
                                       rate_mbit(r.get("rate")) or 0))
    names = [f"{label(r)}\nP={r['world_size']}" + (f"\n{r['rate']}" if r.get("rate") else "") for r in items]
    comp = [max(0.0, r.get("compute_s") or 0.0) for r in items]
    comm = [max(0.0, r.get("comm_s") or 0.0) for r in items]
    fig, ax = plt.subplots(figsize=(max(6, 0.75 * len(items) + 2), 4.5))
    ax.bar(range(len(items)), comp, label="compute", color="#4c72b0")
    ax.bar(range(len(items)), comm, bottom=comp, label="communication (incl. waiting)", color="#dd8452")
    ax.set_xticks(range(len(items)), names, fontsize=8)
    ax.set_ylabel("seconds per forward (mean, slowest rank)")
    _save_bars(plt, fig, ax, path, title, max([c + m for c, m in zip(comp, comm)] + [0.0]), ncol=2)


def plot_throughput(thr, path: Path, title: str) -> None:
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.2))
    labs = order(label(r) for r in thr)
    for lab in labs:
        pts = sorted((r["devices"], r["throughput_rps"], r.get("efficiency")) for r in thr if label(r) == lab)
        xs = [p[0] for p in pts]
        ax1.plot(xs, [p[1] for p in pts], "o-", label=lab, color=COLORS.get(lab))
        eff = [(p[0], p[2]) for p in pts if p[2] is not None]
        if eff:
            ax2.plot([e[0] for e in eff], [e[1] for e in eff], "o-", label=lab, color=COLORS.get(lab))
    devices = sorted({r["devices"] for r in thr})
    ax1.set_xlabel("devices P")
    ax1.set_ylabel("throughput (requests/s)")
    ax1.set_xticks(devices)
    ax1.grid(True, alpha=0.3)
    ax1.legend(fontsize=8)
    ax1.set_title("throughput")
    ax2.axhline(1.0, ls="--", color="#555555", lw=1)
    ax2.set_xlabel("devices P")
    ax2.set_ylabel("efficiency T(1) / (P T(P))")
    ax2.set_xticks(devices)
    effs = [r["efficiency"] for r in thr if r.get("efficiency") is not None]
    ax2.set_ylim(0, max([1.15] + [1.1 * e for e in effs]))
    ax2.grid(True, alpha=0.3)
    ax2.set_title("strong-scaling efficiency")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_bytes(rows, path: Path, title: str) -> None:
    """rows: (group label, strategy label, bus bytes)."""
    plt = _plt()
    groups = sorted(OrderedDict.fromkeys(g for g, _, _ in rows),
                    key=lambda g: (g.split("\n")[0], int(re.search(r"P=(\d+)", g).group(1))
                                   if re.search(r"P=(\d+)", g) else 0, g))
    labs = order(l for _, l, _ in rows)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(groups) + 3), 4.5))
    width = 0.8 / max(1, len(labs))
    for j, lab in enumerate(labs):
        xs, ys = [], []
        for i, g in enumerate(groups):
            v = next((v for gg, l, v in rows if gg == g and l == lab), None)
            if v:
                xs.append(i + (j - (len(labs) - 1) / 2) * width)
                ys.append(v)
        ax.bar(xs, ys, width, label=lab, color=COLORS.get(lab))
    ax.set_yscale("log")
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel("bus bytes per inference per rank (log)\n(0 bytes, e.g. dp at batch 1, not drawn)")
    ax.set_title(title)
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- the report -------------------------------------------------------------------------
def make_parser():
    p = ArgumentParser(prog="python -m bench.report", description=__doc__.strip())
    p.add_argument("results", nargs="+", help="JSONL result files or folders of them")
    p.add_argument("--name", default="report", help="report name: <out-dir>/<name>.md and <name>-*.png (default report)")
    p.add_argument("--out-dir", default="reports", help="folder for the report (default reports)")
    p.add_argument("--title", default=None, help="title line of the report")
    p.add_argument("--quiet", action="store_true", help="do not print the paths written")
    p.add_argument("--notes", metavar="MD", help="a Markdown file of the author's reading of the results, "
                   "included after the header under 'Notes' (the tables stay generated)")
    p.add_argument("--peer", action="append", default=[], metavar="JSON",
                   help="latencies of another implementation to set next to ours in the latency-vs-bandwidth "
                        "tables and plot (format: reports/peers/paper-artifact.json); repeatable")
    return p


def main(argv=None) -> int:
    args = make_parser().parse_args(argv)
    if not re.match(r"^[A-Za-z0-9._-]+$", args.name):
        raise CliError(f"--name {args.name!r}: use letters, digits, '.', '_' and '-' only")
    for path in args.results:
        if not Path(path).exists():
            raise CliError(f"{path}: no such file or folder")
    recs = dedup(records.read_records(args.results))
    if not recs:
        raise CliError("no records in " + ", ".join(args.results))
    peers = [load_peer(path) for path in args.peer]
    try:
        notes = Path(args.notes).read_text() if args.notes else None
    except OSError as err:
        raise CliError(f"--notes {args.notes}: {err.strerror or err}") from None
    written = write_report(recs, Path(args.out_dir), args.name, args.title, args.results, peers, notes)
    if not args.quiet:
        for path in written:
            print(f"wrote {path}")
    return 0


def _load_range(recs) -> str:
    loads = [r["env"]["loadavg_1m"] for r in recs if (r.get("env") or {}).get("loadavg_1m") is not None]
    if not loads:
        return "-"
    cpus = next((r["env"].get("cpus") for r in recs if (r.get("env") or {}).get("cpus")), None)
    return f"{min(loads):.1f} .. {max(loads):.1f}" + (f" on {cpus} CPUs" if cpus else "")


def write_report(recs, out_dir: Path, name: str, title: str | None, sources, peers=(), notes=None) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    lat = [r for r in recs if r.get("bench") == "latency" and r.get("latency_s")]
    thr = [r for r in recs if r.get("bench") == "throughput" and r.get("throughput_rps")]
    com = [r for r in recs if r.get("bench") == "comm"]
    written: list[Path] = []
    md = [f"# {title or 'DeTransformer bench report: ' + name}", ""]
    env = next((r.get("env") for r in recs if r.get("env")), {}) or {}
    times = sorted(r["env"]["utc_time"] for r in recs if (r.get("env") or {}).get("utc_time"))
    md += ["Generated by `python -m bench.report` from: " + ", ".join(f"`{s}`" for s in sources) + ".", "",
           md_table(["", ""], [
               ["hosts", ", ".join(sorted(set(h for r in recs for h in (r.get("env") or {}).get("hostnames", []))))],
               ["CPU", f"{env.get('cpu_model')} ({env.get('cpus')} CPUs)"],
               ["software", f"torch {env.get('torch')}, {env.get('mpi_library')}, mpi4py {env.get('mpi4py')}, "
                            f"python {env.get('python')}"],
               ["git commit", env.get("git_commit")],
               ["measured", f"{times[0]} .. {times[-1]}" if times else "-"],
               ["1-min load average while recording", _load_range(recs)],
               ["records", f"{len(lat)} latency, {len(thr)} throughput, {len(com)} comm"]]), ""]
    loads = [r["env"]["loadavg_1m"] for r in recs if (r.get("env") or {}).get("loadavg_1m") is not None]
    cpus = env.get("cpus")
    if loads and cpus and max(loads) > cpus:
        md += [f"> **Note:** the machine was oversubscribed while these records were made (1-minute load "
               f"average up to {max(loads):.1f} on {cpus} CPUs, from other jobs as well as this one's ranks): "
               "absolute times and efficiencies are contended; byte and message counts, and max_abs_err, "
               "are not affected.", ""]

    if notes:
        md += ["## Notes", "", notes.strip(), ""]
    if lat:
        md += ["## Latency (one request at a time)", "",
               "Latency is one whole forward, per iteration the maximum over ranks, after a barrier. "
               "`comm` is the slowest rank's time inside communicator calls (including waiting for "
               "peers); `compute` = mean latency - comm. `speedup` is against the serial forward of the "
               "same model measured in the same job (bp: the decoupled model); `max_abs_err` is against "
               "that serial output; `vs original serial` compares with the original (not decoupled) "
               "model's serial forward. `harness/bare` (only with `--compare-bare`) is the harness's mean "
               "latency over that of a bare hand-written loop of the same forward (barrier, clock, "
               "forward, clock; no bookkeeping), timed in interleaved blocks: the harness's own cost "
               "(records written by an older version timed the bare loop without barriers, so pp's "
               "and dp's ratio also held the overlap of consecutive forwards).", ""]
        for (model, batch, seq, P, rate), rs in group(lat, "model", "batch", "seq", "world_size", "rate").items():
            rs = sorted(rs, key=lambda r: order([label(x) for x in rs]).index(label(r)))
            serial = rs[0].get("serial_latency_s") or {}
            head = f"### {model}, batch {batch}, seq {seq}, P={P}" + (f", rate {rate}" if rate else "")
            md += [head, "", md_table(
                ["strategy", "p50", "p90", "p99", "compute", "comm", "serial p50", "speedup",
                 "vs original serial", "bus B/rank", "msgs/rank", "weights/rank", "max_abs_err",
                 "harness/bare"],
                [[label(r), s(r["latency_s"]["p50"]), s(r["latency_s"]["p90"]), s(r["latency_s"]["p99"]),
                  s(r.get("compute_s")), s(r.get("comm_s")), s((r.get("serial_latency_s") or {}).get("p50")),
                  f"{r['speedup_vs_serial']:.2f}x" if r.get("speedup_vs_serial") else "-",
                  f"{r['speedup_vs_original_serial']:.2f}x" if r.get("speedup_vs_original_serial") else "-",
                  b(tot(r, "bus_bytes_per_rank")), f"{tot(r, 'messages_per_rank'):g}"
                  if tot(r, "messages_per_rank") is not None else "-",
                  b((r.get("weights_bytes_per_rank") or {}).get("max")),
                  "-" if r.get("max_abs_err") is None else f"{r['max_abs_err']:.1e}",
                  f"{r['harness_overhead_ratio']:.3f}" if r.get("harness_overhead_ratio") else "-"]
                 for r in rs]), ""]
            del serial
        rates = {r.get("rate") for r in lat if rate_mbit(r.get("rate"))}
        if len(rates) >= 2:
            for (model, batch, seq, P), rs in group(lat, "model", "batch", "seq", "world_size").items():
                if len({rate_mbit(r.get("rate")) for r in rs} - {None}) < 2:
                    continue
                md += rate_tables(rs, model, batch, seq, P, peers)
                path = out_dir / f"{name}-latency-vs-bandwidth-{model}-P{P}-s{seq}.png".replace("/", "_")
                if plot_latency_vs_rate(rs, path, f"{model}, seq {seq}, batch {batch}, P={P}", peers):
                    written.append(path)
                    md += [f"![latency vs bandwidth]({path.name})", ""]
        for (model, batch, seq), rs in group(lat, "model", "batch", "seq").items():
            tag = f"{model}-s{seq}-b{batch}".replace("/", "_")
            unshaped = [r for r in rs if not r.get("rate") or len(rates) < 2]  # rated ones: plotted vs rate
            if unshaped:
                path = out_dir / f"{name}-latency-{tag}.png"
                plot_latency_bars(unshaped, path, f"latency p50 by strategy: {model}, seq {seq}, batch {batch}")
                written.append(path)
                md += [f"![latency by strategy]({path.name})", ""]
            path2 = out_dir / f"{name}-breakdown-{tag}.png"
            plot_breakdown(rs, path2, f"compute vs communication: {model}, seq {seq}, batch {batch}")
            written.append(path2)
            md += [f"![compute/comm breakdown]({path2.name})", ""]

    if thr:
        md += ["## Throughput and strong scaling (one launch, sub-communicators of P ranks)", "",
               "A fixed set of requests per forward set; throughput = requests / p50 time of the set; "
               "efficiency = T(1) / (P x T(P)) against the same strategy on one device.", ""]
        for (model, seq, req), rs in group(thr, "model", "seq", "requests").items():
            labs = order(label(r) for r in rs)
            devices = sorted({r["devices"] for r in rs})
            rows = []
            for lab in labs:
                row = [lab]
                for P in devices:
                    r = next((r for r in rs if label(r) == lab and r["devices"] == P), None)
                    row.append("-" if r is None else f"{r['throughput_rps']:.2f} req/s"
                               + (f" (eff {r['efficiency']:.2f})" if r.get("efficiency") is not None else ""))
                errs = [r["max_abs_err"] for r in rs if label(r) == lab and r.get("max_abs_err") is not None]
                row.append(f"{max(errs):.1e}" if errs else "-")
                rows.append(row)
            md += [f"### {model}, {req} requests of seq {seq}", "",
                   md_table(["strategy"] + [f"P={P}" for P in devices] + ["max_abs_err"], rows), ""]
            path = out_dir / f"{name}-throughput-{model}-s{seq}-r{req}.png".replace("/", "_")
            plot_throughput(rs, path, f"{model}, {req} requests, seq {seq}")
            written.append(path)
            md += [f"![throughput vs devices]({path.name})", ""]

    byte_rows, ratios = [], []
    if com:
        md += ["## Communication volume per inference per rank", "",
               "Analytic numbers come from each strategy's `expected_traffic` formulas; `total` is the "
               "maximum over ranks. Bus bytes are what a bandwidth-optimal (ring) algorithm sends per "
               "rank. `vs TP` = bus bytes / TP's bus bytes; `measured` columns are filled when the "
               "records were made under mpiexec with that P.", ""]
        groups = group(com, "model", "world_size", "seq", "batch")
        for (model, P, seq, batch) in sorted(groups, key=lambda k: tuple(str(x).zfill(8) for x in k)):
            rs = groups[(model, P, seq, batch)]
            rs = sorted(rs, key=lambda r: order([label(x) for x in rs]).index(label(r)))
            md += [f"### {model}, P={P}, seq {seq}, batch {batch}", "", md_table(
                ["strategy", "payload", "bus", "messages", "vs TP", "TP / this", "measured bus",
                 "measured msgs", "wire", "weights/rank"],
                [[label(r), b(tot(r, "expected_payload_bytes_per_rank")), b(tot(r, "expected_bus_bytes_per_rank")),
                  tot(r, "expected_messages_per_rank") if tot(r, "expected_messages_per_rank") is not None else "-",
                  f"{r['bus_ratio_to_tp']:.3f}" if r.get("bus_ratio_to_tp") is not None else "-",
                  f"{1 / r['bus_ratio_to_tp']:.2f}" if r.get("bus_ratio_to_tp") else "-",
                  b(tot(r, "bus_bytes_per_rank")), tot(r, "messages_per_rank") if r.get("messages_per_rank") else "-",
                  b(r.get("wire_bytes_per_rank")), b((r.get("weights_bytes_per_rank") or {}).get("max"))]
                 for r in rs]), ""]
            for r in rs:
                v = tot(r, "expected_bus_bytes_per_rank")
                if v:
                    byte_rows.append((f"{model}\nP={P} s={seq}", label(r), v))
            tp = next((tot(r, "expected_bus_bytes_per_rank") for r in rs if r.get("strategy") == "tp"), None)
            for r in rs:
                v = tot(r, "expected_bus_bytes_per_rank")
                if r.get("strategy") == "bp" and tp and v:
                    ratios.append([model, P, seq, label(r), f"{r.get('n_blocks')}", f"{tp / v:.2f}",
                                   f"{tot(r, 'expected_messages_per_rank')} vs "
                                   f"{next(tot(x, 'expected_messages_per_rank') for x in rs if x.get('strategy') == 'tp')}"])
        if ratios:
            md += ["### TP / BP bus bytes per inference per rank", "",
                   "DESIGN.md: TP needs 4L/N_b times the bytes of BP with replicated boundaries "
                   "(12 for BERT-Base, 24 for BERT-Large at N_b = 4).", "",
                   md_table(["model", "P", "seq", "bp", "N_b", "TP / BP bus bytes", "messages BP vs TP"], ratios), ""]
    elif lat:
        for r in lat:
            v = tot(r, "bus_bytes_per_rank")
            if v:
                byte_rows.append((f"{r['model']}\nP={r['world_size']} s={r['seq']}", label(r), v))
    if byte_rows:
        path = out_dir / f"{name}-bytes.png"
        plot_bytes(byte_rows, path, "bytes per inference per rank (bus, " +
                   ("analytic)" if com else "measured)"))
        written.append(path)
        md += ["## Bytes per inference per strategy", "", f"![bytes per inference]({path.name})", ""]

    md_path = out_dir / f"{name}.md"
    md_path.write_text("\n".join(md).rstrip() + "\n")
    return [md_path] + written


if __name__ == "__main__":
    guard(main)
