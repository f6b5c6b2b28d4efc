"""``retr encode``: embed a corpus (or one shard of it) into an embeddings directory, for `retr index
--from-embeddings`. Under ``torchrun`` each rank encodes shard RANK of WORLD_SIZE."""
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
    data: Annotated[Path, typer.Option("--data", "-d", help="BEIR dataset folder or corpus.jsonl.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Embeddings directory (shards are written inside).")],
    shard: Annotated[Optional[int], typer.Option("--shard", help="Which shard to encode (default: torchrun RANK, else 0).")] = None,
    num_shards: Annotated[Optional[int], typer.Option("--num-shards", help="How many shards the corpus is split into "
                                                       "(default: torchrun WORLD_SIZE, else 1).")] = None,
    batch_size: common.BatchSize = 64,
    precision: common.Precision = "auto",
    pooling: common.Pooling = None,
    normalize: common.Normalize = None,
    passage_prefix: common.PassagePrefix = None,
    passage_max_length: common.PassageMaxLen = None,
    verbose: common.Verbose = False,
) -> None:
    """Encode a corpus shard into embeddings (numpy + ids, atomically)."""
    common.setup_logging(verbose)
    common.check_outputs(dirs={"--output": (output, "")})
    from retr.indexing.shards import shard_range, write_shard
    from retr.retriever.data.beir import load_corpus
    from retr.retriever.modeling import DualEncoder
    from retr.retriever.search import index_meta

    shard = shard if shard is not None else int(os.environ.get("RANK", "0"))
    num_shards = num_shards if num_shards is not None else int(os.environ.get("WORLD_SIZE", "1"))
    corpus = load_corpus(data / "corpus.jsonl" if data.is_dir() else data)
    start, end = shard_range(len(corpus), shard, num_shards)
    encoder = DualEncoder.from_pretrained(model, **common.encoder_overrides(
        pooling, normalize, None, passage_prefix, None, passage_max_length))
    encoder.set_precision(precision)
    if "LOCAL_RANK" in os.environ:
        import torch

        if torch.cuda.is_available():
            encoder.to(f"cuda:{int(os.environ['LOCAL_RANK'])}")
    texts = corpus.passages(encoder.passage_tower.config.title_sep)[start:end]
    log.info("shard %d/%d: documents %d..%d", shard, num_shards, start, end)
    vectors = encoder.encode_passages(texts, batch_size=batch_size, show_progress=True)
    path = write_shard(output, shard, num_shards, vectors, corpus.ids[start:end], index_meta(encoder, corpus))
    common.console().print(f"[green]wrote[/green] {path} ({len(texts)} embeddings)")
