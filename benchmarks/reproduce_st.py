"""Side by side: retr's `evaluate` vs sentence-transformers' own encode + exact search, same data, same process.

    .venv/bin/python benchmarks/reproduce_st.py [--data ../shared/data] [--datasets scifact nfcorpus arguana]

Both sides: all-MiniLM-L6-v2, max length 256, mean pooling, L2-normalised, top-1000, BEIR's identical-id
removal, metrics by pytrec_eval (retr through ir-measures). Prints nDCG@10 for each and the difference.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
MTEB = {"scifact": 0.6451, "nfcorpus": 0.3159, "arguana": 0.5017}


def st_ndcg(ds, model) -> tuple[float, float]:
    import faiss
    import pytrec_eval

    t0 = time.perf_counter()
    docs = model.encode(ds.corpus.passages(), batch_size=64, normalize_embeddings=True, show_progress_bar=True)
    qids = list(ds.eval_queries)
    qv = model.encode([ds.queries[q] for q in qids], batch_size=64, normalize_embeddings=True)
    index = faiss.IndexFlatIP(docs.shape[1])
    index.add(docs)
    scores, rows = index.search(qv, 1001)
    run = {}
    for i, q in enumerate(qids):
        hits = [(ds.corpus.ids[r], float(s)) for r, s in zip(rows[i], scores[i]) if ds.corpus.ids[r] != q][:1000]
        run[q] = dict(hits)
    per = pytrec_eval.RelevanceEvaluator(ds.qrels, {"ndcg_cut.10"}).evaluate(run)
    return float(np.mean([v["ndcg_cut_10"] for v in per.values()])), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
    ap.add_argument("--datasets", nargs="+", default=["scifact", "nfcorpus", "arguana"])
    args = ap.parse_args()

    from sentence_transformers import SentenceTransformer

    from retr.evaluation import evaluate
    from retr.retriever.data import load_beir
    from retr.retriever.modeling import DualEncoder, packaged_minilm_path
    from retr.retriever.search import DenseRetriever

    st = SentenceTransformer(packaged_minilm_path(), device="cpu", trust_remote_code=False)
    enc = DualEncoder.from_pretrained("minilm")
    rows = []
    for name in args.datasets:
        ds = load_beir(os.path.join(args.data, name), "test", allow_missing_docs=True)
        t0 = time.perf_counter()
        result = evaluate(DenseRetriever.build(enc, ds.corpus), ds, k=1000)
        retr_s = time.perf_counter() - t0
        ref, st_s = st_ndcg(ds, st)
        rows.append((name, result.metrics["nDCG@10"], ref, result.metrics["nDCG@10"] - ref, MTEB[name], retr_s, st_s))
        print(f"{name}: retr {result.metrics['nDCG@10']:.4f}  st {ref:.4f}", file=sys.stderr, flush=True)
    print("\n| dataset | retr nDCG@10 | sentence-transformers nDCG@10 | diff | MTEB published | retr s | ST s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]:.4f} | {r[2]:.4f} | {r[3]:+.4f} | {r[4]:.4f} | {r[5]:.0f} | {r[6]:.0f} |")


if __name__ == "__main__":
    main()
