"""``retr eval``: encode -> index -> search -> BEIR metrics, printed as a table and written as JSON."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from . import common

log = logging.getLogger("retr.cli")


def eval_command(
    ctx: typer.Context,
    data: Annotated[list[Path], typer.Option("--data", "-d", exists=True, file_okay=False, help="BEIR dataset folder (repeatable), or a folder of "
                                             "BEIR datasets: several datasets make a leaderboard run.")],
    suite: Annotated[Optional[Path], typer.Option("--suite", exists=True, dir_okay=False, help="YAML/JSON list of retrieval set-ups (leaderboard "
                                                   "run: every set-up on every dataset, indexes cached and reused).")] = None,
    output_dir: Annotated[Optional[Path], typer.Option("--output-dir", help="Leaderboard run: where results, runs, "
                                                        "MTEB files and the table go.")] = None,
    cache_dir: Annotated[Optional[Path], typer.Option("--cache-dir", help="Leaderboard run: index cache (default "
                                                       "OUTPUT_DIR/cache).")] = None,
    model: common.OptModel = None,
    split: common.Split = "test",
    retriever_kind: Annotated[Literal["dense", "bm25", "hybrid"], typer.Option("--retriever", "-r", help="First stage: dense | bm25 | hybrid "
                                                "(BM25 + dense fused).")] = "dense",
    index: Annotated[Optional[Path], typer.Option("--index", "-i", help="Index directory: reused when it exists and "
                                                   "matches the corpus and model, else built and saved there.")] = None,
    bm25_index: Annotated[Optional[Path], typer.Option("--bm25-index", help="BM25 index directory for --retriever "
                                                        "hybrid (reused or built).")] = None,
    k1: Annotated[float, typer.Option("--k1", min=0.0, help="BM25 k1.")] = 0.9,
    b: Annotated[float, typer.Option("--b", min=0.0, max=1.0, help="BM25 b.")] = 0.4,
    fusion: Annotated[Literal["rrf", "weighted"], typer.Option("--fusion", help="Hybrid fusion: rrf (reciprocal rank) or weighted "
                                         "(min-max normalised score sum).")] = "rrf",
    alpha: Annotated[float, typer.Option("--alpha", min=0.0, max=1.0, help="Weighted fusion: weight of the dense run (BM25 gets 1-alpha).")] = 0.5,
    rrf_k: Annotated[int, typer.Option("--rrf-k", min=0, help="RRF constant k in 1/(k + rank).")] = 60,
    rerank: common.Rerank = None,
    rerank_top_k: common.RerankTopK = 100,
    rerank_alpha: common.RerankAlpha = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write metrics and settings as JSON here.")] = None,
    run: Annotated[Optional[Path], typer.Option("--run", help="Write the TREC run file here.")] = None,
    k: Annotated[int, typer.Option("--k", "-k", min=1, help="Documents retrieved per query (BEIR uses 1000).")] = 1000,
    ignore_identical_ids: Annotated[bool, typer.Option("--ignore-identical-ids/--keep-identical-ids",
                                                       help="Drop hits whose doc id equals the query id, as BEIR does "
                                                       "(matters for ArguAna).")] = True,
    allow_missing_docs: common.AllowMissingDocs = False,
    batch_size: common.BatchSize = 64,
    precision: common.Precision = "auto",
    threads: common.Threads = 0,
    pooling: common.Pooling = None,
    normalize: common.Normalize = None,
    query_prefix: common.QueryPrefix = None,
    passage_prefix: common.PassagePrefix = None,
    query_max_length: common.QueryMaxLen = None,
    passage_max_length: common.PassageMaxLen = None,
    dim: common.Dim = None,
    query_instruction: common.QueryInstruction = None,
    task: common.Task = None,
    torch_dtype: common.TorchDtype = None,
    verbose: common.Verbose = False,
    backend: common.Backend = "torch",  # issue 22: ONNX Runtime / OpenVINO encoding
    # issue 16: evaluate on an existing dense index larger than RAM (pages read from the page cache)
    mmap: Annotated[bool, typer.Option("--mmap", help="Memory-map an existing dense --index instead of reading it "
                                       "into RAM (for indexes larger than memory; slower on a cold cache).")] = False,
) -> None:
    common.setup_logging(verbose)
    leaderboard = suite is not None or len(data) > 1 or not (data[0] / "corpus.jsonl").exists()
    _reject_unused(ctx, leaderboard, suite is not None, retriever_kind, fusion, rerank is not None)
    common.check_outputs(files={"--output": output, "--run": run},
                         dirs={"--index": (index, "index"), "--bm25-index": (bm25_index, "index"),
                               "--output-dir": (output_dir, ""), "--cache-dir": (cache_dir, "")})
    from retr.evaluation.evaluate import evaluate
    from retr.evaluation.report import metrics_table, result_record
    from retr.indexing.atomic import write_json_atomic
    from retr.retriever.data.beir import load_beir
    from retr.retriever.pipeline import build_retriever, describe_retriever

    t0 = time.perf_counter()
    if leaderboard:
        from retr.evaluation.leaderboard import (Setup, expand_datasets, load_baseline, load_suite,
                                                 print_leaderboard, run_suite)
        from retr.evaluation.suite_checks import legend

        baseline = None
        if suite is not None:
            setups = load_suite(suite)
            baseline = load_baseline(suite, setups)  # issue 23
        else:
            opts = {"fusion": fusion, "alpha": alpha, "rrf_k": rrf_k, "k1": k1, "b": b, "rerank_top_k": rerank_top_k}
            if rerank_alpha is not None:
                opts["rerank_alpha"] = rerank_alpha
            setups = [Setup(Path(model).name if model else retriever_kind, retriever_kind, model, rerank, opts)]
        out = output_dir or Path("out/leaderboard")
        summary = run_suite(setups, expand_datasets(data), out, split=split, k=k, cache_root=cache_dir,
                            allow_missing_docs=True, threads=threads, baseline=baseline)
        common.console().print(print_leaderboard(summary["table"], summary["datasets"], summary["marks"]))
        common.console().print(legend(baseline))
        common.console().print(print_leaderboard(summary["judged"], summary["datasets"], title="Judged@10"))
        common.console().print(f"wrote {out}/leaderboard.md, .csv, .png, results/, runs/, per_query/,\n  mteb/")
        return
    data = data[0]
    dataset = load_beir(data, split, allow_missing_docs=allow_missing_docs)
    log.info("%s: %d docs, %d judged %s queries", dataset.name, len(dataset.corpus), len(dataset.qrels), split)
    overrides = common.encoder_overrides(pooling, normalize, query_prefix, passage_prefix, query_max_length,
                                         passage_max_length, dim, query_instruction, task, torch_dtype)
    if mmap and (index is None or not (index / "meta.json").exists()):
        raise typer.BadParameter("--mmap reads an existing --index; build it first (`retr index`)")
    retriever = build_retriever(retriever_kind, dataset.corpus, model=model, index_dir=index, bm25_index=bm25_index,
                                fusion=fusion, alpha=alpha, rrf_k=rrf_k, k1=k1, b=b, rerank=rerank,
                                rerank_top_k=rerank_top_k, rerank_alpha=rerank_alpha, batch_size=batch_size,
                                precision=precision, backend=backend, mmap=mmap, **overrides)
    tag = Path(str(retriever.name)).name.replace(" ", "_") or "retr"
    result = evaluate(retriever, dataset, k=k, ignore_identical_ids=ignore_identical_ids, threads=threads,
                      run_path=run, run_tag=tag, keep_run=False)
    common.console().print(metrics_table({f"{dataset.name} ({split})": result.metrics}, title=retriever.name))
    if output:
        record = result_record(result, retriever_settings=describe_retriever(retriever),
                               seconds=time.perf_counter() - t0)
        write_json_atomic(output, record)
        log.info("wrote %s", output)


ENCODING_OPTIONS = ("model", "batch_size", *common.ENCODER_OPTIONS, "backend")
BM25_OPTIONS = ("k1", "b")
HYBRID_OPTIONS = ("fusion", "alpha", "rrf_k")


def _reject_unused(ctx: typer.Context, leaderboard: bool, suite: bool, kind: str, fusion: str, rerank: bool) -> None:
    """Refuse options that would do nothing with this retriever or run (one line, before any work)."""
    if leaderboard:  # each set-up of the run brings its own retriever settings; results go to --output-dir
        single_only = ("index", "bm25_index", "output", "run", "batch_size", "precision", "allow_missing_docs",
                       "ignore_identical_ids", *common.ENCODER_OPTIONS, "backend", "mmap")
        per_setup = ("model", "retriever_kind", "rerank", *BM25_OPTIONS, *HYBRID_OPTIONS, "rerank_top_k", "rerank_alpha")
        common.reject_given(ctx, single_only, "to a leaderboard run (--suite or several datasets)")
        if suite:
            common.reject_given(ctx, per_setup, "with --suite (each set-up of the suite sets its own)")
        return
    common.reject_given(ctx, ("output_dir", "cache_dir"), "to one dataset (they are for leaderboard runs)")
    if not rerank:
        common.reject_given(ctx, ("rerank_top_k", "rerank_alpha"), "without --rerank")
    if kind == "dense":
        common.reject_given(ctx, ("bm25_index", *BM25_OPTIONS, *HYBRID_OPTIONS), "to --retriever dense")
    elif kind == "bm25":
        unused = (*ENCODING_OPTIONS, *HYBRID_OPTIONS, *(() if rerank else ("precision",)), "mmap")  # precision: reranker's
        common.reject_given(ctx, unused, "to --retriever bm25")
    else:
        common.reject_given(ctx, ("rrf_k",) if fusion == "weighted" else ("alpha",), f"to --fusion {fusion}")
