"""GradCache memory and speed: peak memory of one training step (MiniLM, SciFact text, query length 64, passage
length 256, one positive per query) at contrastive batch 32 / 128 / 512 / 2048 with a fixed chunk of 32, with
and without GradCache; then step time of GradCache vs plain at the largest batch plain training fits.

    .venv/bin/python benchmarks/grad_cache.py [--batches 32 128 512 2048] [--speed-batch 128]

Each memory point runs in its own process (peak RSS is a process-wide high-water mark on CPU): the figure is
the peak RSS during the step minus the RSS just before it (model, optimizer and data already loaded). On a
GPU, torch.cuda.max_memory_allocated is reported instead. Plain runs whose projected need exceeds the free
RAM are not attempted (the projection, linear in batch size from the last measured point, is printed).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "scifact")


def build(batch: int, grad_cache: bool, chunk: int = 32):
    import torch

    from retr.retriever.data import load_beir
    from retr.retriever.data.training import Passage, TrainExample
    from retr.retriever.losses import InfoNCELoss
    from retr.retriever.modeling import DualEncoder
    from retr.retriever.training.arguments import TrainConfig
    from retr.retriever.training.collator import SupervisedCollator
    from retr.retriever.training.samplers import RandomBatchSampler
    from retr.retriever.training.tasks import InBatchTask
    from retr.retriever.training.trainer import Trainer

    torch.manual_seed(0)
    ds = load_beir(DATA, None)
    queries = list(ds.queries.values())
    c = ds.corpus
    examples = [TrainExample(str(i), queries[i % len(queries)], [Passage(c.ids[i], c.titles[i], c.texts[i])])
                for i in range(min(len(c), max(batch, 64)))]
    model = DualEncoder.from_pretrained("minilm", query_max_length=64, passage_max_length=256)
    cfg = TrainConfig(batch_size=batch, grad_cache=grad_cache, gc_query_chunk=chunk, gc_passage_chunk=chunk,
                      max_steps=10, save_steps=0, train_negatives=0)
    collate = SupervisedCollator(model, examples, n_negatives=0)
    trainer = Trainer(model, InBatchTask(InfoNCELoss()), collate, RandomBatchSampler(len(examples), batch), cfg)
    return trainer, collate(list(range(batch)), 0)


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def one_point(batch: int, grad_cache: bool) -> dict:
    import torch

    trainer, inputs = build(batch, grad_cache)
    before = rss_bytes()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    trainer.compute_gradients(inputs)
    trainer.optimizer_step()
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out = {"batch": batch, "grad_cache": grad_cache, "peak_delta": max(0, peak - before), "seconds": seconds}
    if torch.cuda.is_available():
        out["cuda_peak"] = torch.cuda.max_memory_allocated()
    return out


def free_ram() -> int:
    import psutil

    return psutil.virtual_memory().available


def speed(batch: int, reps: int) -> tuple[float, float]:
    """Mean step time (s) of plain and GradCache at the same batch, alternating, same process."""
    plain, _ = build(batch, False)
    cached, inputs = build(batch, True)
    times = {"plain": [], "gc": []}
    for r in range(reps + 1):
        for name, tr in (("plain", plain), ("gc", cached)) if r % 2 == 0 else (("gc", cached), ("plain", plain)):
            t0 = time.perf_counter()
            tr.compute_gradients(inputs)
            tr.optimizer.zero_grad(set_to_none=True)
            if r:  # the first round warms up
                times[name].append(time.perf_counter() - t0)
    return sum(times["plain"]) / reps, sum(times["gc"]) / reps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, nargs="+", default=[32, 128, 512, 2048])
    ap.add_argument("--speed-batch", type=int, default=128)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--one", nargs=2, metavar=("BATCH", "GC"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one_point(int(args.one[0]), args.one[1] == "1")))
        return
    results = {}
    for gc in (True, False):
        last = None
        for b in args.batches:
            if not gc and last is not None:
                projected = last["peak_delta"] * b / last["batch"]
                if projected > 0.8 * free_ram():
                    results[(b, gc)] = {"skipped": projected}
                    continue
            proc = subprocess.run([sys.executable, __file__, "--one", str(b), "1" if gc else "0"],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                results[(b, gc)] = {"failed": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "killed"}
                continue
            last = json.loads(proc.stdout.strip().splitlines()[-1])
            results[(b, gc)] = last
            print(last, file=sys.stderr, flush=True)
    base = results[(args.batches[0], True)]["peak_delta"]
    print("\n| batch | GradCache peak MiB | x batch-32 GC | GC step s | plain peak MiB | x batch-32 GC | plain step s |")
    print("|---|---|---|---|---|---|---|")
    for b in args.batches:
        row = [str(b)]
        for gc in (True, False):
            r = results[(b, gc)]
            if "peak_delta" in r:
                row += [f"{r['peak_delta'] / 2**20:.0f}", f"{r['peak_delta'] / base:.2f}", f"{r['seconds']:.1f}"]
            elif "skipped" in r:
                row += [f"not run (projected {r['skipped'] / 2**30:.1f} GiB)", "-", "-"]
            else:
                row += [f"failed ({r['failed'][:40]})", "-", "-"]
        print("| " + " | ".join(row) + " |")
    plain_s, gc_s = speed(args.speed_batch, args.reps)
    print(f"\nspeed at batch {args.speed_batch} (chunk 32, {args.reps} alternating reps): plain {plain_s:.1f}s/step, "
          f"GradCache {gc_s:.1f}s/step, ratio {gc_s / plain_s:.2f}x")


if __name__ == "__main__":
    main()
