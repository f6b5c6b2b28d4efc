"""Supervised training examples: (query, positives, hard negatives).

Two sources: a BEIR folder + qrels split (positives = judged documents with grade > 0; negatives from a
mined file), or Tevatron-style JSONL, one example per line::

    {"query_id": "1", "query": "...", "positive_passages": [{"docid": "d1", "title": "", "text": "..."}],
     "negative_passages": [{"docid": "d9", "title": "", "text": "..."}, ...]}

which is also what ``retr mine`` writes. Validation errors name the file, line and field.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from retr.indexing.atomic import atomic_file

from .beir import BeirDataset, join_title_text
from .errors import DataError, malformed_json


@dataclass
class Passage:
    docid: str
    title: str
    text: str
    score: float | None = None  # issue 20: a teacher's score (``retr score``), for distillation

    def to_json(self) -> dict:
        d = {"docid": self.docid, "title": self.title, "text": self.text}
        return d if self.score is None else {**d, "score": self.score}

    def joined(self, sep: str = " ") -> str:
        return join_title_text(self.title, self.text, sep)


@dataclass
class TrainExample:
    query_id: str
    query: str
    positives: list[Passage]
    negatives: list[Passage] = field(default_factory=list)
    known_positives: list[str] = field(default_factory=list)  # every judged-relevant docid of the query

    def __post_init__(self) -> None:
        if not self.known_positives:
            self.known_positives = [p.docid for p in self.positives if p.docid]

    def to_tevatron(self) -> dict:
        return {"query_id": self.query_id, "query": self.query,
                "positive_passages": [p.to_json() for p in self.positives],
                "negative_passages": [p.to_json() for p in self.negatives]}


def examples_from_beir(dataset: BeirDataset, negatives: dict[str, list[str]] | None = None,
                       qids: Iterable[str] | None = None) -> list[TrainExample]:
    """One example per judged query of the split (or of ``qids``), positives = documents with grade > 0.

    Memory grows with the examples' passages: stream big splits by passing ``qids`` block by block."""
    corpus = dataset.corpus
    out = []
    for qid in (dataset.qrels if qids is None else qids):
        judged = dataset.qrels.get(qid, {})
        pos = [d for d, g in judged.items() if g > 0 and d in corpus]
        if not pos or qid not in dataset.queries:
            continue
        negs = [d for d in (negatives or {}).get(qid, []) if d in corpus and d not in judged]
        out.append(TrainExample(qid, dataset.queries[qid], [_passage(corpus, d) for d in pos],
                                [_passage(corpus, d) for d in negs]))
    return out


def _passage(corpus, docid: str) -> Passage:
    i = corpus.index_of(docid)
    return Passage(docid, corpus.titles[i], corpus.texts[i])


def _passages(obj, path: Path, line_no: int, key: str) -> list[Passage]:
    items = obj.get(key, [])
    if not isinstance(items, list):
        raise DataError(path, line_no, f'field "{key}" must be a list')
    out = []
    for j, p in enumerate(items):
        if isinstance(p, str):
            out.append(Passage("", "", p))
            continue
        if not isinstance(p, dict) or not isinstance(p.get("text"), str):
            raise DataError(path, line_no, f'field "{key}[{j}].text" missing or not a string')
        score = p.get("score")
        if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float))
                                  or score != score or abs(score) > 3.0e38):  # trained in float32 (max 3.4e38)
            raise DataError(path, line_no, f'field "{key}[{j}].score" must be a finite number within float32')
        out.append(Passage(str(p.get("docid", "")), str(p.get("title") or ""), p["text"],
                           None if score is None else float(score)))
    return out


def parse_tevatron_line(raw: bytes | str, path: Path, line_no: int) -> TrainExample:
    """One Tevatron JSONL line -> ``TrainExample`` (``DataError`` naming the file, line and field)."""
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(path, line_no, malformed_json(e)) from None
    if not isinstance(obj, dict):
        raise DataError(path, line_no, "expected a JSON object")
    if not isinstance(obj.get("query"), str):
        raise DataError(path, line_no, 'missing field "query"')
    pos = _passages(obj, path, line_no, "positive_passages")
    if not pos:
        raise DataError(path, line_no, 'field "positive_passages" is empty')
    return TrainExample(str(obj.get("query_id", line_no)), obj["query"], pos,
                        _passages(obj, path, line_no, "negative_passages"))


def read_tevatron(path: str | Path):
    """A Tevatron JSONL file as a lazy ``Sequence[TrainExample]`` (validated now, parsed on access)."""
    from .examples import TevatronFile

    return TevatronFile(path)


def write_tevatron(examples: Iterable[TrainExample], path: str | Path) -> int:
    """Write examples (any iterable, consumed once: memory holds one) atomically; returns how many."""
    n = 0
    with atomic_file(path) as fh:
        for ex in examples:
            fh.write(json.dumps(ex.to_tevatron(), ensure_ascii=False) + "\n")
            n += 1
    return n


def as_pairs(examples):
    """One example per (query, positive) pair, each keeping the query's negatives (the unit B3 clusters); lazy."""
    from .examples import PairExamples

    return PairExamples(examples)
