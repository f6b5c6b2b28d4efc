"""False-negative guards shared by hard-negative mining and B3's rank window.

"Siblings" of a query are the judged positives of *other* queries that share at least one judged positive
with it. On multi-positive data (NFCorpus: the median training query shares a positive with 146 others) these
passages are relevant to closely related queries and are likely unjudged positives of this one, so a rank
window full of them trains the model against relevance (NV-Retriever, Moreira et al. 2024, discuss the same
false-negative problem; B3's released code drops same-label rows for classification data).

Score filters (``score_keep_mask``: a relative margin to the positive's score, an absolute cap) and the text key
of copies (``text_key``) are plain functions of arrays and strings, so mining and B3's rank window (an [N, m]
array of teacher scores per example and its positive's score) call the same code.

Memory: an inverted docid -> queries map over the judged pairs (O(judged pairs)); siblings are computed per
query on demand, so nothing grows with the product of queries and positives.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Mapping


class SiblingPositives:
    """``siblings(qid)``: judged positives (grade > 0) of queries sharing a positive with ``qid``, minus its own.

    ``qrels``: qid -> {docid: grade}; grades <= 0 are not positives and link nothing."""

    def __init__(self, qrels: Mapping[str, Mapping[str, int]]):
        self._positives: dict[str, frozenset[str]] = {}
        self._queries_of: dict[str, list[str]] = defaultdict(list)
        for qid, judged in qrels.items():
            pos = frozenset(d for d, g in judged.items() if g > 0)
            if not pos:
                continue
            self._positives[qid] = pos
            for d in pos:
                self._queries_of[d].append(qid)

    def positives(self, qid: str) -> frozenset[str]:
        return self._positives.get(qid, frozenset())

    def siblings(self, qid: str) -> set[str]:
        own = self.positives(qid)
        out: set[str] = set()
        for d in own:
            for other in self._queries_of.get(d, ()):
                if other != qid:
                    out.update(self._positives[other])
        return out - own

    def sharing_queries(self, qid: str) -> set[str]:
        """Other queries that share at least one judged positive with ``qid``."""
        return {o for d in self.positives(qid) for o in self._queries_of.get(d, ()) if o != qid}


def drop_siblings(candidates: Iterable[str], qid: str, siblings: SiblingPositives) -> list[str]:
    """``candidates`` in order without ``qid``'s siblings."""
    sib = siblings.siblings(qid)
    return [d for d in candidates if d not in sib]


def text_key(title: str, text: str) -> str:
    """Normalised title + text (whitespace collapsed, lower-cased): passages with equal keys are copies."""
    return " ".join(f"{title} {text}".split()).lower()


def score_keep_mask(candidate_scores, positive_scores, relative_margin: float | None = None,
                    max_score: float | None = None):
    """Which candidates survive the score-based false-negative filters (True = keep), vectorised for mining and
    B3's rank window alike.

    ``candidate_scores`` [..., m] and ``positive_scores`` [...] (the reference positive's score of each row, on
    the same teacher's scale). ``relative_margin`` (NV-Retriever's TopK-PercPos, Moreira et al. 2024;
    sentence-transformers' ``mine_hard_negatives(relative_margin=)``): drop a candidate scoring above
    ``pos - relative_margin * |pos|`` (``pos * (1 - margin)`` for positive scores; 0.05 keeps candidates
    at most 95% as similar as the positive). ``max_score``: drop candidates scoring above it. Returns bool
    [..., m]; NaN scores are dropped when a filter is on."""
    import numpy as np

    cand = np.asarray(candidate_scores, np.float64)
    keep = np.ones(cand.shape, bool)
    if relative_margin is not None:
        if relative_margin < 0:
            raise ValueError(f"relative margin must be >= 0, got {relative_margin}")
        pos = np.asarray(positive_scores, np.float64)[..., None]
        keep &= cand <= pos - relative_margin * np.abs(pos)
    if max_score is not None:
        keep &= cand <= max_score
    return keep
