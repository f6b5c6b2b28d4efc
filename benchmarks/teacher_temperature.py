"""Pick a distillation teacher temperature without labels (issue 20, RESULTS §15 "Third design"): the
temperature whose teacher distribution over each query's candidates (softmax of score / T) has the mean entropy
closest to the untrained student's (all-MiniLM-L6-v2 cosine / 0.05), on the first ``--groups`` groups of a
`retr score` file. Prints each temperature's entropy on stderr and the chosen one on stdout.

    .venv/bin/python benchmarks/teacher_temperature.py scored.jsonl [--groups 120]

Memory: the first ``--groups`` lines and one group's passage vectors.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
TEMPERATURES = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


def entropy(logits: np.ndarray) -> float:
    p = np.exp(logits - logits.max())
    p /= p.sum()
    return float(-(p * np.log(p + 1e-12)).sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scored")
    ap.add_argument("--groups", type=int, default=120)
    args = ap.parse_args()
    from sentence_transformers import SentenceTransformer

    from retr.retriever.modeling import packaged_minilm_path

    student = SentenceTransformer(packaged_minilm_path(), device="cpu", trust_remote_code=False)
    s_ent, t_ent = [], {t: [] for t in TEMPERATURES}
    with open(args.scored, encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if i >= args.groups:
                break
            row = json.loads(line)
            group = row["positive_passages"][:1] + row["negative_passages"]
            if len(group) < 4:
                continue
            teacher = np.array([p["score"] for p in group])
            q = student.encode([row["query"]], normalize_embeddings=True)[0]
            ps = student.encode([(p.get("title", "") + " " + p["text"]).strip() for p in group],
                                normalize_embeddings=True, batch_size=32)
            s_ent.append(entropy(ps @ q / 0.05))
            for t in TEMPERATURES:
                t_ent[t].append(entropy(teacher / t))
    target = float(np.mean(s_ent))
    best = min(TEMPERATURES, key=lambda t: abs(np.mean(t_ent[t]) - target))
    print(f"student entropy {target:.3f}; teacher " + " ".join(f"T{t:g}: {np.mean(v):.3f}" for t, v in t_ent.items()),
          file=sys.stderr)
    print(best)


if __name__ == "__main__":
    main()
