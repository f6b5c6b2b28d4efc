"""Unsupervised training from a random-init BERT on SciFact's corpus: Contriever's chunking/scoring vs retr's, a
SciFact nDCG@10 curve per set-up (same model init, steps, seeds, crops settings; only the named options differ).

    .venv/bin/python benchmarks/contriever_unsup.py [--arms retr contriever stream-cos doc-dot] [--seeds 1 2]
        [--steps 300] [--eval-steps 100] [--out out/contriever-unsup] [--moco] [--extra "..."] [--prefix heavy]

Arms (the options that differ; everything else is the command printed at the start):
  retr         --chunking document --normalize      (per-document chunks, cosine)
  contriever   --chunking stream --no-normalize     (one token stream across documents, raw dot product)
  stream-cos   --chunking stream --normalize        (Contriever's chunking alone)
  doc-dot      --chunking document --no-normalize   (Contriever's scoring alone)
With ``--moco`` the MoCo arms add --queue-init empty (retr) / random (contriever). A finished run (its
``meta.json`` exists) is not re-run; the table is read from each run's ``train_log.jsonl``.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "scifact"
ARMS = {
    "retr": "--chunking document --normalize",
    "contriever": "--chunking stream --no-normalize",
    "stream-cos": "--chunking stream --normalize",
    "doc-dot": "--chunking document --no-normalize",
}
MOCO = {"retr": "--queue-init empty", "contriever": "--queue-init random", "stream-cos": "--queue-init empty",
        "doc-dot": "--queue-init empty"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arms", nargs="+", default=["retr", "contriever"], choices=sorted(ARMS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[1])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--eval-steps", type=int, default=100)
    ap.add_argument("--out", default="out/contriever-unsup")
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--moco", action="store_true", help="MoCo (queue + momentum encoder) instead of in-batch")
    ap.add_argument("--extra", default="", help="more `retr train` options for every arm")
    ap.add_argument("--prefix", default="", help="command prefix for each run, e.g. `heavy` (a machine-wide queue)")
    args = ap.parse_args()
    retr = str(Path(sys.executable).parent / "retr")
    out = Path(args.out)
    model = out / "bert-l4-h256"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    if not (model / "config.json").exists():
        subprocess.run([retr, "init-model", "-o", str(model), "--layers", "4", "--hidden", "256", "--heads", "4",
                        "--seed", "0"], check=True, env=env)
    common = (f"train --mode unsupervised -m {model} -d {args.data} --batch-size 64 --max-steps {args.steps} "
              f"--lr 3e-4 --warmup-ratio 0.05 --chunk-length 256 --eval-data {args.data} "
              f"--eval-steps {args.eval_steps} --save-steps 0 --logging-steps 50 "
              + ("--moco --momentum 0.99 " if args.moco else "--in-batch ") + args.extra)
    print(f"common: retr {common} --seed S -o {out}/<arm>-sS\n")
    curves: dict[str, dict[int, dict[int, float]]] = {}
    for arm in args.arms:
        flags = ARMS[arm] + (" " + MOCO[arm] if args.moco else "")
        for seed in args.seeds:
            run = out / f"{arm}{'-moco' if args.moco else ''}-s{seed}"
            if not (run / "meta.json").exists():
                cmd = [*shlex.split(args.prefix), retr, *shlex.split(common), *shlex.split(flags), "--seed", str(seed),
                       "-o", str(run)]
                print("running:", " ".join(cmd), flush=True)
                subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
            for line in (run / "train_log.jsonl").read_text().splitlines():
                rec = json.loads(line)
                if "eval/nDCG@10" in rec:
                    curves.setdefault(arm, {}).setdefault(seed, {})[rec["step"]] = rec["eval/nDCG@10"]
    steps = sorted({s for arm in curves.values() for c in arm.values() for s in c})
    print("\nSciFact nDCG@10 (test) per step; mean over seeds, then each seed")
    print("| set-up | options | " + " | ".join(f"step {s}" for s in steps) + " |")
    print("|---|---|" + "---:|" * len(steps))
    for arm, by_seed in curves.items():
        cells = []
        for s in steps:
            vals = [c[s] for c in by_seed.values() if s in c]
            mean = sum(vals) / len(vals) if vals else float("nan")
            cells.append(f"{mean:.4f} ({', '.join(f'{v:.4f}' for v in vals)})")
        print(f"| {arm} | `{ARMS[arm]}` | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
