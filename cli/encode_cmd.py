"""``retr encode``: embed a corpus (or one shard of it) into an embeddings directory, for `retr index
--from-embeddings`. Under ``torchrun`` each rank encodes shard RANK of WORLD_SIZE. Encoding streams block by block
to disk and resumes after a kill (rerun the same command)."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import common

log = logging.getLogger("retr.cli")


def encode_command(
    model: common.Model,
    data: Annotated[Path, typer.Option("--data", "-d", exists=True, help="BEIR dataset folder or corpus.jsonl.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Embeddings directory (shards are written inside).")],
    shard: Annotated[Optional[int], typer.Option("--shard", min=0, help="Which shard to encode (default: torchrun RANK, else 0).")] = None,
    num_shards: Annotated[Optional[int], typer.Option("--num-shards", min=1, help="How many shards the corpus is split into "
                                                       "(default: torchrun WORLD_SIZE, else 1).")] = None,
    batch_size: common.BatchSize = 64,
    block_size: common.BlockSize = 8192,
    precision: common.Precision = "auto",
    pooling: common.Pooling = None,
    normalize: common.Normalize = None,
    passage_prefix: common.PassagePrefix = None,
    passage_max_length: common.PassageMaxLen = None,
    dim: common.Dim = None,
    torch_dtype: common.TorchDtype = None,
    verbose: common.Verbose = False,
    backend: common.Backend = "torch",  # issue 22: ONNX Runtime / OpenVINO encoding
) -> None:
    """Encode a corpus shard into embeddings (numpy + ids, atomically; resumable)."""
    common.setup_logging(verbose)
    common.check_outputs(dirs={"--output": (output, "")})
    from retr.indexing.atomic import read_json
    from retr.indexing.shards import shard_name, shard_range
    from retr.retriever.data.corpus import load_corpus
    from retr.retriever.encoding import encode_corpus, encoding_key
    from retr.retriever.modeling import DualEncoder
    from retr.retriever.search import index_meta

    shard = shard if shard is not None else int(os.environ.get("RANK", "0"))
    num_shards = num_shards if num_shards is not None else int(os.environ.get("WORLD_SIZE", "1"))
    if num_shards < 1 or not 0 <= shard < num_shards:
        raise ValueError(f"--shard must be in 0..{num_shards - 1} and --num-shards >= 1 (got {shard} of {num_shards})")
    name = shard_name(shard, num_shards)
    final = output / name
    # one writer per shard, from before its work dir is touched (a second `retr encode` of the same shard used
    # to resume the first one's work dir while it was being written and fail with a wrong message)
    common.claim_output(final, "shard", flag="--output")
    corpus = load_corpus(data / "corpus.jsonl" if data.is_dir() else data)
    start, end = shard_range(len(corpus), shard, num_shards)
    encoder = DualEncoder.from_pretrained(model, **common.encoder_overrides(
        pooling, normalize, None, passage_prefix, None, passage_max_length, dim, torch_dtype=torch_dtype))
    encoder.set_precision(precision)
    encoder.set_backend(backend, precision)
    if "LOCAL_RANK" in os.environ:
        import torch

        if torch.cuda.is_available():
            encoder.to(f"cuda:{int(os.environ['LOCAL_RANK'])}")
    key = encoding_key(encoder, corpus, start, end, block_size, batch_size)
    if (final / "meta.json").exists() and read_json(final / "meta.json").get("encoding") == key:
        common.console().print(f"{final} is already encoded with these settings ({end - start} embeddings)")
        return
    log.info("shard %d/%d: documents %d..%d of %d", shard, num_shards, start, end, len(corpus))
    partial, _ = encode_corpus(encoder, corpus, output / f".{name}.partial", start, end, block_size=block_size,
                               batch_size=batch_size)
    meta = {**index_meta(encoder, corpus), "shard": shard, "num_shards": num_shards, "encoding": key}
    path = partial.publish(final, corpus.iter_ids(start, end), meta)
    common.console().print(f"[green]wrote[/green] {path} ({end - start} embeddings)")
