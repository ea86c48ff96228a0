"""Records shaped once for bench.report and bench.compare: one typed `Row` per point.

`load(paths)` reads result files (bounded, see bench.records), checks every field the
report and the comparison use (a field of the wrong type is one error line naming
file:line and the field, never a traceback later) and keeps the last record of each
point. Numeric fields go through records.number, so "nan"/"inf" written by
records.clean come back as floats and null stays None ("not computed").
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass, field

from . import records
from parallelism.errors import UsageError
from .network import parse_rate

STRATEGY_ORDER = ["serial", "dp", "pp", "tp", "sp", "bp", "bp(replicate)", "bp(tp)"]
TRAFFIC_FIELDS = ("payload_bytes_per_rank", "bus_bytes_per_rank", "messages_per_rank",
                  "expected_payload_bytes_per_rank", "expected_bus_bytes_per_rank",
                  "expected_messages_per_rank")

TEXT, INT, NUM, TOTAL, SAMPLES, TEXTS, NUMS = "text", "integer", "number", "total", "samples", "texts", "numbers"
# Row attribute <- dotted record field, kind. TOTAL: a {"total": n, ...} dict or a bare number.
FIELDS = [
    ("bench", "bench", TEXT), ("strategy", "strategy", TEXT), ("label_", "label", TEXT),
    ("model", "model", TEXT), ("world_size", "world_size", INT), ("devices", "devices", INT),
    ("batch", "batch", INT), ("seq", "seq", INT), ("n_blocks", "n_blocks", INT), ("n_div", "n_div", INT),
    ("rate", "rate", TEXT), ("requests", "requests", INT), ("threads", "threads", INT),
    ("reference", "reference", TEXT),
    ("p50", "latency_s.p50", NUM), ("p90", "latency_s.p90", NUM), ("p99", "latency_s.p99", NUM),
    ("samples", "latency_samples_s", SAMPLES),
    ("compute_s", "compute_s", NUM), ("comm_s", "comm_s", NUM),
    ("serial_p50", "serial_latency_s.p50", NUM), ("speedup", "speedup_vs_serial", NUM),
    ("speedup_original", "speedup_vs_original_serial", NUM),
    ("harness_ratio", "harness_overhead_ratio", NUM),
    ("bus", "bus_bytes_per_rank", TOTAL), ("messages", "messages_per_rank", TOTAL),
    ("expected_payload", "expected_payload_bytes_per_rank", TOTAL),
    ("expected_bus", "expected_bus_bytes_per_rank", TOTAL),
    ("expected_messages", "expected_messages_per_rank", TOTAL),
    ("weights", "weights_bytes_per_rank.max", NUM), ("wire", "wire_bytes_per_rank", NUM),
    ("bus_ratio_to_tp", "bus_ratio_to_tp", NUM), ("max_abs_err", "max_abs_err", NUM),
    ("mean_cosine", "mean_cosine", NUM), ("output_check", "output_check", TEXT),
    ("boundary", "boundary", TEXT), ("wire_dtype", "wire_dtype", TEXT), ("overlap_chunks", "overlap_chunks", INT),
    ("throughput_rps", "throughput_rps", NUM), ("efficiency", "efficiency", NUM),
    ("utc_time", "env.utc_time", TEXT), ("loadavg", "env.loadavg_1m", NUM),
    ("hostnames", "env.hostnames", TEXTS), ("cpus", "env.cpus", INT), ("cpu_quotas", "env.cpu_quotas", NUMS),
    ("predicted_s", "predicted_latency_s", NUM), ("predicted_dominant", "predicted.dominant", TEXT),
    ("plan_label", "plan.label", TEXT), ("plan_hosts", "plan.of_hosts", TEXTS),
    ("plan_host_names", "plan.host_names", TEXTS), ("wire_reduce", "wire_reduce", TEXT),
]
# Tags that are bookkeeping, not a different point (bench.sweep's resume key).
BOOKKEEPING_TAGS = ("sweep_point",)
# Dicts whose members are looked up: each must be a dict (or absent/null) itself.
CONTAINERS = ("latency_s", "serial_latency_s", "weights_bytes_per_rank", "env", "predicted", "plan", "tags")


@dataclass(frozen=True)
class Row:
    """One point as the report and the comparison see it (None: not in the record)."""
    origin: str                       # "file:line" of the record
    bench: str | None = None
    strategy: str | None = None
    label_: str | None = None
    model: str | None = None
    world_size: int | None = None
    devices: int | None = None
    batch: int | None = None
    seq: int | None = None
    n_blocks: int | None = None
    n_div: int | None = None
    rate: str | None = None
    requests: int | None = None
    threads: int | None = None
    reference: str | None = None
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None
    samples: tuple | None = None      # per-iteration latencies (latency_samples_s)
    compute_s: float | None = None
    comm_s: float | None = None
    serial_p50: float | None = None
    speedup: float | None = None
    speedup_original: float | None = None
    harness_ratio: float | None = None
    bus: float | None = None
    messages: float | None = None
    expected_payload: float | None = None
    expected_bus: float | None = None
    expected_messages: float | None = None
    weights: float | None = None
    wire: float | None = None
    bus_ratio_to_tp: float | None = None
    max_abs_err: float | None = None
    mean_cosine: float | None = None
    output_check: str | None = None
    boundary: str | None = None
    wire_dtype: str | None = None     # None in records made before wire dtypes: fp32
    overlap_chunks: int | None = None  # 1 (or None): no overlap   # the harness's verdict on the output: ok, non-finite, shape mismatch
    throughput_rps: float | None = None
    efficiency: float | None = None
    utc_time: str | None = None
    loadavg: float | None = None
    hostnames: tuple = ()
    cpus: int | None = None
    cpu_quotas: tuple = ()            # per rank, cores (emulated hosts); () when unconfined
    predicted_s: float | None = None  # the cost model's latency for this placement (--profile / auto)
    predicted_dominant: str | None = None
    plan_label: str | None = None     # the placement (records made with --profile or auto)
    plan_hosts: tuple = ()            # the hosts an auto run was planned over
    plan_host_names: tuple = ()       # the hosts the placement ran on
    wire_reduce: str | None = None    # how a 16-bit allreduce sums (parallelism/wire.py)
    tags: tuple = ()                  # ("key=value", ...) from --tag, bookkeeping tags left out
    env: dict = field(default_factory=dict)          # the record's env block, for the report header
    traffic: dict = field(default_factory=dict)      # {field or field.op: count}, compared exactly

    @property
    def label(self) -> str:
        base = self.label_ or self.strategy or "?"
        return f"{base} [{' '.join(self.tags)}]" if self.tags else base

    @property
    def hosts_label(self) -> str | None:
        """'CPU quota 0.45' or 'CPU quotas 0.2,0.3,0.45,0.45' (emulated hosts), else None."""
        if not self.cpu_quotas:
            return None
        shown = quotas_text(self.cpu_quotas).split(",")
        return f"CPU quota {shown[0]}" if len(set(shown)) == 1 else "CPU quotas " + ",".join(shown)

    @property
    def rate_bit(self) -> int | None:
        return rate_bits(self.rate)

    @property
    def key(self) -> tuple:
        """What makes two records the same point."""
        return (self.bench, self.label, self.model, self.world_size, self.batch, self.seq, self.n_blocks,
                self.n_div, self.rate, self.requests, self.threads, self.cpu_quotas)


def quotas_text(quotas) -> str:
    """Per-host CPU quotas as '0.2,0.3,-' ('-': unconfined); '' for none."""
    return ",".join("-" if q is None else f"{q:g}" for q in quotas)


def rate_bits(rate) -> int | None:
    """A record's link rate ('100mbit', tc units) in bit/s; None when unshaped or unreadable."""
    if rate is None:
        return None
    try:
        return parse_rate(rate)
    except ValueError:
        return None


# -- reading -------------------------------------------------------------------------------
def load(paths) -> list[Row]:
    """Rows of every record of `paths`, one per point (the last record of a point wins)."""
    return dedup(tidy(records.iter_records(paths)))


def tidy(origin_records) -> list[Row]:
    """(origin, record) pairs -> Rows; UsageError naming origin and field on a wrong type."""
    return [_row(origin, record) for origin, record in origin_records]


def _row(origin: str, record: dict) -> Row:
    for name in CONTAINERS:
        if not isinstance(record.get(name), (dict, type(None))):
            raise _bad(origin, name, record[name], "an object")
    values = {}
    for attr, dotted, kind in FIELDS:
        value = records.lookup(record, dotted)
        if value is not None:
            values[attr] = _convert(origin, dotted, value, kind)
    tags = record.get("tags") or {}
    values["tags"] = tuple(f"{k}={v}" for k, v in tags.items() if k not in BOOKKEEPING_TAGS)
    return Row(origin=origin, env=record.get("env") or {}, traffic=_traffic(origin, record), **values)


def _convert(origin: str, dotted: str, value, kind: str):
    if kind == TEXT and isinstance(value, str):
        return value
    if kind == INT and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind == TEXTS and isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    if kind == NUMS and isinstance(value, list):
        if all(v is None for v in value):
            return ()
        if all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in value):
            return tuple(None if v is None else float(v) for v in value)     # None: that host unconfined
    try:
        if kind == NUM:
            return records.number(value)
        if kind == TOTAL:
            return records.number(value.get("total") if isinstance(value, dict) else value)
        if kind == SAMPLES and isinstance(value, list) and None not in value:
            return tuple(records.number(v) for v in value) or None
    except TypeError:
        pass
    raise _bad(origin, dotted, value, {TEXT: "text", INT: "an integer", TEXTS: "a list of text",
                                       NUM: "a number", TOTAL: "a number or {\"total\": number}",
                                       NUMS: "a list of numbers",
                                       SAMPLES: "a list of numbers"}[kind])


def _traffic(origin: str, record: dict) -> dict:
    out = {}
    for name in TRAFFIC_FIELDS:
        value = record.get(name)
        if not isinstance(value, dict):
            continue
        out[name] = _convert(origin, name + ".total", value.get("total"), NUM)
        by_op = value.get("by_op") or {}
        if not isinstance(by_op, dict):
            raise _bad(origin, name + ".by_op", by_op, "an object")
        for op, n in by_op.items():
            out[f"{name}.{op}"] = _convert(origin, f"{name}.by_op.{op}", n, NUM)
    return out


def _bad(origin: str, dotted: str, value, expected: str) -> UsageError:
    shown = json.dumps(value)[:40] if not isinstance(value, str) else repr(value[:40])
    return UsageError(f"{origin}: {dotted} is {shown}, expected {expected}")


def dedup(rows: list[Row]) -> list[Row]:
    out: OrderedDict = OrderedDict()
    for row in rows:
        out.pop(row.key, None)
        out[row.key] = row
    return list(out.values())


# -- shaping helpers --------------------------------------------------------------------------
def order(labels) -> list[str]:
    return sorted(set(labels), key=lambda s: (STRATEGY_ORDER.index(s) if s in STRATEGY_ORDER else 99, s))


def none_last(value) -> tuple:
    """Sort key for a field that may be missing (None after every value)."""
    return (value is None, value if value is not None else 0)


def group(rows, *attrs) -> "OrderedDict[tuple, list]":
    out: OrderedDict = OrderedDict()
    for row in rows:
        out.setdefault(tuple(getattr(row, a) for a in attrs), []).append(row)
    return out


def efficiency(row: Row, rows: list[Row]) -> tuple[float | None, bool]:
    """(strong-scaling efficiency, borrowed): the record's own, or, for a device count measured in
    a separate launch (no P=1 in it), throughput / (P x the same strategy's P=1 in `rows`)."""
    if row.efficiency is not None or not row.devices:
        return row.efficiency, False
    one = next((r for r in rows if r.label == row.label and r.devices == 1 and r.throughput_rps), None)
    if one is None or row.throughput_rps is None:
        return None, False
    return row.throughput_rps / (row.devices * one.throughput_rps), True


def by_strategy_order(rows: list[Row]) -> list[Row]:
    labels = order(r.label for r in rows)
    return sorted(rows, key=lambda r: labels.index(r.label))


# -- other implementations measured elsewhere (e.g. the paper's artifact) -----------------
PEER_FIELDS = ("name", "short_name", "model", "seq", "batch", "world_size", "latency_s")


def load_peer(path: str) -> dict:
    """A JSON file of another implementation's latencies: name, short_name, source, the point
    it was measured at (model, seq, batch, world_size) and latency_s {rate: {strategy: s}}."""
    text = records.read_text(path, "--peer")
    try:
        peer = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise UsageError(f"--peer {path}: {err}") from None
    if not isinstance(peer, dict):
        raise UsageError(f"--peer {path}: expected a JSON object")
    missing = [k for k in PEER_FIELDS if k not in peer]
    if missing:
        raise UsageError(f"--peer {path}: missing {', '.join(missing)}")
    latency = peer["latency_s"]
    if not isinstance(latency, dict) or not all(
            rate_bits(rate) and isinstance(by, dict) and all(records.is_finite(v) for v in by.values())
            for rate, by in latency.items()):
        raise UsageError(f"--peer {path}: latency_s must map rates (e.g. 100mbit) to {{strategy: seconds}}")
    for name in ("name", "short_name", "source"):
        if not isinstance(peer.get(name, ""), str):
            raise UsageError(f"--peer {path}: {name} must be text")
    if not isinstance(peer.get("claims", []), list) or not records.is_finite(peer.get("serial_s", 0) or 0):
        raise UsageError(f"--peer {path}: claims must be a list and serial_s a number")
    return peer


def peer_matches(peer: dict, row: Row) -> bool:
    return (peer["model"], peer["seq"], peer["batch"], peer["world_size"]) == \
        (row.model, row.seq, row.batch, row.world_size)


def peer_strategies(peer: dict) -> list[str]:
    return order({k for v in peer["latency_s"].values() for k in v})


def peer_series(peer: dict) -> dict:
    """strategy -> [(Mbit/s, seconds)] sorted by rate."""
    out: dict = {}
    for rate, by_strategy in peer["latency_s"].items():
        for strategy, seconds in by_strategy.items():
            out.setdefault(strategy, []).append((rate_bits(rate) / 1e6, seconds))
    return {k: sorted(v) for k, v in out.items()}


def is_base(row: Row) -> bool:
    """An fp32 run without overlap (records made before wire dtypes count as one)."""
    return (row.wire_dtype or "fp32") == "fp32" and (row.overlap_chunks or 1) == 1


def family_of(row: Row) -> str:
    """The strategy, and bp's boundary: 'tp', 'bp(replicate)'."""
    return row.strategy + (f"({row.boundary})" if row.boundary else "")


def families(rows) -> "OrderedDict[str, list]":
    """Rows by strategy (and bp boundary), when some of them vary the wire dtype or overlap."""
    if all(is_base(r) for r in rows):
        return OrderedDict()
    out: OrderedDict = OrderedDict()
    for r in rows:
        out.setdefault(family_of(r), []).append(r)
    return OrderedDict((k, v) for k, v in out.items() if len({r.label for r in v}) > 1)
