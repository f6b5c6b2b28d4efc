"""Assemble retrievers from what the user names (model, index directory, corpus), reusing an index only
when it was built from the same corpus with the same model settings."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from retr.indexing.atomic import check_built_from

from .data.beir import Corpus
from .modeling.dual_encoder import DualEncoder
from .search import DenseRetriever

log = logging.getLogger(__name__)


def dense_retriever_for(corpus: Corpus, model: str | DualEncoder | None = None,
                        index_dir: str | os.PathLike | None = None, batch_size: int = 64, precision: str = "auto",
                        backend: str = "torch", mmap: bool = False, **encoder_overrides: Any) -> DenseRetriever:
    """Open ``index_dir`` when it exists (checking it indexes ``corpus``; ``mmap``: memory-mapped, so RAM does
    not grow with the index), else encode and index the corpus.
    ``precision`` is the inference autocast (auto = fp16 on CUDA, fp32 on CPU; bf16 is faster on recent CPUs);
    ``backend`` torch | onnx | openvino (``DualEncoder.set_backend``)."""
    if index_dir is not None and (Path(index_dir) / "meta.json").exists():
        retriever = DenseRetriever.load(index_dir, model=model, batch_size=batch_size, mmap=mmap, **encoder_overrides)
        retriever.encoder.set_precision(precision)
        retriever.encoder.set_backend(backend, precision)
        check_built_from(retriever.index.meta, corpus.fingerprint, index_dir)
        log.info("reusing index %s", index_dir)
        return retriever
    if model is None:
        raise ValueError("--model is required when no existing --index is given")
    encoder = model if isinstance(model, DualEncoder) else DualEncoder.from_pretrained(model, **encoder_overrides)
    encoder.set_precision(precision)
    encoder.set_backend(backend, precision)
    return DenseRetriever.build(encoder, corpus, index_dir=index_dir, batch_size=batch_size)


def first_stage(name: str, corpus: Corpus, index_dir: str | os.PathLike | None = None, batch_size: int = 64,
                precision: str = "auto", encoder_overrides: dict[str, Any] | None = None, **options: Any):
    """``bm25`` (pyserini Lucene, ``options`` k1/b/threads) or a dense model name (with ``encoder_overrides``)
    -> a retriever over ``corpus``."""
    if name.lower() == "bm25":
        from .bm25 import BM25Retriever

        return BM25Retriever.for_corpus(corpus, index_dir=index_dir, **options)
    return dense_retriever_for(corpus, model=name, index_dir=index_dir, batch_size=batch_size, precision=precision,
                               **(encoder_overrides or {}))


def build_retriever(kind: str, corpus: Corpus, model: str | DualEncoder | None = None,
                    index_dir: str | os.PathLike | None = None, bm25_index: str | os.PathLike | None = None,
                    fusion: str = "rrf", alpha: float = 0.5, rrf_k: int = 60, k1: float = 0.9, b: float = 0.4,
                    rerank: str | None = None, rerank_top_k: int = 100, rerank_batch_size: int = 32,
                    rerank_alpha: float | None = None, batch_size: int = 64, precision: str = "auto",
                    backend: str = "torch", mmap: bool = False, **encoder_overrides: Any):
    """``dense`` | ``bm25`` | ``hybrid`` first stage over ``corpus``, optionally followed by a cross-encoder
    (``mmap``: memory-map an existing dense index)."""
    if kind == "dense":
        retriever = dense_retriever_for(corpus, model=model, index_dir=index_dir, batch_size=batch_size,
                                        precision=precision, backend=backend, mmap=mmap, **encoder_overrides)
    elif kind in ("bm25", "hybrid"):
        from .bm25 import BM25Retriever

        sparse = BM25Retriever.for_corpus(corpus, index_dir=bm25_index if kind == "hybrid" else (bm25_index or index_dir),
                                          k1=k1, b=b)
        retriever = sparse
        if kind == "hybrid":
            from .hybrid import HybridRetriever

            dense = dense_retriever_for(corpus, model=model, index_dir=index_dir, batch_size=batch_size,
                                        precision=precision, backend=backend, mmap=mmap, **encoder_overrides)
            retriever = HybridRetriever(sparse, dense, method=fusion, alpha=alpha, rrf_k=rrf_k)
    else:
        raise ValueError(f"unknown retriever {kind!r} (use dense, bm25 or hybrid)")
    if rerank:
        from .rerank import Reranker, RerankingRetriever

        reranker = Reranker(rerank, batch_size=rerank_batch_size, show_progress=True)
        reranker.model.precision = precision
        retriever = RerankingRetriever(retriever, reranker, corpus, top_k=rerank_top_k, alpha=rerank_alpha)
    return retriever


def describe_retriever(retriever: Any) -> dict[str, Any]:
    """What a result was made with (recorded in results JSON)."""
    from .bm25 import BM25Retriever
    from .hybrid import HybridRetriever
    from .rerank import RerankingRetriever

    if isinstance(retriever, RerankingRetriever):
        return {**describe_retriever(retriever.first_stage),
                "rerank": {"model": retriever.reranker.name, "top_k": retriever.top_k, "alpha": retriever.alpha}}
    if isinstance(retriever, HybridRetriever):
        return {"retriever": "hybrid", "fusion": retriever.method, "alpha": retriever.alpha, "rrf_k": retriever.rrf_k,
                "sparse": describe_retriever(retriever.sparse), "dense": describe_retriever(retriever.dense)}
    if isinstance(retriever, BM25Retriever):
        return {"retriever": "bm25", "k1": retriever.k1, "b": retriever.b, "index": str(retriever.index_dir),
                "corpus": retriever.meta.get("corpus")}
    meta = retriever.index.meta
    return {"retriever": "dense", "encoder": meta.get("encoder"),
            "index": {k: meta.get(k) for k in ("factory", "metric", "dim", "count", "corpus")}}
