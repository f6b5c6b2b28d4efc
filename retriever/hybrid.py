"""Hybrid first stage: fuse a sparse (BM25) and a dense run, by reciprocal rank fusion (Cormack et al. 2009) or by
a weighted sum of per-query min-max normalised scores. A retriever of its own (``search``/``batch_search``)."""
from __future__ import annotations

import math
from typing import Any, Sequence

from .hits import Hit, Run, trec_sorted


def rrf(runs: Sequence[Run], k: int = 60, depth: int | None = None) -> Run:
    fused: dict[str, dict[str, float]] = {}
    for run in runs:
        for qid, hits in run.items():
            acc = fused.setdefault(qid, {})
            for h in hits[:depth]:
                acc[h.docid] = acc.get(h.docid, 0.0) + 1.0 / (k + h.rank)
    return _to_run(fused)


def weighted_sum(runs: Sequence[Run], weights: Sequence[float], depth: int | None = None) -> Run:
    """sum_i w_i * minmax_i(score); a document missing from a run gets 0 from it.

    A query whose hits in a run all score the same (e.g. BM25 finds a single document for a short NFCorpus query)
    has no min-max span: its hits get 1 from that run (they are its best), not 0, which would tie them with the
    documents the run did not return. A run of weight 0 has no say: its documents do not enter the fusion (at
    alpha 0 or 1 the fused run is the other run's, not padded with documents only the weightless run returned,
    which tied with, and by docid could outrank, the weighted run's lowest hit). Memory: the fused scores of one
    query's hits across the runs. Raises ValueError on a NaN or infinite score (it would poison the query's
    min-max span), on a NaN or infinite weight, and when there is not one weight per run (``zip`` would drop the
    runs past the last weight)."""
    if len(weights) != len(runs):
        raise ValueError(f"weighted fusion: {len(runs)} runs but {len(weights)} weights (one weight per run)")
    bad_w = next((w for w in weights if not math.isfinite(w)), None)
    if bad_w is not None:
        raise ValueError(f"weighted fusion: weight {bad_w} is not a finite number")
    fused: dict[str, dict[str, float]] = {}
    for run, w in zip(runs, weights):
        if w == 0:
            continue
        for qid, hits in run.items():
            hits = hits[:depth]
            acc = fused.setdefault(qid, {})
            if not hits:
                continue
            bad = next((h for h in hits if not math.isfinite(h.score)), None)
            if bad is not None:
                raise ValueError(f"weighted fusion: query {qid!r}, document {bad.docid!r} has score {bad.score} "
                                 "(min-max normalisation needs finite scores)")
            lo, hi = min(h.score for h in hits), max(h.score for h in hits)
            span = hi - lo
            for h in hits:
                acc[h.docid] = acc.get(h.docid, 0.0) + w * ((h.score - lo) / span if span > 0 else 1.0)
    return _to_run(fused)


def _to_run(scores: dict[str, dict[str, float]]) -> Run:
    return {qid: [Hit(d, s, r + 1) for r, (d, s) in enumerate(trec_sorted(docs.items()))]
            for qid, docs in scores.items()}


class HybridRetriever:
    def __init__(self, sparse: Any, dense: Any, method: str = "rrf", alpha: float = 0.5, rrf_k: int = 60,
                 depth: int = 1000):
        if method not in ("rrf", "weighted"):
            raise ValueError(f"fusion method must be 'rrf' or 'weighted', got {method!r}")
        self.sparse, self.dense, self.method, self.alpha, self.rrf_k, self.depth = sparse, dense, method, alpha, rrf_k, depth
        self.name = f"hybrid-{method}"

    def search(self, query: str, k: int = 10) -> list[Hit]:
        return self.batch_search([query], ["q"], k=k)["q"]

    def batch_search(self, queries: Sequence[str], qids: Sequence[str], k: int = 10, threads: int = 0) -> Run:
        depth = max(k, self.depth)
        runs = [self.sparse.batch_search(queries, qids, k=depth, threads=threads),
                self.dense.batch_search(queries, qids, k=depth, threads=threads)]
        if self.method == "rrf":
            fused = rrf(runs, self.rrf_k, depth)
        else:  # alpha weighs the dense run, 1 - alpha the sparse one
            fused = weighted_sum(runs, [1 - self.alpha, self.alpha], depth)
        return {q: fused.get(q, [])[:k] for q in qids}
