"""Approximate indexes vs flat: recall@10/@100 against exact search, QPS (one query at a time on one thread, and
all queries in one batched call), build time and index bytes, on >= 100k real passages.

    .venv/bin/python benchmarks/ann.py [--data ../shared/data] [--cache out/cache/ann] [--plot benchmarks/ann_recall_qps.png]

Passages: the SciFact, NFCorpus and ArguAna corpora split into sentences (>= 6 words). Queries: the test queries
of the three datasets. Embeddings (all-MiniLM-L6-v2, max length 128, bf16 autocast) are computed once and cached as .npy.
"""
from __future__ import annotations

import argparse
import os
import re
import tempfile
import time

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
DATASETS = ("scifact", "nfcorpus", "arguana")


def sentences(data: str) -> tuple[list[str], list[str]]:
    from retr.retriever.data import load_corpus

    ids, texts = [], []
    for name in DATASETS:
        corpus = load_corpus(os.path.join(data, name, "corpus.jsonl"))
        for docid, text in zip(corpus.ids, corpus.texts):
            for j, s in enumerate(re.split(r"(?<=[.!?])\s+", text)):
                if len(s.split()) >= 6:
                    ids.append(f"{name}/{docid}/{j}")
                    texts.append(s.strip())
    return ids, texts


def embeddings(args) -> tuple[np.ndarray, np.ndarray]:
    os.makedirs(args.cache, exist_ok=True)
    xp, qp = os.path.join(args.cache, "passages.npy"), os.path.join(args.cache, "queries.npy")
    if os.path.exists(xp) and os.path.exists(qp):
        return np.load(xp), np.load(qp)
    from retr.retriever.data import load_queries
    from retr.retriever.modeling import Encoder

    _, texts = sentences(args.data)
    enc = Encoder.from_pretrained("minilm", passage_max_length=128, query_max_length=128)
    enc.precision = args.precision  # recall is measured against flat search over the same vectors
    t0 = time.perf_counter()
    x = enc.encode(texts, batch_size=128, show_progress=True)
    print(f"encoded {len(texts)} passages in {time.perf_counter() - t0:.0f}s")
    queries = [t for n in DATASETS for t in load_queries(os.path.join(args.data, n, "queries.jsonl")).values()]
    q = enc.encode(queries[: args.max_queries], is_query=True, batch_size=128)
    np.save(xp, x)
    np.save(qp, q)
    return x, q


def qps(index, q: np.ndarray, k: int, rescore: int | None, single: bool) -> float:
    import faiss

    faiss.omp_set_num_threads(1 if single else os.cpu_count() or 1)
    t0 = time.perf_counter()
    if single:
        for row in q:
            index.search(row[None], k, rescore=rescore)
    else:
        index.search(q, k, rescore=rescore)
    return len(q) / (time.perf_counter() - t0)


def recall(ids, ref, k):
    return float(np.mean([len(set(a[:k]) & set(b[:k])) / k for a, b in zip(ids, ref)]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
    ap.add_argument("--cache", default="out/cache/ann")
    ap.add_argument("--max-queries", type=int, default=2000)
    ap.add_argument("--precision", default="bf16", help="autocast for the one-off encoding (bf16 is ~1.9x faster)")
    ap.add_argument("--single-queries", type=int, default=300, help="queries timed one by one")
    ap.add_argument("--plot", default=os.path.join(os.path.dirname(__file__), "ann_recall_qps.png"))
    args = ap.parse_args()

    from retr.indexing.faiss_index import FaissIndex, IndexSpec

    x, q = embeddings(args)
    ids = [str(i) for i in range(len(x))]
    n, dim = x.shape
    nlist = 1024
    configs = [("flat", IndexSpec("flat"), {}, None)]
    configs += [(f"HNSW32 ef={ef}", IndexSpec("hnsw", hnsw_m=32, ef_construction=200), {"ef_search": ef}, None)
                for ef in (16, 64, 256)]
    configs += [(f"IVF{nlist} nprobe={p}", IndexSpec("ivf", nlist=nlist), {"nprobe": p}, None) for p in (4, 16, 64)]
    configs += [(f"IVF{nlist},PQ48x8 nprobe=32", IndexSpec("ivfpq", nlist=nlist, pq_m=48, store_vectors=True), {"nprobe": 32}, None),
                (f"IVF{nlist},PQ48x8 nprobe=32 +rescore 1000", None, {"nprobe": 32}, 1000),
                (f"IVF{nlist},PQ48x8 nprobe=128 +rescore 1000", None, {"nprobe": 128}, 1000)]
    rows, built = [], {}
    ref10 = ref100 = None
    for name, spec, knobs, rescore in configs:
        key = spec.index_type if spec else "ivfpq"
        if spec is not None and key not in built:
            t0 = time.perf_counter()
            built[key] = (FaissIndex.build(x, ids, spec), time.perf_counter() - t0)
        index, build_s = built[key]
        index.set_search_params(**knobs)
        with tempfile.TemporaryDirectory() as tmp:
            index.save(tmp + "/i")
            nbytes = os.path.getsize(tmp + "/i/index.faiss")
        _, got = index.search(q, 100, rescore=rescore)
        if name == "flat":
            ref10 = ref100 = got
        single = qps(index, q[: args.single_queries], 10, rescore, single=True)
        batched = qps(index, q, 10, rescore, single=False)
        rows.append((name, recall(got, ref10, 10), recall(got, ref100, 100), single, batched, build_s, nbytes))
        print(rows[-1], flush=True)
    flat = rows[0]
    print(f"\n{n} passages x {dim} dims, {len(q)} queries; single = 1 thread, one query per call; batched = all "
          f"queries in one call, {os.cpu_count()} threads")
    print("| index | recall@10 | recall@100 | QPS single | QPS batched | x flat (single) | build s | index bytes | x flat bytes |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]:.3f} | {r[2]:.3f} | {r[3]:.0f} | {r[4]:.0f} | {r[3] / flat[3]:.1f} | {r[5]:.1f} | "
              f"{r[6]:,} | {r[6] / flat[6]:.3f} |")
    vec_bytes = x.nbytes
    print(f"\nre-scoring reads the float32 vectors kept beside the PQ index (vectors.npy, {vec_bytes:,} bytes, "
          "memory-mappable) for the 1000 candidates of each query.")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.5))
        for r in rows:
            ax.scatter(r[1], r[3], s=30)
            ax.annotate(r[0], (r[1], r[3]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel("recall@10 vs flat")
        ax.set_ylabel("queries/s (1 thread, one query per call)")
        ax.set_yscale("log")
        ax.set_title(f"ANN on {n:,} MiniLM passage vectors")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"plot: {args.plot}")
    except Exception as e:  # plotting is a convenience
        print(f"no plot ({e})")


if __name__ == "__main__":
    main()
