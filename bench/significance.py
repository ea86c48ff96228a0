"""The two-sided Mann-Whitney U test (Wilcoxon rank-sum) on two samples, with numpy only.

bench.compare uses it as Google Benchmark's compare.py does: two runs' per-iteration
latencies differ significantly when p < alpha. It makes no assumption about the
shape of the distribution (latencies on a shared machine have long right tails).

- No ties and n1 * n2 <= EXACT_MAX_CELLS: the exact null distribution of U
  (every ordering of the pooled sample equally likely);
- otherwise the normal approximation with tie correction and continuity correction
  (the same as scipy.stats.mannwhitneyu(method="asymptotic")).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

EXACT_MAX_CELLS = 2500   # n1 * n2 up to e.g. 50 x 50: the exact table is a few ms


@dataclass(frozen=True)
class UTest:
    u: float        # U of the first sample: pairs (x, y) with x > y, ties counting one half
    p: float        # two-sided p-value
    method: str     # "exact" or "asymptotic"


def mann_whitney_u(x, y) -> UTest:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    n1, n2 = x.size, y.size
    if n1 == 0 or n2 == 0:
        raise ValueError("the U test needs at least one value in each sample")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("the U test needs finite values")
    pooled = np.concatenate([x, y])
    ranks, tie_sizes = _ranks(pooled)
    u1 = float(ranks[:n1].sum() - n1 * (n1 + 1) / 2)
    u_high = max(u1, n1 * n2 - u1)
    if tie_sizes.size == 0 and n1 * n2 <= EXACT_MAX_CELLS:
        tail = _exact_tail(n1, n2, int(round(u_high)))
        return UTest(u1, min(1.0, 2.0 * tail), "exact")
    n = n1 + n2
    tie_term = float((tie_sizes**3 - tie_sizes).sum()) / (n * (n - 1))
    sigma = math.sqrt(n1 * n2 / 12.0 * ((n + 1) - tie_term))
    if sigma == 0.0:  # every value equal: no evidence of a difference
        return UTest(u1, 1.0, "asymptotic")
    z = (u_high - n1 * n2 / 2.0 - 0.5) / sigma
    return UTest(u1, min(1.0, math.erfc(z / math.sqrt(2.0))), "asymptotic")


def smallest_p(n1: int, n2: int) -> float:
    """The smallest two-sided p-value the exact test can give for these sample sizes
    (all of one sample above all of the other): 2 / C(n1 + n2, n1). With 3 and 3
    samples it is 0.1, so no difference can be significant at 0.05."""
    if n1 == 0 or n2 == 0:
        return 1.0
    return min(1.0, 2.0 / math.comb(n1 + n2, n1))


def _ranks(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ranks 1..n with ties given their average rank, and the sizes of tied groups (> 1)."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    sizes = np.diff(np.r_[starts, values.size])
    average = starts + (sizes + 1) / 2.0            # 1-based average rank of each group
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = np.repeat(average, sizes)
    return ranks, sizes[sizes > 1].astype(np.float64)


def _exact_tail(n1: int, n2: int, u: int) -> float:
    """P(U >= u) under the null hypothesis, no ties."""
    return float(_exact_distribution(n1, n2)[u:].sum())


@lru_cache(maxsize=64)
def _exact_distribution(m: int, n: int) -> np.ndarray:
    """P(U = k), k = 0..m*n, for samples of m and n. Recurrence on the largest value
    of the pooled sample: it belongs to the first sample with probability m/(m+n)
    (then it beats all n of the second: U = n + U(m-1, n)), else to the second
    (U = U(m, n-1))."""
    previous = [np.ones(1) for _ in range(n + 1)]       # row i = 0: U = 0 surely
    for i in range(1, m + 1):
        current = [np.ones(1)]                           # j = 0: U = 0 surely
        for j in range(1, n + 1):
            dist = np.zeros(i * j + 1)
            dist[j:j + (i - 1) * j + 1] += i / (i + j) * previous[j]
            dist[:i * (j - 1) + 1] += j / (i + j) * current[j - 1]
            current.append(dist)
        previous = current
    return previous[n]
