"""Peak memory of one MoCo + GradCache training step (Contriever-style unsupervised, SciFact corpus) at contrastive
batch 32 / 128 / 512 with a fixed chunk. Keys are encoded in chunks and the MoCo loss computed over query chunks
(retr now), or all at once (``--whole-keys`` / ``--whole-loss``: the behaviour before).

    .venv/bin/python benchmarks/moco_memory.py [--model minilm] [--batches 32 128 512] [--queue-size 131072]
                                               [--chunk 32] [--whole-keys] [--whole-loss] [--fixed-crops]

``--fixed-crops``: every crop is half its 256-token chunk (ratio_min = ratio_max = 0.5, no word deletion), so
every GradCache chunk has the same width at every batch size. With random crops (the default) a larger batch has
more chunks and so more often one whose longest crop is the maximal 130 tokens: the peak (one chunk's graph)
then rises a little with the batch for that reason alone.

Each point runs in a fresh process (peak RSS is process-wide). Model, optimizer state and data are loaded and one
warm-up step is run first (AdamW allocates its moments, the queue fills); then the kernel's RSS high-water mark is
reset (``/proc/self/clear_refs`` = 5) and the figure is the peak RSS of the *second* step minus the RSS just before
it: what the step itself needs. Before that step the queue is filled to its full length with random unit keys, the
steady state of a run (after queue/batch steps) and Contriever's start: the loss then scores every query against
``queue_size`` keys (``--partial-queue``: keep the one batch of keys the warm-up step queued). ``MALLOC_MMAP_THRESHOLD_`` is fixed at 64 KiB in the child so freed tensors go back
to the OS instead of staying in malloc's heap (which would hide the next step's need). Absolute peak RSS of the
process is printed too.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "scifact")


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def one_point(model: str, batch: int, queue_size: int, chunk: int, whole_keys: bool, whole_loss: bool, fixed: bool,
              data: str, full_queue: bool = True) -> dict:
    import tempfile

    import torch

    from retr.retriever.training.arguments import TrainConfig
    from retr.retriever.training.driver import build_trainer

    torch.manual_seed(0)
    cfg = TrainConfig(output_dir=tempfile.mkdtemp(prefix="moco-mem-"), mode="unsupervised", model=model,
                      train_data=[data], batch_size=batch, moco=True, queue_size=queue_size, grad_cache=True,
                      gc_query_chunk=chunk, gc_passage_chunk=chunk, max_steps=2, save_steps=0, seed=0,
                      **(dict(ratio_min=0.5, ratio_max=0.5, deletion_prob=0.0) if fixed else {}))
    trainer = build_trainer(cfg)
    if whole_keys:
        trainer.task.key_chunk = None  # the behaviour before: every key of the batch in one forward
    if whole_loss:
        trainer.task.loss.row_chunk = None  # the loss's [B, B + queue] logits at once
    batches = trainer.sampler.batches(0)
    inputs = [trainer.collate(b, 0) for b in batches[:2]]
    trainer.compute_gradients(inputs[0])
    trainer.optimizer_step()
    if full_queue:
        loss = trainer.task.loss
        loss.enqueue(torch.nn.functional.normalize(torch.randn(queue_size, loss.queue.size(1)), dim=-1))
    before = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset VmHWM to the current RSS
    t0 = time.perf_counter()
    trainer.compute_gradients(inputs[1])
    trainer.optimizer_step()
    seconds = time.perf_counter() - t0
    peak = _status_kib("VmHWM")
    crop_tokens = int(inputs[1]["passages"]["attention_mask"].sum()) / batch
    return {"batch": batch, "step_peak_mib": (peak - before) / 1024, "process_peak_mib": peak / 1024,
            "seconds": round(seconds, 2), "mean_key_crop_tokens": round(crop_tokens, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--batches", type=int, nargs="+", default=[32, 128, 512])
    ap.add_argument("--queue-size", type=int, default=131072)
    ap.add_argument("--chunk", type=int, default=32)
    ap.add_argument("--whole-keys", action="store_true", help="encode keys in one forward (the old behaviour)")
    ap.add_argument("--whole-loss", action="store_true", help="MoCo logits of the whole batch at once (the old behaviour)")
    ap.add_argument("--fixed-crops", action="store_true", help="every crop 128 tokens (same chunk width at every batch)")
    ap.add_argument("--partial-queue", action="store_true", help="do not fill the queue before the measured step")
    ap.add_argument("--data", default=DATA)
    ap.add_argument("--point", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.point:
        print(json.dumps(one_point(args.model, args.point, args.queue_size, args.chunk, args.whole_keys,
                                   args.whole_loss, args.fixed_crops, args.data, not args.partial_queue)))
        return
    rows = []
    for b in args.batches:
        cmd = [sys.executable, __file__, "--point", str(b), "--model", args.model, "--queue-size", str(args.queue_size),
               "--chunk", str(args.chunk), "--data", args.data]
        cmd += [f for f, on in (("--whole-keys", args.whole_keys), ("--whole-loss", args.whole_loss),
                                ("--fixed-crops", args.fixed_crops), ("--partial-queue", args.partial_queue)) if on]
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if out.returncode:
            sys.exit(out.stderr[-2000:])
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    base = rows[0]["step_peak_mib"]
    keys = "whole batch (before)" if args.whole_keys else f"chunks of {args.chunk}"
    loss = "whole batch (before)" if args.whole_loss else f"chunks of {args.chunk}"
    crops = "fixed 128 tokens" if args.fixed_crops else "random (U[0.1, 0.5] of 256, deletion 0.1)"
    queue = "one batch of keys" if args.partial_queue else "full"
    print(f"model {args.model}, --moco --grad-cache, chunk {args.chunk}, queue {args.queue_size} ({queue}), "
          f"keys: {keys}, loss: {loss}, crops: {crops}")
    print("| batch | step peak (MiB) | x batch %d | process peak (MiB) | step s | key crop tokens |" % rows[0]["batch"])
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['batch']} | {r['step_peak_mib']:.0f} | {r['step_peak_mib'] / max(base, 1e-9):.2f} | "
              f"{r['process_peak_mib']:.0f} | {r['seconds']} | {r['mean_key_crop_tokens']} |")


if __name__ == "__main__":
    main()
