"""Hold out a dev split from a BEIR train split, for choosing weights (fusion alpha, rerank alpha, temperatures)
without test labels when the dataset ships no dev queries (SciFact).

    .venv/bin/python benchmarks/dev_split.py ../shared/data/scifact /work/models/scifact-dev --fraction 0.2

writes OUT/qrels/train.tsv (the rest) and OUT/qrels/dev.tsv (``fraction`` of the train queries, chosen by
sha1 of the query id, so the split is the same on every machine), and links OUT/corpus.jsonl, OUT/queries.jsonl
and OUT/qrels/test.tsv to the original files (nothing is copied; the corpus fingerprint is unchanged). Memory:
the train qrels only.
"""
from __future__ import annotations

import argparse
import hashlib
import os
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--fraction", type=float, default=0.2)
    args = ap.parse_args()
    src = args.data.resolve()
    lines = (src / "qrels" / "train.tsv").read_text(encoding="utf-8").splitlines()
    header, rows = (lines[0], lines[1:]) if lines and lines[0].lower().startswith("query") else ("", lines)
    qids = sorted({r.split("\t")[0] for r in rows if r.strip()},
                  key=lambda q: hashlib.sha1(q.encode()).hexdigest())
    dev = set(qids[:round(len(qids) * args.fraction)])
    (args.out / "qrels").mkdir(parents=True, exist_ok=True)
    for name in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv"):
        link = args.out / name
        if not link.exists():
            os.symlink(src / name, link)
    for split, keep in (("train", lambda q: q not in dev), ("dev", lambda q: q in dev)):
        body = [r for r in rows if r.strip() and keep(r.split("\t")[0])]
        (args.out / "qrels" / f"{split}.tsv").write_text("\n".join(([header] if header else []) + body) + "\n",
                                                          encoding="utf-8")
    print(f"{args.out}: {len(qids) - len(dev)} train queries, {len(dev)} dev queries (held out of {src})")


if __name__ == "__main__":
    main()
