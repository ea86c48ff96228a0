"""bench.quality_report: the accuracy price of decoupling as a report (the paper's table shape).

    python -m bench.quality_report --quality results/quality.jsonl --decouple results/decouple.jsonl \\
        --latency results/latency-bp-*.jsonl --name quality-minilm

Reads bench.quality, bench.decouple and (optional) bench.latency records and writes
reports/<name>.md with: per model and (N_b, N_div) the accuracy per task and method
(mean over seeds, min-max), the change against the original, the cosine agreement,
the distillation time and load; the decoupled checkpoints under bp (max_abs_err vs the
serial decoupled reference, latency); and two PNGs: <name>-distillation.png (loss per
step) and <name>-accuracy.png (accuracy change per configuration).
"""

from __future__ import annotations

from pathlib import Path

from parallelism.errors import UsageError
from parallelism.wire import WIRE_DTYPES

from . import records
from .cli import ArgumentParser, run
from .textdata import CORPORA

COLUMNS = [("bbc", "probe", "BBC probe"), ("bbc", "probe_cv", "BBC probe (CV)"), ("bbc", "finetune", "BBC fine-tune"),
           ("fortunes", "probe", "fortunes probe"), ("fortunes", "probe_cv", "fortunes probe (CV)")]
ACCEPT = {"bbc": 1.0, "fortunes": 2.0}  # points either side of the original (issue 13)


def parse_args(argv=None):
    p = ArgumentParser(prog="python -m bench.quality_report", description=__doc__.split("\n\n")[0],
                       epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--quality", nargs="+", required=True, help="bench.quality JSONL files")
    p.add_argument("--decouple", nargs="*", default=[], help="bench.decouple JSONL files")
    p.add_argument("--latency", nargs="*", default=[],
                   help="bench.latency JSONL files: the checkpoints under bp, and peers such as the original under tp")
    p.add_argument("--name", default="quality-minilm", help="report name (default quality-minilm)")
    p.add_argument("--out-dir", default="reports", help="folder of the report (default reports)")
    p.add_argument("--notes", metavar="MD", default=None,
                   help="a Markdown file of the author's reading (and the commands), put first under Notes")
    return p.parse_args(argv)


def corpus_of(r: dict) -> str:
    """The distillation text of a decoupled model's record, '' for the default sources."""
    corpus = ",".join((r.get("distillation") or {}).get("corpus") or [])
    return "" if corpus in ("", ",".join(CORPORA)) else corpus


def config_key(r: dict) -> tuple:
    """(N_b, N_div, text) for sorting: the original first, then N_div growing, N_b shrinking."""
    layers = r.get("layers") or r.get("n_blocks")
    return (0, 0, 0, "") if r["n_blocks"] == layers else (1, -r["n_blocks"], r["n_div"], corpus_of(r))


def label_of(r: dict) -> str:
    corpus = corpus_of(r)
    return f"({r['n_blocks']},{r['n_div']})" + (f" {corpus} only" if corpus else "")


def summarise(quality: list[dict]) -> dict:
    """config_key -> {"first": record, "checkpoints": {name: distillation seed},
    (task, method): {(checkpoint, seed): accuracy %}, (task, "cos"): {checkpoint: agreement}}."""
    out: dict[tuple, dict] = {}
    for r in quality:
        entry = out.setdefault(config_key(r), {"first": r, "checkpoints": {}})
        name = Path(r["checkpoint"]).name
        entry["checkpoints"][name] = (r.get("distillation") or {}).get("seed")
        entry.setdefault((r["task"], r["method"]), {})[(name, r["seed"])] = 100 * r["accuracy"]
        if r.get("cosine_agreement") is not None:
            entry.setdefault((r["task"], "cos"), {})[name] = r["cosine_agreement"]
    return out


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def cell(seeds: dict | None) -> str:
    if not seeds:
        return "-"
    values = list(seeds.values())
    return f"{mean(values):.2f} ({min(values):.2f}-{max(values):.2f}, n={len(values)})"


def distillation_cell(names, distillations: dict) -> str:
    runs = [distillations[n] for n in sorted(names) if n in distillations]
    if not runs:
        return "-"
    d = runs[0]
    # CPU seconds only of runs known to have run every step in one process.
    cpu = [r["cpu_s_this_process"] for r in runs if r.get("cpu_s_this_process") and r.get("resumed_from_step") == 0]
    return (f"{len(runs)} run(s) of {d['steps']} steps x {d['batch']} texts x <= {d['seq']} tokens: "
            + ", ".join(f"{r['time_s']:.0f} s wall (load {r.get('loadavg_1m_start')}-{r['env'].get('loadavg_1m')})"
                        for r in runs)
            + (f"; CPU {min(cpu):.0f}-{max(cpu):.0f} s per run ({d.get('threads')} thread)" if cpu else ""))


def accuracy_table(summary: dict, distillations: dict) -> tuple[list[str], list[dict]]:
    originals = [e for e in summary.values() if config_key(e["first"])[0] == 0]
    if not originals:
        raise UsageError("no record of an original model (n_blocks == layers) among the quality records")
    base = originals[0]
    lines = ["| model | N_b | N_div | " + " | ".join(f"{title} %" for _, _, title in COLUMNS)
             + " | change vs original (points) | cosine vs original (BBC / fortunes) | distillation |",
             "|---" * (6 + len(COLUMNS)) + "|"]
    moves = []
    for e in sorted(summary.values(), key=lambda e: config_key(e["first"])):
        r = e["first"]
        changes = {(t, m): mean(e[(t, m)].values()) - mean(base[(t, m)].values())
                   for t, m, _ in COLUMNS if e.get((t, m)) and base.get((t, m))}
        is_original = e is base
        change = "-" if is_original else ", ".join(f"{t} {m} {v:+.2f}" for (t, m), v in changes.items())
        cos = "-" if is_original else " / ".join(
            f"{mean(e[(t, 'cos')].values()):.4f}" if e.get((t, "cos")) else "-" for t in ("bbc", "fortunes"))
        names = ", ".join(sorted(e["checkpoints"]))
        lines.append(f"| {names} | {r['n_blocks']} | {r['n_div']} | "
                     + " | ".join(cell(e.get((t, m))) for t, m, _ in COLUMNS)
                     + f" | {change} | {cos} | {distillation_cell(e['checkpoints'], distillations)} |")
        if not is_original:
            moves.append({"label": label_of(r), "changes": changes})
    return lines, moves


def acceptance(moves: list[dict]) -> list[str]:
    """Per decoupled shape and probe: the change against the original, judged two-sided (the
    issue's "within N points"), and which way it leaves the band when it does."""
    out = []
    for m in moves:
        verdicts = []
        for task, allowed in ACCEPT.items():
            for method in ("probe", "probe_cv"):
                change = m["changes"].get((task, method))
                if change is None:
                    continue
                verdict = (f"within +-{allowed:g}" if abs(change) <= allowed else
                           f"a GAIN beyond +{allowed:g}" if change > 0 else f"a LOSS beyond -{allowed:g}")
                verdicts.append(f"{task} {method} {change:+.2f} points ({verdict})")
        out.append(f"- {m['label']}: " + "; ".join(verdicts))
    return out


def latency_table(latency: list[dict]) -> list[str]:
    """bench.latency records: the checkpoints under bp (and any peer, e.g. the original under
    tp), per link (local ranks or an emulated rate) and P."""
    if not latency:
        return ["(no bench.latency records given)"]
    lines = ["| link | model | N_b | N_div | P | strategy | seq | p50 latency | serial p50 (same model) | "
             "max_abs_err | load |", "|---" * 11 + "|"]
    for r in sorted(latency, key=lambda r: (str(r.get("rate") or ""), r["world_size"], r["model"], r.get("label") or "")):
        lines.append(f"| {r.get('rate') or 'local ranks'} | {r['model']} | {r['n_blocks']} | {r['n_div']} | "
                     f"{r['world_size']} | {r.get('label') or r['strategy']} | {r['seq']} | "
                     f"{records.fmt_s(r['latency_s']['p50'])} | {records.fmt_s(r['serial_latency_s']['p50'])} | "
                     f"{r['max_abs_err']:.2e} | {r['env'].get('loadavg_1m')} |")
    return lines


def plot_curves(decouple: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in sorted(decouple, key=lambda r: (-r["n_blocks"], r["n_div"], r["seed"])):
        steps, losses = [p[0] for p in r["curve"]], [p[1] for p in r["curve"]]
        corpus = ",".join(r.get("texts") or {})
        text = "" if corpus in ("", ",".join(CORPORA)) else f", {corpus} only"
        ax.plot(steps, losses, label=f"(N_b, N_div) = ({r['n_blocks']}, {r['n_div']}), seed {r['seed']}{text}")
    ax.set_xlabel("step")
    ax.set_ylabel("distillation loss (sum of block MSEs + 1 - cos)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_moves(moves: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(COLUMNS)
    for k, (task, method, title) in enumerate(COLUMNS):
        xs = [i + k * width for i in range(len(moves))]
        ax.bar(xs, [m["changes"].get((task, method), 0.0) for m in moves], width, label=title)
    ax.set_xticks([i + width for i in range(len(moves))], [m["label"] for m in moves])
    ax.axhline(-1, color="k", lw=0.8, ls="--")
    ax.axhline(-2, color="k", lw=0.8, ls=":")
    ax.set_xlabel("decoupled (N_b, N_div)")
    ax.set_ylabel("accuracy change vs original (points)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    everything = [r for r in records.read_records(args.quality) if r.get("bench") == "quality"]
    # Encodings run by a strategy in some wire dtype (bench.quality --strategy) get their own table.
    quality = [r for r in everything if r.get("strategy", "serial") == "serial"]
    wired = [r for r in everything if r.get("strategy", "serial") != "serial"]
    decouple = [r for r in records.read_records(args.decouple) if r.get("bench") == "decouple"] if args.decouple else []
    latency = [r for r in records.read_records(args.latency) if r.get("bench") == "latency"] if args.latency else []
    if not everything:
        raise UsageError("no bench.quality records in " + ", ".join(args.quality))
    distillations = {Path(r["checkpoint"]).name: r for r in decouple}  # the last run per checkpoint wins
    table, moves = accuracy_table(summarise(quality), distillations) if quality else ([], [])
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    curves, bars = out_dir / f"{args.name}-distillation.png", out_dir / f"{args.name}-accuracy.png"
    if decouple:
        plot_curves(decouple, curves)
    if moves:
        plot_moves(moves, bars)
    first = everything[0]
    what = "decoupling" if quality else "the wire dtype"
    text = [f"# What {what} costs in accuracy: {args.name}", "",
            f"Generated by `python -m bench.quality_report` from {len(everything)} bench.quality, {len(decouple)} "
            f"bench.decouple and {len(latency)} bench.latency records. Tasks: BBC News (5 topics, "
            f"{first_of(everything, 'bbc', 'n_train')} train / {first_of(everything, 'bbc', 'n_test')} test articles), "
            f"fortunes ({first_of(everything, 'fortunes', 'classes')} topic classes, "
            f"{first_of(everything, 'fortunes', 'n_test')} test "
            f"entries), texts cut at {first['seq']} tokens. Accuracy: mean over (distilled checkpoint, "
            f"evaluation seed) pairs (min-max, n pairs). Machine: "
            f"{first['env'].get('cpu_model')}, {first['env'].get('cpus')} CPUs, shared (1-minute load in the records).",
            ""]
    if args.notes:
        try:
            text += ["## Notes", "", Path(args.notes).read_text().strip(), ""]
        except OSError as err:
            raise UsageError(f"--notes {args.notes}: {err.strerror or err}") from None
    if quality:
        text += ["## Accuracy, original vs decoupled", "", *table, "",
                 "Acceptance (issue 13: BBC within 1 point, fortunes within 2 points of the original, either side; "
                 "mean over seeds; `probe`: the fixed AdamW budget, `probe_cv`: L2 chosen by cross-validation):",
                 "", *acceptance(moves), ""]
    if wired:
        text += ["## Task accuracy per wire dtype", "",
                 "Texts encoded by a strategy over MPI ranks (`bench.quality --strategy`), its activations "
                 "travelling in each wire dtype; accuracy % (mean over seeds), in brackets the change against "
                 "fp32 in points; `cosine vs original`: mean cosine of the embeddings to the original model's "
                 "serial ones (decoupled checkpoints).", "", *wire_table(wired), ""]
    if moves:
        text += [f"![accuracy change]({bars.name})", ""]
    if decouple:
        text += ["## Distillation", "", f"![distillation curves]({curves.name})", ""]
    if quality or latency:
        text += ["## The distilled checkpoints under bp", "", *latency_table(latency), ""]
    report = out_dir / f"{args.name}.md"
    report.write_text("\n".join(text))
    print(f"wrote {report}" + (f", {curves}" if decouple else "") + (f", {bars}" if moves else ""))
    return 0


def wire_table(wired: list[dict]) -> list[str]:
    from tabulate import tabulate
    groups: dict[tuple, dict] = {}
    for r in wired:
        run_label = r["strategy"] + (f"({r['boundary']})" if r.get("boundary") else "") + f", P={r['world_size']}"
        key = (Path(r["checkpoint"]).name, run_label, r["task"], r["method"])
        groups.setdefault(key, {}).setdefault(r["wire_dtype"], []).append(r)
    dtypes = [d for d in WIRE_DTYPES if any(d in g for g in groups.values())]
    rows = []
    for key, by_dtype in groups.items():
        accuracy = {d: mean(100 * r["accuracy"] for r in rs) for d, rs in by_dtype.items()}
        base = accuracy.get("fp32")
        cells = [("-" if d not in accuracy else f"{accuracy[d]:.2f}" +
                  ("" if d == "fp32" or base is None else f" ({accuracy[d] - base:+.2f})")) for d in dtypes]
        cosines = [rs[0]["cosine_agreement"] for rs in by_dtype.values() if rs[0].get("cosine_agreement") is not None]
        low, high = (f"{min(cosines):.4f}", f"{max(cosines):.4f}") if cosines else ("-", "-")
        spread = low if low == high else f"{low}-{high}"
        rows.append([*key, *cells, spread])
    return tabulate(rows, headers=["model", "run", "task", "method", *dtypes, "cosine vs original"],
                    tablefmt="github", disable_numparse=True).splitlines()


def first_of(quality: list[dict], task: str, key: str):
    return next((r[key] for r in quality if r["task"] == task), "-")


if __name__ == "__main__":
    run(main)
