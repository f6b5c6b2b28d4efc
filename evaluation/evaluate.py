"""``evaluate(retriever, dataset) -> EvalResult``: run the judged queries, score the run with BEIR's metrics."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterable

from retr.retriever.data.beir import BeirDataset
from retr.retriever.hits import Hit, Run, run_to_dict

from .metrics import DEFAULT_METRICS, compute_metrics


@dataclass
class EvalResult:
    metrics: dict[str, float]
    run: Run
    num_queries: int
    seconds: float
    settings: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"metrics": {k: round(v, 6) for k, v in self.metrics.items()}, "num_queries": self.num_queries,
                "search_seconds": round(self.seconds, 2), **self.settings}


def remove_identical_ids(run: Run, k: int | None = None) -> Run:
    """Drop hits whose docid equals the qid (BEIR's ``ignore_identical_ids``; matters for ArguAna), re-rank."""
    out: Run = {}
    for qid, hits in run.items():
        kept = [h for h in hits if h.docid != qid][:k]
        out[qid] = [Hit(h.docid, h.score, i + 1) for i, h in enumerate(kept)]
    return out


def evaluate(retriever: Any, dataset: BeirDataset, k: int = 1000, ignore_identical_ids: bool = True,
             metrics: Iterable[str] = DEFAULT_METRICS, threads: int = 0) -> EvalResult:
    """Search every judged query of ``dataset`` (top ``k``) and compute metrics against its qrels."""
    queries = dataset.eval_queries
    qids = list(queries)
    t0 = time.perf_counter()
    fetch = k + 1 if ignore_identical_ids else k
    run = retriever.batch_search([queries[q] for q in qids], qids, k=fetch, threads=threads)
    seconds = time.perf_counter() - t0
    run = remove_identical_ids(run, k) if ignore_identical_ids else {q: h[:k] for q, h in run.items()}
    scores = compute_metrics(dataset.qrels, run_to_dict(run), metrics)
    return EvalResult(metrics=scores, run=run, num_queries=len(qids), seconds=seconds,
                      settings={"dataset": dataset.name, "split": dataset.split, "k": k,
                                "ignore_identical_ids": ignore_identical_ids})
