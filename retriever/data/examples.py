"""Training examples as lazy sequences, so 500k queries with tens of negatives each cost bytes per query, not
their passages as Python objects.

- ``TevatronFile``: one validating pass over a Tevatron JSONL keeps each example's byte offset and length, line
  and number of positives (28 bytes per example); ``examples[i]`` reads (``pread``: no shared file offset, so
  threads and forked DataLoader workers may read at once) and parses that one line.
- ``BeirExamples``: the judged queries of a BEIR split; positives come from the qrels and negatives (from a mined
  file) are kept as corpus row numbers (4 bytes each); passages are read from the memory-mapped corpus on access.
- ``ConcatExamples`` and ``PairExamples`` (one example per (query, positive)) index into the above.

Every class is a ``Sequence[TrainExample]`` with ``positive_counts()``; collators, samplers and B3 only index
and iterate. Iterating parses every example once (streamed: memory holds one at a time).
"""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from .beir import BeirDataset
from .errors import DataError
from .training import TrainExample, parse_tevatron_line

log = logging.getLogger(__name__)
_SEEK_LOCK = threading.Lock()  # TevatronFile reads where there is no os.pread (Windows)


class _Lazy(Sequence):
    def __iter__(self) -> Iterator[TrainExample]:
        for i in range(len(self)):
            yield self[i]

    def positive_counts(self) -> np.ndarray:
        raise NotImplementedError


class TevatronFile(_Lazy):
    """A Tevatron JSONL file, validated once, examples parsed on access."""

    def __init__(self, path: str | Path, require_scores: bool = False):
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(self.path, None, "training file not found")
        offsets, ends, lines, counts = [], [], [], []
        pos, self.skipped_without_negatives = 0, 0
        with open(self.path, "rb") as fh:
            for line_no, raw in enumerate(fh, 1):
                start, pos = pos, pos + len(raw)
                if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):
                    raw, start = raw[3:], start + 3
                if not raw.strip():
                    continue
                ex = parse_tevatron_line(raw, self.path, line_no)
                if require_scores:  # issue 20: a teacher-scores file for distillation
                    _check_scores(ex, self.path, line_no)
                    if not ex.negatives:  # `retr mine` filters can leave a query none: nothing to distil
                        self.skipped_without_negatives += 1
                        continue
                offsets.append(start)
                ends.append(pos)
                lines.append(line_no)
                counts.append(len(ex.positives))
        if not offsets:
            why = " with scored negatives (distillation needs them)" if self.skipped_without_negatives else ""
            raise DataError(self.path, None, f"no training examples{why}")
        if self.skipped_without_negatives:
            log.warning("%s: %d examples without negatives skipped (distillation needs scored negatives)",
                        self.path, self.skipped_without_negatives)
        self.offsets = np.asarray(offsets, np.int64)
        self.ends = np.asarray(ends, np.int64)
        self.lines = np.asarray(lines, np.int64)
        self.counts = np.asarray(counts, np.int32)
        self._fh = None

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, i: int) -> TrainExample:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i = int(i) % len(self)
        if self._fh is None:
            self._fh = open(self.path, "rb")
        start, end = int(self.offsets[i]), int(self.ends[i])
        if hasattr(os, "pread"):  # no seek: the handle is shared by threads, and its offset by forked workers
            raw = os.pread(self._fh.fileno(), end - start, start)
        else:
            with _SEEK_LOCK:
                self._fh.seek(start)
                raw = self._fh.read(end - start)
        return parse_tevatron_line(raw, self.path, int(self.lines[i]))

    def positive_counts(self) -> np.ndarray:
        return self.counts

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fh": None}


def _check_scores(ex: TrainExample, path: Path, line_no: int) -> None:
    """Every passage of a distillation example needs a teacher score (an example without negatives is skipped
    by the caller: there is nothing to distil, and `retr mine`'s filters can leave a query none)."""
    for key, items in (("positive_passages", ex.positives), ("negative_passages", ex.negatives)):
        for j, p in enumerate(items):
            if p.score is None:
                raise DataError(path, line_no, f'field "{key}[{j}].score" missing (teacher scores: `retr score`)')


class BeirExamples(_Lazy):
    """The judged queries of a BEIR split with positives (grade > 0) that the corpus holds; optional mined
    negatives as corpus rows (never a judged document)."""

    def __init__(self, dataset: BeirDataset, negatives_file: str | Path | None = None):
        self.dataset = dataset
        corpus = dataset.corpus
        qids, counts = [], []
        for qid, judged in dataset.qrels.items():
            if qid not in dataset.queries:
                continue
            n = sum(1 for d, g in judged.items() if g > 0 and d in corpus)
            if n:
                qids.append(qid)
                counts.append(n)
        self.qids = qids
        self.counts = np.asarray(counts, np.int32)
        self.neg_offsets = np.zeros(len(qids) + 1, np.int64)
        self.neg_rows = np.zeros(0, np.int32)
        if negatives_file is not None:
            self._load_negatives(Path(negatives_file))

    def _load_negatives(self, path: Path) -> None:
        """Stream the mined file once; keep each known query's negatives as corpus rows."""
        where = {q: i for i, q in enumerate(self.qids)}
        per_query: list[np.ndarray | None] = [None] * len(self.qids)
        corpus = self.dataset.corpus
        for ex in TevatronFile(path):
            i = where.get(ex.query_id)
            if i is None:
                continue
            judged = self.dataset.qrels.get(ex.query_id, {})
            ids = [p.docid for p in ex.negatives if p.docid and p.docid not in judged]
            rows = corpus.rows_of(ids)
            per_query[i] = rows[rows >= 0].astype(np.int32)
        sizes = np.array([0 if r is None else len(r) for r in per_query], np.int64)
        self.neg_offsets = np.concatenate([[0], np.cumsum(sizes)])
        self.neg_rows = np.concatenate([r for r in per_query if r is not None] or [np.zeros(0, np.int32)])

    def __len__(self) -> int:
        return len(self.qids)

    def __getitem__(self, i: int) -> TrainExample:
        from .training import Passage

        qid = self.qids[i]
        corpus = self.dataset.corpus
        judged = self.dataset.qrels[qid]
        pos = [d for d, g in judged.items() if g > 0 and d in corpus]

        def passage(row: int) -> Passage:
            return Passage(corpus.ids[row], corpus.titles[row], corpus.texts[row])

        negs = self.neg_rows[self.neg_offsets[i]:self.neg_offsets[i + 1]]
        return TrainExample(qid, self.dataset.queries[qid], [passage(corpus.index_of(d)) for d in pos],
                            [passage(int(r)) for r in negs])

    def positive_counts(self) -> np.ndarray:
        return self.counts


class ConcatExamples(_Lazy):
    def __init__(self, parts: Sequence[Sequence[TrainExample]]):
        self.parts = [p for p in parts if len(p)]
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, i: int) -> TrainExample:
        if not 0 <= i < len(self):
            raise IndexError(i)
        part = int(np.searchsorted(self.offsets, i, side="right")) - 1
        return self.parts[part][int(i - self.offsets[part])]

    def positive_counts(self) -> np.ndarray:
        return np.concatenate([positive_counts(p) for p in self.parts]) if self.parts else np.zeros(0, np.int32)


class PairExamples(_Lazy):
    """One example per (query, positive) pair, each keeping the query's negatives (the unit B3 clusters)."""

    def __init__(self, base: Sequence[TrainExample]):
        counts = positive_counts(base)
        self.base = base
        self.example = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
        self.positive = np.concatenate([np.arange(c, dtype=np.int32) for c in counts]) if len(counts) else \
            np.zeros(0, np.int32)

    def __len__(self) -> int:
        return len(self.example)

    def __getitem__(self, i: int) -> TrainExample:
        b = int(self.example[i])
        # A query's pairs are consecutive: reading them in order parses the query (all its positives) once,
        # not once per pair (NFCorpus: 43 positives a query made a pass over the pairs ~43x slower).
        cached = self.__dict__.get("_last")
        if cached is not None and cached[0] == b:
            ex = cached[1]
        else:
            ex = self.base[b]
            self._last = (b, ex)
        return TrainExample(ex.query_id, ex.query, [ex.positives[int(self.positive[i])]], ex.negatives,
                            ex.known_positives)

    def positive_counts(self) -> np.ndarray:
        return np.ones(len(self), np.int32)

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_last"}


def positive_counts(examples: Sequence[TrainExample]) -> np.ndarray:
    """Positives per example (lazy sequences know it without parsing)."""
    if isinstance(examples, _Lazy):
        return examples.positive_counts()
    return np.asarray([len(e.positives) for e in examples], np.int32)
