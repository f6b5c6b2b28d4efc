"""``retr search``: query an index directory; print hits, write a TREC run and/or JSON (block by block, so
memory holds the hits of ``QUERY_BLOCK`` queries at a time)."""
from __future__ import annotations

import contextlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import common

QUERY_BLOCK = 1024  # queries searched (and their hits held) at a time


def search_command(
    ctx: typer.Context,
    index: common.Index,
    query: Annotated[Optional[list[str]], typer.Option("--query", "-q", help="A query text (repeatable).")] = None,
    queries: Annotated[Optional[Path], typer.Option("--queries", exists=True, help="Queries file: BEIR queries.jsonl, a TSV of "
                                                     "qid<TAB>text, or a BEIR folder.")] = None,
    model: common.OptModel = None,
    k: Annotated[int, typer.Option("--k", "-k", min=1, help="Hits per query.")] = 10,
    run: Annotated[Optional[Path], typer.Option("--run", help="Write a TREC run file here.")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write hits as JSON here.")] = None,
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
    torch_dtype: common.TorchDtype = None,
    verbose: common.Verbose = False,
    backend: common.Backend = "torch",  # issue 22: ONNX Runtime / OpenVINO query encoding
) -> None:
    common.setup_logging(verbose)
    common.check_outputs(files={"--run": run, "--output": output})
    from retr.retriever.data.queries import read_queries
    from retr.indexing.atomic import atomic_file
    from retr.retriever.data.trec import TrecRunWriter
    from retr.retriever.searcher import SearchSetup, open_searcher

    if not query and queries is None:
        raise typer.BadParameter("give --query TEXT or --queries FILE")
    common.check_search_options(ctx, index, rerank, corpus)
    qmap = {f"q{i + 1}": q for i, q in enumerate(query or [])}
    if queries is not None:
        qmap.update(read_queries(queries))
    search = open_searcher(SearchSetup(
        index=index, model=model, mmap=mmap, ef_search=ef_search, nprobe=nprobe, rescore=rescore, k1=k1, b=b,
        fusion=fusion, alpha=alpha, rrf_k=rrf_k, rerank=rerank, rerank_top_k=rerank_top_k, rerank_alpha=rerank_alpha,
        corpus=corpus, precision=precision, batch_size=batch_size, show_progress=len(qmap) <= QUERY_BLOCK,
        encoder_overrides=common.encoder_overrides(torch_dtype=torch_dtype), backend=backend)).batch_search
    qids = list(qmap)
    shown: dict = {}
    with contextlib.ExitStack() as stack:  # run and JSON written block by block, renamed into place at the end
        bar = None
        if len(qids) > QUERY_BLOCK:  # one bar (rate, ETA) for all blocks, not one bar per block
            from tqdm.auto import tqdm

            bar = stack.enter_context(tqdm(total=len(qids), desc="queries", unit="query"))
        writer = stack.enter_context(TrecRunWriter(run, tag="retr")) if run else None
        json_out = stack.enter_context(atomic_file(output)) if output else None
        if json_out is not None:
            json_out.write("{")
        for s in range(0, len(qids), QUERY_BLOCK):
            block = qids[s:s + QUERY_BLOCK]
            results = search([qmap[q] for q in block], block, k=k, threads=threads)
            if writer is not None:
                writer.write(results)
            if json_out is not None:
                json_out.write(",".join(f"\n{json.dumps(q)}: {json.dumps([asdict(h) for h in results[q]])}"
                                        for q in block if q in results) + ("," if s + QUERY_BLOCK < len(qids) else ""))
            if len(qmap) <= 5:
                shown.update(results)
            if bar is not None:
                bar.update(len(block))
        if json_out is not None:
            json_out.write("\n}\n")
    if len(qmap) <= 5:
        from rich.table import Table

        con = common.console()
        for qid, hits in shown.items():
            table = Table(title=f"{qid}: {qmap[qid][:80]}")
            for col in ("rank", "docid", "score"):
                table.add_column(col)
            for h in hits:
                table.add_row(str(h.rank), h.docid, f"{h.score:.4f}")
            con.print(table)
    else:
        common.console().print(f"searched {len(qmap)} queries, k={k}" + (f"; run written to {run}" if run else ""))
