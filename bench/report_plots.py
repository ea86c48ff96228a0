"""The PNG plots of bench.report, drawn from report_data Rows (non-finite values are not drawn).

Each plot is written to a temporary file in the target folder and renamed into place,
so an interrupted report never leaves a half-written PNG.
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from pathlib import Path

from .records import is_finite
from .report_data import efficiency, none_last, order, peer_matches, peer_series, rate_bits

COLORS = {"serial": "#555555", "dp": "#1f77b4", "pp": "#ff7f0e", "tp": "#d62728", "sp": "#9467bd",
          "bp": "#2ca02c", "bp(replicate)": "#2ca02c", "bp(tp)": "#17becf"}


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(plt, fig, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fig.savefig(tmp, dpi=110, format="png")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)


def _serial_mean(rows) -> list[float]:
    """The serial p50 of the rows measured against the original serial model (for a line)."""
    return [r.serial_p50 for r in rows if is_finite(r.serial_p50) and r.reference == "serial"]


def plot_latency_vs_rate(lat, path: Path, title: str, peers=()) -> bool:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = False
    for peer in peers:
        if not peer_matches(peer, lat[0]):
            continue
        for strategy, pts in peer_series(peer).items():
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "x--", lw=1, color=COLORS.get(strategy),
                    label=f"{strategy}: {peer['short_name']}")
    for lab in order(r.label for r in lat):
        pts = sorted((r.rate_bit / 1e6, r.p50) for r in lat if r.label == lab and r.rate_bit and is_finite(r.p50))
        if len(pts) >= 2:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=lab, color=COLORS.get(lab))
            drawn = True
    serial = _serial_mean(lat)
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
    _save(plt, fig, path)
    return True


def plot_latency_bars(lat, path: Path, title: str) -> None:
    plt = _plt()
    sizes = sorted({r.world_size for r in lat}, key=none_last)
    labs = order(r.label for r in lat)
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(labs) * len(sizes) / 2 + 3), 4.5))
    width = 0.8 / max(1, len(sizes))
    for j, P in enumerate(sizes):
        xs, ys = [], []
        for i, lab in enumerate(labs):
            r = next((r for r in lat if r.label == lab and r.world_size == P), None)
            if r and is_finite(r.p50):
                xs.append(i + (j - (len(sizes) - 1) / 2) * width)
                ys.append(r.p50)
        bars = ax.bar(xs, ys, width, label=f"P={P}")
        ax.bar_label(bars, labels=[f"{y * 1e3:.0f}" if y < 10 else f"{y:.0f}s" for y in ys], fontsize=7)
    serial = _serial_mean(lat)
    if serial:
        ax.axhline(sum(serial) / len(serial), ls="--", color="#555555", label="serial (1 device)")
    ax.set_xticks(range(len(labs)), labs)
    ax.set_ylabel("latency p50 (s, max over ranks); labels in ms")
    top = max([r.p50 for r in lat if is_finite(r.p50)] + serial + [0.0])
    _save_bars(plt, fig, ax, path, title, top, ncol=3)


def _save_bars(plt, fig, ax, path: Path, title: str, top: float, ncol: int) -> None:
    """Shared finish of the bar charts: headroom above the tallest bar for the legend."""
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_ylim(0, 1.25 * max(top, 1e-9))
    ax.legend(loc="upper left", ncol=ncol)
    fig.tight_layout()
    _save(plt, fig, path)


def plot_breakdown(lat, path: Path, title: str) -> None:
    plt = _plt()
    labs = order(r.label for r in lat)
    items = sorted(lat, key=lambda r: (none_last(r.world_size), labs.index(r.label), r.rate_bit or 0))
    names = [f"{r.label}\nP={r.world_size}" + (f"\n{r.rate}" if r.rate else "") for r in items]
    comp = [max(0.0, r.compute_s) if is_finite(r.compute_s) else 0.0 for r in items]
    comm = [max(0.0, r.comm_s) if is_finite(r.comm_s) else 0.0 for r in items]
    fig, ax = plt.subplots(figsize=(max(6, 0.75 * len(items) + 2), 4.5))
    ax.bar(range(len(items)), comp, label="compute", color="#4c72b0")
    ax.bar(range(len(items)), comm, bottom=comp, label="communication (incl. waiting)", color="#dd8452")
    ax.set_xticks(range(len(items)), names, fontsize=8)
    ax.set_ylabel("seconds per forward (mean, slowest rank)")
    _save_bars(plt, fig, ax, path, title, max([c + m for c, m in zip(comp, comm)] + [0.0]), ncol=2)


def plot_throughput(thr, path: Path, title: str) -> None:
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.2))
    for lab in order(r.label for r in thr):
        pts = sorted(((r.devices, r.throughput_rps, efficiency(r, thr)[0]) for r in thr
                      if r.label == lab and is_finite(r.throughput_rps)), key=lambda p: none_last(p[0]))
        ax1.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=lab, color=COLORS.get(lab))
        eff = [(p[0], p[2]) for p in pts if is_finite(p[2])]
        if eff:
            ax2.plot([e[0] for e in eff], [e[1] for e in eff], "o-", label=lab, color=COLORS.get(lab))
    devices = sorted({r.devices for r in thr}, key=none_last)
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
    effs = [e for e in (efficiency(r, thr)[0] for r in thr) if is_finite(e)]
    ax2.set_ylim(0, max([1.15] + [1.1 * e for e in effs]))
    ax2.grid(True, alpha=0.3)
    ax2.set_title("strong-scaling efficiency")
    fig.suptitle(title)
    fig.tight_layout()
    _save(plt, fig, path)


def _group_order(group_label: str) -> tuple:
    """'bert-base\\nP=4 s=128' sorts by model, then P as a number."""
    world = re.search(r"P=(\d+)", group_label)
    return group_label.split("\n")[0], int(world.group(1)) if world else 0, group_label


def plot_bytes(rows, path: Path, title: str) -> None:
    """rows: (group label, strategy label, bus bytes)."""
    plt = _plt()
    groups = sorted(OrderedDict.fromkeys(g for g, _, _ in rows), key=_group_order)
    labs = order(lab for _, lab, _ in rows)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(groups) + 3), 4.5))
    width = 0.8 / max(1, len(labs))
    for j, lab in enumerate(labs):
        xs, ys = [], []
        for i, g in enumerate(groups):
            v = next((v for gg, lb, v in rows if gg == g and lb == lab), None)
            if v and is_finite(v):
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
    _save(plt, fig, path)


def plot_predictions(items, path: Path, title: str) -> None:
    """Predicted against measured p50 (log-log), one marker per placement, colour by link rate;
    the diagonal and the +-10% and +-25% bands (the cost model's targets)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.2, 5.4))
    rates = sorted({i["rate"] for i in items}, key=lambda r: none_last(rate_bits(r)))
    cmap = plt.get_cmap("viridis", max(len(rates), 2))
    for k, rate in enumerate(rates):
        pts = [(i["measured"], i["predicted"]) for i in items if i["rate"] == rate]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=28, color=cmap(k), label=f"{rate}", alpha=0.85)
    values = [v for i in items for v in (i["measured"], i["predicted"])]
    lo, hi = min(values) / 1.3, max(values) * 1.3
    ax.plot([lo, hi], [lo, hi], color="#333333", lw=1)
    for band, style in ((0.10, "--"), (0.25, ":")):
        for f in (1 + band, 1 - band):
            ax.plot([lo, hi], [lo * f, hi * f], style, color="#888888", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("measured p50 latency (s)")
    ax.set_ylabel("predicted latency (s)")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(title="link rate", fontsize=8)
    ax.set_title(title + "\n(dashed: +-10%, dotted: +-25%)", fontsize=10)
    fig.tight_layout()
    _save(plt, fig, path)
