"""Hard-negative mining: a teacher retriever (BM25 or dense; any object with ``batch_search``) ranks the corpus
for each training query; negatives are taken from a rank window (skip the top few, likely unjudged
positives: Contriever's ``negative_hard_min_idx``, sentence-transformers' ``range_min/range_max``) and
never include a judged positive."""
from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass

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


def mine_negatives(teacher, dataset: BeirDataset, cfg: MiningConfig, threads: int = 0) -> list[TrainExample]:
    """Training examples of ``dataset``'s split with negatives from ``teacher``'s ranks range_min..range_max."""
    base = examples_from_beir(dataset)
    run = teacher.batch_search([e.query for e in base], [e.query_id for e in base], k=cfg.range_max, threads=threads)
    negatives = {}
    for ex in base:
        positives = {d for d, g in dataset.qrels.get(ex.query_id, {}).items() if g > 0}
        window = [h.docid for h in run.get(ex.query_id, []) if cfg.range_min <= h.rank <= cfg.range_max]
        window = [d for d in window if d not in positives and d != ex.query_id]
        if cfg.num_negatives and len(window) > cfg.num_negatives:
            rng = np.random.default_rng([cfg.seed, zlib.crc32(ex.query_id.encode())])
            keep = sorted(rng.choice(len(window), cfg.num_negatives, replace=False))
            window = [window[i] for i in keep]
        negatives[ex.query_id] = window
    out = examples_from_beir(dataset, negatives)
    log.info("mined %d negatives for %d queries (ranks %d..%d)", sum(len(e.negatives) for e in out), len(out),
             cfg.range_min, cfg.range_max)
    return out
