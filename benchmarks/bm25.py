"""BM25 through pyserini: nDCG@10 against pyserini's published BEIR regressions (flat), and batch-search
throughput with threads vs one query at a time, same run.

    .venv/bin/python benchmarks/bm25.py [--data ../shared/data] [--threads 2]
"""
from __future__ import annotations

import argparse
import os
import time

PUBLISHED = {"scifact": 0.6789, "nfcorpus": 0.3218, "arguana": 0.3970}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
    ap.add_argument("--index-root", default="out/idx")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    from retr.evaluation import evaluate
    from retr.retriever.bm25 import BM25Retriever
    from retr.retriever.data import load_beir

    rows = []
    for name in PUBLISHED:
        ds = load_beir(os.path.join(args.data, name), "test", allow_missing_docs=True)
        bm25 = BM25Retriever.for_corpus(ds.corpus, os.path.join(args.index_root, f"{name}-bm25"))
        ndcg = evaluate(bm25, ds, k=1000, threads=args.threads).metrics["nDCG@10"]
        qids = list(ds.eval_queries)
        texts = [ds.queries[q] for q in qids]
        t0 = time.perf_counter()
        for t in texts:
            bm25.search(t, k=1000)
        single = len(texts) / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        bm25.batch_search(texts, qids, k=1000, threads=args.threads)
        batched = len(texts) / (time.perf_counter() - t0)
        rows.append((name, ndcg, PUBLISHED[name], single, batched))
    print(f"\n| dataset | retr BM25 nDCG@10 | pyserini published | diff | single q/s | batch ({args.threads} threads) q/s | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for n, v, p, s, b in rows:
        print(f"| {n} | {v:.4f} | {p:.4f} | {v - p:+.4f} | {s:.0f} | {b:.0f} | {b / s:.2f}x |")


if __name__ == "__main__":
    main()
