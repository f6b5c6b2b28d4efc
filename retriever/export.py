"""``retr export``: a model as an ONNX / OpenVINO graph, or a corpus's vectors as Parquet / JSONL, each in a new
directory (written atomically) with a ``meta.json`` that records a **parity check** against retr's own torch
fp32 vectors.

Model export (``export_model``), directory layout::

    model.onnx                 [B, L] int64 input_ids, attention_mask -> [B, dim] float32 "embedding"
                               (pooling, --dim truncation and L2 normalisation are in the graph; int8 with
                               --quantize int8). --format onnx: BERT-like models get ONNX Runtime's fused
                               operators (meta "ort_fused"; ONNX Runtime only); --format openvino: plain ONNX
    openvino_model.xml/.bin    --format openvino: the same graph in OpenVINO IR (fp32 weights)
    tokenizer files, retr_encoder.json, config_sentence_transformers.json (prompts), model.safetensors
                               the source encoder as ``Encoder.save`` writes it, so ``retr ... -m DIR --backend
                               onnx|openvino`` loads the graph and keeps the model's fingerprint (its indexes
                               still match); a deployment needs only the graph and the tokenizer files
    meta.json                  made_by, format, quantize, graph file checksums, pooling / normalize / prompts /
                               max lengths / dim, source model and fingerprint, parity

Vector export (``export_vectors``): ``vectors.parquet`` (columns ``id`` string, ``vector``
fixed_size_list<float32>[dim], optional ``text``; one row group per encoded block) or ``vectors.jsonl``
(``{"id", "vector", "text"?}`` per line), the bulk-import formats of Milvus, Qdrant and OpenSearch.

Parity (``parity``): cosine between the exported vectors and retr torch fp32 vectors of the same sample
passages and queries (min and mean), and the mean top-10 overlap of the sample queries searched over the
sample passages with each. Samples: the first ``parity_docs`` passages and ``parity_queries`` queries of
``--data``, else a built-in handful of sentences.

Memory: the model, its graph, the sample vectors ([parity_docs + parity_queries, dim] float32, twice) and, for
vector exports, one block of passages (encoding streams to a resumable work file, see ``retriever.encoding``;
writing reads it back block by block).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .backends import ONNX_FILE, OPENVINO_FILE, export_for_ort, export_onnx, file_digest, make_runner, quantize_int8

log = logging.getLogger(__name__)

FORMATS = ("onnx", "openvino", "parquet", "jsonl")
MODEL_FORMATS = ("onnx", "openvino")
META = "meta.json"
SAMPLE_PASSAGES = [
    "Aspirin reduces the risk of heart attack in adults with cardiovascular disease.",
    "Statins lower LDL cholesterol and the risk of stroke.",
    "Vitamin D deficiency is linked to bone fractures in older people.",
    "Regular exercise improves heart health, sleep and mood.",
    "Poor sleep is associated with obesity and type 2 diabetes.",
    "Smoking causes lung cancer and heart disease.",
    "Coffee consumption and liver disease outcomes in a cohort study.",
    "High salt intake raises blood pressure.",
    "The Eiffel Tower was completed in 1889 for the World's Fair in Paris.",
    "Photosynthesis converts light energy into chemical energy in plants.",
    "A transformer encoder maps tokens to contextual vectors with self-attention.",
    "x",
]
SAMPLE_QUERIES = ["does aspirin prevent heart attacks", "cholesterol lowering drugs", "bone fractures vitamin",
                  "blood pressure and salt", "when was the eiffel tower built", "how do plants make energy"]


@dataclass
class ExportConfig:
    """``fmt``: onnx | openvino (a model) or parquet | jsonl (vectors of a corpus). ``quantize``: ``int8``
    (ONNX Runtime dynamic, per-channel; onnx only). ``parity_docs`` / ``parity_queries``: sample sizes of the
    parity check. ``include_text``: vector exports carry the passage text. ``block_size`` / ``batch_size``: as
    ``retr encode``."""

    fmt: str = "onnx"
    quantize: str | None = None
    parity_docs: int = 1000
    parity_queries: int = 100
    include_text: bool = False
    block_size: int = 8192
    batch_size: int = 64

    def __post_init__(self) -> None:
        if self.fmt not in FORMATS:
            raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {self.fmt!r}")
        if self.quantize not in (None, "int8"):
            raise ValueError(f"--quantize must be int8, got {self.quantize!r}")
        if self.quantize and self.fmt != "onnx":
            raise ValueError(f"--quantize applies to --format onnx, not {self.fmt}")
        if self.include_text and self.fmt in MODEL_FORMATS:
            raise ValueError(f"--include-text applies to --format parquet or jsonl, not {self.fmt}")
        if self.parity_docs < 1 or self.parity_queries < 1:
            raise ValueError("--parity-docs and --parity-queries must be at least 1")


def samples(corpus: Any = None, queries: dict[str, str] | None = None, n_docs: int = 1000,
            n_queries: int = 100, sep: str = " ") -> tuple[list[str], list[str]]:
    """The parity sample: the first ``n_docs`` passages of ``corpus`` and ``n_queries`` queries (built-in
    sentences for whichever is missing)."""
    docs = corpus.passages(sep, 0, n_docs) if corpus is not None and len(corpus) else list(SAMPLE_PASSAGES)
    qs = list(queries.values())[:n_queries] if queries else list(SAMPLE_QUERIES)
    return docs, qs


def parity(ref_docs: np.ndarray, got_docs: np.ndarray, ref_queries: np.ndarray, got_queries: np.ndarray,
           k: int = 10) -> dict[str, Any]:
    """Agreement of ``got`` with ``ref`` ([n, dim] float32 each, rows paired): min / mean cosine over passages
    and queries, and the mean fraction of each query's top-``k`` passages (inner product) that both share."""
    def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        num = (a.astype(np.float64) * b).sum(1)
        return num / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)

    cos = np.concatenate([cosines(ref_docs, got_docs), cosines(ref_queries, got_queries)])
    kk = min(k, len(ref_docs))  # fewer sample passages than k: the overlap of all of them
    top_ref = np.argsort(-(ref_queries @ ref_docs.T), axis=1, kind="stable")[:, :kk]
    top_got = np.argsort(-(got_queries @ got_docs.T), axis=1, kind="stable")[:, :kk]
    overlap = [len(set(a) & set(b)) / kk for a, b in zip(top_ref.tolist(), top_got.tolist())]
    return {"cosine_min": round(float(cos.min()), 7), "cosine_mean": round(float(cos.mean()), 7),
            f"top{k}_overlap": round(float(np.mean(overlap)), 4), "passages": len(ref_docs),
            "queries": len(ref_queries), "reference": "retr torch fp32"}


def _torch_fp32(encoder: Any, texts: Sequence[str], is_query: bool, batch_size: int) -> np.ndarray:
    """retr's reference vectors: the tower's torch forward in fp32, whatever backend it is set to."""
    tower = encoder.query_encoder if is_query else encoder.passage_tower
    runner, precision = tower.runner, tower.precision
    tower.runner, tower.precision = None, "fp32"
    try:
        return tower.encode(texts, is_query=is_query, batch_size=batch_size)
    finally:
        tower.runner, tower.precision = runner, precision


def export_model(encoder: Any, output: str | os.PathLike, config: ExportConfig, corpus: Any = None,
                 queries: dict[str, str] | None = None, precision: str = "auto") -> dict[str, Any]:
    """Write ``encoder`` (a shared-tower ``DualEncoder``, fp32 weights) as ``config.fmt`` into the new directory
    ``output`` (atomically) and return its meta (also in ``meta.json``). ``precision``: the OpenVINO inference
    hint the parity is measured with (``auto`` = fp32). ``ValueError`` for separate towers."""
    from retr.indexing.atomic import atomic_dir, write_json_atomic
    from retr.indexing.versions import retr_version

    if not encoder.shared:
        raise ValueError("export supports shared-tower models (one encoder); export each tower directory instead")
    tower = encoder.query_encoder
    docs, qs = samples(corpus, queries, config.parity_docs, config.parity_queries, tower.config.title_sep)
    with atomic_dir(output, kind="export") as tmp:
        tower.save(tmp)  # tokenizer, settings, prompts (and the weights: the graph's identity in retr)
        graph, fused = tmp / ONNX_FILE, False
        if config.fmt == "onnx":
            fused = export_for_ort(tower, graph)
        else:
            export_onnx(tower, graph)  # a plain graph: OpenVINO reads standard ONNX operators only
        if config.quantize == "int8":
            quantize_int8(graph, tmp / "model_int8.onnx")
            os.replace(tmp / "model_int8.onnx", graph)
        files = [ONNX_FILE]
        if config.fmt == "openvino":
            import openvino as ov

            ov.save_model(ov.Core().read_model(str(graph)), str(tmp / OPENVINO_FILE), compress_to_fp16=False)
            files += [OPENVINO_FILE, OPENVINO_FILE.replace(".xml", ".bin")]
        runner = make_runner(config.fmt, tower, precision, tmp)
        saved = tower.runner
        tower.runner = runner
        try:
            got_d = tower.encode(docs, is_query=False, batch_size=config.batch_size)
            got_q = tower.encode(qs, is_query=True, batch_size=config.batch_size)
        finally:
            tower.runner = saved
        check = parity(_torch_fp32(encoder, docs, False, config.batch_size), got_d,
                       _torch_fp32(encoder, qs, True, config.batch_size), got_q)
        meta = {"made_by": "retr export", "format": config.fmt, "quantize": config.quantize, "ort_fused": fused,
                "precision": runner.precision if config.fmt == "openvino" else "f32",
                "files": {f: file_digest(tmp / f) for f in files}, "inputs": ["input_ids", "attention_mask"],
                "output": "embedding [batch, dim] float32", "encoder": encoder.describe(),
                "source_model": encoder.name, "source_fingerprint": encoder.fingerprint(), "parity": check,
                "retr_version": retr_version()}
        write_json_atomic(tmp / META, meta)
    return meta


def export_vectors(encoder: Any, corpus: Any, output: str | os.PathLike, config: ExportConfig,
                   queries: dict[str, str] | None = None) -> dict[str, Any]:
    """Encode ``corpus`` with ``encoder`` (its backend and precision as set) and write ids + vectors (+ text)
    as ``config.fmt`` (parquet | jsonl) into the new directory ``output``; returns the meta (also in
    ``meta.json``), whose parity compares rows read back from the written file with torch fp32 vectors."""
    from retr.indexing.atomic import atomic_dir, write_json_atomic
    from retr.indexing.versions import retr_version

    from .encoding import encode_corpus, encoding_key, work_dir_for
    from .search import index_meta

    sep = encoder.passage_tower.config.title_sep
    work = work_dir_for(output, "export")
    partial, stats = encode_corpus(encoder, corpus, work, block_size=config.block_size,
                                   batch_size=config.batch_size)
    name = f"vectors.{config.fmt}"
    with atomic_dir(output, kind="export") as tmp:
        writer = _ParquetOut(tmp / name, encoder.dim, config.include_text) if config.fmt == "parquet" else \
            _JsonlOut(tmp / name, config.include_text)
        with writer:
            for block in corpus.iter_blocks(config.block_size, sep):
                rows = np.asarray(partial.vectors[block.start:block.start + len(block.ids)], dtype=np.float32)
                writer.write(block.ids, rows, block.texts if config.include_text else None)
        docs, qs = samples(corpus, queries, config.parity_docs, config.parity_queries, sep)
        got_d = read_vectors(tmp / name, len(docs))
        got_q = encoder.encode_queries(qs, batch_size=config.batch_size)
        check = parity(_torch_fp32(encoder, docs, False, config.batch_size), got_d,
                       _torch_fp32(encoder, qs, True, config.batch_size), got_q)
        meta = {"made_by": "retr export", "format": config.fmt, "file": name, "count": len(corpus),
                "dim": encoder.dim, "columns": ["id", "vector", *(["text"] if config.include_text else [])],
                **index_meta(encoder, corpus, stats.seconds),
                "encoding": encoding_key(encoder, corpus, 0, len(corpus), config.block_size, config.batch_size),
                "parity": check, "retr_version": retr_version()}
        write_json_atomic(tmp / META, meta)
    partial.discard()
    shutil.rmtree(work, ignore_errors=True)
    return meta


def read_vectors(path: str | os.PathLike, n: int | None = None) -> np.ndarray:
    """The first ``n`` (all when None) vectors of an exported ``vectors.parquet`` / ``vectors.jsonl`` as float32
    [n, dim]; reads row group by row group (parquet) or line by line (jsonl)."""
    path = Path(path)
    rows: list[np.ndarray] = []
    got = 0
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        for g in range(pf.num_row_groups):
            col = pf.read_row_group(g, columns=["vector"]).column("vector").combine_chunks()
            dim = col.type.list_size
            rows.append(col.values.to_numpy(zero_copy_only=False).reshape(-1, dim))
            got += len(rows[-1])
            if n is not None and got >= n:
                break
    else:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if n is not None and got >= n:
                    break
                rows.append(np.asarray([json.loads(line)["vector"]], dtype=np.float32))
                got += 1
    out = np.concatenate(rows) if rows else np.zeros((0, 0), np.float32)
    return out[:n].astype(np.float32, copy=False) if n is not None else out.astype(np.float32, copy=False)


class _ParquetOut:
    """Streaming Parquet writer: one row group per ``write`` (memory = one block)."""

    def __init__(self, path: Path, dim: int, text: bool):
        import pyarrow as pa
        import pyarrow.parquet as pq

        fields = [pa.field("id", pa.string()), pa.field("vector", pa.list_(pa.float32(), dim))]
        if text:
            fields.append(pa.field("text", pa.string()))
        self.schema = pa.schema(fields)
        self.writer = pq.ParquetWriter(str(path), self.schema)

    def write(self, ids: list[str], vectors: np.ndarray, texts: list[str] | None) -> None:
        import pyarrow as pa

        flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1), type=pa.float32())
        cols = [pa.array(ids, pa.string()), pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])]
        if texts is not None:
            cols.append(pa.array(texts, pa.string()))
        self.writer.write_table(pa.Table.from_arrays(cols, schema=self.schema))

    def __enter__(self) -> "_ParquetOut":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.writer.close()


class _JsonlOut:
    """One JSON object per line: ``{"id", "vector", "text"?}`` (float32 values printed as Python floats)."""

    def __init__(self, path: Path, text: bool):
        self.fh = open(path, "w", encoding="utf-8")

    def write(self, ids: list[str], vectors: np.ndarray, texts: list[str] | None) -> None:
        for i, docid in enumerate(ids):
            row: dict[str, Any] = {"id": docid, "vector": vectors[i].tolist()}
            if texts is not None:
                row["text"] = texts[i]
            self.fh.write(json.dumps(row, ensure_ascii=False) + "\n")

    def __enter__(self) -> "_JsonlOut":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.fh.close()
