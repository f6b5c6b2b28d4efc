"""``retr search``: query an index directory; print hits, write a TREC run and/or JSON (block by block, so
memory holds the hits of ``QUERY_BLOCK`` queries at a time)."""
from __future__ import annotations

import contextlib
import functools
import json
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Optional

import typer

from . import common

QUERY_BLOCK = 1024  # queries searched (and their hits held) at a time


def search_command(
    ctx: typer.Context,
    index: Annotated[list[Path], typer.Option("--index", "-i", help="Index directory made by `retr index` (dense or "
                                              "--bm25). Repeat it to search several dense indexes of one model as "
                                              "one (e.g. one per embeddings shard); hits are merged by score.")],
    query: Annotated[Optional[list[str]], typer.Option("--query", "-q", help="A query text (repeatable).")] = None,
    queries: Annotated[Optional[Path], typer.Option("--queries", exists=True, help="Queries file: BEIR queries.jsonl, a TSV of "
                                                     "qid<TAB>text, or a BEIR folder.")] = None,
    model: common.OptModel = None,
    k: Annotated[int, typer.Option("--k", "-k", min=1, help="Hits per query.")] = 10,
    run: Annotated[Optional[Path], typer.Option("--run", help="Write a TREC run file here.")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write hits as JSON here.")] = None,
    ef_search: Annotated[Optional[int], typer.Option("--ef-search", min=1, help="HNSW efSearch for this search (no rebuild).")] = None,
    nprobe: Annotated[Optional[int], typer.Option("--nprobe", min=1, help="IVF lists visited for this search (no rebuild).")] = None,
    rescore: Annotated[Optional[int], typer.Option("--rescore", min=1, help="Fetch this many candidates and re-score them "
                                                    "exactly from stored vectors (PQ indexes built with --store-vectors).")] = None,
    mmap: Annotated[bool, typer.Option("--mmap", help="Memory-map the index instead of reading it into RAM.")] = False,
    k1: Annotated[float, typer.Option("--k1", min=0.0, help="BM25 k1 (BM25 indexes).")] = 0.9,
    b: Annotated[float, typer.Option("--b", min=0.0, max=1.0, help="BM25 b (BM25 indexes).")] = 0.4,
    rerank: common.Rerank = None,
    rerank_top_k: common.RerankTopK = 100,
    rerank_alpha: common.RerankAlpha = None,
    corpus: Annotated[Optional[Path], typer.Option("--corpus", exists=True, help="With --rerank: the corpus the index was built "
                                                    "from (BEIR folder or corpus.jsonl), for the passages' text.")] = None,
    precision: common.Precision = "auto",
    threads: common.Threads = 0,
    batch_size: common.BatchSize = 64,
    verbose: common.Verbose = False,
) -> None:
    common.setup_logging(verbose)
    common.check_outputs(files={"--run": run, "--output": output})
    from retr.retriever.data.queries import read_queries
    from retr.indexing.atomic import ArtifactError, atomic_file
    from retr.retriever.data.trec import TrecRunWriter
    from retr.retriever.search import DenseRetriever

    if not query and queries is None:
        raise typer.BadParameter("give --query TEXT or --queries FILE")
    if rerank and corpus is None:
        raise typer.BadParameter("--rerank needs --corpus (the passages' text)")
    if not rerank:
        common.reject_given(ctx, ("rerank_top_k", "rerank_alpha", "corpus"), "without --rerank")
    qmap = {f"q{i + 1}": q for i, q in enumerate(query or [])}
    if queries is not None:
        qmap.update(read_queries(queries))
    if any((i / "lucene").is_dir() for i in index):
        from retr.retriever.bm25 import BM25Retriever

        if len(index) > 1:
            raise ValueError("several --index values are for dense indexes; give one BM25 index")
        dense_only = ("model", "rescore", "mmap", "ef_search", "nprobe", "batch_size")
        common.reject_given(ctx, dense_only if rerank else (*dense_only, "precision"), "to a BM25 index")
        retriever = BM25Retriever(index[0], k1=k1, b=b)
        meta, search = retriever.meta, retriever.batch_search
    else:
        common.reject_given(ctx, ("k1", "b"), "to a dense index")
        dense = DenseRetriever.load(index, model=model, mmap=mmap, batch_size=batch_size)
        applied = dense.index.set_search_params(ef_search=ef_search, nprobe=nprobe)
        kinds = {"ef_search": "HNSW", "nprobe": "IVF"}
        for name in sorted({"ef_search", "nprobe"} - applied):
            common.reject_given(ctx, (name,), f"to a {dense.index.meta.get('factory')} index (only to {kinds[name]})")
        if rescore and dense.index.vectors is None:
            raise ArtifactError(f"{index[0]}: --rescore needs stored vectors; rebuild the index with --store-vectors")
        dense.encoder.set_precision(precision)
        meta, search = dense.index.meta, functools.partial(dense.batch_search, rescore=rescore)
    if rerank:
        from retr.indexing.atomic import check_built_from
        from retr.retriever.data.beir import load_beir
        from retr.retriever.data.corpus import load_corpus
        from retr.retriever.rerank import Reranker, RerankingRetriever

        docs = load_corpus(corpus) if corpus.is_file() else load_beir(corpus, split=None).corpus
        check_built_from(meta, docs.fingerprint, index[0])
        reranker = Reranker(rerank, show_progress=True)
        reranker.model.precision = precision
        first_stage = SimpleNamespace(batch_search=search)  # the one method RerankingRetriever calls
        search = RerankingRetriever(first_stage, reranker, docs, top_k=rerank_top_k, alpha=rerank_alpha).batch_search
    qids = list(qmap)
    shown: dict = {}
    with contextlib.ExitStack() as stack:  # run and JSON written block by block, renamed into place at the end
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
