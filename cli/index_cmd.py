"""``retr index``: encode a corpus and build a FAISS index directory; ``retr index info DIR`` describes one."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from . import common

log = logging.getLogger("retr.cli")

index_app = typer.Typer(invoke_without_command=True, no_args_is_help=False, rich_markup_mode=None,
                        cls=common.HelpGroup,
                        help="Build an index from a corpus (`retr index -m MODEL -d DATA -o DIR`); "
                             "`retr index info DIR` prints what an index holds.")

IndexType = Annotated[str, typer.Option("--index-type", "-t", help="flat | hnsw | ivf | pq | ivfpq | sq8, or any FAISS "
                                        "index_factory string (e.g. 'IVF1024,PQ32x8').")]


@index_app.callback()
def index_command(
    ctx: typer.Context,
    model: Annotated[Optional[str], typer.Option("--model", "-m", callback=common.check_model,
                                                 help="Encoder: local directory, hub id, or `minilm`.")] = None,
    data: Annotated[Optional[Path], typer.Option("--data", "-d", exists=True, help="BEIR dataset folder or a "
                                                 "corpus.jsonl file.")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Index directory to write (atomically).")] = None,
    bm25: Annotated[bool, typer.Option("--bm25", help="Build a BM25 (Lucene, via pyserini) index instead of a dense one; "
                                        "title + text in one field, as pyserini's BEIR regressions.")] = False,
    from_embeddings: Annotated[Optional[Path], typer.Option("--from-embeddings", exists=True, file_okay=False, help="Build from `retr encode` shards "
                                                             "in this directory instead of encoding (no --model/--data).")] = None,
    append: Annotated[bool, typer.Option("--append", help="Add the corpus documents not yet in the existing index at "
                                          "--output (only they are encoded).")] = False,
    index_type: IndexType = "flat",
    metric: Annotated[Literal["ip", "l2"], typer.Option("--metric", help="ip (inner product; cosine when normalised) "
                                                        "or l2.")] = "ip",
    hnsw_m: Annotated[int, typer.Option("--hnsw-m", min=2, help="HNSW: neighbours per node (M).")] = 32,
    ef_construction: Annotated[int, typer.Option("--ef-construction", min=1, help="HNSW: candidate list size while "
                                                 "building.")] = 200,
    ef_search: Annotated[int, typer.Option("--ef-search", min=1, help="HNSW: default candidate list size while "
                                           "searching.")] = 128,
    nlist: Annotated[Optional[int], typer.Option("--nlist", min=1, help="IVF: number of lists (default ~4*sqrt(N)).")] = None,
    nprobe: Annotated[int, typer.Option("--nprobe", min=1, help="IVF: default lists visited per query.")] = 16,
    pq_m: Annotated[Optional[int], typer.Option("--pq-m", min=1, help="PQ: sub-quantisers (default dim/4).")] = None,
    pq_bits: Annotated[int, typer.Option("--pq-bits", min=1, max=16, help="PQ: bits per sub-quantiser code.")] = 8,
    train_sample: Annotated[int, typer.Option("--train-sample", min=1, help="IVF/PQ: vectors sampled to train the "
                                              "quantisers.")] = 100_000,
    store_vectors: Annotated[bool, typer.Option("--store-vectors", help="Keep float32 vectors beside the index for exact "
                                                "re-scoring (`retr search --rescore`).")] = False,
    batch_size: common.BatchSize = 64,
    block_size: common.BlockSize = 8192,
    precision: common.Precision = "auto",
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
) -> None:
    if ctx.invoked_subcommand is not None:
        return
    common.setup_logging(verbose)
    from retr.indexing.faiss_index import FaissIndex, IndexSpec

    spec = IndexSpec(index_type=index_type, metric=metric, hnsw_m=hnsw_m, ef_construction=ef_construction,
                     ef_search=ef_search, nlist=nlist, nprobe=nprobe, pq_m=pq_m, pq_bits=pq_bits,
                     train_sample=train_sample, store_vectors=store_vectors)
    _reject_unused(ctx, spec, bm25=bm25, from_embeddings=from_embeddings is not None, append=append)
    common.claim_output(output, "index")  # before any work: refuse non-index paths, check writable, lock
    if from_embeddings is not None:
        if output is None:
            raise typer.BadParameter("--output is required")
        from retr.indexing.shards import load_shards

        vectors, ids, meta = load_shards(from_embeddings)
        index = FaissIndex.build(vectors, ids, spec, meta={k: v for k, v in meta.items()
                                                           if k not in ("num_shards", "encoding")}, show_progress=True)
        index.save(output)
        source = f"{meta.get('num_shards')} shard(s)"
        if (from_embeddings / "meta.json").exists():  # one shard directory of a split run
            source = from_embeddings.name
        common.console().print(f"[green]wrote[/green] {output}: {index.meta['factory']} index of {len(ids)} docs "
                               f"from {source}")
        return
    if data is None or output is None or (model is None and not bm25 and not append):
        raise typer.BadParameter("--data, --output and (unless --bm25) --model are required (see `retr index --help`)")
    from retr.retriever.data.corpus import load_corpus
    from retr.retriever.modeling import DualEncoder
    from retr.retriever.search import DenseRetriever

    corpus_path = data / "corpus.jsonl" if data.is_dir() else data
    corpus = load_corpus(corpus_path)
    log.info("loaded %d documents from %s", len(corpus), corpus_path)
    if bm25:
        from retr.retriever.bm25 import BM25Retriever

        BM25Retriever.build(corpus, output)
        common.console().print(f"[green]wrote[/green] {output}: BM25 (Lucene) index of {len(corpus)} docs")
        return
    overrides = common.encoder_overrides(pooling, normalize, query_prefix, passage_prefix, query_max_length,
                                         passage_max_length, dim, query_instruction, task, torch_dtype)
    if append:
        from retr.retriever.search import add_documents

        added = add_documents(output, corpus, model=model, batch_size=batch_size, block_size=block_size,
                              precision=precision, backend=backend, **overrides)
        common.console().print(f"[green]appended[/green] {added} new documents to {output}")
        return
    encoder = DualEncoder.from_pretrained(model, **overrides)
    encoder.set_precision(precision)
    encoder.set_backend(backend, precision)
    retriever = DenseRetriever.build(encoder, corpus, output, spec=spec, batch_size=batch_size, block_size=block_size)
    meta = retriever.index.meta
    common.console().print(f"[green]wrote[/green] {output}: {meta['factory']} index of {meta['count']} docs, dim {meta['dim']}")


SPEC_OPTIONS = ("index_type", "metric", "hnsw_m", "ef_construction", "ef_search", "nlist", "nprobe", "pq_m", "pq_bits",
                "train_sample", "store_vectors")
ENCODING_OPTIONS = ("model", "batch_size", "block_size", "precision", *common.ENCODER_OPTIONS, "backend")


def _reject_unused(ctx: typer.Context, spec, bm25: bool, from_embeddings: bool, append: bool) -> None:
    """Refuse options that would do nothing in this mode (one line, before any work): encoder options with
    --from-embeddings, index parameters with --append or --bm25, and tuning flags the index type ignores."""
    modes = [flag for flag, on in (("--bm25", bm25), ("--from-embeddings", from_embeddings), ("--append", append)) if on]
    if len(modes) > 1:
        raise typer.BadParameter(f"{' and '.join(modes)} exclude each other")
    if from_embeddings:
        common.reject_given(ctx, ("data", *ENCODING_OPTIONS), "with --from-embeddings (its vectors are encoded already)")
    if bm25:
        common.reject_given(ctx, (*ENCODING_OPTIONS, *SPEC_OPTIONS), "to a --bm25 index")
    elif append:
        common.reject_given(ctx, SPEC_OPTIONS, "with --append (the index keeps its type and parameters)")
    else:
        common.reject_given(ctx, spec.unused_params(), f"to --index-type {spec.index_type}")


@index_app.command("info", help="Print an index directory's meta.json (type, parameters, model, corpus).")
def info_command(index_dir: Annotated[Path, typer.Argument(help="Index directory.")]) -> None:
    from rich.table import Table

    from retr.indexing.atomic import ArtifactError, read_json

    meta_path = index_dir / "meta.json"
    if not meta_path.exists():
        raise ArtifactError(f"{index_dir}: not an index directory (missing meta.json)")
    from retr.indexing.validate import check_fields

    meta = check_fields(read_json(meta_path), {}, str(meta_path))  # a JSON object, or one line
    table = Table(title=str(index_dir), show_header=False)
    for key, value in meta.items():
        table.add_row(key, json.dumps(value, indent=1) if isinstance(value, (dict, list)) else str(value))
    size = sum(f.stat().st_size for f in index_dir.iterdir() if f.is_file())
    table.add_row("bytes on disk", f"{size:,}")
    common.console().print(table)
