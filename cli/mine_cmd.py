"""``retr mine``: hard negatives for a BEIR training split from a BM25 or dense teacher, as Tevatron JSONL."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import common

log = logging.getLogger("retr.cli")


def mine_command(
    ctx: typer.Context,
    data: common.Data,
    output: Annotated[Path, typer.Option("--output", "-o", help="Tevatron JSONL to write (query, positive_passages, "
                                          "negative_passages).")],
    split: Annotated[str, typer.Option("--split", help="Qrels split whose queries get negatives.")] = "train",
    teacher: Annotated[str, typer.Option("--teacher", callback=common.check_model, help="`bm25` (pyserini) or a dense model (directory, hub id, `minilm`).")] = "bm25",
    index: Annotated[Optional[Path], typer.Option("--index", "-i", help="Reuse/write the teacher's index here.")] = None,
    range_min: Annotated[int, typer.Option("--range-min", min=1, help="First teacher rank eligible as a negative (skips likely "
                                            "unjudged positives above it).")] = 30,
    range_max: Annotated[int, typer.Option("--range-max", min=1, help="Last teacher rank eligible as a negative.")] = 100,
    num_negatives: Annotated[int, typer.Option("--num-negatives", min=0, help="Negatives sampled from the window per query "
                                                "(0 = the whole window).")] = 8,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed for sampling within the window.")] = 0,
    threads: common.Threads = 0,
    batch_size: common.BatchSize = 64,
    precision: common.Precision = "auto",
    pooling: common.Pooling = None,
    normalize: common.Normalize = None,
    query_prefix: common.QueryPrefix = None,
    passage_prefix: common.PassagePrefix = None,
    query_max_length: common.QueryMaxLen = None,
    passage_max_length: common.PassageMaxLen = None,
    verbose: common.Verbose = False,
) -> None:
    """Mine hard negatives with a BM25 or dense teacher (rank window; never a judged positive or a copy of one)."""
    common.setup_logging(verbose)
    if range_min > range_max:
        raise typer.BadParameter(f"--range-min {range_min} is more than --range-max {range_max}")
    if teacher.lower() == "bm25":
        common.reject_given(ctx, ("batch_size", "precision", *common.ENCODER_OPTIONS), "to --teacher bm25")
    common.check_outputs(files={"--output": output}, dirs={"--index": (index, "index")})
    from retr.retriever.data.beir import load_beir
    from retr.retriever.data.training import write_tevatron
    from retr.retriever.mining import MiningConfig, MiningStats, iter_mined
    from retr.retriever.pipeline import first_stage

    cfg = MiningConfig(range_min=range_min, range_max=range_max, num_negatives=num_negatives, seed=seed)
    dataset = load_beir(data, split, allow_missing_docs=True)
    overrides = common.encoder_overrides(pooling, normalize, query_prefix, passage_prefix, query_max_length,
                                         passage_max_length)
    retriever = first_stage(teacher, dataset.corpus, index_dir=index, batch_size=batch_size, precision=precision,
                            encoder_overrides=overrides)
    stats = MiningStats()
    write_tevatron(iter_mined(retriever, dataset, cfg, threads=threads, stats=stats), output)
    common.console().print(f"[green]wrote[/green] {output}: {stats.queries} queries, {stats.negatives} negatives "
                           f"(ranks {range_min}..{range_max}; {stats.duplicates_of_positives} copies of a positive "
                           "dropped)")
