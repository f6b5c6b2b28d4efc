"""Encoding throughput: retr's `Encoder.encode` vs `SentenceTransformer.encode`, same model, max length, batch
size and threads, in one process, alternating order (retr, ST, ST, retr, ...) to cancel drift.

    .venv/bin/python benchmarks/encode.py [--limit N] [--rounds 1] [--batch-size 32] [--bf16]

Prints docs/s for each and the ratio retr/ST. `--bf16` adds a row for retr with bf16 autocast on CPU
(`--precision bf16`), with the max embedding difference it causes.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "scifact"))
    ap.add_argument("--limit", type=int, default=None, help="first N documents only")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--bf16", action="store_true")
    args = ap.parse_args()

    from sentence_transformers import SentenceTransformer

    from retr.retriever.data import load_corpus
    from retr.retriever.modeling import Encoder, packaged_minilm_path

    texts = load_corpus(os.path.join(args.data, "corpus.jsonl")).passages()[: args.limit]
    enc = Encoder.from_pretrained("minilm")
    st = SentenceTransformer(packaged_minilm_path(), device="cpu", trust_remote_code=False)
    assert st.max_seq_length == enc.config.passage_max_length == 256
    enc.encode(texts[:64], batch_size=args.batch_size)  # warm-up both
    st.encode(texts[:64], batch_size=args.batch_size)
    times = {"retr": [], "st": []}
    outs = {}

    def run(name):
        t0 = time.perf_counter()
        if name == "retr":
            outs[name] = enc.encode(texts, batch_size=args.batch_size)
        else:
            outs[name] = st.encode(texts, batch_size=args.batch_size, normalize_embeddings=True)
        times[name].append(time.perf_counter() - t0)

    for r in range(args.rounds):
        for name in (("retr", "st") if r % 2 == 0 else ("st", "retr")):
            run(name)
    n = len(texts)
    rows = [("retr (fp32)", n / np.mean(times["retr"])), ("sentence-transformers (fp32)", n / np.mean(times["st"]))]
    diff = float(np.abs(outs["retr"] - outs["st"]).max())
    extra = ""
    if args.bf16:
        enc.precision = "bf16"
        t0 = time.perf_counter()
        bf = enc.encode(texts, batch_size=args.batch_size)
        rows.append(("retr (bf16 autocast)", n / (time.perf_counter() - t0)))
        extra = f"; bf16 max |diff| vs fp32 {np.abs(bf - outs['retr']).max():.2e}"
    print(f"\n{n} SciFact docs, batch {args.batch_size}, {torch.get_num_threads()} threads, rounds {args.rounds}; "
          f"max |retr - ST| {diff:.1e}{extra}")
    print("| encoder | docs/s | ratio vs ST |")
    print("|---|---|---|")
    for name, dps in rows:
        print(f"| {name} | {dps:.1f} | {dps / rows[1][1]:.2f}x |")


if __name__ == "__main__":
    main()
