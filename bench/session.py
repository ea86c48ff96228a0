"""A session: one driver run's communicator, environment, network, output and progress.

Every driver makes one `Session`: it checks the output file before any work (rank 0's
verdict wins, so every rank fails alike), captures the `env` block every tool writes (hosts,
MPI, torch, threads, CPU, git commit, UTC time, load), the tc state of each rank's
interface, prints progress with elapsed time and ETA, appends records atomically
(`bench.records`), and runs a per-point watchdog: a point that takes longer than
`--timeout` (a stopped rank, a dead link) ends the whole job with a message instead of
hanging it.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from time import perf_counter

import torch

from kernels import ModelConfig
from parallelism import UsageError
from parallelism.comm import Communicator, abort_job, mpi_versions, processor_name, progress_interval, world, world_size

from . import network, records
from .cli import unwritable
from .models import Model
from .options import Options


def make_comm(mode: str = "auto") -> Communicator:
    """The world communicator; wait 'auto' = sleep-poll when there are more ranks than CPUs."""
    if mode == "auto":
        env = os.environ.get("DETR_COMM_WAIT")
        mode = env if env in ("spin", "sleep") else ("sleep" if world_size() > (os.cpu_count() or 1) else "spin")
    return world(mode)


class Watchdog:
    """Ends the job if a point runs past its deadline: on every rank, so a rank that is
    stopped (SIGSTOP, a frozen board) is brought down by the others' watchdogs."""

    def __init__(self, seconds: float, rank: int):
        self.seconds, self.rank = seconds, rank
        self._deadline, self._what = None, ""
        self._lock = threading.Lock()
        if seconds > 0:
            threading.Thread(target=self._watch, name="point-watchdog", daemon=True).start()

    def arm(self, what: str) -> None:
        with self._lock:
            self._deadline, self._what = time.monotonic() + self.seconds, what

    def disarm(self) -> None:
        with self._lock:
            self._deadline = None

    def _watch(self) -> None:
        while True:
            time.sleep(min(1.0, self.seconds / 4))
            with self._lock:
                late = self._deadline is not None and time.monotonic() > self._deadline
                what = self._what
            if late:
                sys.stderr.write(f"error: rank {self.rank}: {what} took longer than --timeout {self.seconds:g} s "
                                 "(a rank stopped or a link is down?); ending the job\n")
                sys.stderr.flush()
                time.sleep(0.3)
                abort_job(1)
                os._exit(1)


class Session:
    """Everything one driver run shares: communicator, env, network, output, progress."""

    def __init__(self, bench: str, opts: Options, comm: Communicator | None = None, collective: bool = True):
        self.bench, self.opts = bench, opts
        torch.set_num_threads(opts.threads)
        self.comm = comm or make_comm(opts.wait)
        self.rank, self.size = self.comm.rank, self.comm.size
        # Armed from here to finish(): a rank stopped before the first collective hangs it too.
        self.watchdog = Watchdog(opts.timeout, self.rank)
        self.watchdog.arm("start-up")
        self.quiet = opts.quiet
        self.out = Path(opts.out) if opts.out else \
            Path("results") / f"{bench}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.jsonl"
        problem = self._check_writable() if self.rank == 0 else None
        if collective:
            # Rank 0's name and verdict win so that every rank agrees (and fails alike).
            self.out, problem = self.comm.bcast_object((self.out, problem))
        if problem:
            raise UsageError(problem)
        self.iface = network.wire_iface()
        local = {**records.local_env(), "host": processor_name(), "network": network.describe_network(self.iface),
                 "cpu_quota": records.cpu_quota_env()}
        everyone = self.comm.allgather_object(local) if collective else [local]
        first = everyone[0]
        self.env = {**{k: first[k] for k in ("python", "torch", "threads", "cpu_model", "cpus", "git_commit")},
                    "hostnames": [e["host"] for e in everyone], **mpi_versions(), "wait": self.comm.wait,
                    "progress_interval_s": progress_interval()}
        if any(e["cpu_quota"] is not None for e in everyone):     # an emulated host's device speed
            self.env["cpu_quotas"] = [e["cpu_quota"] for e in everyone]
        nets = [e["network"] for e in everyone]
        # One entry per rank (rank r's host and the shaping on its interface), None if no rank knows.
        self.network = None if all(n is None for n in nets) else \
            {"per_host": [{"rank": r, "host": e["host"], **(n or {})} for r, (e, n) in enumerate(zip(everyone, nets))]}
        self.rate = opts.rate or _rate_from(nets)
        self.written, self.failed = 0, []
        self.start, self.total, self.done = perf_counter(), 0, 0
        # --profile / --strategies auto (bench.auto): record -> predicted_* fields to add to it.
        self.predict = None

    def _check_writable(self) -> str | None:
        return unwritable(self.out) or unwritable(self.opts.csv)

    # -- printing (rank 0) --------------------------------------------------------------
    def say(self, message: str) -> None:
        if self.rank == 0 and not self.quiet:
            print(message, flush=True)

    def plan(self, total: int) -> None:
        self.total, self.done = total, 0

    def tick(self, what: str) -> None:
        """One progress line per finished point, with elapsed time and ETA."""
        self.done += 1
        elapsed = perf_counter() - self.start
        eta = elapsed / self.done * (self.total - self.done) if self.total >= self.done else 0.0
        self.say(f"[{self.done}/{self.total}] {what} | elapsed {elapsed:.1f}s, ETA {eta:.0f}s")

    @contextmanager
    def point(self, what: str):
        """A measured point: it may take up to --timeout, and so may the step after it."""
        self.watchdog.arm(what)
        try:
            yield
        finally:
            self.watchdog.arm(f"the step after {what}")

    def point_done(self, name: str, result, rows: list, summary) -> None:
        """Record one finished point: append its record, keep its table row, print progress.
        `result` is (record, row), or None for a point that was skipped."""
        if result is None:
            self.tick(f"{name}: skipped")
            return
        record, row = result
        if record.get("output_check") not in (None, "ok", "not held"):
            self.failed.append(f"{name}: output {record['output_check']} (max_abs_err {record.get('max_abs_err')})")
        self.emit(record)
        rows.append(row)
        self.tick(f"{name}: {summary(record)}")

    def table(self, rows: list[list], headers: list[str], title: str | None = None) -> None:
        if self.rank != 0 or self.quiet or not rows:
            return
        from tabulate import tabulate
        if title:
            print(f"\n{title}")
        print(tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True), flush=True)

    # -- records ---------------------------------------------------------------------------
    def base_record(self, model: Model, cfg: ModelConfig, **fields) -> dict:
        record = {"schema": records.SCHEMA, "bench": self.bench, "model": model.name,
                  "checkpoint": str(model.checkpoint.resolve()) if model.checkpoint else None,
                  "model_config": {"layers": cfg.layers, "hidden": cfg.hidden, "heads": cfg.heads, "ffn": cfg.ffn},
                  "n_blocks": cfg.n_blocks, "n_div": cfg.n_div, "world_size": self.size,
                  "rate": self.rate, "network": self.network, "tags": self.opts.tags, **fields}
        if self.predict is not None:
            record.update(self.predict(record))
        return record

    def emit(self, record: dict) -> None:
        """Rank 0 appends the record (atomic JSONL line, and CSV if asked)."""
        if self.rank != 0:
            return
        record = records.clean({**record, "env": records.env_block(self.env)})
        records.append_jsonl(self.out, record)
        if self.opts.csv:
            records.append_csv(self.opts.csv, record)
        self.written += 1

    def finish(self) -> None:
        """Say where the records went; a wrong output (NaN, inf, wrong shape) fails the run
        (exit 1) after every record was written."""
        self.watchdog.disarm()
        if self.written:
            self.say(f"\n{self.written} record(s) appended to {self.out}")
        if self.failed:
            raise RuntimeError("output check failed: " + "; ".join(self.failed))


def _rate_from(nets) -> str | None:
    for net in nets:
        if isinstance(net, dict):
            for key in ("rate", "rate_in_force"):
                if net.get(key):
                    return str(net[key])
    return None


@contextmanager
def interrupt_note(session: Session):
    try:
        yield
    except KeyboardInterrupt:
        if session.rank == 0 and session.written:
            sys.stderr.write(f"interrupted: {session.written} finished record(s) kept in {session.out}\n")
            sys.stderr.flush()
        raise
