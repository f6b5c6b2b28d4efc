"""nDCG@10 of dual encoders at several embedding sizes (Matryoshka prefixes), with the flat index's bytes per size.

Each model encodes the corpus and the queries once at its full size; each size ``d`` then keeps the first ``d``
components and re-normalises them (what ``retr eval --dim d`` does inside the encoder for a normalising model:
truncating then normalising a normalised vector gives the same unit vector), searches an exact inner-product
FAISS index of them and scores the run with ``retr.evaluation.evaluate``. One encode per model instead of one per
size; ``--check-dim`` compares one size against the real ``retr eval --dim`` path's metric.

    python benchmarks/matryoshka_dims.py -d ../shared/data/scifact --model plain=out/runs/plain/model \\
        --model mrl=out/runs/mrl/model --dims 384 256 128 64 --precision bf16 -o out/results/mrl.json

Memory: [n_docs + n_queries, full dim] float32 vectors plus one index of them.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import faiss
import numpy as np

from retr.evaluation.evaluate import evaluate
from retr.retriever.data.beir import load_beir
from retr.retriever.encoding import encode_in_memory
from retr.retriever.hits import hits_from_scores
from retr.retriever.modeling import DualEncoder


class PrefixRetriever:
    """``batch_search`` over precomputed query vectors with an exact index of ``d``-dim passage prefixes."""

    def __init__(self, docids, doc_vecs, query_vecs: dict[str, np.ndarray], dim: int):
        self.docids = docids
        self.dim = dim
        self.index = faiss.IndexFlatIP(dim)
        self.index.add(_prefix(doc_vecs, dim))
        self.query_vecs = query_vecs

    def index_bytes(self) -> int:
        return int(faiss.serialize_index(self.index).size)

    def batch_search(self, queries, qids, k=10, threads=0):
        q = _prefix(np.stack([self.query_vecs[qid] for qid in qids]), self.dim)
        scores, rows = self.index.search(q, k)
        return {qid: hits_from_scores([self.docids[r] for r in rows[i] if r >= 0], scores[i][rows[i] >= 0])
                for i, qid in enumerate(qids)}


def _prefix(vecs: np.ndarray, dim: int) -> np.ndarray:
    out = np.ascontiguousarray(vecs[:, :dim], dtype=np.float32)
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-d", "--data", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--model", action="append", required=True, help="name=path (repeatable)")
    ap.add_argument("--dims", type=int, nargs="+", default=[384, 256, 128, 64])
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--passage-max-length", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("-o", "--output", required=True)
    args = ap.parse_args()
    ds = load_beir(args.data, args.split)
    docids = list(ds.corpus.ids)
    queries = ds.eval_queries
    results = []
    for spec in args.model:
        name, _, path = spec.partition("=")
        overrides = {"passage_max_length": args.passage_max_length} if args.passage_max_length else {}
        model = DualEncoder.from_pretrained(path, **overrides)
        model.set_precision(args.precision)
        t0 = time.perf_counter()
        doc_vecs = encode_in_memory(model, ds.corpus, batch_size=args.batch_size, show_progress=False)
        q_vecs = model.encode_queries(list(queries.values()), batch_size=args.batch_size)
        seconds = time.perf_counter() - t0
        qmap = dict(zip(queries, q_vecs))
        for dim in args.dims:
            retriever = PrefixRetriever(docids, doc_vecs, qmap, dim)
            metrics = evaluate(retriever, ds, k=100, metrics=("nDCG@10", "Recall@100")).metrics
            row = {"model": name, "path": path, "dim": dim, **{k: round(v, 4) for k, v in metrics.items()},
                   "index_bytes": retriever.index_bytes(), "encode_seconds": round(seconds, 1)}
            print(json.dumps(row), flush=True)
            results.append(row)
    Path(args.output).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
