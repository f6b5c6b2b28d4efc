"""Cross-encoder reranking of BM25's top k: the cross-encoder alone, and interpolated with BM25 at each alpha
(``retr eval --rerank M --rerank-alpha A``), with alpha chosen on a tuning split (NFCorpus has dev queries)
and reported on the test split. Each split is scored by the cross-encoder once; every alpha reuses the scores.

    .venv/bin/python benchmarks/rerank_alpha.py -d ../shared/data/nfcorpus --bm25-index out/idx/nfcorpus-bm25 \\
        --rerank out/runs/nfcorpus-ce2/model --tune-split dev [--alphas 0.1 0.2 ...] [--top-k 100]

Without --tune-split (SciFact has no dev queries) every alpha is reported on test and none is chosen there:
pass the alpha chosen on another dataset with --alphas A.
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-d", "--data", required=True)
    ap.add_argument("--bm25-index", required=True)
    ap.add_argument("--rerank", required=True, help="cross-encoder directory")
    ap.add_argument("--top-k", type=int, default=100)
    ap.add_argument("--tune-split")
    ap.add_argument("--test-split", default="test")
    ap.add_argument("--alphas", type=float, nargs="+", default=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    ap.add_argument("--precision", default="bf16")
    args = ap.parse_args()

    from retr.evaluation.metrics import compute_metrics
    from retr.retriever.bm25 import BM25Retriever
    from retr.retriever.data import load_beir
    from retr.retriever.hits import run_to_dict
    from retr.retriever.rerank import Reranker, merge_reranked

    reranker = Reranker(args.rerank, show_progress=True)
    reranker.model.precision = args.precision
    table: dict[str, dict[str, float]] = {}
    splits = [s for s in (args.tune_split, args.test_split) if s]
    corpus = bm25 = None
    for split in splits:
        ds = load_beir(args.data, split, allow_missing_docs=True, corpus=corpus)  # the corpus is read once
        corpus = ds.corpus
        bm25 = bm25 or BM25Retriever.for_corpus(corpus, index_dir=args.bm25_index)
        queries = ds.eval_queries
        run = bm25.batch_search(list(queries.values()), list(queries), k=1000)
        t0 = time.perf_counter()
        scores = reranker.score_run(queries, run, ds.corpus, args.top_k)
        seconds = time.perf_counter() - t0
        pairs = sum(len(v) for v in scores.values())
        print(f"{ds.name}/{split}: {pairs:,} pairs scored in {seconds:.0f} s ({pairs / seconds:.0f} pairs/s)", flush=True)

        def ndcg(r) -> float:
            return compute_metrics(ds.qrels, run_to_dict(r), ("nDCG@10",))["nDCG@10"]

        table.setdefault("BM25", {})[split] = ndcg(run)
        table.setdefault("cross-encoder alone", {})[split] = ndcg(merge_reranked(run, scores, args.top_k))
        for a in args.alphas:
            table.setdefault(f"alpha {a:g}", {})[split] = ndcg(merge_reranked(run, scores, args.top_k, a))
    chosen = None
    if args.tune_split:
        chosen = max((f"alpha {a:g}" for a in args.alphas), key=lambda r: table[r][args.tune_split])
    print(f"\n{os.path.basename(os.path.normpath(args.data))}: BM25 top {args.top_k} reranked by {args.rerank}")
    print("| ordering | " + " | ".join(f"nDCG@10 {s}" for s in splits) + " |")
    print("|---|" + "---|" * len(splits))
    for row, vals in table.items():
        mark = f" (chosen on {args.tune_split})" if row == chosen else ""
        print(f"| {row}{mark} | " + " | ".join(f"{vals[s]:.4f}" for s in splits) + " |")


if __name__ == "__main__":
    main()
