"""BM25 through pyserini's Lucene, the reference BM25 of the field (not a home-made one), shaped like the other
retrievers: ``search(q, k)``, ``batch_search(queries, qids, k, threads)`` -> ``Hit`` lists.

Documents are indexed "flat", as pyserini's BEIR regressions do: one ``contents`` field holding
title + newline + text (Anserini's ``BeirFlatCollection``). Defaults k1=0.9, b=0.4.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

from retr.indexing.atomic import check_built_from
from retr.indexing.lucene import build_lucene_index, open_lucene_searcher

from .data.beir import Corpus
from .hits import Hit, Run, break_ties

log = logging.getLogger(__name__)
TEMP_PREFIX = "retr-bm25-"


def flat_contents(title: str, text: str) -> str:
    return f"{title}\n{text}" if title else text


class BM25Retriever:
    def __init__(self, index_dir: str | os.PathLike, k1: float = 0.9, b: float = 0.4):
        self.index_dir = Path(index_dir)
        self.k1, self.b = k1, b
        self.searcher, self.meta = open_lucene_searcher(self.index_dir, k1, b)
        self.name = f"bm25(k1={k1},b={b})"

    @classmethod
    def build(cls, corpus: Corpus, index_dir: str | os.PathLike, threads: int = 1, k1: float = 0.9,
              b: float = 0.4) -> "BM25Retriever":
        docs = ((d, flat_contents(t, x)) for d, t, x in zip(corpus.ids, corpus.titles, corpus.texts))
        build_lucene_index(docs, index_dir, threads=threads,
                           meta={"corpus": {"path": corpus.path, "fingerprint": corpus.fingerprint,
                                            "count": len(corpus)}, "fields": "flat (title\\ntext)"})
        return cls(index_dir, k1, b)

    @classmethod
    def for_corpus(cls, corpus: Corpus, index_dir: str | os.PathLike | None = None, threads: int = 1,
                   k1: float = 0.9, b: float = 0.4) -> "BM25Retriever":
        """Reuse ``index_dir`` if it indexes this corpus, else build it there.

        Without ``index_dir`` the index goes to ``$TMPDIR/retr-bm25-XXXX/`` and lives as long as the
        retriever: it is removed by ``close()``, when the retriever is garbage collected, at exit, and on a
        build error; a run killed outright leaves it, and the next run that needs one removes it."""
        if index_dir is None:
            from retr.indexing.locks import OwnedTempDir

            tmp = OwnedTempDir(TEMP_PREFIX)
            try:
                retriever = cls.build(corpus, tmp.path / "index", threads=threads, k1=k1, b=b)
            except BaseException:
                tmp.cleanup()
                raise
            retriever._temp_dir = tmp
            return retriever
        index_dir = Path(index_dir)
        if (index_dir / "meta.json").exists():
            retriever = cls(index_dir, k1, b)
            check_built_from(retriever.meta, corpus.fingerprint, index_dir)
            log.info("reusing BM25 index %s", index_dir)
            return retriever
        return cls.build(corpus, index_dir, threads=threads, k1=k1, b=b)

    def close(self) -> None:
        """Release the searcher; remove the index when it lives in a temp dir of ours."""
        self.searcher = None
        tmp = getattr(self, "_temp_dir", None)
        if tmp is not None:
            tmp.cleanup()

    def search(self, query: str, k: int = 10) -> list[Hit]:
        return break_ties([Hit(h.docid, float(h.score), 0) for h in self.searcher.search(query, k)])

    def batch_search(self, queries: Sequence[str], qids: Sequence[str], k: int = 10, threads: int = 0) -> Run:
        if len(queries) != len(qids):
            raise ValueError(f"{len(queries)} queries but {len(qids)} qids")
        threads = threads if threads and threads > 0 else (os.cpu_count() or 1)
        out = self.searcher.batch_search(list(queries), list(qids), k=k, threads=threads)
        return {q: break_ties([Hit(h.docid, float(h.score), 0) for h in out.get(q, [])]) for q in qids}
