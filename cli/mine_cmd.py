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
    # issue 20: false-negative-aware mining
    exclude_siblings: Annotated[bool, typer.Option("--exclude-siblings", help="Drop judged positives of other "
                                                   "queries that share a judged positive with this one (likely "
                                                   "unjudged positives on multi-positive data such as "
                                                   "NFCorpus).")] = False,
    relative_margin: Annotated[Optional[float], typer.Option("--relative-margin", min=0.0, max=1.0, help="Drop "
                                                             "candidates scoring above (1 - margin) x the "
                                                             "query's best positive score (0.05: keep those at "
                                                             "most 95% as similar; NV-Retriever's "
                                                             "TopK-PercPos).")] = None,
    max_score: Annotated[Optional[float], typer.Option("--max-score", help="Drop candidates scoring above this "
                                                       "(teacher's scale, or --rescore-with's).")] = None,
    rescore_with: Annotated[Optional[str], typer.Option("--rescore-with", callback=common.check_model,
                                                        help="Cross-encoder (directory or hub id) that scores the "
                                                        "window and the positives; --relative-margin (default 0 "
                                                        "here: drop candidates it scores above the best "
                                                        "positive) and --max-score then use its scores.")] = None,
) -> None:
    """Mine hard negatives with a BM25 or dense teacher (rank window; never a judged positive or a copy of one;
    optionally without siblings' positives and candidates scoring near the positive)."""
    common.setup_logging(verbose)
    if range_min > range_max:
        raise typer.BadParameter(f"--range-min {range_min} is more than --range-max {range_max}")
    if teacher.lower() == "bm25":  # --batch-size / --precision still apply to a --rescore-with cross-encoder
        common.reject_given(ctx, (*(() if rescore_with else ("batch_size", "precision")), *common.ENCODER_OPTIONS),
                            "to --teacher bm25")
    common.check_outputs(files={"--output": output}, dirs={"--index": (index, "index")})
    from retr.retriever.data.beir import load_beir
    from retr.retriever.data.training import write_tevatron
    from retr.retriever.mining import MiningConfig, MiningStats, iter_mined
    from retr.retriever.pipeline import first_stage

    if rescore_with is not None and relative_margin is None and max_score is None:
        relative_margin = 0.0
    cfg = MiningConfig(range_min=range_min, range_max=range_max, num_negatives=num_negatives, seed=seed,
                       relative_margin=relative_margin, max_score=max_score, exclude_siblings=exclude_siblings)
    dataset = load_beir(data, split, allow_missing_docs=True)
    overrides = common.encoder_overrides(pooling, normalize, query_prefix, passage_prefix, query_max_length,
                                         passage_max_length)
    retriever = first_stage(teacher, dataset.corpus, index_dir=index, batch_size=batch_size, precision=precision,
                            encoder_overrides=overrides)
    from retr.retriever.scoring import teacher_scorer

    scorer = teacher_scorer(retriever) if relative_margin is not None and rescore_with is None else None
    rescorer = None
    if rescore_with is not None:
        from retr.retriever.scoring import CrossEncoderScorer

        rescorer = CrossEncoderScorer(rescore_with, batch_size=batch_size)
        rescorer.model.precision = precision
    stats = MiningStats()
    write_tevatron(iter_mined(retriever, dataset, cfg, threads=threads, stats=stats, scorer=scorer,
                              rescorer=rescorer), output)
    common.console().print(f"[green]wrote[/green] {output} (ranks {range_min}..{range_max}): {stats.summary()}")
