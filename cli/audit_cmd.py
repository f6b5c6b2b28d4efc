"""``retr audit``: exact and near-duplicate overlap between training data and an evaluation split (logic in
evaluation/audit.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from . import common


def audit_command(
    ctx: typer.Context,
    train: Annotated[list[Path], typer.Option("--train", help="Training data (repeatable): a BEIR folder (its "
                                              "--train-split queries and judged passages), a JSONL file (Tevatron, "
                                              "mined negatives, distillation scores: a query and lists of passages "
                                              "a line), or a text file (a passage a line).")],
    eval_data: Annotated[Path, typer.Option("--eval", exists=True, file_okay=False, help="BEIR folder evaluated: "
                                            "its --eval-split queries and judged-relevant passages.")],
    eval_split: Annotated[str, typer.Option("--eval-split", help="Qrels split of --eval.")] = "test",
    train_split: Annotated[str, typer.Option("--train-split", help="Qrels split of BEIR --train folders.")] = "train",
    threshold: Annotated[float, typer.Option("--threshold", min=0.01, max=1.0, help="Near duplicate: Jaccard "
                                             "similarity of character 5-grams at least this (MinHash estimate).")
                         ] = 0.7,
    num_perm: Annotated[int, typer.Option("--num-perm", min=16, help="MinHash permutations (memory: 8 bytes each "
                                          "per evaluation item).")] = 128,
    exact_only: Annotated[bool, typer.Option("--exact-only", help="Normalised-text hash matches only (no MinHash).")
                          ] = False,
    examples: Annotated[int, typer.Option("--examples", min=0, help="Examples of each kind of match to show and "
                                          "record.")] = 3,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write the report (counts, matched ids, "
                                                   "examples) as JSON here.")] = None,
    verbose: common.Verbose = False,
) -> None:
    """Which evaluation queries and relevant passages also occur, exactly or nearly, in the training data."""
    common.setup_logging(verbose)
    common.check_outputs(files={"--output": output})
    for path in train:
        if not path.exists():
            raise typer.BadParameter(f"{path}: not found", param_hint="--train")
    if exact_only:  # issue 23: options that would do nothing are refused, not ignored
        common.reject_given(ctx, ("threshold", "num_perm"), "with --exact-only")
    if not any(path.is_dir() for path in train):
        common.reject_given(ctx, ("train_split",), "without a BEIR folder in --train")
    from rich.table import Table

    from retr.evaluation.audit import AuditConfig, audit
    from retr.indexing.atomic import write_json_atomic

    cfg = AuditConfig(threshold=threshold, num_perm=num_perm, max_examples=examples, near=not exact_only)
    report = audit(train, eval_data, eval_split, train_split, cfg)
    table = Table(title=f"{eval_data.name} {eval_split} vs training data", title_justify="left")
    for c in ("", "eval", "train seen", "exact", "near", "any", "share"):
        table.add_column(c, justify="right" if c else "left")
    for kind in ("queries", "passages"):
        r = report[kind]
        share = f"{r['any'] / r['eval']:.1%}" if r["eval"] else "-"
        table.add_row(kind, str(r["eval"]), str(r["train_seen"]), str(r["exact"]),
                      "-" if exact_only else str(r["near"]), str(r["any"]), share)
    con = common.console()
    con.print(table)
    for kind in ("queries", "passages"):
        for ex in report[kind]["examples"]:
            con.print(f"{'query' if kind == 'queries' else 'passage'}, {ex['match']}:\n  eval  {ex['eval_id'][:12]}: {ex['eval_text'][:56]!r}\n"
                      f"  train {ex['train_id'][:12]}: {ex['train_text'][:56]!r}", highlight=False, markup=False)
    if output:
        write_json_atomic(output, report)
