"""Teacher-score files: a Tevatron JSONL of (query, positives, negatives) -- e.g. from ``retr mine`` -- with every
passage's ``score`` filled in by a teacher (``scoring.py``: cross-encoder, dense, BM25 or their fusion), the
input of ``retr train --distill``::

    {"query_id": "1", "query": "...", "positive_passages": [{"docid": "d1", "title": "", "text": "...",
     "score": 7.3}], "negative_passages": [{"docid": "d9", "title": "", "text": "...", "score": -2.1}, ...]}

(the layout of Tevatron's and sentence-transformers' distillation data: scores next to the passages).

Streamed: ``block_size`` examples are read, scored in one batched call and written before the next block, so
memory holds one block of examples and their scores (e.g. 256 queries x 30 passages), whatever the file's size.
The output is written atomically (a killed run leaves no partial file).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from retr.indexing.atomic import atomic_file

from .data.errors import DataError
from .data.training import TrainExample, parse_tevatron_line
from .scoring import Scorer, score_groups

log = logging.getLogger(__name__)


@dataclass
class ScoreStats:
    queries: int = 0
    passages: int = 0


def iter_tevatron(path: str | Path) -> Iterator[TrainExample]:
    """Examples of a Tevatron JSONL one line at a time (errors name the file and line)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, None, "candidates file not found")
    with open(path, "rb") as fh:
        for line_no, raw in enumerate(fh, 1):
            if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            if raw.strip():
                yield parse_tevatron_line(raw, path, line_no)


def iter_scored(examples: Iterator[TrainExample], scorer: Scorer, block_size: int = 256,
                stats: ScoreStats | None = None) -> Iterator[TrainExample]:
    """``examples`` with every passage's ``score`` set by ``scorer``, ``block_size`` queries per scoring call."""
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    stats = stats if stats is not None else ScoreStats()
    block: list[TrainExample] = []

    def flush():
        lists = [ex.positives + ex.negatives for ex in block]
        for ex, passages, scores in zip(block, lists, score_groups(scorer, [e.query for e in block], lists)):
            for p, s in zip(passages, scores):
                p.score = float(s)
            stats.queries += 1
            stats.passages += len(passages)
        out = list(block)
        block.clear()
        return out

    for ex in examples:
        block.append(ex)
        if len(block) == block_size:
            yield from flush()
    if block:
        yield from flush()


def write_scores(candidates: str | Path, output: str | Path, scorer: Scorer, block_size: int = 256) -> ScoreStats:
    """Score every passage of the Tevatron JSONL ``candidates`` with ``scorer``; write the result atomically to
    ``output``. Returns counts."""
    stats = ScoreStats()
    with atomic_file(output) as fh:
        for ex in iter_scored(iter_tevatron(candidates), scorer, block_size, stats):
            fh.write(json.dumps(ex.to_tevatron(), ensure_ascii=False) + "\n")
        if not stats.queries:  # inside: the atomic write is abandoned
            raise DataError(Path(candidates), None, "no examples to score")
    log.info("scored %d passages of %d queries with %s", stats.passages, stats.queries, scorer.name)
    return stats
