"""Retrievers shaped like pyserini's searchers: ``search(q, k)`` and ``batch_search(queries, qids, k, threads)``
return ``Hit(docid, score, rank)`` lists. ``DenseRetriever`` encodes with a ``DualEncoder`` and searches a
``FaissIndex``; the index directory remembers what built it and refuses a model that disagrees.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

from retr.indexing.faiss_index import VECTORS_FILE, FaissIndex, IndexMismatchError, IndexSpec

from .data.corpus import Corpus
from .encoding import DEFAULT_BLOCK, encode_corpus, encode_in_memory, work_dir_for
from .hits import Hit, Run, hits_from_scores
from .modeling.dual_encoder import DualEncoder

log = logging.getLogger(__name__)

# settings of the passage side that must agree between the index and the querying model
_MUST_AGREE = ("dim", "pooling", "normalize", "passage_prefix", "passage_max_length", "append_eos", "torch_dtype",
               "passage_fingerprint")


class Retriever(Protocol):
    def search(self, query: str, k: int = 10) -> list[Hit]: ...

    def batch_search(self, queries: Sequence[str], qids: Sequence[str], k: int = 10,
                     threads: int = 0) -> Run: ...


class DenseRetriever:
    """Dense first stage: ``DenseRetriever.load(index_dir).search("text", k=10)``."""

    def __init__(self, encoder: DualEncoder, index: FaissIndex, batch_size: int = 64, show_progress: bool = True):
        self.encoder = encoder
        self.index = index
        self.batch_size = batch_size
        self.show_progress = show_progress
        self.name = encoder.name
        self.rescore: int | None = None  # default of batch_search's ``rescore`` (PQ indexes with stored vectors)

    # ---------- construction ----------
    @classmethod
    def build(cls, encoder: DualEncoder, corpus: Corpus, index_dir: str | os.PathLike | None = None,
              spec: IndexSpec | None = None, batch_size: int = 64, show_progress: bool = True,
              block_size: int = DEFAULT_BLOCK) -> "DenseRetriever":
        """Encode ``corpus`` block by block to disk and index it (saved atomically to ``index_dir`` when given).

        The vectors are encoded into a hidden work directory beside ``index_dir`` (a temp dir without one), so a
        killed build resumes its encoding; RAM holds the index plus one block. Index parameters are checked
        against the corpus size before anything is encoded (``ValueError``)."""
        spec = spec or IndexSpec()
        spec.check(len(corpus), encoder.dim)
        temp = index_dir is None
        work = Path(tempfile.mkdtemp(prefix="retr-encode-")) / "work" if temp else work_dir_for(index_dir)
        partial, stats = encode_corpus(encoder, corpus, work, block_size=block_size, batch_size=batch_size,
                                       show_progress=show_progress)
        try:
            index = FaissIndex.build(partial.vectors, corpus.ids, spec, meta=index_meta(encoder, corpus, stats.seconds),
                                     show_progress=show_progress)
            if temp and index.vectors is not None:
                index.vectors = np.array(partial.vectors)  # the temp file goes; keep the rows for re-scoring
            if not temp:
                index.save(index_dir)
                if index.vectors is not None:  # re-score from the saved copy, not the work dir about to go
                    index.vectors = np.load(Path(index_dir) / VECTORS_FILE, mmap_mode="r", allow_pickle=False)
        finally:
            if temp:
                partial.discard()
                shutil.rmtree(work.parent, ignore_errors=True)
        if not temp:
            partial.discard()
        return cls(encoder, index, batch_size=batch_size, show_progress=show_progress)

    @classmethod
    def load(cls, index_dir: "str | os.PathLike | Sequence[str | os.PathLike]", model: str | DualEncoder | None = None,
             mmap: bool = False, batch_size: int = 64, show_progress: bool = True,
             **encoder_overrides: Any) -> "DenseRetriever":
        """Open an index directory (or several, searched as one: ``FaissIndex.combine``); the model defaults to
        the one recorded in its ``meta.json``."""
        dirs = [index_dir] if isinstance(index_dir, (str, os.PathLike)) else list(index_dir)
        index = FaissIndex.combine([FaissIndex.load(d, mmap=mmap) for d in dirs])
        index_dir = dirs[0]
        built = index.meta.get("encoder") or {}
        if model is None:
            model = built.get("model_path") or built.get("model")
            if not model:
                raise IndexMismatchError(f"{index_dir}: meta.json names no model; pass one (--model)")
            encoder_overrides = {**{k: built[k] for k in ("pooling", "normalize", "query_prefix", "passage_prefix",
                                                         "query_max_length", "passage_max_length") if k in built},
                                 **encoder_overrides}
        for key in ("truncate_dim", "torch_dtype"):
            if built.get(key) and key not in encoder_overrides:
                # Matryoshka prefixes / half-precision weights: the queries are encoded alike (an explicit other
                # --dim or --torch-dtype is refused by the check below, in one line)
                encoder_overrides = {**encoder_overrides, key: built[key]}
        if not isinstance(model, DualEncoder):
            model = DualEncoder.from_pretrained(model, **encoder_overrides)
        identity = encoder_identity(model)
        if built.get("passage_fingerprint") == model.passage_tower.fingerprint():
            identity["passage_fingerprint"] = built["passage_fingerprint"]  # an index from before side="passage"
        index.check_encoder(identity, _MUST_AGREE)
        return cls(model, index, batch_size=batch_size, show_progress=show_progress)

    # ---------- search ----------
    def search(self, query: str, k: int = 10) -> list[Hit]:
        return self.batch_search([query], ["q"], k=k)["q"]

    def batch_search(self, queries: Sequence[str], qids: Sequence[str], k: int = 10, threads: int = 0,
                     rescore: int | None = None) -> Run:
        if len(queries) != len(qids):
            raise ValueError(f"{len(queries)} queries but {len(qids)} qids")
        qvecs = self.encoder.encode_queries(list(queries), batch_size=self.batch_size,
                                            show_progress=self.show_progress and len(queries) > self.batch_size)
        return self.search_vectors(qvecs, qids, k, threads=threads,
                                   rescore=self.rescore if rescore is None else rescore)

    def search_vectors(self, qvecs: np.ndarray, qids: Sequence[str], k: int, threads: int | None = None,
                       rescore: int | None = None) -> Run:
        scores, ids = self.index.search(qvecs, k, rescore=rescore, threads=threads)
        return {qid: hits_from_scores(row_ids, row_scores) for qid, row_ids, row_scores in zip(qids, ids, scores)}


def encoder_identity(encoder: DualEncoder) -> dict[str, Any]:
    d = encoder.describe()
    d["passage_fingerprint"] = encoder.passage_tower.fingerprint(side="passage")
    return d


def index_meta(encoder: DualEncoder, corpus: Corpus, encode_seconds: float | None = None) -> dict[str, Any]:
    from retr.indexing.versions import retr_version

    from .backends import backend_id

    enc = encoder_identity(encoder)
    backend = backend_id(getattr(encoder.passage_tower, "runner", None))
    if backend is not None:  # issue 22: informational (not compared when the index is opened)
        enc["backend"] = backend
    name = encoder.name
    if Path(name).is_dir():
        enc["model_path"] = str(Path(name).resolve())
    return {
        "encoder": enc,
        "corpus": {"path": corpus.path, "fingerprint": corpus.fingerprint, "count": len(corpus)},
        "encode_seconds": None if encode_seconds is None else round(encode_seconds, 2),
        "retr_version": retr_version(),
    }


def add_documents(index_dir: str | os.PathLike, corpus: Corpus, model: str | DualEncoder | None = None,
                  batch_size: int = 64, block_size: int = DEFAULT_BLOCK, precision: str = "auto",
                  backend: str = "torch", **encoder_overrides: Any) -> int:
    """Encode only the documents of ``corpus`` that the index lacks, append them, save atomically."""
    retriever = DenseRetriever.load(index_dir, model=model, batch_size=batch_size, **encoder_overrides)
    retriever.encoder.set_precision(precision)
    retriever.encoder.set_backend(backend, precision)
    known = set(retriever.index.docids)
    new = [d for d in corpus.ids if d not in known]
    if new:
        part = corpus.subset(new)
        vectors = encode_in_memory(retriever.encoder, part, block_size=block_size, batch_size=batch_size)
        retriever.index.add(vectors, new)
        retriever.index.meta["corpus"] = {"path": corpus.path, "fingerprint": corpus.fingerprint, "count": len(corpus)}
        retriever.index.save(index_dir)
    return len(new)
