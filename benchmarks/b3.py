"""B3 mining on real training sets: clusters, size histogram, teacher hardness of in-batch negatives for B3 vs
random batches, and the cost (time, peak memory) of mining.

    .venv/bin/python benchmarks/b3.py [--datasets scifact nfcorpus] [--batch 32] [--p 30 --m 100 --k 32]

Examples are (query, positive) pairs of the train split (SciFact 919, NFCorpus 110,575); the teacher is the
packaged all-MiniLM-L6-v2; each distinct query / passage is encoded once.
"""
from __future__ import annotations

import argparse
import os
import resource
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
    ap.add_argument("--datasets", nargs="+", default=["scifact", "nfcorpus"])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--p", type=int, default=30)
    ap.add_argument("--m", type=int, default=100)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--algorithm", default="metis")
    args = ap.parse_args()

    from retr.retriever.modeling import DualEncoder
    from retr.retriever.training.arguments import TrainConfig
    from retr.retriever.training.b3 import (B3BatchSampler, B3Config, in_batch_negative_similarity, mine_clusters,
                                            size_histogram)
    from retr.retriever.training.driver import _encode_unique, supervised_examples
    from retr.retriever.training.samplers import RandomBatchSampler

    teacher = DualEncoder.from_pretrained("minilm")
    rows = []
    for name in args.datasets:
        cfg = TrainConfig(train_data=[os.path.join(args.data, name)], train_split="train", pairs=True)
        examples = supervised_examples(cfg)
        base = rss()
        t0 = time.perf_counter()
        q = _encode_unique(teacher.encode_queries, [e.query for e in examples])
        p = _encode_unique(teacher.encode_passages, [e.positives[0].joined() for e in examples])
        t_enc = time.perf_counter() - t0
        groups = [e.query_id for e in examples]  # a query's other pairs are no negatives
        clusters, stats = mine_clusters(q, p, B3Config(p=args.p, m=args.m, cluster_size=args.k,
                                                       algorithm=args.algorithm), groups=groups)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
        b3 = in_batch_negative_similarity(q, p, B3BatchSampler(clusters, args.batch).batches(0), groups)
        rand = in_batch_negative_similarity(q, p, RandomBatchSampler(len(examples), args.batch).batches(0), groups)
        sizes = sorted(len(c) for c in clusters)
        rows.append((name, len(examples), stats["edges"], len(clusters), sizes[0], sizes[len(sizes) // 2], sizes[-1],
                     b3, rand, t_enc, stats["rank_seconds"], stats["cluster_seconds"], peak))
        print(name, size_histogram(clusters), flush=True)
    print(f"\nteacher all-MiniLM-L6-v2, p={args.p}, m={args.m}, K={args.k}, {args.algorithm}, batch {args.batch}")
    print("| train set | pairs | edges | clusters | size min/median/max | in-batch neg. sim B3 | random | "
          "encode s | rank s | cluster s | peak RAM MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]:,} | {r[2]:,} | {r[3]:,} | {r[4]}/{r[5]}/{r[6]} | {r[7]:.4f} | {r[8]:.4f} | "
              f"{r[9]:.0f} | {r[10]:.1f} | {r[11]:.1f} | {max(r[12], 0) / 2**20:.0f} |")


if __name__ == "__main__":
    main()
