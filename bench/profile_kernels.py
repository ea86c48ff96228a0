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
