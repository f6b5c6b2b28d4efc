"""What a leaderboard row can be trusted for (issue 23): significance against the suite's ``baseline``, the
share of judged documents in each row's top 10 (Judged@10), and whether a row's model was trained on data
that overlaps the evaluated split.

Marks in the tables: ``†`` the row differs from the baseline on that dataset (paired t-test on per-query
nDCG@10, Holm-corrected across the rows compared with the baseline, p < 0.05; the paired randomisation test
is recorded beside it); ``‡`` the model's recorded training data (``meta.json`` beside the model) shares
queries with the evaluated split (``audit.training_overlap``).

Memory: per-query scores, setups x datasets x judged queries x 2 floats.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Mapping

from retr.indexing.atomic import atomic_file

from .significance import compare_per_query

SIGNIFICANT = "\u2020"
OVERLAP = "\u2021"
ROW_METRICS = ("nDCG@10", "Judged@10")


def write_row_per_query(per_query: Mapping[str, Mapping[str, float]], path: Path) -> None:
    """``qid nDCG@10 Judged@10`` per judged query of one (set-up, dataset) row (atomic write)."""
    with atomic_file(path) as fh:
        w = csv.writer(fh, delimiter="\t", lineterminator="\n")
        w.writerow(["qid", *ROW_METRICS])
        for q in sorted(per_query):
            w.writerow([q, *(f"{per_query[q].get(m, 0.0):.6g}" for m in ROW_METRICS)])


def significance(per_query: Mapping[str, Mapping[str, Mapping[str, Mapping[str, float]]]], baseline: str,
                 alpha: float = 0.05, permutations: int = 10_000, seed: int = 0) -> dict[str, dict[str, Any]]:
    """{dataset: comparison JSON} of every set-up against ``baseline`` on per-query nDCG@10.

    ``per_query``: {dataset: {setup: {qid: {metric: score}}}}; a dataset where the baseline did not run is
    left out. Holm's correction runs over the set-ups compared on that dataset."""
    out = {}
    for ds, rows in per_query.items():
        if baseline in rows and len(rows) > 1:
            out[ds] = compare_per_query(rows, baseline, ["nDCG@10"], permutations, seed, alpha).to_json()
    return out


def marks(sig: Mapping[str, Mapping[str, Any]], overlap: Mapping[str, Mapping[str, Any]],
          alpha: float = 0.05) -> dict[str, dict[str, str]]:
    """{setup: {dataset: "†", "‡", "†‡" or ""}} from ``significance`` and ``{setup: {dataset: overlap}}``."""
    out: dict[str, dict[str, str]] = {}
    for ds, cmp in sig.items():
        for row in cmp["rows"]:
            if row["p_holm"] < alpha:
                out.setdefault(row["name"], {})[ds] = SIGNIFICANT
    for setup, per_ds in overlap.items():
        for ds, found in per_ds.items():
            if found and found.get("queries", 0):
                out.setdefault(setup, {})[ds] = out.get(setup, {}).get(ds, "") + OVERLAP
    return out


def legend(baseline: str | None, alpha: float = 0.05) -> str:
    parts = []
    if baseline:
        parts.append(f"{SIGNIFICANT} differs from {baseline} (paired t-test, Holm, p < {alpha:g})")
    parts.append(f"{OVERLAP} model trained on queries of the evaluated split")
    return "; ".join(parts)
