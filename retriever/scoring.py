"""Teacher scorers: the relevance score of given (query, passage) pairs from any retr model, for teacher-score
files (``retr score``, distillation) and for false-negative filters in mining (``--relative-margin``,
``--rescore-with``).

Every scorer has ``score(queries, passages) -> np.ndarray[float32, n]`` over n aligned pairs, where a passage is a
``Passage`` (docid, title, text). Scores are on the model's own scale:

- ``CrossEncoderScorer``: the cross-encoder's relevance logit (``CrossEncoder.score``).
- ``DenseScorer``: the dual encoder's query . passage dot product (the cosine when the model normalises), as
  its FAISS index scores them.
- ``BM25Scorer``: Lucene's BM25 of the indexed document (by docid) for the query, through Anserini's
  ``IndexReaderUtils.computeQueryDocumentScoreWithSimilarity`` with the retriever's k1 / b: the score the BM25
  searcher gives that document (pyserini's reference implementation, not our own BM25).
- ``FusionScorer``: a weighted sum of the member scorers' scores, each min-max normalised within every query's
  candidate list (the ``--fusion weighted`` of hybrid search, applied to a given list instead of two runs).

Memory: a call holds its n pairs and n scores; callers pass blocks (``retr score`` a block of queries).
"""
from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np

from .data.training import Passage


class Scorer(Protocol):
    name: str

    def score(self, queries: Sequence[str], passages: Sequence[Passage]) -> np.ndarray: ...


class CrossEncoderScorer:
    def __init__(self, model, batch_size: int = 32, show_progress: bool = False):
        from .modeling.cross_encoder import CrossEncoder

        self.model = model if isinstance(model, CrossEncoder) else CrossEncoder.from_pretrained(model)
        self.batch_size, self.show_progress = batch_size, show_progress
        self.name = f"cross-encoder({self.model.name})"

    def score(self, queries: Sequence[str], passages: Sequence[Passage]) -> np.ndarray:
        return self.model.score(list(queries), [p.joined(" ") for p in passages], batch_size=self.batch_size,
                                show_progress=self.show_progress)


class DenseScorer:
    """Query . passage of a ``DualEncoder`` (each distinct text encoded once per call)."""

    def __init__(self, model, batch_size: int = 64, show_progress: bool = False, **overrides):
        from .modeling.dual_encoder import DualEncoder

        self.model = model if isinstance(model, DualEncoder) else DualEncoder.from_pretrained(model, **overrides)
        self.batch_size, self.show_progress = batch_size, show_progress
        self.name = f"dense({self.model.name})"

    def score(self, queries: Sequence[str], passages: Sequence[Passage]) -> np.ndarray:
        if not len(queries):
            return np.zeros(0, np.float32)
        sep = self.model.passage_tower.config.title_sep
        q = _encode_unique(self.model.encode_queries, list(queries), self.batch_size, self.show_progress)
        p = _encode_unique(self.model.encode_passages, [x.joined(sep) for x in passages], self.batch_size,
                           self.show_progress)
        return np.einsum("nd,nd->n", q, p).astype(np.float32)


def _encode_unique(encode, texts: list[str], batch_size: int, show_progress: bool = False) -> np.ndarray:
    uniq = list(dict.fromkeys(texts))
    vecs = np.asarray(encode(uniq, batch_size=batch_size, show_progress=show_progress), np.float32)
    where = {t: i for i, t in enumerate(uniq)}
    return vecs[[where[t] for t in texts]]


class BM25Scorer:
    """BM25 of (query, indexed document) pairs; passages are looked up by docid in the retriever's Lucene index,
    so every docid must be indexed (``KeyError`` naming it otherwise)."""

    def __init__(self, retriever):
        from retr.indexing.lucene import LUCENE_SUBDIR, start_jvm

        start_jvm()
        from jnius import autoclass
        from pyserini.index.lucene import LuceneIndexReader

        self.reader = LuceneIndexReader(str(retriever.index_dir / LUCENE_SUBDIR))
        self.similarity = autoclass("org.apache.lucene.search.similarities.BM25Similarity")(
            float(retriever.k1), float(retriever.b))
        self.name = retriever.name

    def score(self, queries: Sequence[str], passages: Sequence[Passage]) -> np.ndarray:
        out = np.empty(len(queries), np.float32)
        for i, (q, p) in enumerate(zip(queries, passages)):
            try:
                out[i] = self.reader.compute_query_document_score(p.docid, q, similarity=self.similarity)
            except Exception:  # jnius.JavaException: the docid is not in the index
                raise KeyError(f"document {p.docid!r} is not in the BM25 index") from None
        return out


class FusionScorer:
    """Weighted sum of min-max normalised member scores; ``groups`` gives the candidate-list length of each query
    (consecutive pairs), normalisation is per list (a list whose scores are all equal contributes 0)."""

    def __init__(self, scorers: Sequence[Scorer], weights: Sequence[float] | None = None):
        if not scorers:
            raise ValueError("fusion needs at least one scorer")
        weights = list(weights) if weights is not None else [1.0 / len(scorers)] * len(scorers)
        if len(weights) != len(scorers):
            raise ValueError(f"{len(weights)} weights for {len(scorers)} scorers")
        self.scorers, self.weights = list(scorers), weights
        self.name = "fusion(" + ", ".join(f"{w:g}*{s.name}" for s, w in zip(scorers, weights)) + ")"

    def score(self, queries: Sequence[str], passages: Sequence[Passage],
              groups: Sequence[int] | None = None) -> np.ndarray:
        groups = list(groups) if groups is not None else _runs(queries)
        if sum(groups) != len(queries):
            raise ValueError(f"groups cover {sum(groups)} pairs, not {len(queries)}")
        total = np.zeros(len(queries), np.float64)
        bounds = np.cumsum([0, *groups])
        for scorer, w in zip(self.scorers, self.weights):
            s = np.asarray(scorer.score(queries, passages), np.float64)
            for a, b in zip(bounds[:-1], bounds[1:]):
                lo, hi = (s[a:b].min(), s[a:b].max()) if b > a else (0.0, 0.0)
                total[a:b] += w * ((s[a:b] - lo) / (hi - lo) if hi > lo else 0.0)
        return total.astype(np.float32)


def _runs(queries: Sequence[str]) -> list[int]:
    """Lengths of runs of equal consecutive queries (the candidate lists when no groups are given)."""
    out: list[int] = []
    prev = object()
    for q in queries:
        if out and q == prev:
            out[-1] += 1
        else:
            out.append(1)
        prev = q
    return out


def score_groups(scorer: Scorer, queries: Sequence[str], lists: Sequence[Sequence[Passage]]) -> list[np.ndarray]:
    """Scores of each query's candidate list (one call for all pairs): ``lists[i]`` scored against ``queries[i]``."""
    qs = [q for q, ps in zip(queries, lists) for _ in ps]
    ps = [p for group in lists for p in group]
    if isinstance(scorer, FusionScorer):
        flat = scorer.score(qs, ps, groups=[len(g) for g in lists])
    else:
        flat = np.asarray(scorer.score(qs, ps), np.float32)
    bounds = np.cumsum([0, *[len(g) for g in lists]])
    return [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def parse_teacher(spec: str) -> tuple[str, str]:
    """``bm25`` | ``dense:MODEL`` | ``ce:MODEL`` -> (kind, model); ``ValueError`` naming the spec otherwise."""
    if spec.lower() == "bm25":
        return "bm25", ""
    kind, sep, name = spec.partition(":")
    if not sep or kind.lower() not in ("dense", "ce") or not name:
        raise ValueError(f"--teacher {spec!r}: use bm25, dense:MODEL or ce:MODEL")
    return kind.lower(), name


def teacher_scorer(retriever) -> Scorer:
    """The scorer matching a first-stage retriever's own scores (BM25 or dense)."""
    from .bm25 import BM25Retriever

    if isinstance(retriever, BM25Retriever):
        return BM25Scorer(retriever)
    return DenseScorer(retriever.encoder, batch_size=getattr(retriever, "batch_size", 64))


def build_scorer(teachers: Sequence[str], weights: Sequence[float] | None = None, corpus=None,
                 bm25_index=None, batch_size: int = 64, precision: str = "auto",
                 show_progress: bool = False) -> Scorer:
    """A scorer from ``--teacher`` specs (``parse_teacher``); several are fused (``FusionScorer``). BM25 needs the
    ``corpus`` its documents come from (indexed into ``bm25_index``, or reused from there). ``show_progress``:
    the cross-encoder's and dense encoder's own bars (a block of many pairs takes minutes to hours on a CPU)."""
    specs = [parse_teacher(t) for t in teachers]
    if not specs:
        raise ValueError("give at least one --teacher")
    if weights is not None and len(specs) == 1:
        raise ValueError("weights fuse several teachers: give more than one --teacher")
    scorers: list[Scorer] = []
    for kind, name in specs:
        if kind == "bm25":
            if corpus is None:
                raise ValueError("--teacher bm25 needs --data (the corpus the candidates come from)")
            from .bm25 import BM25Retriever

            scorers.append(BM25Scorer(BM25Retriever.for_corpus(corpus, index_dir=bm25_index)))
        elif kind == "dense":
            scorer = DenseScorer(name, batch_size=batch_size, show_progress=show_progress)
            scorer.model.set_precision(precision)
            scorers.append(scorer)
        else:
            scorer = CrossEncoderScorer(name, batch_size=batch_size, show_progress=show_progress)
            scorer.model.precision = precision
            scorers.append(scorer)
    return scorers[0] if len(scorers) == 1 else FusionScorer(scorers, weights)
