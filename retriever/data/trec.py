"""TREC run files (``qid Q0 docid rank score tag``), the format every IR evaluator reads."""
from __future__ import annotations

from pathlib import Path

from retr.indexing.atomic import atomic_file

from ..hits import Hit, Run
from .errors import DataError


def write_trec_run(run: Run, path: str | Path, tag: str = "retr") -> None:
    with TrecRunWriter(path, tag) as writer:
        writer.write(run)


def read_trec_run(path: str | Path) -> Run:
    path = Path(path)
    if not path.exists():
        raise DataError(path, None, "run file not found")
    run: Run = {}
    with open(path, encoding="utf-8-sig") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 6:
                raise DataError(path, line_no, f"expected 6 fields (qid Q0 docid rank score tag), got {len(parts)}")
            qid, _, docid, rank, score, _tag = parts
            try:
                hit = Hit(docid, float(score), int(rank))
            except ValueError:
                raise DataError(path, line_no, "rank must be an integer and score a number") from None
            run.setdefault(qid, []).append(hit)
    for hits in run.values():
        hits.sort(key=lambda h: h.rank)
    return run


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
