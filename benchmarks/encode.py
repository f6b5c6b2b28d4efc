"""Encoding throughput: retr's `Encoder.encode` on each backend vs `SentenceTransformer.encode`, same model, max
length, batch size and threads, in one process, alternating order round by round to cancel drift.

    .venv/bin/python benchmarks/encode.py [--limit N] [--rounds 1] [--batch-size 32] [--bf16] [--backends]
        [--compile] [--only TEXT]

Prints docs/s for each, the ratio to ST fp32, and the min cosine to retr torch fp32 (1.0 = same vectors).
`--bf16` adds retr torch with bf16 autocast (`--precision bf16`). `--backends` (issue 22) adds ONNX Runtime fp32 (plain
graph, and fused by ORT's transformer optimizer as `--backend onnx` runs it), OpenVINO fp32 (exact), OpenVINO
bf16 hint and ONNX Runtime int8 (dynamic, per-channel, of the fused graph as `retr export --quantize int8`).
`--compile` adds `--backend compile` (torch.compile, inductor, frozen weights; fp32, and bf16 with `--bf16`),
and the same without freezing (what `--backend compile` ran before freezing was really switched on); compile
time is spent in the warm-up and printed, not counted in docs/s. `RETR_MALLOC=keep` in the environment applies
retr's opt-in malloc setting (retriever/allocator.py) to the whole process, so to every engine alike.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

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
    ap.add_argument("--backends", action="store_true", help="add ONNX Runtime / OpenVINO rows (issue 22)")
    ap.add_argument("--compile", action="store_true", help="add --backend compile (torch.compile) rows")
    ap.add_argument("--ov-streams", type=int, default=None, help="OpenVINO parallel infer requests (default: "
                    "one per thread)")
    ap.add_argument("--only", default=None, help="keep only the retr rows whose name contains this text (plus retr "
                    "torch fp32, the cosine reference), e.g. '(--backend compile)'")
    args = ap.parse_args()
    from retr.retriever.allocator import malloc_from_env

    malloc = "keep (RETR_MALLOC=keep, every engine)" if malloc_from_env() else "glibc default"

    from sentence_transformers import SentenceTransformer

    from retr.retriever.backends import CompiledRunner, OnnxRunner, OpenVinoRunner, export_for_ort, export_onnx, quantize_int8
    from retr.retriever.data import load_corpus
    from retr.retriever.modeling import Encoder, packaged_minilm_path

    texts = load_corpus(os.path.join(args.data, "corpus.jsonl")).passages()[: args.limit]
    enc = Encoder.from_pretrained("minilm")
    st = SentenceTransformer(packaged_minilm_path(), device="cpu", trust_remote_code=False)
    assert st.max_seq_length == enc.config.passage_max_length == 256
    # name -> (runner or None = torch, torch precision)
    setups: dict[str, tuple[object, str]] = {"retr torch fp32": (None, "fp32")}
    if args.bf16:
        setups["retr torch bf16 autocast"] = (None, "bf16")
    tmp = Path(tempfile.mkdtemp(prefix="retr-bench-"))
    if args.backends:
        graph = export_onnx(enc, tmp / "model.onnx")
        fused = tmp / "model_fused.onnx"
        assert export_for_ort(enc, fused), "ORT fusion did not apply"
        int8 = quantize_int8(fused, tmp / "model_int8.onnx")
        setups["retr onnx fp32 plain graph (ORT)"] = (OnnxRunner(graph), "fp32")
        setups["retr onnx fp32 fused (ORT, --backend onnx)"] = (OnnxRunner(fused), "fp32")
        setups["retr openvino fp32"] = (OpenVinoRunner(graph, "f32", streams=args.ov_streams), "fp32")
        setups["retr openvino bf16 hint"] = (OpenVinoRunner(graph, "bf16", streams=args.ov_streams), "fp32")
        setups["retr onnx int8 (ORT, export --quantize int8)"] = (OnnxRunner(int8), "fp32")
    if args.compile:
        # "not frozen": the first --backend compile, whose freezing option inductor ignored (plain addmm)
        setups["retr torch.compile fp32, not frozen"] = (CompiledRunner(enc, "f32", freeze=False), "fp32")
        setups["retr torch.compile fp32 (--backend compile)"] = (CompiledRunner(enc, "f32"), "fp32")
        if args.bf16:
            setups["retr torch.compile bf16, not frozen"] = (CompiledRunner(enc, "bf16", freeze=False), "fp32")
            setups["retr torch.compile bf16 (--backend compile --precision bf16)"] = (CompiledRunner(enc, "bf16"),
                                                                                       "fp32")
    if args.only:
        setups = {k: v for k, v in setups.items() if args.only in k or k == "retr torch fp32"}
    names = ["sentence-transformers fp32", *setups]
    times: dict[str, list[float]] = {n: [] for n in names}
    outs: dict[str, np.ndarray] = {}

    def run(name: str, sample: list[str] | None = None) -> None:
        data = texts if sample is None else sample
        t0 = time.perf_counter()
        if name.startswith("sentence-transformers"):
            out = st.encode(data, batch_size=args.batch_size, normalize_embeddings=True)
        else:
            enc.runner, enc.precision = setups[name]
            out = enc.encode(data, batch_size=args.batch_size)
        if sample is None:
            times[name].append(time.perf_counter() - t0)
            outs[name] = out

    for name in names:  # warm-up every engine (graph compilation, first allocations)
        t0 = time.perf_counter()
        run(name, texts[:64])
        print(f"warm-up {name}: {time.perf_counter() - t0:.1f} s", flush=True)
    for r in range(args.rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            run(name)
    n = len(texts)
    ref = outs["retr torch fp32"]
    st_dps = n / np.mean(times["sentence-transformers fp32"])
    print(f"\n{n} SciFact docs, batch {args.batch_size}, {torch.get_num_threads()} threads, rounds {args.rounds}, "
          f"malloc {malloc}")
    print("| encoder | docs/s | ratio vs ST fp32 | min cosine to retr torch fp32 |")
    print("|---|---|---|---|")
    for name in names:
        dps = n / np.mean(times[name])
        cos = float((outs[name] * ref).sum(1).min())
        print(f"| {name} | {dps:.1f} | {dps / st_dps:.2f}x | {cos:.6f} |")


if __name__ == "__main__":
    main()
