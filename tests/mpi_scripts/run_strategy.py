"""Build one strategy and run one forward under `main_guard` (used by tests/test_strategy_errors.py).

    mpiexec -n 2 python run_strategy.py --strategy tp --set heads=1 [--opt boundary=tp]
        [--batch 2 --seq 8] [--fail-rank 1 --fail-after 1]

--set overrides fields of the tiny preset; --opt passes strategy options
(integers stay integers). --fail-rank R makes rank R raise inside the forward,
at its (fail-after + 1)-th communicator call, while the others wait in a
collective: the job must end (MPI Abort), not hang.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

import kernels as K  # noqa: E402
from parallelism import get_strategy  # noqa: E402
from bench.cli import run  # noqa: E402
from parallelism.comm import world  # noqa: E402
from parallelism.errors import UsageError  # noqa: E402

COMM_OPS = ("allreduce", "allgather", "allgatherv", "reduce_scatter", "bcast", "scatterv", "gatherv",
            "send", "recv", "isend", "irecv", "barrier")


def _value(text: str):
    return int(text) if text.lstrip("-").isdigit() else text


def _pairs(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"expected key=value, got {item!r}")
        out[key] = _value(value)
    return out


def inject_failure(comm, after: int) -> None:
    """Make this rank's communicator raise at its (after + 1)-th call."""
    calls = [0]
    for op in COMM_OPS:
        original = getattr(comm, op)

        def wrapped(*args, _original=original, _op=op, **kwargs):
            calls[0] += 1
            if calls[0] > after:
                raise RuntimeError(f"injected failure at {_op} call {calls[0]} at t={time.time():.3f}")
            return _original(*args, **kwargs)
        setattr(comm, op, wrapped)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--strategy", required=True)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--set", nargs="*", default=[], help="model field overrides key=value")
    parser.add_argument("--opt", nargs="*", default=[], help="strategy options key=value")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=8)
    parser.add_argument("--fail-rank", type=int, default=None)
    parser.add_argument("--fail-after", type=int, default=0)
    args = parser.parse_args(argv)

    comm = world()
    try:
        cfg = K.preset(args.preset, **_pairs(args.set))
    except K.ConfigError as err:
        raise UsageError(str(err)) from None
    cls = get_strategy(args.strategy)
    options = _pairs(args.opt)
    cls.check(cfg, comm.size, **options)  # before building weights: the cheap verdict first
    strategy = cls(cfg, K.init_weights(cfg, seed=0), comm, **options)
    if args.fail_rank == comm.rank:
        inject_failure(comm, args.fail_after)
    ids = torch.randint(1, cfg.vocab, (args.batch, args.seq), generator=torch.Generator().manual_seed(0))
    out = strategy.forward(ids, torch.ones_like(ids))
    if strategy.holds_output():
        print(f"rank {comm.rank}: ok {tuple(out.shape)}", flush=True)


if __name__ == "__main__":
    run(main, mpi=True)
