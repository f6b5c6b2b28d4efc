"""Reports: a rich table of metrics and the JSON record that says what made a number."""
from __future__ import annotations

import time
from typing import Any, Mapping

from retr.indexing.versions import machine_info, retr_version

from .evaluate import EvalResult

HEADLINE = ("nDCG@10", "nDCG@100", "Recall@10", "Recall@100", "Recall@1000", "MAP@100", "MRR@10", "Judged@10")


def metrics_table(rows: Mapping[str, Mapping[str, float]], title: str = "", columns=HEADLINE):
    """A rich table with one row per metric and one column per result (``rows``: {name: {metric: value}}).

    Metrics go down the side so that the table fits an 80-column terminal without cutting a metric's name
    (seven metric columns across needed ~95 columns and rich cut three headers to "Recall…")."""
    from rich.table import Table

    table = Table(title=title or None)
    table.add_column("metric")
    present = [c for c in columns if any(c in r for r in rows.values())]
    for name in rows:
        table.add_column(name, justify="right", overflow="fold")
    for c in present:
        table.add_row(c, *(f"{m[c]:.4f}" if c in m else "-" for m in rows.values()))
    return table


def result_record(result: EvalResult, retriever_settings: dict[str, Any], seconds: float | None = None) -> dict[str, Any]:
    record = result.to_json()
    record.update(retriever_settings)
    record["retr_version"] = retr_version()
    record["date"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    record["machine"] = machine_info()
    if seconds is not None:
        record["total_seconds"] = round(seconds, 2)
    return record
