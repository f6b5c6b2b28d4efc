"""Is a difference between two runs noise? Paired tests over per-query scores, corrected for several rows.

For each compared run and metric (e.g. nDCG@10), the per-query scores of the run and of the baseline are
paired by query id (a judged query that a run did not answer scores 0, as in ``per_query_metrics``), and:

* the **paired t-test** is ``scipy.stats.ttest_rel`` (two-sided);
* the **paired randomisation test** (Fisher's sign-flip permutation test, as in Smucker, Allan & Carterette,
  "A comparison of statistical significance tests for information retrieval evaluation", CIKM 2007)
  flips the sign of each query's difference at random and counts how often the mean difference is at least
  as extreme as the observed one: ``p = (1 + #{|mean*| >= |mean|}) / (1 + permutations)``. It is written
  here (vectorised numpy, seeded) because scipy's ``permutation_test`` holds every permutation of a large
  run in memory at once and offers no block size; here permutations go in blocks of ``block`` x queries
  (8 bytes each: 1,000 x 10,000 queries = 80 MB), so memory does not grow with ``permutations``;
* **Holm-Bonferroni** (Holm, "A simple sequentially rejective multiple test procedure", 1979) step-down
  adjustment across the rows compared with one baseline (statsmodels, which has it, is not a dependency;
  it is ten lines).

PyTerrier's ``Experiment(baseline=..., correction="holm")`` reports the same three things.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of scipy's ``ttest_rel(a, b)``; 1.0 when every difference is 0 (scipy: nan).

    ``a``, ``b``: per-query scores, same length and query order. Raises ValueError on different lengths."""
    from scipy.stats import ttest_rel

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired test needs as many scores on each side, got {a.size} and {b.size}")
    if a.size < 2 or not np.any(a - b):
        return 1.0
    p = float(ttest_rel(a, b).pvalue)
    return 1.0 if math.isnan(p) else p


def randomisation_test(a: Sequence[float], b: Sequence[float], permutations: int = 10_000, seed: int = 0,
                       block: int = 1_000) -> float:
    """Two-sided p-value of the paired sign-flip randomisation test of mean(a - b) = 0.

    ``permutations`` random sign vectors (seeded: the same inputs give the same p); memory is
    ``block`` x len(a) float64 at a time. The smallest possible p is 1 / (permutations + 1)."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if len(a) != len(b):
        raise ValueError(f"paired test needs as many scores on each side, got {len(a)} and {len(b)}")
    if permutations < 1:
        raise ValueError("permutations must be at least 1")
    if d.size == 0 or not np.any(d):
        return 1.0
    observed = abs(d.mean())
    tol = 1e-12 * max(1.0, observed)  # float sums of the same signs in another order
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, permutations, block):
        n = min(block, permutations - start)
        signs = rng.integers(0, 2, size=(n, d.size), dtype=np.int8) * 2 - 1
        means = np.abs(signs @ d) / d.size
        hits += int(np.count_nonzero(means >= observed - tol))
    return (hits + 1) / (permutations + 1)


def holm_bonferroni(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order.

    Sorted ascending, the i-th smallest (0-based) of m is multiplied by (m - i), made non-decreasing along
    the order, and capped at 1. A row is significant at level alpha when its adjusted p < alpha."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [1.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(pvalues[i])))
        adjusted[i] = running
    return adjusted


@dataclass
class RowComparison:
    """One run against the baseline on one metric. ``delta`` = mean(run) - mean(baseline)."""

    name: str
    metric: str
    mean: float
    baseline_mean: float
    delta: float
    p_t: float
    p_randomisation: float
    p_holm: float = 1.0  # Holm-adjusted t-test p over the rows compared with the baseline on this metric
    p_randomisation_holm: float = 1.0
    wins: int = 0  # queries where the run scores higher than the baseline
    losses: int = 0

    def significant(self, alpha: float = 0.05) -> bool:
        return self.p_holm < alpha

    def to_json(self) -> dict:
        # 6 significant digits, not 6 decimals: a p of 6e-29 must not be written as 0.0 (issue 23)
        return {k: (float(f"{v:.6g}") if isinstance(v, float) else v) for k, v in self.__dict__.items()}


@dataclass
class Comparison:
    """Every run against one baseline: ``rows`` per metric, ``per_query`` {run: {qid: {metric: score}}}."""

    baseline: str
    metrics: list[str]
    qids: list[str]
    rows: list[RowComparison] = field(default_factory=list)
    means: dict[str, dict[str, float]] = field(default_factory=dict)  # {run: {metric: mean}}
    alpha: float = 0.05

    def row(self, name: str, metric: str) -> RowComparison | None:
        return next((r for r in self.rows if r.name == name and r.metric == metric), None)

    def to_json(self) -> dict:
        return {"baseline": self.baseline, "metrics": self.metrics, "num_queries": len(self.qids),
                "alpha": self.alpha, "correction": "holm", "means": self.means,
                "rows": [r.to_json() for r in self.rows]}


def compare_per_query(per_query: Mapping[str, Mapping[str, Mapping[str, float]]], baseline: str,
                      metrics: Sequence[str], permutations: int = 10_000, seed: int = 0,
                      alpha: float = 0.05) -> Comparison:
    """Compare every run of ``per_query`` ({run: {qid: {metric: score}}}) with ``baseline``.

    The query set is the baseline's (every judged query); a query missing from a run scores 0. Holm's
    correction is applied per metric across the non-baseline runs. Raises ValueError for an unknown
    baseline. Memory: the per-query scores (runs x queries x metrics floats)."""
    if baseline not in per_query:
        raise ValueError(f"baseline {baseline!r} is not among the runs ({', '.join(per_query)})")
    qids = sorted(per_query[baseline])
    cmp = Comparison(baseline, list(metrics), qids, alpha=alpha)
    vectors = {name: {m: np.array([scores.get(q, {}).get(m, 0.0) for q in qids]) for m in metrics}
               for name, scores in per_query.items()}
    cmp.means = {name: {m: float(v[m].mean()) if len(qids) else 0.0 for m in metrics}
                 for name, v in vectors.items()}
    for m in metrics:
        base = vectors[baseline][m]
        rows = []
        for name, v in vectors.items():
            if name == baseline:
                continue
            x = v[m]
            rows.append(RowComparison(name, m, cmp.means[name][m], cmp.means[baseline][m],
                                      cmp.means[name][m] - cmp.means[baseline][m], paired_t_test(x, base),
                                      randomisation_test(x, base, permutations, seed),
                                      wins=int(np.sum(x > base)), losses=int(np.sum(x < base))))
        for r, p in zip(rows, holm_bonferroni([r.p_t for r in rows])):
            r.p_holm = p
        for r, p in zip(rows, holm_bonferroni([r.p_randomisation for r in rows])):
            r.p_randomisation_holm = p
        cmp.rows.extend(rows)
    return cmp
