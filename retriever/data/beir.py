"""BEIR folders (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``), validated while reading.

Every problem is reported as one ``file:line: ...`` line (``DataError``): a line that is not a JSON
object, a missing or empty ``_id``/``text``, a duplicate id, a qrels row with the wrong number of
fields, a non-integer score, or an id that the corpus or queries do not hold. CRLF line endings (as in
the official BEIR qrels) and a UTF-8 byte-order mark are accepted. Ids are kept as strings, as BEIR's
loader does. The corpus itself lives in a memory-mapped Arrow store (``corpus.py``).
"""
from __future__ import annotations
import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from .corpus import Corpus, join_title_text, load_corpus
from .errors import DataError, malformed_json

BOM = b"\xef\xbb\xbf"
_WHITESPACE = re.compile(r"\s")

log = logging.getLogger(__name__)


@dataclass
class BeirDataset:
    """A BEIR dataset: corpus, queries (id -> text) and qrels (qid -> {docid: grade}) of one split."""

    name: str
    corpus: Corpus
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    split: str | None = None
    path: str = ""

    @property
    def eval_queries(self) -> dict[str, str]:
        """The queries judged in the split, in file order (what BEIR evaluates)."""
        return {q: t for q, t in self.queries.items() if q in self.qrels}


def read_jsonl(path: Path, required: tuple[str, ...], kind: str, hasher=None):
    """Yield (line_no, obj) for each non-blank line, validating the required string fields.

    A UTF-8 byte-order mark at the start of the file is skipped (``hasher`` still sees the raw bytes). Ids
    (``_id``) may not hold whitespace: TREC runs and qrels, which retr writes, cannot carry it."""
    if not path.exists():
        raise DataError(path, None, f"{kind} file not found")
    with open(path, "rb") as fh:
        for line_no, raw in enumerate(fh, 1):
            if hasher is not None:
                hasher.update(raw)
            if line_no == 1 and raw.startswith(BOM):
                raw = raw[len(BOM):]
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise DataError(path, line_no, malformed_json(e)) from None
            if not isinstance(obj, dict):
                raise DataError(path, line_no, "expected a JSON object")
            for key in required:
                if key not in obj:
                    raise DataError(path, line_no, f'missing field "{key}"')
                value = obj[key]
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key == "_id":
                    obj[key] = str(value)
                elif not isinstance(value, str):
                    raise DataError(path, line_no, f'field "{key}" must be a string, got {type(value).__name__}')
            if "_id" in required:
                if not obj["_id"].strip():
                    raise DataError(path, line_no, 'field "_id" is empty')
                if _WHITESPACE.search(obj["_id"]):
                    raise DataError(path, line_no, f'field "_id" {obj["_id"]!r} contains whitespace, which TREC runs '
                                    "and qrels cannot carry")
            yield line_no, obj


def load_queries(path: str | Path) -> dict[str, str]:
    path = Path(path)
    queries: dict[str, str] = {}
    lines: dict[str, int] = {}
    for line_no, obj in read_jsonl(path, ("_id", "text"), "queries"):
        qid = obj["_id"]
        if qid in queries:
            raise DataError(path, line_no, f'duplicate "_id" {qid!r} (first on line {lines[qid]})')
        queries[qid] = obj["text"]
        lines[qid] = line_no
    return queries


def load_qrels(path: str | Path, queries: dict[str, str] | None = None, corpus: Corpus | None = None,
               allow_missing_docs: bool = False) -> dict[str, dict[str, int]]:
    """Read a TSV qrels file (header ``query-id corpus-id score`` optional; CRLF tolerated)."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, None, "qrels file not found")
    qrels: dict[str, dict[str, int]] = {}
    missing_docs = 0
    with open(path, encoding="utf-8-sig", newline="") as fh:
        for line_no, line in enumerate(fh, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split("\t")
            if line_no == 1 and fields[0].strip().lower() in ("query-id", "query_id", "qid"):
                continue
            if len(fields) != 3:
                raise DataError(path, line_no, f"expected 3 tab-separated fields (query-id, corpus-id, score), got {len(fields)}")
            qid, docid, score = (f.strip() for f in fields)
            if not qid:
                raise DataError(path, line_no, 'empty field "query-id"')
            if not docid:
                raise DataError(path, line_no, 'empty field "corpus-id"')
            try:
                grade = int(score)
            except ValueError:
                raise DataError(path, line_no, f'field "score" must be an integer, got {score!r}') from None
            if queries is not None and qid not in queries:
                raise DataError(path, line_no, f'query-id {qid!r} is not in queries.jsonl')
            if corpus is not None and docid not in corpus:
                if not allow_missing_docs:
                    raise DataError(path, line_no, f'corpus-id {docid!r} is not in corpus.jsonl '
                                    "(--allow-missing-docs keeps such rows, as BEIR does)")
                missing_docs += 1
            qrels.setdefault(qid, {})[docid] = grade
    if missing_docs:
        log.warning("%s: %d judged documents are not in the corpus (kept, as BEIR does)", path, missing_docs)
    return qrels


def load_beir(directory: str | Path, split: str | None = "test", allow_missing_docs: bool = False,
              corpus: Corpus | None = None) -> BeirDataset:
    """Load a BEIR folder. ``split=None`` loads corpus and queries only (e.g. for indexing)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(directory, None, "dataset directory not found")
    corpus = corpus or load_corpus(directory / "corpus.jsonl")
    queries = load_queries(directory / "queries.jsonl") if (directory / "queries.jsonl").exists() or split else {}
    qrels: dict[str, dict[str, int]] = {}
    if split:
        qrels_path = directory / "qrels" / f"{split}.tsv"
        if not qrels_path.exists():
            have = sorted(p.stem for p in (directory / "qrels").glob("*.tsv"))
            raise DataError(qrels_path, None, f"no qrels for split {split!r} (have: {', '.join(have) or 'none'})")
        qrels = load_qrels(qrels_path, queries, corpus, allow_missing_docs)
    return BeirDataset(name=directory.name, corpus=corpus, queries=queries, qrels=qrels, split=split,
                       path=str(directory))
