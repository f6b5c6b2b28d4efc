"""``retr compare``: several TREC runs against one baseline on one set of qrels, with paired significance tests
(``significance.py``), a table that fits 80 columns, per-query scores (TSV) and a JSON record.

Memory: each run file is streamed in blocks of queries (``iter_trec_run_blocks``), so only per-query scores
are kept: runs x judged queries x metrics floats (e.g. 5 runs x 7,000 queries x 3 metrics ~ 1 MB in Python).
"""
from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Mapping, Sequence

from retr.indexing.atomic import atomic_file
from retr.retriever.data.errors import DataError
from retr.retriever.data.trec import iter_trec_run_blocks
from retr.retriever.hits import run_to_dict

from .evaluate import remove_identical_ids
from .metrics import per_query_metrics
from .significance import Comparison, compare_per_query

log = logging.getLogger(__name__)

MARK = "\u2020"  # dagger: significantly different from the baseline after Holm's correction


def per_query_from_run_file(path: str | Path, qrels: Mapping[str, Mapping[str, int]], metrics: Sequence[str],
                            block_queries: int = 1024, ignore_identical_ids: bool = True
                            ) -> dict[str, dict[str, float]]:
    """{qid: {metric: score}} for every judged query of ``qrels`` (a query absent from the run scores 0).

    ``ignore_identical_ids``: drop hits whose docid is the query id (unless judged relevant to it), as
    ``retr eval`` does by default (BEIR's ``ignore_identical_ids``; ArguAna, Quora), so a run written by another
    tool is scored as ``retr eval`` scores its own.

    Raises ``DataError`` when the run answers none of the judged queries (an empty file, or runs and qrels
    of different splits or datasets: every score would be 0); logs a warning when it answers only some."""
    judged_qids = [q for q, d in qrels.items() if d]
    out = {q: {m: 0.0 for m in metrics} for q in judged_qids}
    answered = 0
    for block in iter_trec_run_blocks(path, block_queries):
        judged = {q: qrels[q] for q in block if qrels.get(q)}
        answered += len(judged)
        if judged:
            hits = {q: block[q] for q in judged}
            if ignore_identical_ids:
                hits, _ = remove_identical_ids(hits, None, qrels)
            out.update(per_query_metrics(judged, run_to_dict(hits), metrics))
    if not answered:
        raise DataError(path, None, f"the run answers none of the {len(judged_qids)} judged queries of the qrels "
                        "(empty run, or another split/dataset?)")
    if answered < len(judged_qids):
        log.warning("%s answers %d of %d judged queries; the other %d score 0", path, answered,
                    len(judged_qids), len(judged_qids) - answered)
    return out


def run_names(paths: Sequence[Path]) -> list[str]:
    """Short names for run files: the file stem; the folder's name when every file has the same stem and the
    folders differ (a leaderboard's ``runs/<setup>/<dataset>.trec``); parent/stem where some stems repeat."""
    stems = [p.stem for p in paths]
    parents = [p.parent.name for p in paths]
    if len(paths) > 1 and len(set(stems)) == 1 and len(set(parents)) == len(parents) and all(parents):
        return parents
    names = [s if stems.count(s) == 1 else f"{p.parent.name}/{s}" for p, s in zip(paths, stems)]
    names = [n if names.count(n) == 1 else str(p) for p, n in zip(paths, names)]
    if len(set(names)) != len(names):
        raise ValueError(f"the same run file is given twice: {next(n for n in names if names.count(n) > 1)}")
    return names


def compare_run_files(paths: Sequence[Path], qrels: Mapping[str, Mapping[str, int]], metrics: Sequence[str],
                      baseline: str | None = None, permutations: int = 10_000, seed: int = 0,
                      alpha: float = 0.05, ignore_identical_ids: bool = True
                      ) -> tuple[Comparison, dict[str, dict[str, dict[str, float]]]]:
    """Compare TREC run files; ``baseline`` is a run's name (see ``run_names``) or path (default: the first).

    Returns the comparison and the per-query scores {run: {qid: {metric: score}}}."""
    paths = [Path(p) for p in paths]
    names = run_names(paths)
    if baseline is None:
        base = names[0]
    elif baseline in names:
        base = baseline
    else:
        matches = [n for n, p in zip(names, paths) if Path(baseline) == p or Path(baseline).resolve() == p.resolve()]
        if not matches:
            raise ValueError(f"--baseline {baseline!r} is none of the runs ({', '.join(names)})")
        base = matches[0]
    per_query = {n: per_query_from_run_file(p, qrels, metrics, ignore_identical_ids=ignore_identical_ids)
                 for n, p in zip(names, paths)}
    return compare_per_query(per_query, base, metrics, permutations, seed, alpha), per_query


def write_per_query_tsv(per_query: Mapping[str, Mapping[str, Mapping[str, float]]], metrics: Sequence[str],
                        path: str | Path) -> None:
    """One line per (query, run): ``qid run metric1 metric2 ...`` (atomic write)."""
    with atomic_file(path) as fh:
        w = csv.writer(fh, delimiter="\t", lineterminator="\n")
        w.writerow(["qid", "run", *metrics])
        runs = list(per_query)
        qids = sorted({q for scores in per_query.values() for q in scores})
        for q in qids:
            for r in runs:
                row = per_query[r].get(q, {})
                w.writerow([q, r, *(f"{row.get(m, 0.0):.6g}" for m in metrics)])


def _p(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def comparison_tables(cmp: Comparison, title: str = ""):
    """One rich table per metric: run, mean (with a dagger when significant), delta, wins/losses, the t-test
    and randomisation p-values and the Holm-adjusted t-test p. About 75 columns with 16-character names."""
    from rich.table import Table

    tables = []
    for m in cmp.metrics:
        t = Table(title=f"{title + ': ' if title else ''}{m}, baseline {cmp.baseline}, "
                        f"{MARK} Holm p < {cmp.alpha:g}", title_justify="left")
        t.add_column("run", overflow="fold", max_width=18)
        for c in ("mean", "delta", "+/-", "p t", "p rand", "p Holm"):
            t.add_column(c, justify="right")
        t.add_row(cmp.baseline, f"{cmp.means[cmp.baseline][m]:.4f}", "", "", "", "", "")
        for r in (r for r in cmp.rows if r.metric == m):
            mark = MARK if r.significant(cmp.alpha) else ""
            t.add_row(r.name, f"{r.mean:.4f}{mark}", f"{r.delta:+.4f}", f"{r.wins}/{r.losses}", _p(r.p_t),
                      _p(r.p_randomisation), _p(r.p_holm))
        tables.append(t)
    return tables
