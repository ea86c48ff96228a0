"""Serial kernel benchmark: our reference forward against torch's and Hugging Face's BERT.

For each model and thread count the three implementations run interleaved, one
forward each per round, the first of the round rotating, so that noise on this
shared machine hits all of them alike. The ratio ours/peer is the figure, not
the absolute time: the median over rounds of ours/peer within the round (paired,
so that load drifting between rounds cancels). The peers run on our weight tensors
themselves (shared memory, not copies) and their outputs are compared with ours
(`max |peer-ours|`): same function, same data, only the code differs.

    python -m bench.kernels                          # bert-base, bert-large, minilm-l6; 1 and 2 threads
    python -m bench.kernels --models minilm-l6 --threads 1 --iters 20
"""

from __future__ import annotations

import argparse

import statistics
import sys
import time

import torch

import kernels as K

from . import cli, records


def torch_encoder_layer(cfg: K.ModelConfig, w: K.LayerWeights) -> torch.nn.TransformerEncoderLayer:
    """torch's post-LN GELU encoder layer on our layer's weights: the same tensors, not copies.

    Shared memory matters for a fair timing: where 435 MB of weights land alone moved one
    implementation's forward by up to 5% against another's here (cache and page placement),
    more than the code differences being measured.
    """
    layer = torch.nn.TransformerEncoderLayer(cfg.hidden, cfg.heads, cfg.ffn, dropout=0.0, activation="gelu",
                                             layer_norm_eps=cfg.ln_eps, batch_first=True, norm_first=False).eval()
    with torch.no_grad():
        for theirs, ours in ((layer.self_attn.in_proj_weight, w.qkv_weight), (layer.self_attn.in_proj_bias, w.qkv_bias),
                             (layer.self_attn.out_proj.weight, w.out_weight), (layer.self_attn.out_proj.bias, w.out_bias),
                             (layer.norm1.weight, w.ln1_weight), (layer.norm1.bias, w.ln1_bias),
                             (layer.linear1.weight, w.ffn_in_weight), (layer.linear1.bias, w.ffn_in_bias),
                             (layer.linear2.weight, w.ffn_out_weight), (layer.linear2.bias, w.ffn_out_bias),
                             (layer.norm2.weight, w.ln2_weight), (layer.norm2.bias, w.ln2_bias)):
            theirs.set_(ours)
    return layer


def torch_peer(cfg: K.ModelConfig, weights: K.ModelWeights):
    """The same embeddings followed by nn.TransformerEncoderLayer (post-LN, GELU) stacked L times,
    on our weight tensors: the same function on the same memory (its output is compared with ours)."""
    layers = [torch_encoder_layer(cfg, w) for w in weights.layers]

    @torch.inference_mode()
    def forward(ids, mask):
        padding = None if bool(mask.all()) else mask == 0
        x = K.embed(ids, weights.embeddings, cfg.ln_eps)
        for layer in layers:
            x = layer(x, src_key_padding_mask=padding)
        return x
    return forward


def hugging_face_state_dict(weights: K.ModelWeights) -> dict[str, torch.Tensor]:
    """Our weights under Hugging Face BertModel's names (the inverse of kernels.load_checkpoint)."""
    return K.state_dict(weights)


def hugging_face_peer(cfg: K.ModelConfig, weights: K.ModelWeights):
    try:
        import transformers
    except ImportError:
        return None
    hf_cfg = transformers.BertConfig(
        vocab_size=cfg.vocab, hidden_size=cfg.hidden, num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads, intermediate_size=cfg.ffn, max_position_embeddings=cfg.max_positions,
        type_vocab_size=cfg.type_vocab, layer_norm_eps=cfg.ln_eps, attn_implementation="sdpa")
    model = transformers.BertModel(hf_cfg, add_pooling_layer=False).eval()
    # assign=True: the model takes our tensors themselves (no copy), as the torch peer does.
    missing, unexpected = model.load_state_dict(hugging_face_state_dict(weights), strict=False, assign=True)
    if [k for k in missing if not k.endswith("position_ids")] or unexpected:
        raise RuntimeError(f"Hugging Face peer: missing {missing}, unexpected {unexpected}")

    @torch.inference_mode()
    def forward(ids, mask):
        return model(input_ids=ids, attention_mask=mask).last_hidden_state
    return forward


def paired_ratio(ours: list[float], peer: list[float]) -> float:
    """Median over rounds of ours/peer measured in the same round."""
    return statistics.median(a / b for a, b in zip(ours, peer))


def time_interleaved(impls: dict, ids, mask, warmup: int, iters: int) -> dict[str, list[float]]:
    for _ in range(warmup):
        for forward in impls.values():
            forward(ids, mask)
    times = {name: [] for name in impls}
    order = list(impls.items())
    for i in range(iters):
        # Rotate who goes first: a forward runs slightly differently after another model's
        # (caches, allocator), and a fixed order would hand that bias to the same one each time.
        for name, forward in order[i % len(order):] + order[:i % len(order)]:
            start = time.perf_counter()
            forward(ids, mask)
            times[name].append(time.perf_counter() - start)
    return times


MAX_THREADS = 256


def thread_counts(text: str) -> list[int]:
    values = cli.int_list(text)
    if max(values) > MAX_THREADS:
        raise argparse.ArgumentTypeError(f"thread counts go up to {MAX_THREADS}, got {text!r}")
    return values


def main(argv=None) -> int:
    parser = cli.ArgumentParser(prog="python -m bench.kernels", description=__doc__)
    parser.add_argument("--models", type=cli.name_list, default=["bert-base", "bert-large", "minilm-l6"],
                        help="comma-separated presets (default: bert-base,bert-large,minilm-l6)")
    parser.add_argument("--threads", type=thread_counts, default=[1, 2],
                        help=f"torch thread counts, at most {MAX_THREADS} (default: 1,2)")
    parser.add_argument("--seq", type=cli.bounded_int(1, 65536, "a sequence length"), default=128,
                        help="tokens per request (default: %(default)s)")
    parser.add_argument("--batch", type=cli.bounded_int(1, 65536, "a batch size"), default=1,
                        help="requests per forward (default: %(default)s)")
    parser.add_argument("--warmup", type=cli.bounded_int(0, 100_000, "a warm-up count"), default=3,
                        help="untimed rounds (default: %(default)s)")
    parser.add_argument("--iters", type=cli.bounded_int(1, 100_000, "an iteration count"), default=10,
                        help="timed rounds; the median is reported (default: %(default)s)")
    parser.add_argument("--no-hf", action="store_true", help="skip the Hugging Face BertModel peer")
    parser.add_argument("--out", type=cli.output_path,
                        help="append one JSON line per (model, threads) to this file (atomic appends)")
    args = parser.parse_args(argv)
    try:
        models = [K.preset(name) for name in args.models]
    except K.ConfigError as err:
        raise cli.UsageError(str(err)) from None
    too_long = [cfg.name for cfg in models if args.seq > cfg.max_positions]
    if too_long:
        raise cli.UsageError(f"--seq {args.seq} exceeds the max positions of {', '.join(too_long)}")
    problem = cli.unwritable(args.out)  # before the run, not after minutes of timing
    if problem:
        raise cli.UsageError(problem)

    from tabulate import tabulate
    rows = []
    for cfg in models:
        weights = K.init_weights(cfg, seed=0)
        impls = {"ours": K.ReferenceModel(cfg, weights).forward, "torch": torch_peer(cfg, weights)}
        hf = None if args.no_hf else hugging_face_peer(cfg, weights)
        if hf is not None:
            impls["hf"] = hf
        ids = torch.randint(1, cfg.vocab, (args.batch, args.seq))
        mask = torch.ones_like(ids)
        flops = K.forward_flops(cfg, args.batch, args.seq)
        # The peers hold our weights: check they compute the same function before timing them.
        ours_out = impls["ours"](ids, mask)
        diff = {name: (forward(ids, mask) - ours_out).abs().max().item()
                for name, forward in impls.items() if name != "ours"}
        for n_threads in args.threads:
            torch.set_num_threads(n_threads)
            times = time_interleaved(impls, ids, mask, args.warmup, args.iters)
            p50 = {name: records.stats(ts)["p50"] for name, ts in times.items()}
            record = {
                "bench": "kernels", "model": cfg.name, "threads": n_threads, "batch": args.batch, "seq": args.seq,
                "latency_s": {name: records.stats(ts) for name, ts in times.items()},
                "gflops_per_s": {n: flops / t / 1e9 for n, t in p50.items()},
                "ratio_ours_vs_torch": paired_ratio(times["ours"], times["torch"]),
                "ratio_ours_vs_hf": paired_ratio(times["ours"], times["hf"]) if "hf" in times else None,
                "max_abs_diff_vs_ours": diff,
                "env": records.env_block(),
            }
            rows.append([cfg.name, n_threads, p50["ours"] * 1e3, p50["torch"] * 1e3,
                         p50["hf"] * 1e3 if "hf" in p50 else None, record["gflops_per_s"]["ours"],
                         record["ratio_ours_vs_torch"], record["ratio_ours_vs_hf"],
                         max(diff.values())])
            print(f"{cfg.name} threads={n_threads}: ours {p50['ours']*1e3:.1f} ms, "
                  f"ours/torch {record['ratio_ours_vs_torch']:.3f}", file=sys.stderr, flush=True)
            if args.out:
                records.append_jsonl(args.out, record)
        del impls, weights
    print(tabulate(rows, headers=["model", "threads", "ours ms", "torch TEL ms", "HF ms", "ours GFLOP/s",
                                  "ours/torch", "ours/HF", "max |peer-ours|"],
                   floatfmt=[".3f"] * 8 + [".1e"], missingval="-"))
    return 0


if __name__ == "__main__":
    cli.run(main)
