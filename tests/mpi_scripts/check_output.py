"""check_output's verdicts on known outputs, one JSON line per case (rank 0).

    mpiexec -n 2 python tests/mpi_scripts/check_output.py
"""

import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from bench.timing import check_output  # noqa: E402
from parallelism.comm import world  # noqa: E402

comm = world()
reference = torch.ones(2, 3, 4)
cases = {"ok": reference + 1e-6, "nan": reference.clone(), "inf": reference.clone(), "shape": torch.ones(2, 3)}
cases["nan"][1, 2, 3] = math.nan
cases["inf"][0, 0, 0] = math.inf
for case, output in cases.items():
    # Only the last rank holds the bad output: the verdict must still be the worst over ranks.
    held = output if comm.rank == comm.size - 1 else reference
    verdict = check_output(comm, held, reference)
    err = verdict["max_abs_err"]
    if comm.rank == 0:
        print(json.dumps({"case": case, "output_check": verdict["output_check"],
                          "max_abs_err": None if err is None or math.isinf(err) else err}), flush=True)
