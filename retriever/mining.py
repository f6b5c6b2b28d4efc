"""Hard-negative mining: a teacher retriever (BM25 or dense; any object with ``batch_search``) ranks the corpus
for each training query; negatives are taken from a rank window (skip the top few, likely unjudged
positives: Contriever's ``negative_hard_min_idx``, sentence-transformers' ``range_min/range_max``) and
never include a judged positive, the query's own id, or a passage whose title + text equals a positive's
(corpora hold exact duplicates under other ids; sentence-transformers' ``mine_hard_negatives`` drops them too).

Queries are mined ``block_size`` at a time and examples are yielded as they are made, so memory holds one
block of teacher hits (about 100 bytes each: ~40 MiB for 4,096 queries x 100 ranks), not the run.
"""
from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from .data.beir import BeirDataset
from .data.training import TrainExample, examples_from_beir

log = logging.getLogger(__name__)


@dataclass
class MiningConfig:
    range_min: int = 30  # first rank eligible (1-based)
    range_max: int = 100  # last rank eligible
    num_negatives: int = 8  # sampled from the window per query (0 = keep the whole window)
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.range_min <= self.range_max:
            raise ValueError(f"need 1 <= range_min <= range_max, got {self.range_min}..{self.range_max}")
        if self.num_negatives < 0:
            raise ValueError(f"num_negatives must be >= 0, got {self.num_negatives}")


@dataclass
class MiningStats:
    queries: int = 0
    negatives: int = 0
    duplicates_of_positives: int = 0  # window passages dropped because their text equals a positive's


def _text_key(title: str, text: str) -> str:
    return " ".join(f"{title} {text}".split()).lower()


def iter_mined(teacher, dataset: BeirDataset, cfg: MiningConfig, threads: int = 0, block_size: int = 4096,
               stats: MiningStats | None = None) -> Iterator[TrainExample]:
    """Training examples of ``dataset``'s split with negatives from ``teacher``'s ranks range_min..range_max."""
    stats = stats if stats is not None else MiningStats()
    qids = [q for q, judged in dataset.qrels.items() if q in dataset.queries and any(g > 0 for g in judged.values())]
    corpus = dataset.corpus
    for s in range(0, len(qids), block_size):
        block = qids[s:s + block_size]
        run = teacher.batch_search([dataset.queries[q] for q in block], block, k=cfg.range_max, threads=threads)
        negatives = {}
        for qid in block:
            judged = dataset.qrels.get(qid, {})
            positives = {d for d, g in judged.items() if g > 0}
            pos_text = {_text_key(corpus.titles[r], corpus.texts[r]) for r in corpus.rows_of(sorted(positives)) if r >= 0}
            window = [h.docid for h in run.get(qid, []) if cfg.range_min <= h.rank <= cfg.range_max]
            window = [d for d in window if d not in positives and d != qid]
            kept = []
            for d, r in zip(window, corpus.rows_of(window)):
                if r >= 0 and _text_key(corpus.titles[r], corpus.texts[r]) in pos_text:
                    stats.duplicates_of_positives += 1
                    continue
                kept.append(d)
            if cfg.num_negatives and len(kept) > cfg.num_negatives:
                rng = np.random.default_rng([cfg.seed, zlib.crc32(qid.encode())])
                keep = sorted(rng.choice(len(kept), cfg.num_negatives, replace=False))
                kept = [kept[i] for i in keep]
            negatives[qid] = kept
        for ex in examples_from_beir(dataset, negatives, qids=block):
            stats.queries += 1
            stats.negatives += len(ex.negatives)
            yield ex


def mine_negatives(teacher, dataset: BeirDataset, cfg: MiningConfig, threads: int = 0) -> list[TrainExample]:
    """All mined examples as a list (small splits; ``iter_mined`` streams)."""
    stats = MiningStats()
    out = list(iter_mined(teacher, dataset, cfg, threads=threads, stats=stats))
    log.info("mined %d negatives for %d queries (ranks %d..%d; %d copies of a positive dropped)", stats.negatives,
             stats.queries, cfg.range_min, cfg.range_max, stats.duplicates_of_positives)
    return out
