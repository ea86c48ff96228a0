"""Profiles on disk: what `python -m bench.profile` writes, checked field by field on load.

A profile is one JSON object (schema `detr-profile/1`):

    model        the model it was measured for: name, layers, hidden, heads, ffn
    shapes       [[batch, seq], ...] the request shapes its kernels were measured at
    threads      torch threads per rank;  wait: how ranks waited in MPI calls
    profiling_s  how long profiling took; utc_time, git_commit, loadavg_1m
    hosts        one per rank, in rank order: rank, host, machine_id (the kernel's boot id:
                 hosts with the same one share the machine's `cpus` cores), cpus, cpu_quota (cores or null),
                 cpu_model, memory_available_bytes, runtime_bytes (a rank's resident memory
                 before any model tensor), network (tc state, bench.network.describe_network),
                 cpu_share (CPU seconds / wall seconds over its kernel runs),
                 kernels {key: {kernel, batch, queries, keys, width, heads, ffn, flops, seconds}}
                 with `seconds` the CPU seconds of one call (the full-speed time of one thread)
    links        [{a, b, latency_s, bandwidth_Bps}]: ping-pong between hosts a and b
    collectives  [{op, world, alpha_s, beta_s_per_byte, residual, cpu_fraction, cpu_alpha_s,
                 cpu_beta_s_per_byte, points, cpu_s}]: time = alpha + beta x bytes on the first
                 `world` hosts, bytes as `costmodel.cost_bytes` counts them; residual: RMS
                 relative error of the fit; CPU seconds per rank beyond waiting =
                 cpu_alpha + cpu_beta x bytes (fitted the same way; cpu_fraction: CPU / wall)
    wait_cpu_fraction  the share of a core a rank burns while it waits in MPI (for a late peer
                 or for the bytes to move)
    (machine_id, cpu_alpha_s, cpu_beta_s_per_byte and wait_cpu_fraction are absent from
    profiles made before they existed: the cost model then charges cpu_fraction instead)

Every problem is a `UsageError` naming the file and the field (one line, exit 2).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from parallelism import UsageError

SCHEMA = "detr-profile/1"
FITTED_OPS = ("allreduce", "allgather", "gather", "send")
MODEL_FIELDS = ("layers", "hidden", "heads", "ffn")
KERNEL_PARAMS = ("kernel", "batch", "queries", "keys", "width", "heads", "ffn")


def kernel_key(kernel: str, batch: int, queries: int, keys: int, width: int, heads: int, ffn: int) -> str:
    """A measured kernel's name: only the dimensions its time depends on (the linears see
    batch x queries tokens; attention sees sequences, heads, queries and keys)."""
    tokens = batch * queries
    if kernel in ("qkv", "out"):
        return f"{kernel} t{tokens} w{width} n{heads}"
    if kernel == "ffn":
        return f"ffn t{tokens} w{width} f{ffn}"
    if kernel == "attention":
        return f"attention b{batch} n{heads} q{queries} k{keys}"
    return f"embed t{tokens}"


def model_of(cfg) -> dict:
    return {"name": cfg.name, **{f: getattr(cfg, f) for f in MODEL_FIELDS}}


# -- validation ---------------------------------------------------------------------------------
class _Checker:
    def __init__(self, path):
        self.path = path

    def fail(self, where: str, problem: str):
        raise UsageError(f"profile {self.path}: {where} {problem}")

    def field(self, obj, key, where):
        if not isinstance(obj, dict):
            self.fail(where, "must be a JSON object")
        if key not in obj:
            self.fail(where, f"lacks field {key!r} (re-run python -m bench.profile)")
        return obj[key]

    def number(self, obj, key, where, low=0.0, strict=True, optional=False):
        value = self.field(obj, key, where)
        if value is None and optional:
            return None
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            self.fail(f"{where}.{key}", f"must be a finite number, got {value!r}")
        if (strict and value <= low) or value < low:
            self.fail(f"{where}.{key}", f"must be {'>' if strict else '>='} {low:g}, got {value!r}")
        return value

    def later_number(self, obj, key, where):
        """A field that profiles gained later (older ones lack it): None when absent."""
        return self.number(obj, key, where, strict=False) if isinstance(obj, dict) and key in obj else None

    def integer(self, obj, key, where, low=0):
        value = self.field(obj, key, where)
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            self.fail(f"{where}.{key}", f"must be an integer >= {low}, got {value!r}")
        return value

    def items(self, obj, key, where, kind=list):
        value = self.field(obj, key, where)
        if not isinstance(value, kind) or not value:
            self.fail(f"{where}.{key}", f"must be a non-empty {'list' if kind is list else 'object'}")
        return value


def validate(data, path="<profile>") -> dict:
    """Raise UsageError on the first problem; return `data`."""
    c = _Checker(path)
    if c.field(data, "schema", "top level") != SCHEMA:
        c.fail("schema", f"is {data['schema']!r}, expected {SCHEMA!r}")
    model = c.field(data, "model", "top level")
    for key in MODEL_FIELDS:
        c.integer(model, key, "model", 1)
    for i, shape in enumerate(c.items(data, "shapes", "top level")):
        if not (isinstance(shape, list) and len(shape) == 2 and all(isinstance(v, int) and v > 0 for v in shape)):
            c.fail(f"shapes[{i}]", f"must be [batch, seq], got {shape!r}")
    c.integer(data, "threads", "top level", 1)
    c.number(data, "profiling_s", "top level")
    hosts = c.items(data, "hosts", "top level")
    for i, host in enumerate(hosts):
        where = f"hosts[{i}]"
        if c.integer(host, "rank", where) != i:
            c.fail(f"{where}.rank", f"is {host['rank']}, expected {i} (hosts are listed in rank order)")
        c.field(host, "host", where)
        c.integer(host, "cpus", where, 1)
        if not isinstance(host.get("machine_id", ""), (str, type(None))):
            c.fail(f"{where}.machine_id", f"must be a string or null, got {host['machine_id']!r}")
        c.number(host, "cpu_quota", where, optional=True)
        c.number(host, "memory_available_bytes", where)
        c.number(host, "runtime_bytes", where, strict=False)
        for key, entry in c.items(host, "kernels", where, dict).items():
            kwhere = f"{where}.kernels[{key!r}]"
            for param in KERNEL_PARAMS[1:]:
                c.integer(entry, param, kwhere, 1)
            c.number(entry, "flops", kwhere, strict=False)
            c.number(entry, "seconds", kwhere)
    n = len(hosts)
    for i, link in enumerate(data.get("links") or []):
        where = f"links[{i}]"
        a, b = c.integer(link, "a", where), c.integer(link, "b", where)
        if a >= n or b >= n or a == b:
            c.fail(where, f"joins hosts {a} and {b}, but the profile has {n} host(s) (wrong host count)")
        c.number(link, "latency_s", where)
        c.number(link, "bandwidth_Bps", where)
    if n > 1 and not data.get("links"):
        c.fail("links", f"must list the links between the {n} hosts")
    for i, fit in enumerate(data.get("collectives") or []):
        where = f"collectives[{i}]"
        if c.field(fit, "op", where) not in FITTED_OPS:
            c.fail(f"{where}.op", f"must be one of {', '.join(FITTED_OPS)}, got {fit['op']!r}")
        world = c.integer(fit, "world", where, 2)
        if world > n:
            c.fail(f"{where}.world", f"is {world}, but the profile has {n} host(s) (wrong host count)")
        c.number(fit, "alpha_s", where, strict=False)
        c.number(fit, "beta_s_per_byte", where)
        c.number(fit, "residual", where, strict=False)
        c.number(fit, "cpu_fraction", where, strict=False)
        c.later_number(fit, "cpu_alpha_s", where)
        c.later_number(fit, "cpu_beta_s_per_byte", where)
    wait = c.later_number(data, "wait_cpu_fraction", "top level")
    if wait is not None and wait > 1.5:
        c.fail("wait_cpu_fraction", f"must be at most 1.5 (cores), got {wait!r}")
    if n > 1 and not data.get("collectives"):
        c.fail("collectives", f"must hold the fitted collectives of the {n} hosts")
    return data


def load(path) -> dict:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise UsageError(f"cannot read profile {path}: {err.strerror or err}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise UsageError(f"profile {path}: not JSON ({err.msg} at line {err.lineno})") from None
    return validate(data, path)


def check_model(profile: dict, cfg, path="<profile>") -> None:
    """The profile must have been measured for this model's shape (its kernels' sizes)."""
    want, got = model_of(cfg), profile["model"]
    if any(want[f] != got[f] for f in MODEL_FIELDS):
        shape = lambda m: f"{m.get('name')} (L={m['layers']} h={m['hidden']} heads={m['heads']} ffn={m['ffn']})"  # noqa: E731
        raise UsageError(f"profile {path} was measured for {shape(got)}, not {shape(want)}: "
                         f"profile this model (python -m bench.profile --model {cfg.name})")


def check_hosts(profile: dict, count: int, path="<profile>", names: list[str] | None = None) -> None:
    """A run on `count` ranks (host `names`) needs a profile of those hosts."""
    hosts = profile["hosts"]
    if len(hosts) != count:
        raise UsageError(f"profile {path} has {len(hosts)} host(s), this run has {count} "
                         f"(wrong host count: profile the hosts you run on)")
    if names is not None:
        theirs = [h["host"] for h in hosts]
        if theirs != list(names):
            raise UsageError(f"profile {path} is of hosts {','.join(theirs)}, this run is on {','.join(names)}")


# -- two profiles of the same cluster ------------------------------------------------------------
def fitted_terms(profile: dict) -> dict[str, float]:
    """name -> value of every fitted or measured term (for comparing two profiles)."""
    out = {}
    for host in profile["hosts"]:
        for key, entry in host["kernels"].items():
            out[f"{host['host']} {key} seconds"] = entry["seconds"]
    for link in profile.get("links") or []:
        out[f"link {link['a']}-{link['b']} latency_s"] = link["latency_s"]
        out[f"link {link['a']}-{link['b']} bandwidth_Bps"] = link["bandwidth_Bps"]
    for fit in profile.get("collectives") or []:
        out[f"{fit['op']} P={fit['world']} alpha_s"] = fit["alpha_s"]
        out[f"{fit['op']} P={fit['world']} beta_s_per_byte"] = fit["beta_s_per_byte"]
        for key in ("cpu_alpha_s", "cpu_beta_s_per_byte"):
            if fit.get(key) is not None:
                out[f"{fit['op']} P={fit['world']} {key}"] = fit[key]
    if profile.get("wait_cpu_fraction") is not None:
        out["wait_cpu_fraction"] = profile["wait_cpu_fraction"]
    return out


def compare(a: dict, b: dict) -> list[tuple[str, float, float, float | None]]:
    """(term, value in a, value in b, b / a) for every term both profiles hold."""
    ta, tb = fitted_terms(a), fitted_terms(b)
    return [(k, ta[k], tb[k], tb[k] / ta[k] if ta[k] else None) for k in ta if k in tb]
