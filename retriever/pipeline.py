"""Assemble retrievers from what the user names (model, index directory, corpus), reusing an index only
when it was built from the same corpus with the same model settings."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from retr.indexing.atomic import ArtifactError

from .data.beir import Corpus
from .modeling.dual_encoder import DualEncoder
from .search import DenseRetriever

log = logging.getLogger(__name__)


def dense_retriever_for(corpus: Corpus, model: str | DualEncoder | None = None,
                        index_dir: str | os.PathLike | None = None, batch_size: int = 64,
                        **encoder_overrides: Any) -> DenseRetriever:
    """Open ``index_dir`` when it exists (checking it indexes ``corpus``), else encode and index the corpus."""
    if index_dir is not None and (Path(index_dir) / "meta.json").exists():
        retriever = DenseRetriever.load(index_dir, model=model, batch_size=batch_size, **encoder_overrides)
        built_on = (retriever.index.meta.get("corpus") or {}).get("fingerprint")
        if built_on != corpus.fingerprint:
            raise ArtifactError(f"{index_dir}: index was built from another corpus (fingerprint {built_on}, "
                                f"this corpus {corpus.fingerprint}); choose another --index directory")
        log.info("reusing index %s", index_dir)
        return retriever
    if model is None:
        raise ValueError("--model is required when no existing --index is given")
    encoder = model if isinstance(model, DualEncoder) else DualEncoder.from_pretrained(model, **encoder_overrides)
    return DenseRetriever.build(encoder, corpus, index_dir=index_dir, batch_size=batch_size)


def first_stage(name: str, corpus: Corpus, index_dir: str | os.PathLike | None = None, batch_size: int = 64,
                **options: Any):
    """``bm25`` (pyserini Lucene) or a dense model name -> a retriever over ``corpus``."""
    if name.lower() == "bm25":
        from .bm25 import BM25Retriever

        return BM25Retriever.for_corpus(corpus, index_dir=index_dir, **options)
    return dense_retriever_for(corpus, model=name, index_dir=index_dir, batch_size=batch_size)
