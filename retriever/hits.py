"""The result shape every retriever and reranker returns, as plain dataclasses (like pyserini's hits).

Tie order: everything in retr that sorts or truncates a ranking uses trec_eval's order, the one pytrec_eval
(and so every metric retr reports) uses: score descending, then docid descending (trec_eval's
``comp_sim_docno``: ``strcmp(docno2, docno1)``; Python's ``str`` order is UTF-8 byte order, i.e. ``strcmp``).
Otherwise a top-k cut or a rank shown to the user could keep a different tied document than the metric does.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

Run = dict  # qid -> list[Hit], best first


@dataclass(frozen=True)
class Hit:
    docid: str
    score: float
    rank: int  # 1-based


def trec_sorted(items: Iterable[tuple[str, float]]) -> list[tuple[str, float]]:
    """(docid, score) pairs in trec_eval's order: score descending, ties by docid descending."""
    by_docid = sorted(items, key=lambda x: x[0], reverse=True)
    return sorted(by_docid, key=lambda x: -x[1])  # stable: tied scores keep docid descending


def break_ties(hits: list[Hit]) -> list[Hit]:
    """Keep the given order of distinct scores, order each run of *equal consecutive* scores by docid descending
    (trec_eval), renumber ranks from 1. For rankings whose score direction retr does not own (e.g. distances)."""
    out: list[Hit] = []
    i = 0
    while i < len(hits):
        j = i + 1
        while j < len(hits) and hits[j].score == hits[i].score:
            j += 1
        out.extend(sorted(hits[i:j], key=lambda h: h.docid, reverse=True))
        i = j
    return [Hit(h.docid, h.score, r + 1) for r, h in enumerate(out)]


def hits_from_scores(docids: list[str], scores, start_rank: int = 1) -> list[Hit]:
    """Hits in the given (search engine's) order, tied scores ordered as trec_eval orders them."""
    hits = break_ties([Hit(d, float(s), 0) for d, s in zip(docids, scores)])
    return [Hit(h.docid, h.score, start_rank + h.rank - 1) for h in hits]


def run_to_dict(run: "Run") -> dict[str, dict[str, float]]:
    """{qid: {docid: score}}, the shape pytrec_eval and BEIR use."""
    return {qid: {h.docid: h.score for h in hits} for qid, hits in run.items()}


def rerank_order(hits: list[Hit]) -> list[Hit]:
    """Sort by score (desc), ties by docid descending (trec_eval's order), and renumber ranks from 1."""
    return [Hit(d, s, i + 1) for i, (d, s) in enumerate(trec_sorted((h.docid, h.score) for h in hits))]
