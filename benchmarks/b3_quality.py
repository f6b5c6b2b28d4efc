"""B3 vs random batches, same batch size and steps, several seeds: fine-tune all-MiniLM-L6-v2 on a train split
with in-batch negatives only (so the batch composition is the only difference), evaluate nDCG@10 on test.

    .venv/bin/python benchmarks/b3_quality.py [--datasets scifact nfcorpus] [--seeds 1 2 3] [--big-batch 128]

To fit the study on a 2-core CPU: passages truncated to 128 tokens (train and eval; the untrained baseline is
measured the same way), bf16 autocast for training and evaluation. Examples are train queries (SciFact 809,
NFCorpus 2,590), each with one random positive per epoch: with (query, positive) pairs, NFCorpus's 43 positives
per query would make one query's pairs cluster together, where they are no negatives for each other. Also: random
batches of --big-batch (GradCache, chunk 32) for the same number of steps. Results are cached in --out per run
(B3 runs keyed by p, m, K too), so an interrupted study resumes and other p/m/K settings reuse the random runs.
Last it prints every setting measured in --out, each with its seed-by-seed difference to random batches of 32.

``--cell a|b|c|d`` (issue 21) runs the settled grid instead (``b3_grid.py``): a student that is not yet an
embedder (a random-init BERT from ``retr init-model`` with MiniLM's tokenizer) and MiniLM as B3 teacher, >= 5
paired seeds, each comparison with a paired t-test p-value and the smallest difference the seeds could detect.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
STEPS = {"scifact": 75, "nfcorpus": 150}


def evaluate_model(model, dataset) -> float:
    from retr.evaluation import evaluate
    from retr.retriever.search import DenseRetriever

    model.set_precision("bf16")
    return evaluate(DenseRetriever.build(model, dataset.corpus, show_progress=False, batch_size=128), dataset,
                    k=100, metrics=("nDCG@10",)).metrics["nDCG@10"]


def b3_tag(args) -> str:
    # "meanpos": a multi-positive example is mined by its mean positive (results without it came from the first)
    return f"b3-meanpos-p{args.p}-m{args.m}-k{args.k}"


def run(name: str, batching: str, seed: int, batch: int, out: str, args) -> float:
    from retr.retriever.data import load_beir
    from retr.retriever.training.arguments import TrainConfig
    from retr.retriever.training.driver import build_trainer

    big = batch > 32
    tag = b3_tag(args) if batching == "b3" else batching
    cfg = TrainConfig(output_dir=os.path.join(out, f"{name}-{tag}-b{batch}-s{seed}"), model="minilm",
                      train_data=[os.path.join(args.data, name)], train_split="train", pairs=False,
                      train_negatives=0, batch_size=batch, max_steps=STEPS[name], lr=args.lr, seed=seed,
                      query_max_length=64, passage_max_length=128, precision="bf16", batching=batching,
                      b3_p=args.p, b3_m=args.m, b3_cluster_size=args.k, b3_cache=os.path.join(out, "b3-cache"),
                      grad_cache=big, gc_query_chunk=32, gc_passage_chunk=32, save_steps=0, logging_steps=25)
    trainer = build_trainer(cfg)
    trainer.train()
    return evaluate_model(trainer.model, load_beir(os.path.join(args.data, name), "test"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=DATA)
    ap.add_argument("--datasets", nargs="+", default=["scifact", "nfcorpus"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--big-batch", type=int, default=128)
    ap.add_argument("--big-seeds", type=int, nargs="*", default=[1],
                    help="Seeds for the big random batch; none to skip.")
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--p", type=int, default=30)
    ap.add_argument("--m", type=int, default=100)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--out", default="out/b3-quality")
    ap.add_argument("--steps", type=int, help="Training steps for every dataset (default: %s)." % STEPS)
    ap.add_argument("--cell", choices=["a", "b", "c", "d"], nargs="+",
                    help="issue 21 grid cells (see b3_grid.py); --seeds, --out, --lr and --steps apply.")
    ap.add_argument("--mined", help="--cell c: Tevatron JSONL from `retr mine` for the pooled train sets.")
    ap.add_argument("--teacher", help="--cell: B3 teacher (default: the packaged MiniLM; a tiny model for a "
                                      "smoke test).")
    args = ap.parse_args()
    if args.cell:
        from b3_grid import run_grid  # noqa: E402  (beside this script)

        return run_grid(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")  # B3 mining report
    if args.steps:
        STEPS.update({name: args.steps for name in args.datasets})
        args.out = f"{args.out}-{args.steps}steps"  # results are cached per out dir: keep step counts apart

    from retr.indexing.atomic import write_json_atomic
    from retr.retriever.data import load_beir
    from retr.retriever.modeling import DualEncoder

    b3_key = b3_tag(args)
    results: dict = {}
    path = os.path.join(args.out, "results.json")
    if os.path.exists(path):
        results = json.load(open(path))
    os.makedirs(args.out, exist_ok=True)

    def record(key, fn):
        if key not in results:
            t0 = time.perf_counter()
            results[key] = {"ndcg10": fn(), "seconds": round(time.perf_counter() - t0)}
            write_json_atomic(path, results)
        print(key, results[key], flush=True)
        return results[key]["ndcg10"]

    for name in args.datasets:
        ds = load_beir(os.path.join(args.data, name), "test")
        record(f"{name}/base", lambda: evaluate_model(DualEncoder.from_pretrained("minilm", passage_max_length=128,
                                                                                  query_max_length=64), ds))
        for seed in args.seeds:
            record(f"{name}/random/32/{seed}", lambda: run(name, "random", seed, 32, args.out, args))
            record(f"{name}/{b3_key}/32/{seed}", lambda: run(name, "b3", seed, 32, args.out, args))
        for seed in args.big_seeds:
            record(f"{name}/random/{args.big_batch}/{seed}", lambda: run(name, "random", seed, args.big_batch,
                                                                          args.out, args))

    def stats(prefix):
        vals = [v["ndcg10"] for k, v in results.items() if k.startswith(prefix + "/")]
        if not vals:
            return "-"
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        return f"{statistics.mean(vals):.4f} ± {sd:.4f} (n={len(vals)})"

    print(f"\nnDCG@10 (test), MiniLM fine-tuned with in-batch negatives only; B3 p={args.p} m={args.m} K={args.k}; "
          f"steps {STEPS}")
    print(f"| dataset | untrained | random, batch 32 | B3, batch 32 | random, batch {args.big_batch} |")
    print("|---|---|---|---|---|")
    for name in args.datasets:
        base = results.get(f"{name}/base", {}).get("ndcg10")
        print(f"| {name} | {base:.4f} | {stats(f'{name}/random/32')} | {stats(f'{name}/{b3_key}/32')} | "
              f"{stats(f'{name}/random/{args.big_batch}')} |")
    print_all_settings(results, args.datasets)


def print_all_settings(results: dict, datasets: list[str]) -> None:
    """Every batching measured in this out dir (other p/m/K runs too), each against random batches of 32 seed by
    seed: the paired difference cancels most of the seed-to-seed noise both share."""
    print("\n| dataset | batching | batch | nDCG@10 mean ± std | n | minus random 32, paired (mean ± std) |")
    print("|---|---|---|---|---|---|")
    for name in datasets:
        runs: dict[tuple[str, str], dict[str, float]] = {}
        for key, value in results.items():
            parts = key.split("/")
            if parts[0] == name and len(parts) == 4:
                runs.setdefault((parts[1], parts[2]), {})[parts[3]] = value["ndcg10"]
        baseline = runs.get(("random", "32"), {})
        for (batching, batch), by_seed in sorted(runs.items(), key=lambda kv: (kv[0][0] != "random", kv[0])):
            vals = list(by_seed.values())
            diffs = [v - baseline[s] for s, v in by_seed.items() if s in baseline]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            paired = "-" if (batching, batch) == ("random", "32") or not diffs else (
                f"{statistics.mean(diffs):+.4f} ± {statistics.stdev(diffs) if len(diffs) > 1 else 0.0:.4f}")
            mean = statistics.mean(vals)
            if len(diffs) > 1:
                paired += f"; p={paired_stats(diffs)['p']:.3f}, detectable {paired_stats(diffs)['mdd']:.4f}"
            print(f"| {name} | {batching} | {batch} | {mean:.4f} ± {sd:.4f} | {len(vals)} | {paired} |")


def paired_stats(diffs: list[float], alpha: float = 0.05, power: float = 0.8) -> dict[str, float]:
    """Paired comparison of per-seed differences (variant - baseline, same seed): mean, std, two-sided one-sample
    t-test p-value (= scipy's paired ``ttest_rel``), and the minimum detectable difference at ``alpha`` with
    ``power``: (t[1 - alpha/2, n-1] + t[power, n-1]) * std / sqrt(n) (normal-approximation power formula with
    t quantiles), the smallest true mean difference these seeds would find significant ``power`` of the time."""
    from scipy import stats

    n = len(diffs)
    mean = statistics.mean(diffs)
    sd = statistics.stdev(diffs) if n > 1 else float("nan")
    p = float(stats.ttest_1samp(diffs, 0.0).pvalue) if n > 1 and sd > 0 else float("nan")
    mdd = (stats.t.ppf(1 - alpha / 2, n - 1) + stats.t.ppf(power, n - 1)) * sd / n ** 0.5 if n > 1 else float("nan")
    return {"n": n, "mean": mean, "sd": sd, "p": p, "mdd": float(mdd)}


if __name__ == "__main__":
    main()
