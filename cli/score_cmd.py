"""``retr score``: teacher scores for (query, candidates) lists, for distillation (``retr train --distill``)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from . import common


def score_command(
    candidates: Annotated[Path, typer.Option("--candidates", "-c", help="Tevatron JSONL of (query, positive_passages, "
                                             "negative_passages), e.g. from `retr mine`.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Tevatron JSONL to write: the same lines with a "
                                         "`score` on every passage.")],
    teacher: Annotated[list[str], typer.Option("--teacher", "-t", help="Scorer: ce:MODEL (cross-encoder logit), "
                                               "dense:MODEL (query . passage), or bm25 (Lucene BM25; needs "
                                               "--data). Repeat to fuse: per-query min-max normalised scores, "
                                               "summed with --weights.")],
    weights: Annotated[Optional[str], typer.Option("--weights", help="Fusion weights, one per --teacher, e.g. "
                                                   "`0.7,0.3` (default: equal).")] = None,
    data: Annotated[Optional[Path], typer.Option("--data", "-d", exists=True, file_okay=False, help="BEIR folder "
                                                 "whose corpus holds the candidates (for --teacher bm25).")] = None,
    bm25_index: Annotated[Optional[Path], typer.Option("--bm25-index", help="Reuse/write the BM25 index here.")] = None,
    block_size: Annotated[int, typer.Option("--block-size", min=1, help="Queries read, scored and written per "
                                            "block; memory grows with it (one block's passages).")] = 256,
    batch_size: common.BatchSize = 32,
    precision: common.Precision = "auto",
    verbose: common.Verbose = False,
) -> None:
    """Score every candidate passage of a Tevatron JSONL with a teacher (cross-encoder, dense, BM25 or fusion)."""
    common.setup_logging(verbose)
    from retr.retriever.scoring import build_scorer, parse_teacher

    kinds = [parse_teacher(t)[0] for t in teacher]  # a bad spec fails before any model loads
    fusion = _weights(weights, len(teacher))
    if "bm25" in kinds and data is None:
        raise typer.BadParameter("--teacher bm25 needs --data (the BEIR folder of the candidates' corpus)")
    if "bm25" not in kinds and (data is not None or bm25_index is not None):
        raise typer.BadParameter("--data / --bm25-index only apply to --teacher bm25")
    if not candidates.is_file():
        raise typer.BadParameter(f"--candidates {candidates}: file not found")
    common.check_outputs(files={"--output": output}, dirs={"--bm25-index": (bm25_index, "index")})
    corpus = None
    if data is not None:
        from retr.retriever.data.beir import load_beir

        corpus = load_beir(data, split=None).corpus
    scorer = build_scorer(teacher, fusion, corpus=corpus, bm25_index=bm25_index, batch_size=batch_size,
                          precision=precision, show_progress=True)
    from retr.retriever.teacher_scores import write_scores

    stats = write_scores(candidates, output, scorer, block_size=block_size)
    common.console().print(f"[green]wrote[/green] {output}: {stats.passages} passages of {stats.queries} queries "
                           f"scored by {scorer.name}")


def _weights(text: str | None, n: int) -> list[float] | None:
    if text is None:
        return None
    try:
        values = [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise typer.BadParameter(f"--weights takes numbers, got {text!r}") from None
    if len(values) != n:
        raise typer.BadParameter(f"--weights has {len(values)} values for {n} --teacher")
    return values
