"""TREC run files (``qid Q0 docid rank score tag``), the format every IR evaluator reads."""
from __future__ import annotations

import math
from pathlib import Path

from retr.indexing.atomic import atomic_file

from ..hits import Hit, Run
from .errors import DataError


def write_trec_run(run: Run, path: str | Path, tag: str = "retr") -> None:
    with TrecRunWriter(path, tag) as writer:
        writer.write(run)


def read_trec_run(path: str | Path) -> Run:
    """The whole run {qid: [Hit, ...]} (each query's hits in rank order). Raises ``DataError`` naming the line
    and field of a malformed line (see ``parse_run_line``) or a document listed twice for one query."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, None, "run file not found")
    run: Run = {}
    seen: dict[str, set[str]] = {}
    with open(path, encoding="utf-8-sig") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            qid, hit = parse_run_line(path, line_no, line)
            _check_new_doc(seen.setdefault(qid, set()), qid, hit.docid, path, line_no)
            run.setdefault(qid, []).append(hit)
    for hits in run.values():
        hits.sort(key=lambda h: h.rank)
    return run


def parse_run_line(path: str | Path, line_no: int, line: str) -> tuple[str, Hit]:
    """(qid, Hit) of one ``qid Q0 docid rank score tag`` line; ``DataError`` naming the field when the line
    has not 6 fields, the rank is not an integer or the score not a finite number (trec_eval orders by score,
    so a NaN score would put the document anywhere)."""
    parts = line.split()
    if len(parts) != 6:
        raise DataError(path, line_no, f"expected 6 fields (qid Q0 docid rank score tag), got {len(parts)}")
    qid, _, docid, rank, score, _tag = parts
    try:
        rank_i = int(rank)
    except ValueError:
        raise DataError(path, line_no, f'field "rank" must be an integer, got {rank!r}') from None
    try:
        score_f = float(score)
    except ValueError:
        raise DataError(path, line_no, f'field "score" must be a number, got {score!r}') from None
    if not math.isfinite(score_f):
        raise DataError(path, line_no, f'field "score" must be a finite number, got {score!r}')
    return qid, Hit(docid, score_f, rank_i)


def _check_new_doc(seen: set[str], qid: str, docid: str, path: str | Path, line_no: int) -> None:
    # trec_eval refuses a document ranked twice for one query; a dict-based evaluator would keep one score
    if docid in seen:
        raise DataError(path, line_no, f'field "docid": {docid!r} is listed twice for query {qid!r}')
    seen.add(docid)


class TrecRunWriter:
    """Write a run block by block (``with TrecRunWriter(path, tag) as w: w.write(run_block)``); the file is
    renamed into place when the ``with`` block ends without error, so a killed run leaves no partial file."""

    def __init__(self, path: str | Path, tag: str = "retr"):
        self.path, self.tag = Path(path), tag
        self._ctx = atomic_file(self.path)
        self._fh = None

    def __enter__(self) -> "TrecRunWriter":
        self._fh = self._ctx.__enter__()
        return self

    def write(self, run: Run) -> None:
        for qid, hits in run.items():
            self._fh.writelines(f"{qid} Q0 {h.docid} {h.rank} {h.score:.9g} {self.tag}\n" for h in hits)

    def __exit__(self, *exc) -> bool | None:
        return self._ctx.__exit__(*exc)


# issue 23: streamed runs (retr compare) and TREC-format qrels
def iter_trec_run_blocks(path: str | Path, block_queries: int = 1024):
    """Yield a TREC run file as ``Run`` blocks of up to ``block_queries`` queries, in file order.

    Memory grows with one block of hits (~100 bytes a hit), not with the file. The file must keep each
    query's lines together (as retr, Anserini and trec_eval's inputs do); a query that comes back after
    another one raises ``DataError`` naming the line."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, None, "run file not found")
    block: Run = {}
    done: set[str] = set()
    current, docs = None, set()
    with open(path, encoding="utf-8-sig") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            qid, hit = parse_run_line(path, line_no, line)
            if qid != current:
                if qid in done or qid in block:
                    raise DataError(path, line_no, f"query {qid!r} comes back after other queries: sort the run "
                                    "by query id (e.g. sort -k1,1 -s)")
                if len(block) >= block_queries:
                    yield _sorted(block)
                    done.update(block)
                    block = {}
                current, docs = qid, set()
            _check_new_doc(docs, qid, hit.docid, path, line_no)
            block.setdefault(qid, []).append(hit)
    if block:
        yield _sorted(block)


def _sorted(run: Run) -> Run:
    for hits in run.values():
        hits.sort(key=lambda h: h.rank)
    return run


def read_qrels_file(path: str | Path) -> dict[str, dict[str, int]]:
    """Qrels in BEIR's TSV (``query-id corpus-id score``, header optional) or TREC's format
    (``qid iter docid grade``, whitespace-separated), told apart by the number of fields of each line."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, None, "qrels file not found")
    qrels: dict[str, dict[str, int]] = {}
    with open(path, encoding="utf-8-sig") as fh:
        for line_no, line in enumerate(fh, 1):
            parts = line.split()
            if not parts or (line_no == 1 and parts[0].lower() in ("query-id", "query_id", "qid")):
                continue
            if len(parts) == 3:
                qid, docid, grade = parts
            elif len(parts) == 4:
                qid, _, docid, grade = parts
            else:
                raise DataError(path, line_no, "expected 3 fields (query-id corpus-id score) or 4 (qid iter "
                                f"docid grade), got {len(parts)}")
            try:
                qrels.setdefault(qid, {})[docid] = int(grade)
            except ValueError:
                raise DataError(path, line_no, f'field "score" must be an integer, got {grade!r}') from None
    if not qrels:
        raise DataError(path, None, "no judgements in the qrels file")
    return qrels
