"""B3 mining cost (issue 21, acceptance 3): time and peak RSS of ``mine_clusters`` alone, on teacher embeddings
cached once, so the code before and after a change (or with the authors' options) mines the very same input.

    # 1. teacher embeddings of NFCorpus train (query, positive) pairs, as benchmarks/b3.py encodes them
    .venv/bin/python benchmarks/b3_mining_cost.py --encode /work/shared/data/nfcorpus --emb /tmp/nf-pairs.npz
    # 2. one mining per process (peak RSS = this process): any retr on PYTHONPATH, options if it has them
    /usr/bin/time -v .venv/bin/python benchmarks/b3_mining_cost.py --emb /tmp/nf-pairs.npz [--mutual-edges]
        [--exact-k] [--cluster-negatives 5] [--sibling-exclusion /work/shared/data/nfcorpus] [--save clusters.json]

``--sibling-exclusion DATA``: rank windows skip the rows of sibling queries (``retr train
--b3-sibling-exclusion``), built from DATA's train pairs (the same folder as ``--encode``; untimed). Progress
(exclusion sets built, rows per second) goes to stderr every 20 s so a capped run still reports its rate.
``--save``: the clusters (and cluster negatives) as JSON, to compare two codes' mining.

Step 2 prints one JSON line: examples, edges, clusters, rank / cluster seconds, wall seconds, and peak RSS
(``ru_maxrss``) before and after mining.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def encode(data: str, out: str) -> None:
    import numpy as np

    from retr.indexing.atomic import atomic_file
    from retr.retriever.modeling import DualEncoder
    from retr.retriever.training.arguments import TrainConfig
    from retr.retriever.training.driver import _encode_unique, supervised_examples

    examples = supervised_examples(TrainConfig(train_data=[data], train_split="train", pairs=True))
    teacher = DualEncoder.from_pretrained("minilm")
    q = _encode_unique(teacher.encode_queries, [e.query for e in examples])
    p = _encode_unique(teacher.encode_passages, [e.positives[0].joined() for e in examples])
    groups = np.unique([e.query_id for e in examples], return_inverse=True)[1]
    with atomic_file(out, "wb") as fh:
        np.savez(fh, q=q, p=p, groups=groups)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--emb", required=True, help="npz of teacher embeddings (q, p, groups)")
    ap.add_argument("--encode", help="BEIR folder: encode its train pairs into --emb and stop")
    ap.add_argument("--p", type=int, default=30)
    ap.add_argument("--m", type=int, default=100)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--mutual-edges", action="store_true")
    ap.add_argument("--exact-k", action="store_true")
    ap.add_argument("--cluster-negatives", type=int, default=0)
    ap.add_argument("--sibling-exclusion", metavar="DATA", help="BEIR folder of --emb's pairs: exclude siblings")
    ap.add_argument("--save", help="write the clusters (and negatives) here as JSON")
    args = ap.parse_args()
    if args.encode:
        return encode(args.encode, args.emb)
    import numpy as np

    from retr.retriever.training import b3

    with np.load(args.emb, allow_pickle=False) as data:
        q, p, groups = data["q"], data["p"], data["groups"]
    extra = {k: v for k, v in (("mutual_edges", args.mutual_edges), ("exact_k", args.exact_k),
                               ("cluster_negatives", args.cluster_negatives),
                               ("sibling_exclusion", bool(args.sibling_exclusion))) if v}
    cfg = b3.B3Config(p=args.p, m=args.m, cluster_size=args.k, **extra)
    exclude = sibling_exclusion(args.sibling_exclusion, groups) if args.sibling_exclusion else None
    before = peak_mib()
    t0 = time.perf_counter()
    if extra:
        clusters, stats, negatives = b3.mine_b3(q, p, cfg, groups=groups, exclude=exclude)
    else:
        clusters, stats = b3.mine_clusters(q, p, cfg, groups=groups)
        negatives = []
    wall = time.perf_counter() - t0
    digest = hashlib.sha256(json.dumps([clusters, negatives]).encode()).hexdigest()[:16]
    if args.save:
        with open(args.save, "w") as fh:
            json.dump({"clusters": clusters, "negatives": negatives}, fh)
    print(json.dumps({**stats, "options": extra, "wall_seconds": round(wall, 1), "clusters_sha256": digest,
                      "peak_rss_mib_before": round(before), "peak_rss_mib": round(peak_mib())}), flush=True)


def sibling_exclusion(data: str, groups):
    """``retr train``'s sibling exclusion over DATA's train pairs (checked to be --emb's rows), counting calls."""
    import sys

    import numpy as np

    from retr.retriever.training.arguments import TrainConfig
    from retr.retriever.training.driver import sibling_exclusion, supervised_examples

    examples = supervised_examples(TrainConfig(train_data=[data], train_split="train", pairs=True))
    qids = [e.query_id for e in examples]
    if not np.array_equal(np.unique(qids, return_inverse=True)[1].reshape(-1), groups):
        raise SystemExit(f"{data}: its train pairs are not the rows of --emb")
    inner = sibling_exclusion(examples)
    calls, start = [0], [0.0, 0.0]  # calls; first call, last report

    def exclude(i: int):
        calls[0] += 1
        now = time.perf_counter()
        if calls[0] == 1:
            start[:] = [now, now]
        elif now - start[1] > 20:
            start[1] = now
            print(f"{now - start[0]:.0f} s: {calls[0]} exclusion sets ({calls[0] / (now - start[0]):.0f}/s)",
                  file=sys.stderr, flush=True)
        return inner(i)
    exclude.__dict__.update(inner.__dict__)  # whatever the driver attaches to its callable (e.g. a row key)
    return exclude


if __name__ == "__main__":
    main()
