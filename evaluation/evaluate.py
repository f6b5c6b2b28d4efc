"""``evaluate(retriever, dataset) -> EvalResult``: run the judged queries, score the run with BEIR's metrics.

Queries are searched in blocks (``block_size``); each block's hits are scored, optionally written to a TREC run
file as they come, and dropped unless ``keep_run``. Memory therefore grows with one block of hits (about 100
bytes per hit, e.g. ~100 MiB for 1,024 queries x 1,000 hits) plus a few floats per query, not with the run.
"""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from retr.retriever.data.beir import BeirDataset
from retr.retriever.data.trec import TrecRunWriter
from retr.retriever.hits import Hit, Run, run_to_dict

from .metrics import DEFAULT_METRICS, per_query_metrics

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    metrics: dict[str, float]
    run: Run | None  # None when the run was streamed to a file only (keep_run=False)
    num_queries: int
    seconds: float
    settings: dict[str, Any] = field(default_factory=dict)
    per_query: dict[str, dict[str, float]] = field(default_factory=dict, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {"metrics": {k: round(v, 6) for k, v in self.metrics.items()}, "num_queries": self.num_queries,
                "search_seconds": round(self.seconds, 2), **self.settings}


def remove_identical_ids(run: Run, k: int | None = None,
                         qrels: Mapping[str, Mapping[str, int]] | None = None) -> tuple[Run, int]:
    """Drop hits whose docid equals the qid (BEIR's ``ignore_identical_ids``, for ArguAna), re-rank.

    A self hit that ``qrels`` judge relevant to that very query is kept (dropping it would hide a correct
    answer); returns the run and how many such hits were kept."""
    out: Run = {}
    kept_relevant = 0
    for qid, hits in run.items():
        judged_self = qrels is not None and qrels.get(qid, {}).get(qid, 0) > 0
        kept = [h for h in hits if h.docid != qid or judged_self][:k]
        kept_relevant += judged_self and any(h.docid == qid for h in kept)
        out[qid] = [Hit(h.docid, h.score, i + 1) for i, h in enumerate(kept)]
    return out, kept_relevant


def evaluate(retriever: Any, dataset: BeirDataset, k: int = 1000, ignore_identical_ids: bool = True,
             metrics: Iterable[str] = DEFAULT_METRICS, threads: int = 0, run_path: str | Path | None = None,
             run_tag: str = "retr", keep_run: bool = True, block_size: int = 1024) -> EvalResult:
    """Search every judged query of ``dataset`` (top ``k``) and compute metrics against its qrels.

    ``run_path`` writes the TREC run while searching (atomically: the file appears when all is done);
    ``keep_run=False`` keeps only per-query metrics in memory."""
    metrics = list(metrics)
    queries = dataset.eval_queries
    qids = list(queries)
    fetch = k + 1 if ignore_identical_ids else k
    run: Run | None = {} if keep_run else None
    per_query: dict[str, dict[str, float]] = {}
    kept_self = 0
    seconds = 0.0
    with (TrecRunWriter(run_path, run_tag) if run_path else contextlib.nullcontext()) as writer:
        for s in range(0, len(qids), block_size):
            block = qids[s:s + block_size]
            t0 = time.perf_counter()
            hits = retriever.batch_search([queries[q] for q in block], block, k=fetch, threads=threads)
            seconds += time.perf_counter() - t0
            if ignore_identical_ids:
                hits, kept = remove_identical_ids(hits, k, dataset.qrels)
                kept_self += kept
            else:
                hits = {q: h[:k] for q, h in hits.items()}
            per_query.update(per_query_metrics({q: dataset.qrels[q] for q in block}, run_to_dict(hits), metrics))
            if writer is not None:
                writer.write(hits)
            if run is not None:
                run.update(hits)
    if kept_self:
        log.warning("%d queries retrieved a document with their own id that the qrels judge relevant: kept "
                    "(BEIR's ignore_identical_ids would drop them)", kept_self)
    n = max(len(per_query), 1)
    scores = {m: sum(v[m] for v in per_query.values()) / n for m in metrics}
    return EvalResult(metrics=scores, run=run, num_queries=len(qids), seconds=seconds,
                      settings={"dataset": dataset.name, "split": dataset.split, "k": k,
                                "ignore_identical_ids": ignore_identical_ids, "identical_ids_kept": kept_self},
                      per_query=per_query)
