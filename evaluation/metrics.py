"""BEIR's metrics, computed by pytrec_eval (through ir-measures' pytrec_eval provider), never by hand.

Names follow BEIR's output (``nDCG@10``, ``Recall@100``, ``MAP@100``, ``MRR@10``, ``P@10``); the mean is
over every judged query of the split (a judged query with no retrieved documents scores 0, where BEIR
would silently drop it; retr always returns results, so the numbers agree).

One tie order for every metric: trec_eval's (score descending, then docid descending), which pytrec_eval
applies to the whole run. ir-measures would send ``RR@k`` to its ``msmarco`` provider, which breaks ties by
docid *ascending* (so with tied scores MRR@10 disagreed with MAP on a single-relevant query), and its
pytrec_eval provider does not support a cutoff on RR (it returns wrong values). So ``MRR@k`` is pytrec_eval's
``recip_rank`` on the run cut to its top k in trec_eval's order, the cut trec_eval itself would make.

``Judged@k`` (the fraction of a query's top k that the qrels judge, at any grade; BEIR's "hole" metric read
the other way round) comes from ir-measures' ``judged`` provider, fed the same trec_eval-order cut. A low
Judged@10 means the run's nDCG@10 counts unjudged documents as non-relevant: two runs are comparable only
when their Judged@10 are alike.
"""
from __future__ import annotations

from typing import Iterable, Mapping

import ir_measures
from ir_measures import AP, RR, R, nDCG, P, Judged

from retr.retriever.hits import trec_sorted

DEFAULT_METRICS = ("nDCG@1", "nDCG@3", "nDCG@5", "nDCG@10", "nDCG@100",
                   "Recall@10", "Recall@100", "Recall@1000", "MAP@100", "MRR@10", "Judged@10")

_FAMILIES = {"nDCG": nDCG, "Recall": R, "MAP": AP, "MRR": RR, "P": P, "Judged": Judged}
_CUT_FIRST = ("MRR@", "Judged@")  # computed on the run cut to its top k in trec_eval's order


def _measure(name: str):
    family, _, cutoff = name.partition("@")
    if family not in _FAMILIES or not cutoff.isdigit() or int(cutoff) < 1:  # issue 23: @0 divided by zero
        raise ValueError(f"unknown metric {name!r} (use e.g. nDCG@10, Recall@100, MAP@100, MRR@10, P@10, Judged@10)")
    return _FAMILIES[family] @ int(cutoff)


def _pytrec_eval():
    return ir_measures.providers.registry["pytrec_eval"]


def top_k_trec_order(run: Mapping[str, Mapping[str, float]], k: int) -> dict[str, dict[str, float]]:
    """Each query's top ``k`` documents, cut in trec_eval's order (ties at the cut: larger docid first)."""
    return {q: dict(trec_sorted(docs.items())[:k]) for q, docs in run.items()}


def per_query_metrics(qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]],
                      metrics: Iterable[str] = DEFAULT_METRICS) -> dict[str, dict[str, float]]:
    """{qid: {metric: value}} for every judged query (missing -> 0)."""
    metrics = list(metrics)
    for m in metrics:
        _measure(m)
    qrels = {q: dict(d) for q, d in qrels.items() if d}
    run = {q: dict(d) for q, d in run.items() if q in qrels and d}
    out = {q: {m: 0.0 for m in metrics} for q in qrels}
    provider = _pytrec_eval()
    plain = [m for m in metrics if not m.startswith(_CUT_FIRST)]
    names = {str(_measure(m)): m for m in plain}
    if plain:
        for row in provider.iter_calc([_measure(m) for m in plain], qrels, run):
            out[row.query_id][names[str(row.measure)]] = float(row.value)
    for m in metrics:
        if m.startswith(_CUT_FIRST):
            k = int(m.partition("@")[2])
            cut = top_k_trec_order(run, k)
            if m.startswith("MRR@"):
                rows = provider.iter_calc([RR], qrels, cut)
            else:
                rows = ir_measures.providers.registry["judged"].iter_calc([Judged @ k], qrels, cut)
            for row in rows:
                out[row.query_id][m] = float(row.value)
    return out


def compute_metrics(qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]],
                    metrics: Iterable[str] = DEFAULT_METRICS) -> dict[str, float]:
    """Mean of each metric over the judged queries."""
    metrics = list(metrics)
    per_q = per_query_metrics(qrels, run, metrics)
    n = max(len(per_q), 1)
    return {m: sum(v[m] for v in per_q.values()) / n for m in metrics}
