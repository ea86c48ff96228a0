"""The one harness every driver shares (OSU Micro-Benchmarks style): a driver file is its
loop and its table, and reaches everything else through this module, as `H.<name>`.

| concern                                  | module            |
|------------------------------------------|-------------------|
| options: the common command line, typed  | `bench.options`   |
| model resolution, weights, inputs        | `bench.models`    |
| strategy plans: select, build, prepare   | `bench.plans`     |
| timing, output checks, traffic summaries | `bench.timing`    |
| the session: env, network, records, progress, watchdog | `bench.session` |
| one error convention and entry point     | `bench.cli`       |
"""

from kernels import PRESETS  # noqa: F401

from . import cli, options, timing  # noqa: F401
from .cli import int_list, name_list, nonneg_int, positive_int  # noqa: F401
from .models import Model, default_blocks, make_inputs, resolve_model  # noqa: F401
from .options import DEFAULT_STRATEGIES, Defaults, Options, parse, parser  # noqa: F401
from .plans import Plan, build, label_of, prepare, select, strategy_options  # noqa: F401
from .records import fmt_bytes, fmt_s, stats  # noqa: F401
from .session import Session, interrupt_note, make_comm  # noqa: F401
from .timing import Reference, Timing, check_output, measure, measure_point, serial_reference  # noqa: F401


def run_main(main) -> None:
    """Entry point of every driver: the suite's error convention under MPI (bench.cli.run)."""
    cli.run(main, mpi=True)
