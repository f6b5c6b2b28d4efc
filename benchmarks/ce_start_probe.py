"""Step-0 probe for a segment-cosine cross-encoder: on training groups built by the trainer's own collator
(1 positive + N mined + R random negatives), how often the step-0 segment cosine ranks the positive first, and
the listwise loss at each initial ``--ce-scale`` (chance = ln(1 + N + R)). Uses training data only, so the
scale and negative mix it suggests are chosen without test labels (RESULTS.md §14).

    .venv/bin/python benchmarks/ce_start_probe.py -d ../shared/data/nfcorpus \\
        --negatives out/mined/nfcorpus-train-bm25-top100-sib.jsonl --mix 2:1 3:0 1:2 [--groups 64]
"""
from __future__ import annotations

import argparse
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-d", "--data", required=True)
    ap.add_argument("--negatives", required=True, help="mined Tevatron JSONL (retr mine)")
    ap.add_argument("--mix", nargs="+", default=["2:1"], help="MINED:RANDOM negatives per group")
    ap.add_argument("--groups", type=int, default=64)
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--scales", type=float, nargs="+", default=[1, 2, 5, 10, 20])
    args = ap.parse_args()

    import torch

    from retr.retriever.modeling.cross_encoder import CrossEncoder
    from retr.retriever.training.arguments import TrainConfig
    from retr.retriever.training.collator import RerankCollator
    from retr.retriever.training.driver import supervised_examples

    print("| negatives (mined:random) | top-1 = positive | " + " | ".join(f"loss at scale {s:g}" for s in args.scales) + " |")
    print("|---|---:|" + "---:|" * len(args.scales))
    for mix in args.mix:
        neg, rnd = (int(x) for x in mix.split(":"))
        cfg = TrainConfig(mode="reranker", train_data=[args.data], train_split="train", negatives_file=args.negatives,
                          train_negatives=neg, train_random_negatives=rnd)
        examples = supervised_examples(cfg)
        torch.manual_seed(0)
        ce = CrossEncoder.from_pretrained(args.model, max_length=args.max_length, head="segment-cosine").eval()
        with torch.no_grad():
            ce.segment.scale.fill_(1.0)
        collate = RerankCollator(ce, examples, n_negatives=neg, seed=42, n_random=rnd)
        idx = torch.randperm(len(examples), generator=torch.Generator().manual_seed(1))[:args.groups].tolist()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            cos = ce(collate(idx, 0)["pairs"])["pairs"].float().reshape(len(idx), -1)
        top1 = (cos.argmax(1) == 0).float().mean().item()
        target = torch.zeros(len(idx), dtype=torch.long)
        losses = [torch.nn.functional.cross_entropy(s * cos, target).item() for s in args.scales]
        print(f"| {neg}:{rnd} (chance {math.log(cos.size(1)):.3f}) | {top1:.0%} | "
              + " | ".join(f"{x:.3f}" for x in losses) + " |", flush=True)


if __name__ == "__main__":
    main()
