"""Reranking: one small API over cross-encoder back ends (shaped like the ``rerankers`` library), results as
dataclasses, and ``RerankingRetriever`` = any first stage + a reranker over its top-k."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

from .data.beir import Corpus
from .hits import Hit, Run, trec_sorted
from .hybrid import weighted_sum
from .modeling.cross_encoder import CrossEncoder

log = logging.getLogger(__name__)


@dataclass
class RankedResult:
    docid: str
    score: float
    rank: int
    text: str = ""


@dataclass
class RankedResults:
    query: str
    results: list[RankedResult] = field(default_factory=list)

    def top_k(self, k: int) -> list[RankedResult]:
        return self.results[:k]


class Reranker:
    """``Reranker("model-dir").rank(query, docs, doc_ids)`` -> ``RankedResults`` (best first)."""

    def __init__(self, model: str | CrossEncoder, batch_size: int = 32, max_length: int | None = None,
                 show_progress: bool = False):
        self.model = model if isinstance(model, CrossEncoder) else CrossEncoder.from_pretrained(model, max_length)
        self.batch_size, self.show_progress = batch_size, show_progress

    @property
    def name(self) -> str:
        return self.model.name

    def rank(self, query: str, docs: Sequence[str], doc_ids: Sequence[str] | None = None) -> RankedResults:
        ids = list(doc_ids) if doc_ids is not None else [str(i) for i in range(len(docs))]
        scores = self.model.score([query] * len(docs), list(docs), batch_size=self.batch_size)
        # trec_eval's order (score desc, ties by docid desc), as ``trec_sorted``; ids may repeat here
        order = sorted(sorted(range(len(docs)), key=lambda i: ids[i], reverse=True), key=lambda i: -float(scores[i]))
        return RankedResults(query, [RankedResult(ids[i], float(scores[i]), r + 1, docs[i]) for r, i in enumerate(order)])

    def rerank_run(self, queries: dict[str, str], run: Run, corpus: Corpus, top_k: int = 100,
                   alpha: float | None = None) -> Run:
        """Rerank the top ``top_k`` hits of every query in one batched pass; hits below top_k keep their order
        underneath (scored below every reranked hit). ``alpha``: order the top k by
        ``alpha * minmax(cross-encoder) + (1 - alpha) * minmax(first stage)`` instead of the cross-encoder alone
        (score interpolation, which keeps the first stage's evidence where a reranker is weak or off-domain)."""
        return merge_reranked(run, self.score_run(queries, run, corpus, top_k), top_k, alpha)

    def score_run(self, queries: dict[str, str], run: Run, corpus: Corpus, top_k: int = 100) -> dict[str, dict[str, float]]:
        """Cross-encoder scores {qid: {docid: score}} of every query's top ``top_k`` hits, in one batched pass."""
        qs, ps, owners = [], [], []
        for qid, hits in run.items():
            for h in hits[:top_k]:
                qs.append(queries[qid])
                ps.append(corpus.passage(h.docid))
                owners.append((qid, h.docid))
        scores = self.model.score(qs, ps, batch_size=self.batch_size, show_progress=self.show_progress)
        out: dict[str, dict[str, float]] = {qid: {} for qid in run}
        for (qid, docid), s in zip(owners, scores):
            out[qid][docid] = float(s)
        return out


def merge_reranked(run: Run, scores: dict[str, dict[str, float]], top_k: int, alpha: float | None = None) -> Run:
    """The first-stage ``run`` with its top ``top_k`` ordered by the reranker ``scores`` (or, with ``alpha``, by
    their interpolation with the first-stage scores); the rest keeps its order underneath."""
    by_query = {q: list(docs.items()) for q, docs in scores.items()}
    if alpha is not None:
        ce = {q: [Hit(d, s, 0) for d, s in pairs] for q, pairs in by_query.items()}
        fused = weighted_sum([{q: hits[:top_k] for q, hits in run.items()}, ce], [1 - alpha, alpha])
        by_query = {q: [(h.docid, h.score) for h in hits] for q, hits in fused.items()}
    out: Run = {}
    for qid, hits in run.items():
        head = trec_sorted(by_query.get(qid, []))
        floor = min((s for _, s in head), default=0.0)
        tail = [(h.docid, floor - 1.0 - i) for i, h in enumerate(hits[top_k:])]
        out[qid] = [Hit(d, s, r + 1) for r, (d, s) in enumerate(head + tail)]
    return out


class RerankingRetriever:
    """A first stage followed by a reranker; the same ``search``/``batch_search`` shape as every retriever."""

    def __init__(self, first_stage: Any, reranker: Reranker, corpus: Corpus, top_k: int = 100,
                 alpha: float | None = None):
        if alpha is not None and not 0.0 <= alpha <= 1.0:
            raise ValueError(f"rerank alpha must be in [0, 1], got {alpha}")
        self.first_stage, self.reranker, self.corpus, self.top_k, self.alpha = first_stage, reranker, corpus, top_k, alpha
        self.name = f"{getattr(first_stage, 'name', 'first-stage')}+rerank({reranker.name})"

    def search(self, query: str, k: int = 10) -> list[Hit]:
        return self.batch_search([query], ["q"], k=k)["q"]

    def batch_search(self, queries: Sequence[str], qids: Sequence[str], k: int = 10, threads: int = 0) -> Run:
        run = self.first_stage.batch_search(queries, qids, k=max(k, self.top_k), threads=threads)
        reranked = self.reranker.rerank_run(dict(zip(qids, queries)), run, self.corpus, self.top_k, self.alpha)
        return {q: hits[:k] for q, hits in reranked.items()}
