"""``retr compare``: TREC runs against a baseline with paired significance tests (logic in evaluation/compare.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from . import common


def _metric(value: list[str]) -> list[str]:
    from retr.evaluation.metrics import _measure

    for m in value:
        try:
            _measure(m)
        except ValueError as e:
            raise typer.BadParameter(str(e)) from None
    return list(dict.fromkeys(value))  # issue 23: a metric given twice is tested (and Holm-counted) once


def compare_command(
    runs: Annotated[list[Path], typer.Argument(help="TREC run files (qid Q0 docid rank score tag), two or more; "
                                               "each named by its file stem. A judged query a run does not "
                                               "answer scores 0.")],
    qrels: Annotated[Path, typer.Option("--qrels", help="Qrels: BEIR TSV (query-id corpus-id score) or TREC "
                                        "(qid iter docid grade).")],
    baseline: Annotated[Optional[str], typer.Option("--baseline", help="Run every other run is tested against "
                                                    "(its name or path; default: the first run).")] = None,
    metric: Annotated[list[str], typer.Option("--metric", "-M", callback=_metric, help="Metric to test "
                                              "(repeatable), e.g. nDCG@10, Recall@100, MRR@10, Judged@10.")
                      ] = ["nDCG@10"],
    permutations: Annotated[int, typer.Option("--permutations", min=1, help="Random sign flips of the paired "
                                              "randomisation test (p is at least 1/(N+1)).")] = 10_000,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the randomisation test.")] = 0,
    alpha: Annotated[float, typer.Option("--alpha", min=0.0, max=1.0, help="Significance level: a run is marked "
                                         "(dagger) when its Holm-adjusted t-test p < alpha.")] = 0.05,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write means, deltas and p-values as "
                                                   "JSON here.")] = None,
    per_query: Annotated[Optional[Path], typer.Option("--per-query", help="Write per-query scores (TSV: qid, "
                                                      "run, one column per metric) here.")] = None,
    verbose: common.Verbose = False,
    # issue 23: score runs as retr eval does (BEIR's ignore_identical_ids)
    ignore_identical_ids: Annotated[bool, typer.Option("--ignore-identical-ids/--keep-identical-ids",
                                                       help="Drop hits whose doc id equals the query id, as retr "
                                                       "eval and BEIR do (ArguAna, Quora), unless the qrels judge "
                                                       "them relevant.")] = True,
) -> None:
    """Paired t-test (scipy) and paired randomisation test of every run against the baseline, per metric,
    Holm-Bonferroni-corrected across the compared runs."""
    common.setup_logging(verbose)
    if len(runs) < 2:
        raise typer.BadParameter("give at least two runs to compare", param_hint="RUNS")
    common.check_outputs(files={"--output": output, "--per-query": per_query})
    from retr.evaluation.compare import compare_run_files, comparison_tables, write_per_query_tsv
    from retr.indexing.atomic import write_json_atomic
    from retr.retriever.data.trec import read_qrels_file

    judged = read_qrels_file(qrels)
    cmp, scores = compare_run_files(runs, judged, metric, baseline, permutations, seed, alpha,
                                    ignore_identical_ids)
    title = f"{qrels.parent.parent.name} {qrels.stem}" if qrels.parent.name == "qrels" else qrels.name
    for table in comparison_tables(cmp, title=title):
        common.console().print(table)
    if output:
        write_json_atomic(output, {**cmp.to_json(), "qrels": str(qrels), "runs": [str(r) for r in runs],
                                   "permutations": permutations, "seed": seed,
                                   "ignore_identical_ids": ignore_identical_ids})
    if per_query:
        write_per_query_tsv(scores, metric, per_query)
