"""Serial kernel benchmark: our reference forward against torch's and Hugging Face's BERT.

For each model and thread count the three implementations run interleaved, one
forward each per round, the first of the round rotating, so that noise on this
shared machine hits all of them alike. The ratio ours/peer is the figure, not
the absolute time: the median over rounds of ours/peer within the round (paired,
so that load drifting between rounds cancels).

    python -m bench.kernels                          # bert-base, bert-large, minilm-l6; 1 and 2 threads
    python -m bench.kernels --models minilm-l6 --threads 1 --iters 20
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

import kernels as K

from . import cli, records


def torch_peer(cfg: K.ModelConfig, weights: K.ModelWeights):
    """The same embeddings followed by nn.TransformerEncoderLayer (post-LN, GELU) stacked L times."""
    layers = [torch.nn.TransformerEncoderLayer(cfg.hidden, cfg.heads, cfg.ffn, dropout=0.0, activation="gelu",
                                               layer_norm_eps=cfg.ln_eps, batch_first=True).eval()
              for _ in range(cfg.layers)]

    @torch.inference_mode()
    def forward(ids, mask):
        x = K.embed(ids, weights.embeddings, cfg.ln_eps)
        for layer in layers:
            x = layer(x)
        return x
    return forward


def hugging_face_peer(cfg: K.ModelConfig):
    try:
        import transformers
    except ImportError:
        return None
    hf_cfg = transformers.BertConfig(
        vocab_size=cfg.vocab, hidden_size=cfg.hidden, num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads, intermediate_size=cfg.ffn, max_position_embeddings=cfg.max_positions,
        type_vocab_size=cfg.type_vocab, layer_norm_eps=cfg.ln_eps, attn_implementation="sdpa")
    model = transformers.BertModel(hf_cfg, add_pooling_layer=False).eval()

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


def main(argv=None) -> int:
    parser = cli.ArgumentParser(prog="python -m bench.kernels", description=__doc__)
    parser.add_argument("--models", type=cli.name_list, default=["bert-base", "bert-large", "minilm-l6"],
                        help="comma-separated presets (default: bert-base,bert-large,minilm-l6)")
    parser.add_argument("--threads", type=cli.int_list, default=[1, 2], help="torch thread counts (default: 1,2)")
    parser.add_argument("--seq", type=cli.positive_int, default=128, help="tokens per request (default: %(default)s)")
    parser.add_argument("--batch", type=cli.positive_int, default=1, help="requests per forward (default: %(default)s)")
    parser.add_argument("--warmup", type=cli.nonneg_int, default=3, help="untimed rounds (default: %(default)s)")
    parser.add_argument("--iters", type=cli.positive_int, default=10,
                        help="timed rounds; the median is reported (default: %(default)s)")
    parser.add_argument("--no-hf", action="store_true", help="skip the Hugging Face BertModel peer")
    parser.add_argument("--out", help="append one JSON line per (model, threads) to this file (atomic appends)")
    args = parser.parse_args(argv)
    try:
        models = [K.preset(name) for name in args.models]
    except K.ConfigError as err:
        raise cli.CliError(str(err)) from None
    too_long = [cfg.name for cfg in models if args.seq > cfg.max_positions]
    if too_long:
        raise cli.CliError(f"--seq {args.seq} exceeds the max positions of {', '.join(too_long)}")

    from tabulate import tabulate
    rows = []
    for cfg in models:
        weights = K.init_weights(cfg, seed=0)
        impls = {"ours": K.ReferenceModel(cfg, weights).forward, "torch": torch_peer(cfg, weights)}
        hf = None if args.no_hf else hugging_face_peer(cfg)
        if hf is not None:
            impls["hf"] = hf
        ids = torch.randint(1, cfg.vocab, (args.batch, args.seq))
        mask = torch.ones_like(ids)
        flops = K.forward_flops(cfg, args.batch, args.seq)
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
                "env": records.local_env(),
            }
            rows.append([cfg.name, n_threads, p50["ours"] * 1e3, p50["torch"] * 1e3,
                         p50["hf"] * 1e3 if "hf" in p50 else None, record["gflops_per_s"]["ours"],
                         record["ratio_ours_vs_torch"], record["ratio_ours_vs_hf"]])
            print(f"{cfg.name} threads={n_threads}: ours {p50['ours']*1e3:.1f} ms, "
                  f"ours/torch {record['ratio_ours_vs_torch']:.3f}", file=sys.stderr, flush=True)
            if args.out:
                records.append_jsonl(args.out, record)
        del impls, weights
    print(tabulate(rows, headers=["model", "threads", "ours ms", "torch TEL ms", "HF ms", "ours GFLOP/s",
                                  "ours/torch", "ours/HF"], floatfmt=".3f", missingval="-"))
    return 0


if __name__ == "__main__":
    cli.guard(main)
