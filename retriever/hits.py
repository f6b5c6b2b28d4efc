"""The result shape every retriever and reranker returns, as plain dataclasses (like pyserini's hits)."""
from __future__ import annotations

from dataclasses import dataclass

Run = dict  # qid -> list[Hit], best first


@dataclass(frozen=True)
class Hit:
    docid: str
    score: float
    rank: int  # 1-based


def hits_from_scores(docids: list[str], scores, start_rank: int = 1) -> list[Hit]:
    return [Hit(d, float(s), start_rank + i) for i, (d, s) in enumerate(zip(docids, scores))]


def run_to_dict(run: "Run") -> dict[str, dict[str, float]]:
    """{qid: {docid: score}}, the shape pytrec_eval and BEIR use."""
    return {qid: {h.docid: h.score for h in hits} for qid, hits in run.items()}


def rerank_order(hits: list[Hit]) -> list[Hit]:
    """Sort by score (desc), ties by docid, and renumber ranks from 1."""
    ordered = sorted(hits, key=lambda h: (-h.score, h.docid))
    return [Hit(h.docid, h.score, i + 1) for i, h in enumerate(ordered)]
