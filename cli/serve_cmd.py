"""``retr serve``: the searcher of ``retr search`` (same index/model/BM25/hybrid/rerank options) over HTTP."""
from __future__ import annotations

from typing import Annotated

import typer

from . import common


def serve_command(
    ctx: typer.Context,
    index: common.Index,
    model: common.OptModel = None,
    host: Annotated[str, typer.Option("--host", help="Address to bind (default: this machine only; 0.0.0.0 "
                                      "exposes the server to the network, with no authentication).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", help="TCP port.")] = 8000,
    k: Annotated[int, typer.Option("--k", "-k", help="Hits per query when a request gives no k.")] = 10,
    max_k: Annotated[int, typer.Option("--max-k", help="Largest k a request may ask for (above: 422).")] = 1000,
    max_query_chars: Annotated[int, typer.Option("--max-query-chars", help="Longest query, in characters "
                                                 "(above: 422).")] = 2048,
    max_batch_queries: Annotated[int, typer.Option("--max-batch-queries", help="Most queries in one "
                                                   "/batch_search request (above: 413).")] = 256,
    max_batch: Annotated[int, typer.Option("--max-batch", help="Micro-batching: most queries merged into one "
                                           "encoder forward.")] = 64,
    max_wait_ms: Annotated[float, typer.Option("--max-wait-ms", help="Micro-batching: how long the first request "
                                               "of a batch waits for others, in ms (0: no wait, but requests "
                                               "queued during a forward still go together into the next).")] = 5.0,
    micro_batching: Annotated[bool, typer.Option("--micro-batching/--no-micro-batching", help="Merge concurrent "
                                                 "requests into one forward; off = one request per forward (the "
                                                 "baseline).")] = True,
    max_pending: Annotated[int, typer.Option("--max-pending", help="Queries queued at most; beyond, requests get "
                                             "503 (bounds memory under overload).")] = 4096,
    ef_search: common.EfSearch = None,
    nprobe: common.Nprobe = None,
    rescore: common.Rescore = None,
    mmap: common.Mmap = False,
    k1: common.K1 = 0.9,
    b: common.B = 0.4,
    fusion: common.Fusion = "rrf",
    alpha: common.FusionAlpha = 0.5,
    rrf_k: common.RrfK = 60,
    rerank: common.Rerank = None,
    rerank_top_k: common.RerankTopK = 100,
    rerank_alpha: common.RerankAlpha = None,
    corpus: common.RerankCorpus = None,
    precision: common.Precision = "auto",
    threads: common.Threads = 0,
    batch_size: common.BatchSize = 64,
    verbose: common.Verbose = False,
    backend: common.Backend = "torch",  # issue 22: ONNX Runtime / OpenVINO query encoding
) -> None:
    common.setup_logging(verbose)
    common.check_search_options(ctx, index, rerank, corpus)  # what `retr search` refuses, refused alike
    from retr.indexing.versions import retr_version
    from retr.retriever.searcher import SearchSetup, describe_searcher, open_searcher
    from retr.retriever.serving import ServeConfig, bind, create_app, run_server

    if not 0 < port < 65536:
        raise typer.BadParameter(f"--port must be in 1..65535, got {port}")
    config = ServeConfig(max_query_chars=max_query_chars, max_k=max_k, max_batch_queries=max_batch_queries,
                         max_batch=max_batch if micro_batching else 1, max_wait_ms=max_wait_ms if micro_batching else 0,
                         max_pending=max_pending, default_k=k, threads=threads)
    sock = bind(host, port)  # a busy port fails now, not after loading the model
    searcher = open_searcher(SearchSetup(
        index=index, model=model, mmap=mmap, ef_search=ef_search, nprobe=nprobe, rescore=rescore, k1=k1, b=b,
        fusion=fusion, alpha=alpha, rrf_k=rrf_k, rerank=rerank, rerank_top_k=rerank_top_k, rerank_alpha=rerank_alpha,
        corpus=corpus, precision=precision, batch_size=batch_size, show_progress=False, backend=backend))
    config.info = {"retr_version": retr_version(), "index_dirs": [str(i) for i in index], "precision": precision, "backend": backend,
                   "searcher": describe_searcher(searcher)}
    stopped_by = run_server(create_app(searcher, config), sock, log_level="debug" if verbose else "info")
    if stopped_by is not None:
        common.console().print(f"stopped by signal {stopped_by}; open requests were answered")
