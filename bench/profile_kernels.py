"""The model's own kernels, timed on this host at the shapes the planner's candidates use.

Each kernel runs through the same kernels.layers function a strategy calls (so its
elementwise work, LayerNorms and copies are in its time, not only its matmuls), on random
tensors of its shape. The time kept is the CPU time of one call (median of `reps`, after
one untimed call): on one thread that is the full-speed time, whatever a CPU quota makes
of the wall time; the cost model puts the quota back (bench.costmodel.Cpu). `cpu_share`
(CPU seconds / wall seconds over all calls) shows what the quota and other load left.
"""

from __future__ import annotations

import statistics
from time import perf_counter, process_time
from types import SimpleNamespace

import torch

from kernels import attention, attention_residual, embed, ffn_residual, project_qkv
from kernels.layers import EmbeddingWeights
from parallelism.schedule import EMBED, Work


def _randn(*shape):
    return torch.randn(*shape) * 0.02


def runner(cfg, work: Work):
    """A no-argument function running one call of `work`'s kernel at its shape (count 1)."""
    b, q, k, w, n, f = work.batch, work.queries, work.keys, work.width, work.heads, work.ffn
    d, eps = cfg.head_dim, cfg.ln_eps
    inner = n * d
    x = _randn(b, q, w)
    if work.kernel == "qkv":
        weight, bias = _randn(3 * inner, w), _randn(3 * inner)
        return lambda: project_qkv(x, weight, bias, n)
    if work.kernel == "attention":
        qs, ks, vs = _randn(b, n, q, d), _randn(b, n, k, d), _randn(b, n, k, d)
        return lambda: attention(qs, ks, vs, None)
    if work.kernel == "out":
        context = _randn(b, q, inner)
        lw = SimpleNamespace(out_weight=_randn(w, inner), out_bias=_randn(w), ln1_weight=torch.ones(w),
                             ln1_bias=torch.zeros(w))
        return lambda: attention_residual(x, context, lw, eps)
    if work.kernel == "ffn":
        lw = SimpleNamespace(ffn_in_weight=_randn(f, w), ffn_in_bias=_randn(f), ffn_out_weight=_randn(w, f),
                             ffn_out_bias=_randn(w), ln2_weight=torch.ones(w), ln2_bias=torch.zeros(w))
        return lambda: ffn_residual(x, lw, eps)
    if work.kernel == EMBED:
        h = cfg.hidden
        weights = EmbeddingWeights(_randn(cfg.vocab, h), _randn(cfg.max_positions, h), _randn(cfg.type_vocab, h),
                                   torch.ones(h), torch.zeros(h))
        ids = torch.randint(0, cfg.vocab, (b, q))
        return lambda: embed(ids, weights, eps)
    raise ValueError(f"unknown kernel {work.kernel!r}")


@torch.inference_mode()
def measure_kernels(cfg, works: dict, reps: int) -> tuple[dict, float]:
    """{key: profile entry} for every Work of `works`, and the CPU share over all calls."""
    out, cpu_total, wall_total = {}, 0.0, 0.0
    for key, work in sorted(works.items()):
        call = runner(cfg, work)
        call()
        samples = []
        for _ in range(reps):
            c0, t0 = process_time(), perf_counter()
            call()
            samples.append(process_time() - c0)
            wall_total += perf_counter() - t0
        cpu_total += sum(samples)
        one = Work(work.kernel, work.batch, work.queries, work.keys, work.width, work.heads, work.ffn)
        out[key] = {"kernel": work.kernel, "batch": work.batch, "queries": work.queries, "keys": work.keys,
                    "width": work.width, "heads": work.heads, "ffn": work.ffn, "flops": one.flops(cfg),
                    "seconds": max(statistics.median(samples), 1e-7)}
        if one.flops(cfg):
            out[key]["gflops"] = one.flops(cfg) / out[key]["seconds"] / 1e9
    return out, (cpu_total / wall_total if wall_total else 1.0)


@torch.inference_mode()
def calibrate(cfg, kernels: dict, batch: int, seq: int, reps: int = 5) -> dict:
    """Whole serial forwards against the sum of their kernels' times, per model kind.

    A kernel timed alone, again and again, finds its weights in cache; in a forward the
    layers' weights stream through it, and the glue between kernels (masks, slicing,
    concatenation) costs too. `factor` = CPU seconds of a forward / the sum of its kernels'
    profiled seconds (median of `reps` forwards): the cost model scales kernels by it (layers at the model's width by the
    original model's, sub-blocks by what the decoupled forward spends beyond its boundary layer). `cpu_per_wall` over those forwards is what
    the CPU quota left of a core (the quota's CFS periods included)."""
    from kernels import ReferenceModel, init_weights
    from parallelism.serial import Serial
    from .profiles import kernel_key
    out, cpu_all, wall_all = {}, 0.0, 0.0
    # Four layers (and a small vocabulary: a lookup costs the same) are enough to stream
    # weights through the cache as the whole model does, at a fraction of the set-up.
    layers = min(4, cfg.layers)
    small = cfg.replace(layers=layers, n_blocks=layers, vocab=min(cfg.vocab, 4096))
    decoupled = small.replace(n_blocks=1, n_div=4) if layers > 1 and cfg.hidden % 4 == 0 else None
    ids = torch.randint(1, small.vocab, (batch, seq))
    for kind, model_cfg in (("original", small), ("decoupled", decoupled)):
        if model_cfg is None or (kind == "decoupled" and not model_cfg.is_decoupled):
            continue
        [step] = Serial.steps(model_cfg, 1, batch, seq)
        full = narrow = 0.0   # kernels' seconds at the model's width (and embeddings), at sub-block width
        for work in step.work[0]:
            key = kernel_key(*work.shape)
            if key not in kernels:  # not among the candidates' shapes: time it now
                kernels.update(measure_kernels(cfg, {key: work}, 3)[0])
            seconds = work.count * kernels[key]["seconds"]
            full, narrow = (full + seconds, narrow) if work.width == cfg.hidden else (full, narrow + seconds)
        model = ReferenceModel(model_cfg, init_weights(model_cfg, 0))
        model.forward(ids)
        # The median of `reps`: the mean of 2 once made a factor of 1.71 (reports/emulated-4host-
        # planner-rerun-data, unequal hosts, host 0), and dp on that host was predicted 57% slow.
        cpus, walls = [], []
        for _ in range(reps):
            c0, t0 = process_time(), perf_counter()
            model.forward(ids)
            cpus.append(process_time() - c0)
            walls.append(perf_counter() - t0)
        cpu, wall = statistics.median(cpus), statistics.median(walls)
        cpu_all, wall_all = cpu_all + cpu, wall_all + wall
        # The decoupled forward's factor is its sub-blocks' (its boundary layer takes the original's).
        factor = cpu / full if kind == "original" else max(0.5, (cpu - out["original"]["factor"] * full) / narrow)
        out[kind] = {"n_blocks": model_cfg.n_blocks, "n_div": model_cfg.n_div, "layers": model_cfg.layers,
                     "batch": batch, "seq": seq, "forward_cpu_s": cpu, "forward_wall_s": wall,
                     "kernels_s": full + narrow, "factor": factor}
        del model
    out["cpu_per_wall"] = cpu_all / wall_all
    return out
