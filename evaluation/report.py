"""Reports: a rich table of metrics and the JSON record that says what made a number."""
from __future__ import annotations

import time
from typing import Any, Mapping

from retr.indexing.versions import machine_info, retr_version

from .evaluate import EvalResult

HEADLINE = ("nDCG@10", "nDCG@100", "Recall@10", "Recall@100", "Recall@1000", "MAP@100", "MRR@10")


def metrics_table(rows: Mapping[str, Mapping[str, float]], title: str = "", columns=HEADLINE):
    from rich.table import Table

    table = Table(title=title or None)
    table.add_column("")
    present = [c for c in columns if any(c in r for r in rows.values())]
    for c in present:
        table.add_column(c, justify="right")
    for name, metrics in rows.items():
        table.add_row(name, *(f"{metrics[c]:.4f}" if c in metrics else "-" for c in present))
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
