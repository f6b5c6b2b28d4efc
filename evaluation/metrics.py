"""BEIR's metrics, computed by ir-measures (which runs pytrec_eval underneath), never by hand.

Names follow BEIR's output (``nDCG@10``, ``Recall@100``, ``MAP@100``, ``MRR@10``, ``P@10``); the mean is
over every judged query of the split (a judged query with no retrieved documents scores 0, where BEIR
would silently drop it; retr always returns results, so the numbers agree).
"""
from __future__ import annotations

from typing import Iterable, Mapping

import ir_measures
from ir_measures import AP, RR, R, nDCG, P

DEFAULT_METRICS = ("nDCG@1", "nDCG@3", "nDCG@5", "nDCG@10", "nDCG@100",
                   "Recall@10", "Recall@100", "Recall@1000", "MAP@100", "MRR@10")

_FAMILIES = {"nDCG": nDCG, "Recall": R, "MAP": AP, "MRR": RR, "P": P}


def _measure(name: str):
    family, _, cutoff = name.partition("@")
    if family not in _FAMILIES or not cutoff.isdigit():
        raise ValueError(f"unknown metric {name!r} (use e.g. nDCG@10, Recall@100, MAP@100, MRR@10, P@10)")
    return _FAMILIES[family] @ int(cutoff)


def per_query_metrics(qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]],
                      metrics: Iterable[str] = DEFAULT_METRICS) -> dict[str, dict[str, float]]:
    """{qid: {metric: value}} for every judged query (missing -> 0)."""
    metrics = list(metrics)
    measures = {str(_measure(m)): m for m in metrics}
    qrels = {q: dict(d) for q, d in qrels.items() if d}
    run = {q: dict(d) for q, d in run.items() if q in qrels and d}
    out = {q: {m: 0.0 for m in metrics} for q in qrels}
    for row in ir_measures.iter_calc([_measure(m) for m in metrics], qrels, run):
        out[row.query_id][measures[str(row.measure)]] = float(row.value)
    return out


def compute_metrics(qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]],
                    metrics: Iterable[str] = DEFAULT_METRICS) -> dict[str, float]:
    """Mean of each metric over the judged queries."""
    metrics = list(metrics)
    per_q = per_query_metrics(qrels, run, metrics)
    n = max(len(per_q), 1)
    return {m: sum(v[m] for v in per_q.values()) / n for m in metrics}
