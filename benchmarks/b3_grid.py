"""Issue 21, "B3, settled": each B3 variant against random batches with the same negatives, temperature and
steps, over >= 5 paired seeds (run through ``b3_quality.py --cell ...``).

    .venv/bin/python benchmarks/b3_quality.py --cell a b --seeds 1 2 3 4 5 --lr 5e-4 --steps 150 \\
        --out /tmp/b3-grid [--mined pooled-mined.jsonl]

Student: a random-init BERT (``retr init-model``: 2 layers, hidden 256, MiniLM's tokenizer, mean pooling), so
it is not yet an embedder; teacher: the packaged all-MiniLM-L6-v2. 64-token queries, 128-token passages, bf16.
Cells:

- a: SciFact + NFCorpus train pooled; B3 as shipped (p 30, m 100, K 32, METIS) vs random batches; in-batch
  negatives only, temperature 0.05; test nDCG@10 on both sets.
- b: the authors' construction (mutual edges, exact K, whole clusters: one cluster of 32 per batch of 32) vs
  random and vs the shipped B3.
- c: B3++ style: the authors' construction + 5 cluster-level hard negatives per query, temperature 0.02, vs
  random batches with 5 hard negatives per query from ``retr mine`` (MiniLM teacher, ranks 31-130, as B3's
  window), temperature 0.02.
- d: NFCorpus train alone; the authors' construction with sibling exclusion (rank windows skip queries sharing
  a judged positive) vs random batches, and vs the authors' construction without it.

Every run is cached in ``--out/grid.json`` (key: train sets / variant / seed), so cells resume and share runs.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

COMMON_B3 = dict(batching="b3", b3_p=30, b3_m=100, b3_cluster_size=32)
AUTHORS = dict(COMMON_B3, b3_mutual_edges=True, b3_exact_k=True, b3_clusters_per_batch=1)
VARIANTS: dict[str, dict] = {
    "random": {},
    "b3": COMMON_B3,
    "b3-authors": AUTHORS,
    "random-mined5-t0.02": dict(train_negatives=5, temperature=0.02),  # + negatives_file (--mined)
    "b3pp-t0.02": dict(AUTHORS, b3_cluster_negatives=5, train_negatives=5, temperature=0.02),
    "b3-authors-siblings": dict(AUTHORS, b3_sibling_exclusion=True),
}
POOLED = ("scifact", "nfcorpus")
CELLS: dict[str, dict] = {
    "a": {"train": POOLED, "runs": ["random", "b3"], "compare": [("b3", "random")]},
    "b": {"train": POOLED, "runs": ["random", "b3-authors", "b3"],
          "compare": [("b3-authors", "random"), ("b3-authors", "b3")]},
    "c": {"train": POOLED, "runs": ["random-mined5-t0.02", "b3pp-t0.02"],
          "compare": [("b3pp-t0.02", "random-mined5-t0.02")]},
    "d": {"train": ("nfcorpus",), "runs": ["random", "b3-authors-siblings", "b3-authors"],
          "compare": [("b3-authors-siblings", "random"), ("b3-authors-siblings", "b3-authors"),
                      ("b3-authors", "random")]},
}


def student(out: str) -> str:
    """The random-init student (written once; the same initial weights for every run and seed)."""
    path = os.path.join(out, "student")
    if not os.path.exists(path):
        from retr.cli.init_model_cmd import init_model_command

        init_model_command(output=Path(path), tokenizer="minilm", layers=2, hidden=256, heads=4, max_length=128,
                           pooling="mean", normalize=True, seed=0)
    return path


def train_and_eval(train: tuple[str, ...], variant: str, seed: int, args, tests: dict) -> dict[str, float]:
    from b3_quality import evaluate_model
    from retr.retriever.training.arguments import TrainConfig
    from retr.retriever.training.driver import build_trainer

    extra = dict(VARIANTS[variant])
    if variant.startswith("random-mined"):
        if not args.mined:
            raise SystemExit("--cell c needs --mined (Tevatron JSONL from `retr mine` for the train sets)")
        extra["negatives_file"] = args.mined
    cfg = TrainConfig(output_dir=os.path.join(args.out, "runs", f"{'+'.join(train)}-{variant}-s{seed}"),
                      model=student(args.out), train_data=[os.path.join(args.data, d) for d in train],
                      train_split="train", pairs=False, batch_size=32, max_steps=args.steps or 150, lr=args.lr,
                      seed=seed, query_max_length=64, passage_max_length=128, precision="bf16",
                      b3_cache=os.path.join(args.out, "b3-cache"), save_steps=0, logging_steps=50,
                      b3_teacher=args.teacher or "minilm",
                      **{"train_negatives": 0, **extra})
    trainer = build_trainer(cfg)
    trainer.train()
    return {name: evaluate_model(trainer.model, ds) for name, ds in tests.items() if name in train}


def run_grid(args) -> None:
    from b3_quality import paired_stats
    from retr.indexing.atomic import write_json_atomic
    from retr.retriever.data import load_beir

    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "grid.json")
    results = json.load(open(path)) if os.path.exists(path) else {}
    # runs are keyed by train sets / variant / seed only: runs of other steps, lr or teacher must not be mixed in
    settings = {"steps": args.steps or 150, "lr": args.lr, "teacher": args.teacher or "minilm"}
    held = results.get("_settings")
    if held is None and results:
        print(f"warning: {path} records no settings (runs from before they were recorded); assuming {settings}")
    elif held is None:
        results["_settings"] = settings
    elif held != settings:
        raise SystemExit(f"error: {path} holds runs with {held}, not {settings}: use another --out")
    tests = {d: load_beir(os.path.join(args.data, d), "test") for d in POOLED}
    for cell in args.cell:
        spec = CELLS[cell]
        for seed in args.seeds:  # seeds outermost: an interrupted cell still leaves paired runs
            for variant in spec["runs"]:
                key = f"{'+'.join(spec['train'])}/{variant}/{seed}"
                if key not in results:
                    t0 = time.perf_counter()
                    results[key] = {**train_and_eval(spec["train"], variant, seed, args, tests),
                                    "seconds": round(time.perf_counter() - t0)}
                    write_json_atomic(path, results)
                print(key, results[key], flush=True)
    if len(args.seeds) < 5:
        print(f"note: {len(args.seeds)} seed(s): the study's claims need >= 5 paired seeds (p is nan below 2)")
    print_grid(results, args.cell, paired_stats, seeds=[str(s) for s in args.seeds])


def print_grid(results: dict, cells: list[str], paired_stats, seeds: list[str] | None = None) -> None:
    """One row per (cell, comparison, test set): both means, the paired difference, p and the detectable one,
    over ``seeds`` (the ones asked for; other seeds cached in the same grid.json are left out)."""
    print("\n| cell | variant vs baseline | test | variant nDCG@10 | baseline | paired diff | p | detectable (80%) |")
    print("|---|---|---|---|---|---|---|---|")
    for cell in cells:
        spec = CELLS[cell]
        train = "+".join(spec["train"])
        for variant, base in spec["compare"]:
            for test in spec["train"]:
                a = {k.split("/")[2]: v[test] for k, v in results.items() if k.startswith(f"{train}/{variant}/")}
                b = {k.split("/")[2]: v[test] for k, v in results.items() if k.startswith(f"{train}/{base}/")}
                both = sorted(set(a) & set(b) & (set(seeds) if seeds is not None else set(a)))
                if not both:
                    continue
                s = paired_stats([a[x] - b[x] for x in both])
                mean_a = sum(a[x] for x in both) / len(both)
                mean_b = sum(b[x] for x in both) / len(both)
                print(f"| {cell} | {variant} vs {base} | {test} | {mean_a:.4f} | {mean_b:.4f} | "
                      f"{s['mean']:+.4f} ± {s['sd']:.4f} (n={s['n']}) | {s['p']:.3f} | {s['mdd']:.4f} |")
