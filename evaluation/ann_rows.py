"""ANN-aware leaderboard rows (issue 23): a set-up searched through an approximate index (``index_type: hnsw``,
``ivf``, ``ivfpq``, ... in the suite) is also searched exactly over the *same vectors*, and its row reports
recall@k of the approximate top k against the exact top k and the nDCG@10 the approximation loses.

The approximate index is built from the exact (flat) index's own vectors: FAISS's flat storage is viewed
in place (``faiss.rev_swig_ptr``, no copy) and added to the new index block by block
(``FaissIndex.build``), so memory is the flat index plus the approximate one plus one block, and nothing is
encoded twice. (FAISS's own ``knn_intersection_measure`` compares two result arrays, not runs with string
ids, so the overlap is counted here.)
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

ANN_KEYS = ("index_type", "ef_search", "nprobe", "hnsw_m", "nlist", "pq_m")  # suite keys of an ANN row


def flat_vectors(index: Any) -> np.ndarray:
    """The float32 [n, dim] rows of a FAISS flat index, as a view of its memory (no copy).

    Raises ValueError when the index is not flat (other indexes do not keep exact vectors)."""
    import faiss

    base = faiss.downcast_index(index)
    if not isinstance(base, faiss.IndexFlat):
        raise ValueError(f"exact vectors need a flat index, got {type(base).__name__}")
    n, d = base.ntotal, base.d
    if n == 0:
        return np.zeros((0, d), np.float32)
    return faiss.rev_swig_ptr(base.get_xb(), n * d).reshape(n, d)


def ann_from_exact(exact, options: Mapping[str, Any]):
    """A ``DenseRetriever`` over an approximate index built from ``exact``'s flat vectors (same encoder).

    ``options``: ``index_type`` (preset or FAISS factory string) and optional ``ef_search``, ``nprobe``,
    ``hnsw_m``, ``nlist``, ``pq_m`` (``IndexSpec`` fields)."""
    from retr.indexing.faiss_index import FaissIndex, IndexSpec
    from retr.retriever.search import DenseRetriever

    spec = IndexSpec(metric=exact.index.meta.get("metric", "ip"),
                     **{k: v for k, v in options.items() if k in ANN_KEYS and v is not None})
    meta = {k: v for k, v in exact.index.meta.items() if k in ("encoder", "corpus")}
    index = FaissIndex.build(flat_vectors(exact.index.index), exact.index.docids, spec, meta=meta)
    return DenseRetriever(exact.encoder, index, batch_size=exact.batch_size, show_progress=exact.show_progress)


def recall_vs_exact(approx: Mapping[str, list], exact: Mapping[str, list], k: int) -> float:
    """Mean over queries of |approximate top k  ∩  exact top k| / |exact top k| (runs of ``Hit`` lists)."""
    values = []
    for q, hits in exact.items():
        want = {h.docid for h in hits[:k]}
        if want:
            got = {h.docid for h in approx.get(q, [])[:k]}
            values.append(len(want & got) / len(want))
    return float(np.mean(values)) if values else 0.0


def ann_report(approx_result, exact_result, ks=(10, 100)) -> dict[str, float]:
    """What the approximate row loses: recall@k against exact search, exact nDCG@10, the nDCG@10 lost."""
    out = {f"recall@{k}_vs_exact": round(recall_vs_exact(approx_result.run, exact_result.run, k), 6) for k in ks}
    out["nDCG@10_exact"] = round(exact_result.metrics["nDCG@10"], 6)
    out["nDCG@10_lost"] = round(exact_result.metrics["nDCG@10"] - approx_result.metrics["nDCG@10"], 6)
    return out
