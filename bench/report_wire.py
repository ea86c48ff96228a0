"""The report's wire dtype and overlap section (bench.report): what each knob buys, per rate.

For records that vary `--wire-dtype` or `--overlap` (labels such as `tp(int8,overlap2)`), per
model, shape, P and host class:
- per strategy family (dp, pp, tp, sp, bp(replicate), bp(tp)) a table of p50 latency per
  configuration (wire dtype x overlap) and rate, each with its ratio to the family's fp32
  configuration without overlap at the same rate, beside the bus bytes against fp32's and the
  output error (worst mean cosine and max_abs_err over the rates);
- the share of communication that overlap hides, (T_off - T_on) / comm_off, per family, wire
  dtype and rate (T: p50 latency; comm_off: the slowest rank's time inside communicator calls
  without overlap);
- per rate, the fastest BP configuration against fp32 bp(replicate) without overlap.
Every ratio compares records of one rate; bench.sweep measures a rate in one job, so the two
sides of a ratio ran minutes apart on the same hosts.
"""

from __future__ import annotations

from collections import OrderedDict

from .records import fmt_s as s, is_finite
from .report_data import families, group, is_base


def hidden_share(t_off: float, t_on: float, comm_off: float) -> float:
    """The share of communication overlap hides: (T_off - T_on) / comm_off (negative: it cost)."""
    return (t_off - t_on) / comm_off


def config(row) -> str:
    """'fp32', 'int8+overlap2', ... (the row's place within its family)."""
    chunks = row.overlap_chunks or 1
    return (row.wire_dtype or "fp32") + (f"+overlap{chunks}" if chunks > 1 else "")


CONFIG_ORDER = ("fp32", "fp16", "bf16", "int8")


def config_key(name: str) -> tuple:
    dtype, _, overlap = name.partition("+")
    return (CONFIG_ORDER.index(dtype) if dtype in CONFIG_ORDER else 99, overlap)


UNSHAPED = "unshaped"


def rate_of(row) -> str:
    return row.rate or UNSHAPED


def by_rate(rows) -> "OrderedDict[str, list]":
    """Rows by link rate, slowest first ('unshaped', records without a rate, last)."""
    out: OrderedDict = OrderedDict()
    for r in sorted(rows, key=lambda r: r.rate_bit or float("inf")):
        out.setdefault(rate_of(r), []).append(r)
    return out


def ratio(num, den, digits: int = 2) -> str:
    return f"{num / den:.{digits}f}x" if is_finite(num) and is_finite(den) and den else "-"


def family_table(family: str, rows, md_table) -> list[str]:
    rates = by_rate(rows)
    configs = sorted({config(r) for r in rows}, key=config_key)
    cell = {(config(r), rate_of(r)): r for r in reversed(rows)}   # the first of a cell, as listed
    base_bus = next((r.bus for r in rows if is_base(r) and r.bus), None)
    table = []
    for name in configs:
        line = [name]
        for rate in rates:
            r, base = cell.get((name, rate)), cell.get(("fp32", rate))
            line.append("-" if r is None else s(r.p50) + ("" if r is base or base is None
                                                          else f" ({ratio(r.p50, base.p50)})"))
        mine = [r for r in rows if config(r) == name]
        cosines = [r.mean_cosine for r in mine if r.mean_cosine is not None]
        errors = [r.max_abs_err for r in mine if r.max_abs_err is not None]
        bus = next((r.bus for r in mine if r.bus), None)
        line += [ratio(bus, base_bus, 3), f"{min(cosines):.6f}" if cosines else "-",
                 f"{max(errors):.1e}" if errors else "-"]
        table.append(line)
    return [f"#### {family}", "", md_table(["configuration"] + list(rates) + ["bus vs fp32", "worst cosine",
                                                                              "worst max_abs_err"], table), ""]


def overlap_table(fams, md_table) -> list[str]:
    rows = []
    for family, frs in fams.items():
        cell = {(config(r), rate_of(r)): r for r in reversed(frs)}
        for dtype in sorted({r.wire_dtype or "fp32" for r in frs}, key=config_key):
            ons = sorted({config(r) for r in frs if config(r).startswith(dtype + "+")})
            for on in ons:
                line = [f"{family} {on}"]
                for rate in by_rate(frs):
                    off, r = cell.get((dtype, rate)), cell.get((on, rate))
                    if off is None or r is None or not (is_finite(off.comm_s) and off.comm_s > 0):
                        line.append((rate, "-"))
                        continue
                    hidden = hidden_share(off.p50, r.p50, off.comm_s)
                    line.append((rate, f"{100 * hidden:+.0f}% ({s(off.p50)} -> {s(r.p50)}, comm {s(off.comm_s)})"))
                rows.append(line)
    if not rows:
        return []
    rates = list(by_rate([r for frs in fams.values() for r in frs]))
    table = [[line[0]] + [dict(line[1:]).get(rate, "-") for rate in rates] for line in rows]
    return ["### Communication hidden by overlap", "",
            "(T_off - T_on) / comm_off: p50 latency without and with overlap, over the slowest rank's time "
            "in communicator calls without overlap (target >= 50% at 500 and 1000 Mbit/s for tp and bp(tp)); "
            "negative: overlap made the forward slower.", "",
            md_table(["configuration"] + rates, table), ""]


def best_bp_table(rows, md_table) -> list[str]:
    # Runs whose output passed the check, not the planner's picks (auto:), one checkpoint shape.
    bps = [r for r in rows if r.strategy == "bp" and is_finite(r.p50) and r.output_check in (None, "ok")
           and not r.label.startswith("auto:")]
    table = []
    for rate, rs in by_rate(bps).items():
        base = next((r for r in rs if is_base(r) and (r.boundary or "replicate") == "replicate"), None)
        best = min(rs, key=lambda r: r.p50)
        if base is None:
            continue
        table.append([rate, s(base.p50), best.label, s(best.p50), ratio(best.p50, base.p50),
                      "-" if best.mean_cosine is None else f"{best.mean_cosine:.6f}",
                      "-" if best.max_abs_err is None else f"{best.max_abs_err:.1e}"])
    if not table:
        return []
    return ["### The fastest BP configuration against fp32 bp(replicate)", "",
            "Per rate, over every BP configuration measured in the same job (boundary x wire dtype x "
            "overlap); target: <= 0.7x at 10, 100 and 1000 Mbit/s.", "",
            md_table(["rate", "bp(replicate) fp32", "fastest BP", "its p50", "ratio", "its cosine",
                      "its max_abs_err"], table), ""]


def wire_section(lat, md_table) -> list[str]:
    md = []
    for (model, batch, seq, P, hosts, _, _), rs in group(lat, "model", "batch", "seq", "world_size", "hosts_label",
                                                          "n_blocks", "n_div").items():
        fams = families(rs)
        if not fams:
            continue
        md += [f"### Wire dtype x overlap: {model}, batch {batch}, seq {seq}, P={P}" + (f", {hosts}" if hosts else ""),
               "", "p50 latency per configuration and rate; in brackets its ratio to the same strategy in fp32 "
               "without overlap at that rate. `bus vs fp32`: counted bus bytes per rank over fp32's.", ""]
        for family, frs in fams.items():
            md += family_table(family, frs, md_table)
        md += overlap_table(fams, md_table) + best_bp_table(rs, md_table)
    return (["## Wire dtypes and overlap", ""] + md) if md else []
