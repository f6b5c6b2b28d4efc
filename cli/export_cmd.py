"""``retr export``: a model as an ONNX / OpenVINO graph (pooling and normalisation inside, tokenizer and prompts
beside), or a corpus's ids + vectors as Parquet / JSONL for vector databases; each with a parity check in its
meta.json (logic: retr.retriever.export)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from . import common


def export_command(
    ctx: typer.Context,
    model: common.Model,
    output: Annotated[Path, typer.Option("--output", "-o", help="New export directory (replaced atomically "
                                         "if it is a retr export already).")],
    fmt: Annotated[Literal["onnx", "openvino", "parquet", "jsonl"], typer.Option("--format", "-f", help="onnx "
                   "| openvino: the model as a graph (model.onnx, openvino_model.xml); parquet | jsonl: ids + "
                   "vectors of the --data corpus (vectors.parquet / vectors.jsonl).")] = "onnx",
    data: Annotated[Optional[Path], typer.Option("--data", "-d", exists=True, help="BEIR folder or corpus.jsonl: "
                                                 "the corpus of a parquet/jsonl export; for every format its first "
                                                 "passages and queries are the parity sample.")] = None,
    quantize: Annotated[Optional[Literal["int8"]], typer.Option("--quantize", help="onnx only: int8 weights "
                        "(ONNX Runtime dynamic quantisation, per channel); not exact, see the parity.")] = None,
    include_text: Annotated[bool, typer.Option("--include-text", help="parquet/jsonl: add each passage's text "
                                               "(title + text) as a column.")] = False,
    parity_docs: Annotated[int, typer.Option("--parity-docs", min=1, help="Passages in the parity sample.")] = 1000,
    parity_queries: Annotated[int, typer.Option("--parity-queries", min=1, help="Queries in the parity sample "
                                                "(top-10 overlap over the sample passages).")] = 100,
    backend: common.Backend = "torch",
    precision: common.Precision = "auto",
    batch_size: common.BatchSize = 64,
    block_size: common.BlockSize = 8192,
    verbose: common.Verbose = False,
) -> None:
    common.setup_logging(verbose)
    from retr.retriever.export import MODEL_FORMATS, ExportConfig

    vectors = fmt not in MODEL_FORMATS
    if vectors and data is None:
        raise typer.BadParameter(f"--format {fmt} exports the vectors of a corpus: give --data")
    if not vectors:
        common.reject_given(ctx, ("backend", "block_size"), f"to --format {fmt} (the graph is the backend)")
    if fmt != "openvino" and not vectors and precision not in ("auto", "fp32"):
        raise typer.BadParameter(f"--precision {precision} does not apply to --format {fmt} (fp32 graph)")
    config = ExportConfig(fmt=fmt, quantize=quantize, parity_docs=parity_docs, parity_queries=parity_queries,
                          include_text=include_text, block_size=block_size, batch_size=batch_size)
    common.claim_output(output, "export")
    from retr.retriever.data.corpus import load_corpus
    from retr.retriever.data.queries import read_queries
    from retr.retriever.export import export_model, export_vectors
    from retr.retriever.modeling import DualEncoder

    corpus = queries = None
    if data is not None:
        corpus = load_corpus(data / "corpus.jsonl" if data.is_dir() else data)
        if data.is_dir() and (data / "queries.jsonl").exists():
            queries = read_queries(data)
    encoder = DualEncoder.from_pretrained(model)
    encoder.set_precision(precision)
    if vectors:
        encoder.set_backend(backend, precision)
        meta = export_vectors(encoder, corpus, output, config, queries)
        what = f"{meta['count']} vectors (dim {meta['dim']}) as {meta['file']}"
    else:
        meta = export_model(encoder, output, config, corpus, queries, precision)
        what = f"{fmt} graph ({', '.join(meta['files'])})" + (" int8" if quantize else "")
    p = meta["parity"]
    overlap = next(v for key, v in p.items() if key.startswith("top"))
    common.console().print(f"[green]wrote[/green] {output}: {what}")
    common.console().print(f"parity vs retr torch fp32 ({p['passages']} passages, {p['queries']} queries):\n"
                           f"  cosine min {p['cosine_min']:.6f}, mean {p['cosine_mean']:.6f}; "
                           f"top-10 overlap {overlap:.3f}")
