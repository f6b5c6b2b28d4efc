"""Hard-negative mining: a teacher retriever (BM25 or dense; any object with ``batch_search``) ranks the corpus
for each training query; negatives are taken from a rank window (skip the top few, likely unjudged
positives: Contriever's ``negative_hard_min_idx``, sentence-transformers' ``range_min/range_max``) and
never include a judged positive, the query's own id, or a passage whose title + text equals a positive's
(corpora hold exact duplicates under other ids; sentence-transformers' ``mine_hard_negatives`` drops them too).

False-negative-aware filters (``false_negatives.py``), applied to the window before sampling:

- ``exclude_siblings``: drop judged positives of other queries that share a positive with this one.
- ``relative_margin`` / ``max_score``: drop candidates scoring above ``(1 - margin)`` x the positive's score or
  above an absolute cap (NV-Retriever's TopK-PercPos). The scores are the teacher's (the positive's score is its
  best-scoring positive: read from the run, or from ``scorer`` when no positive is ranked), or with a
  ``rescorer`` (e.g. a cross-encoder) its scores of the candidates and of every positive.

Queries are mined ``block_size`` at a time and examples are yielded as they are made, so memory holds one
block of teacher hits (about 100 bytes each: ~40 MiB for 4,096 queries x 100 ranks), not the run; siblings
add an inverted docid -> queries map over the judged pairs (O(judged pairs)).
"""
from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from .data.beir import BeirDataset
from .data.training import Passage, TrainExample, examples_from_beir
from .false_negatives import SiblingPositives, score_keep_mask, text_key

log = logging.getLogger(__name__)


@dataclass
class MiningConfig:
    range_min: int = 30  # first rank eligible (1-based)
    range_max: int = 100  # last rank eligible
    num_negatives: int = 8  # sampled from the window per query (0 = keep the whole window)
    seed: int = 0
    # issue 20: false-negative-aware filters
    relative_margin: float | None = None  # drop candidates scoring above (1 - margin) x the positive's score
    max_score: float | None = None  # drop candidates scoring above this
    exclude_siblings: bool = False  # drop judged positives of queries sharing a positive with this one

    def __post_init__(self) -> None:
        if not 1 <= self.range_min <= self.range_max:
            raise ValueError(f"need 1 <= range_min <= range_max, got {self.range_min}..{self.range_max}")
        if self.num_negatives < 0:
            raise ValueError(f"num_negatives must be >= 0, got {self.num_negatives}")
        if self.relative_margin is not None and not 0 <= self.relative_margin <= 1:
            raise ValueError(f"relative_margin must be in [0, 1], got {self.relative_margin}")

    @property
    def scores_filter(self) -> bool:
        return self.relative_margin is not None or self.max_score is not None


@dataclass
class MiningStats:
    queries: int = 0
    negatives: int = 0
    duplicates_of_positives: int = 0  # window passages dropped because their text equals a positive's
    # issue 20
    siblings: int = 0  # window passages dropped as judged positives of sibling queries
    above_margin: int = 0  # dropped by relative_margin / max_score

    def summary(self) -> str:
        return (f"{self.queries} queries, {self.negatives} negatives; {self.duplicates_of_positives} copies of a "
                f"positive dropped, {self.siblings} siblings dropped, {self.above_margin} above the score limits "
                "dropped")


def _text_key(title: str, text: str) -> str:  # kept for callers of the old name
    return text_key(title, text)


def iter_mined(teacher, dataset: BeirDataset, cfg: MiningConfig, threads: int = 0, block_size: int = 4096,
               stats: MiningStats | None = None, scorer=None, rescorer=None) -> Iterator[TrainExample]:
    """Training examples of ``dataset``'s split with negatives from ``teacher``'s ranks range_min..range_max.

    ``scorer``: the teacher as a ``scoring.Scorer``, used for a query none of whose positives the teacher ranked
    (its positive score, for ``relative_margin``). ``rescorer``: a ``scoring.Scorer`` whose scores of the
    candidates and positives replace the teacher's for ``relative_margin`` / ``max_score``."""
    stats = stats if stats is not None else MiningStats()
    qids = [q for q, judged in dataset.qrels.items() if q in dataset.queries and any(g > 0 for g in judged.values())]
    corpus = dataset.corpus
    siblings = SiblingPositives(dataset.qrels) if cfg.exclude_siblings else None
    for s in range(0, len(qids), block_size):
        block = qids[s:s + block_size]
        run = teacher.batch_search([dataset.queries[q] for q in block], block, k=cfg.range_max, threads=threads)
        negatives = {}
        for qid in block:
            judged = dataset.qrels.get(qid, {})
            positives = {d for d, g in judged.items() if g > 0}
            pos_rows = [r for r in corpus.rows_of(sorted(positives)) if r >= 0]
            pos_text = {text_key(corpus.titles[r], corpus.texts[r]) for r in pos_rows}
            hits = [h for h in run.get(qid, []) if cfg.range_min <= h.rank <= cfg.range_max]
            hits = [h for h in hits if h.docid not in positives and h.docid != qid]
            if siblings is not None:
                sib = siblings.siblings(qid)
                before = len(hits)
                hits = [h for h in hits if h.docid not in sib]
                stats.siblings += before - len(hits)
            kept = []
            for h, r in zip(hits, corpus.rows_of([h.docid for h in hits])):
                if r >= 0 and text_key(corpus.titles[r], corpus.texts[r]) in pos_text:
                    stats.duplicates_of_positives += 1
                    continue
                kept.append(h)
            if cfg.scores_filter and kept:
                cand, pos = _scores(qid, dataset, kept, run.get(qid, []), positives, pos_rows, cfg, scorer, rescorer)
                mask = score_keep_mask(cand, pos, cfg.relative_margin, cfg.max_score)
                stats.above_margin += int((~mask).sum())
                kept = [h for h, k in zip(kept, mask) if k]
            ids = [h.docid for h in kept]
            if cfg.num_negatives and len(ids) > cfg.num_negatives:
                rng = np.random.default_rng([cfg.seed, zlib.crc32(qid.encode())])
                keep = sorted(rng.choice(len(ids), cfg.num_negatives, replace=False))
                ids = [ids[i] for i in keep]
            negatives[qid] = ids
        for ex in examples_from_beir(dataset, negatives, qids=block):
            stats.queries += 1
            stats.negatives += len(ex.negatives)
            yield ex


def _scores(qid, dataset, kept, hits, positives, pos_rows, cfg, scorer, rescorer) -> tuple[np.ndarray, float]:
    """(candidate scores [m], the reference positive's score) on the rescorer's scale, else the teacher's."""
    corpus = dataset.corpus
    query = dataset.queries[qid]

    def passages(rows):
        return [Passage(corpus.ids[r], corpus.titles[r], corpus.texts[r]) for r in rows]

    if rescorer is not None:
        rows = [int(r) for r in corpus.rows_of([h.docid for h in kept])]
        both = passages(rows) + passages(pos_rows)
        scores = np.asarray(rescorer.score([query] * len(both), both), np.float64)
        return scores[:len(rows)], float(scores[len(rows):].max()) if pos_rows else float("nan")
    cand = np.array([h.score for h in kept], np.float64)
    if cfg.relative_margin is None:
        return cand, float("nan")
    ranked = [h.score for h in hits if h.docid in positives]
    if ranked:  # any unranked positive scores below the run's last hit, so below this one
        return cand, float(max(ranked))
    if scorer is None or not pos_rows:
        return cand, float("nan")  # no positive score: NaN drops every candidate (see score_keep_mask)
    return cand, float(np.max(scorer.score([query] * len(pos_rows), passages(pos_rows))))


def mine_negatives(teacher, dataset: BeirDataset, cfg: MiningConfig, threads: int = 0, scorer=None,
                   rescorer=None) -> list[TrainExample]:
    """All mined examples as a list (small splits; ``iter_mined`` streams)."""
    stats = MiningStats()
    out = list(iter_mined(teacher, dataset, cfg, threads=threads, stats=stats, scorer=scorer, rescorer=rescorer))
    log.info("mined (ranks %d..%d): %s", cfg.range_min, cfg.range_max, stats.summary())
    return out
