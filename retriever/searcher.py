"""Open a searcher from the options of ``retr search`` (and ``retr serve``, which takes the same ones): dense
index directory(ies), a BM25 (Lucene) index, both (hybrid: BM25 + dense fused), each optionally followed by a
cross-encoder. One place, so ``retr serve`` answers exactly what ``retr search`` prints for the same options."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retr.indexing.atomic import check_built_from


@dataclass
class SearchSetup:
    """What to open. ``index``: one or more index directories made by ``retr index``; several dense ones are
    searched as one (hits merged by score); one BM25 directory (it has ``lucene/``) together with dense ones makes
    a hybrid first stage fused by ``fusion`` (``rrf`` or ``weighted``, ``alpha`` = weight of the dense run).
    ``rerank`` (cross-encoder directory or hub id) needs ``corpus`` (the passages' text)."""

    index: list[Path]
    model: str | None = None
    mmap: bool = False
    ef_search: int | None = None
    nprobe: int | None = None
    rescore: int | None = None
    k1: float = 0.9
    b: float = 0.4
    fusion: str = "rrf"
    alpha: float = 0.5
    rrf_k: int = 60
    rerank: str | None = None
    rerank_top_k: int = 100
    rerank_alpha: float | None = None
    corpus: Path | None = None
    precision: str = "auto"
    batch_size: int = 64
    show_progress: bool = True
    encoder_overrides: dict[str, Any] = field(default_factory=dict)
    backend: str = "torch"  # issue 22: torch | onnx | openvino (query encoding; retriever/backends.py)


def is_bm25_index(path: str | os.PathLike) -> bool:
    return (Path(path) / "lucene").is_dir()


def open_searcher(setup: SearchSetup) -> Any:
    """A retriever with ``batch_search(queries, qids, k, threads) -> {qid: [Hit]}`` and ``search(q, k)``
    (``DenseRetriever``, ``BM25Retriever``, ``HybridRetriever`` or ``RerankingRetriever``). Memory: the dense
    index (unless ``mmap``) plus the model(s); with ``rerank`` also the corpus text. Bad options -> ``ValueError``;
    an index the model or corpus does not match -> ``ArtifactError``/``IndexMismatchError``."""
    if not setup.index:
        raise ValueError("give at least one --index")
    if setup.rerank and setup.corpus is None:
        raise ValueError("--rerank needs --corpus (the passages' text)")
    if setup.fusion not in ("rrf", "weighted"):
        raise ValueError(f"--fusion must be rrf or weighted, got {setup.fusion!r}")
    sparse_dirs = [i for i in setup.index if is_bm25_index(i)]
    dense_dirs = [i for i in setup.index if not is_bm25_index(i)]
    if len(sparse_dirs) > 1:
        raise ValueError("give at most one BM25 --index (several --index values are for dense indexes)")
    sparse = dense = None
    if sparse_dirs:
        from .bm25 import BM25Retriever

        sparse = BM25Retriever(sparse_dirs[0], k1=setup.k1, b=setup.b)
    if dense_dirs:
        from .search import DenseRetriever

        dense = DenseRetriever.load(dense_dirs, model=setup.model, mmap=setup.mmap, batch_size=setup.batch_size,
                                    show_progress=setup.show_progress, **setup.encoder_overrides)
        applied = dense.index.set_search_params(ef_search=setup.ef_search, nprobe=setup.nprobe)
        for name, flag, kind in (("ef_search", "--ef-search", "HNSW"), ("nprobe", "--nprobe", "IVF")):
            if getattr(setup, name) is not None and name not in applied:
                raise ValueError(f"{flag} does not apply to a {dense.index.meta.get('factory')} index (only to {kind})")
        if setup.rescore and dense.index.vectors is None:
            raise ValueError(f"{dense_dirs[0]}: --rescore needs stored vectors; rebuild the index with --store-vectors")
        dense.encoder.set_precision(setup.precision)
        dense.encoder.set_backend(setup.backend, setup.precision)
        dense.rescore = setup.rescore
    if sparse is not None and dense is not None:
        from .hybrid import HybridRetriever

        retriever: Any = HybridRetriever(sparse, dense, method=setup.fusion, alpha=setup.alpha, rrf_k=setup.rrf_k)
    else:
        retriever = sparse if sparse is not None else dense
    if setup.rerank:
        from .data.beir import load_beir
        from .data.corpus import load_corpus
        from .rerank import Reranker, RerankingRetriever

        corpus = Path(setup.corpus)
        docs = load_corpus(corpus) if corpus.is_file() else load_beir(corpus, split=None).corpus
        for part, directory in ((sparse, sparse_dirs[:1]), (dense, dense_dirs[:1])):
            if part is not None:
                check_built_from(part.meta if part is sparse else part.index.meta, docs.fingerprint, directory[0])
        reranker = Reranker(setup.rerank, show_progress=setup.show_progress)
        reranker.model.precision = setup.precision
        retriever = RerankingRetriever(retriever, reranker, docs, top_k=setup.rerank_top_k, alpha=setup.rerank_alpha)
    return retriever


def describe_searcher(retriever: Any) -> dict[str, Any]:
    """What a searcher holds, for ``GET /info``: kind, fusion, reranker and, for a dense index, its FAISS factory,
    metric, size (``ntotal``), ``dim`` and the encoder (model path, pooling, fingerprint)."""
    from .pipeline import describe_retriever
    from .search import DenseRetriever

    info = describe_retriever(retriever)

    def dense_of(r: Any) -> Any:
        r = getattr(r, "first_stage", r)
        return getattr(r, "dense", r)

    dense = dense_of(retriever)
    if isinstance(dense, DenseRetriever):
        target = info.get("dense", info)
        target["ntotal"] = len(dense.index)
        target["dim"] = dense.index.dim
        target["model"] = dense.encoder.name
        target["model_fingerprint"] = dense.encoder.fingerprint()
        target["rescore"] = dense.rescore
        from .backends import backend_id  # issue 22: the engine that encodes the queries

        target["backend"] = backend_id(getattr(dense.encoder.query_encoder, "runner", None)) or "torch"
    return info
