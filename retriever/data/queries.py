"""Query files: BEIR ``queries.jsonl`` (or its folder) or a TSV of ``qid<TAB>text``."""
from __future__ import annotations

from pathlib import Path

from .beir import _WHITESPACE, load_queries
from .errors import DataError


def read_queries(path: str | Path) -> dict[str, str]:
    """qid -> text. ``DataError`` (file, line, field) for a malformed line, a duplicate id, or an id a TREC run
    cannot carry (empty or with whitespace). Memory: all queries (they are small beside a corpus)."""
    path = Path(path)
    if path.is_dir():
        path = path / "queries.jsonl"
    if path.suffix in (".jsonl", ".json"):
        return load_queries(path)
    if not path.exists():
        raise DataError(path, None, "queries file not found")
    out: dict[str, str] = {}
    with open(path, encoding="utf-8-sig", newline="") as fh:
        for line_no, line in enumerate(fh, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) != 2:
                raise DataError(path, line_no, f"expected qid<TAB>text, got {len(parts)} fields")
            if not parts[0] or _WHITESPACE.search(parts[0]):  # issue 18: as load_queries does for JSONL ids
                raise DataError(path, line_no, f'field "qid" {parts[0]!r} is empty or contains whitespace, which '
                                "TREC runs and qrels cannot carry")
            if parts[0] in out:
                raise DataError(path, line_no, f"duplicate query id {parts[0]!r}")
            out[parts[0]] = parts[1]
    return out
