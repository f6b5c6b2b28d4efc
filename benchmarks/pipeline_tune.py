"""Choose the whole pipeline's two weights on a tuning split, never on test (issue 20): the weighted fusion
alpha of a dense model with BM25 (nDCG@10 of the fused run), then, on that fused run's top k, the alpha that
interpolates a cross-encoder with it. Both are reported on the test split at every value, the chosen ones
marked, so the table also shows what the choice cost against the best test value.

    .venv/bin/python benchmarks/pipeline_tune.py -d /work/models/scifact-dev -m MODEL --rerank CE \\
        --bm25-index /work/models/idx/scifact-bm25 --index /work/models/idx/scifact-dev-ft [--tune-split dev]

(SciFact ships no dev queries: ``benchmarks/dev_split.py`` holds 20% of train out, and the models are trained
on the rest.) The corpus is encoded once (``--index`` keeps it), each split is scored by the cross-encoder once
and every alpha reuses the scores. Memory: the corpus text and its vectors (dense flat index) plus one split's
runs (queries x 1000 hits) and its cross-encoder scores (queries x k).
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

GRID = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-d", "--data", required=True)
    ap.add_argument("-m", "--model", required=True, help="dual encoder (the dense first stage)")
    ap.add_argument("--rerank", help="cross-encoder directory (omit: fusion only)")
    ap.add_argument("--bm25-index", required=True)
    ap.add_argument("--index", help="dense index directory (built if missing)")
    ap.add_argument("--tune-split", default="dev")
    ap.add_argument("--test-split", default="test")
    ap.add_argument("--top-k", type=int, default=100)
    ap.add_argument("--fusion-alphas", type=float, nargs="+", default=GRID)
    ap.add_argument("--rerank-alphas", type=float, nargs="+", default=GRID)
    ap.add_argument("--precision", default="bf16")
    args = ap.parse_args()

    from retr.evaluation.metrics import compute_metrics
    from retr.retriever.bm25 import BM25Retriever
    from retr.retriever.data import load_beir
    from retr.retriever.hits import run_to_dict
    from retr.retriever.hybrid import weighted_sum
    from retr.retriever.pipeline import dense_retriever_for
    from retr.retriever.rerank import Reranker, merge_reranked

    splits = (args.tune_split, args.test_split)
    tune = load_beir(args.data, args.tune_split, allow_missing_docs=True)
    corpus = tune.corpus
    data = {args.tune_split: tune, args.test_split: load_beir(args.data, args.test_split, allow_missing_docs=True,
                                                              corpus=corpus)}
    bm25 = BM25Retriever.for_corpus(corpus, index_dir=args.bm25_index)
    dense = dense_retriever_for(corpus, model=args.model, index_dir=args.index, precision=args.precision)
    runs = {}
    for split, ds in data.items():
        qids, texts = list(ds.eval_queries), list(ds.eval_queries.values())
        runs[split] = (bm25.batch_search(texts, qids, k=1000), dense.batch_search(texts, qids, k=1000))

    def ndcg(split: str, run) -> float:
        return compute_metrics(data[split].qrels, run_to_dict(run), ("nDCG@10",))["nDCG@10"]

    fusion = {a: {s: weighted_sum(runs[s], [1 - a, a], 1000) for s in splits} for a in args.fusion_alphas}
    table = {f"fusion alpha {a:g}": {s: ndcg(s, fusion[a][s]) for s in splits} for a in args.fusion_alphas}
    best_fusion = max(args.fusion_alphas, key=lambda a: table[f"fusion alpha {a:g}"][args.tune_split])
    chosen = [f"fusion alpha {best_fusion:g}"]
    if args.rerank:
        reranker = Reranker(args.rerank, show_progress=True)
        reranker.model.precision = args.precision
        for split, ds in data.items():
            first = fusion[best_fusion][split]
            t0 = time.perf_counter()
            scores = reranker.score_run(ds.eval_queries, first, corpus, args.top_k)
            print(f"{split}: {sum(len(v) for v in scores.values()):,} pairs in {time.perf_counter() - t0:.0f} s",
                  flush=True)
            table.setdefault("+ cross-encoder alone", {})[split] = ndcg(split, merge_reranked(first, scores, args.top_k))
            for a in args.rerank_alphas:
                table.setdefault(f"+ cross-encoder, rerank alpha {a:g}", {})[split] = ndcg(
                    split, merge_reranked(first, scores, args.top_k, a))
        best_rerank = max(args.rerank_alphas,
                          key=lambda a: table[f"+ cross-encoder, rerank alpha {a:g}"][args.tune_split])
        chosen.append(f"+ cross-encoder, rerank alpha {best_rerank:g}")
    print(f"\n{args.data}: BM25 + {args.model} (weighted fusion; alpha weighs the dense run)"
          + (f", top {args.top_k} reranked by {args.rerank}" if args.rerank else ""))
    print(f"| set-up | nDCG@10 {args.tune_split} | nDCG@10 {args.test_split} |\n|---|---:|---:|")
    for row, vals in table.items():
        mark = f" (chosen on {args.tune_split})" if row in chosen else ""
        print(f"| {row}{mark} | {vals[args.tune_split]:.4f} | {vals[args.test_split]:.4f} |")


if __name__ == "__main__":
    main()
