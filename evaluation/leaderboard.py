"""BEIR leaderboard runs: several retrieval set-ups x several datasets in one go, reusing indexes (cached by
model fingerprint + corpus fingerprint), written as per-run JSON, TREC runs, MTEB-format result files, and a
leaderboard table (rich, Markdown, CSV, PNG).

A suite is a YAML/JSON file::

    setups:
      - {name: minilm, retriever: dense, model: minilm}
      - {name: bm25, retriever: bm25}
      - {name: hybrid, retriever: hybrid, model: minilm}
      - {name: minilm-ft, retriever: dense, model: "out/runs/{dataset}-sup/model"}   # skipped where missing
      - {name: bm25+ce, retriever: bm25, rerank: {nfcorpus: out/ce-nf/model, default: out/ce-sf/model}}

``{dataset}`` in a path is replaced by the dataset's folder name, and a mapping picks the dataset's entry (or
``default``); a set-up whose per-dataset model does not exist is skipped there (shown as "-"). A ``rerank``
entry ``none`` runs the set-up on that dataset without a cross-encoder (e.g. a dataset with no training data).

A top-level ``baseline: bm25`` marks the rows that differ significantly from that set-up (``suite_checks.py``);
every row's per-query nDCG@10 and Judged@10 go to ``per_query/<setup>/<dataset>.tsv``.
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retr.indexing.atomic import atomic_file, write_json_atomic
from retr.indexing.versions import machine_info, retr_version
from retr.retriever.data.beir import load_beir
from retr.retriever.data.errors import DataError
from retr.retriever.data.trec import write_trec_run

from .evaluate import evaluate
from .suite_schema import check_baseline, check_setup, read_suite_file

log = logging.getLogger(__name__)

SETUP_KEYS = {"name", "retriever", "model", "rerank", "rerank_top_k", "rerank_alpha", "fusion", "alpha", "rrf_k", "k1", "b", "precision"}
SETUP_KEYS |= {"index_type", "ef_search", "nprobe", "hnsw_m", "nlist", "pq_m"}  # issue 23: ANN rows (ann_rows.py)
MTEB_TASKS = {"scifact": "SciFact", "nfcorpus": "NFCorpus", "arguana": "ArguAna", "fiqa": "FiQA2018",
              "scidocs": "SCIDOCS", "trec-covid": "TRECCOVID", "quora": "QuoraRetrieval", "nq": "NQ",
              "hotpotqa": "HotpotQA", "fever": "FEVER", "climate-fever": "ClimateFEVER", "dbpedia-entity": "DBPedia",
              "msmarco": "MSMARCO", "touche2020": "Touche2020", "webis-touche2020": "Touche2020"}
MTEB_CUTOFFS = (1, 3, 5, 10, 20, 100, 1000)
MTEB_METRICS = tuple(f"{m}@{k}" for m in ("nDCG", "MAP", "Recall", "P", "MRR") for k in MTEB_CUTOFFS)
LEADERBOARD_METRICS = (*MTEB_METRICS, "Judged@10")  # issue 23: the share of judged documents in every row


@dataclass
class Setup:
    name: str
    retriever: str = "dense"
    model: str | None = None
    rerank: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def resolve(self, dataset: str) -> "Setup | None":
        """Per-dataset model paths: ``{dataset}`` is filled in, a mapping picks the dataset's entry (or
        ``default``). None when such a per-dataset path is missing (the set-up is skipped there)."""
        out = Setup(self.name, self.retriever, None, None, dict(self.options))
        for attr in ("model", "rerank"):
            value = getattr(self, attr)
            per_dataset = isinstance(value, dict) or "{dataset}" in str(value or "")
            if isinstance(value, dict):
                value = value.get(dataset, value.get("default"))
            if attr == "rerank" and value == "none":  # e.g. a pipeline row with no cross-encoder for this dataset
                continue
            if isinstance(value, str):
                value = value.replace("{dataset}", dataset)
            if per_dataset and (value is None or (value.startswith((".", "/", "out")) and not Path(value).exists())):
                return None
            setattr(out, attr, value)
        out.options = {k: (v.get(dataset, v.get("default")) if isinstance(v, dict) else v) for k, v in self.options.items()}
        out.options = {k: v for k, v in out.options.items() if v is not None}
        return out


def load_suite(path: str | Path) -> list[Setup]:
    path = Path(path)
    raw = read_suite_file(path)  # issue 23: malformed YAML/JSON named by file:line
    items = raw.get("setups") if isinstance(raw, dict) else None
    if not isinstance(items, list) or not items:
        raise DataError(path, None, 'expected a mapping with a non-empty list "setups"')
    setups, names = [], set()
    for i, item in enumerate(items):
        if not isinstance(item, dict) or "name" not in item:
            raise DataError(path, None, f'setups[{i}]: each set-up needs a "name"')
        unknown = set(item) - SETUP_KEYS
        if unknown:
            raise DataError(path, None, f"setups[{i}] ({item['name']}): unknown key {sorted(unknown)[0]!r}")
        if item["name"] in names:
            raise DataError(path, None, f"setups[{i}]: duplicate name {item['name']!r}")
        names.add(item["name"])
        check_setup(path, i, item)  # issue 23: retriever and option values checked before anything runs
        kind = item.get("retriever", "dense")
        if kind in ("dense", "hybrid") and not item.get("model"):
            raise DataError(path, None, f"setups[{i}] ({item['name']}): retriever {kind!r} needs a model")
        if "index_type" in item and (kind != "dense" or item.get("rerank")):  # issue 23
            raise DataError(path, None, f"setups[{i}] ({item['name']}): index_type needs retriever dense "
                            "without rerank")
        opts = {k: v for k, v in item.items() if k not in ("name", "retriever", "model", "rerank")}
        setups.append(Setup(item["name"], kind, item.get("model"), item.get("rerank"), opts))
    return setups


def load_baseline(path: str | Path, setups: list[Setup]) -> str | None:
    """The suite's top-level ``baseline:`` (a set-up name), or None (issue 23)."""
    raw = read_suite_file(path)
    return check_baseline(path, raw.get("baseline") if isinstance(raw, dict) else None, {s.name for s in setups})


def expand_datasets(paths: list[Path]) -> list[Path]:
    """BEIR folders given directly, or every BEIR folder inside a parent folder."""
    out = []
    for p in paths:
        if (p / "corpus.jsonl").exists():
            out.append(p)
        elif p.is_dir():
            found = sorted(d for d in p.iterdir() if (d / "corpus.jsonl").exists())
            if not found:
                raise DataError(p, None, "neither a BEIR dataset nor a folder of BEIR datasets")
            out.extend(found)
        else:
            raise DataError(p, None, "dataset directory not found")
    return out


def _cache_dir(root: Path, corpus_fp: str, kind: str, model_fp: str = "") -> Path:
    return root / f"{kind}-{corpus_fp}" if not model_fp else root / f"{kind}-{corpus_fp}-{model_fp}"


def _model_key(name: str) -> str:
    """Fingerprint of a model's weights and settings (loads it; cheap next to encoding a corpus)."""
    from retr.retriever.modeling import DualEncoder

    return DualEncoder.from_pretrained(name).fingerprint()


def mteb_record(dataset: str, split: str, metrics: dict[str, float], seconds: float) -> dict[str, Any]:
    task = MTEB_TASKS.get(dataset.lower(), dataset)
    families = {"nDCG": "ndcg", "MAP": "map", "Recall": "recall", "P": "precision", "MRR": "mrr"}
    scores: dict[str, Any] = {}
    for name, value in metrics.items():
        family, _, cutoff = name.partition("@")
        if family in families and cutoff:
            scores[f"{families[family]}_at_{cutoff}"] = round(value, 5)
    scores.update(main_score=round(metrics["nDCG@10"], 5), hf_subset="default", languages=["eng-Latn"])
    revision = None
    try:
        import mteb

        revision = mteb.get_task(task).metadata.revision
        version = mteb.__version__
    except Exception:
        version = None
    return {"dataset_revision": revision, "task_name": task, "mteb_version": version or "2.0.0",
            "scores": {split: [scores]}, "evaluation_time": round(seconds, 2), "kg_co2_emissions": None}


def run_suite(setups: list[Setup], datasets: list[Path], out_dir: Path, split: str = "test", k: int = 1000,
              cache_root: Path | None = None, allow_missing_docs: bool = True, threads: int = 0,
              baseline: str | None = None) -> dict:  # issue 23: baseline
    from retr.retriever.hits import run_to_dict
    from retr.retriever.pipeline import build_retriever, describe_retriever

    from . import suite_checks
    from .ann_rows import ANN_KEYS, ann_from_exact, ann_report
    from .audit import training_overlap
    from .metrics import per_query_metrics

    cache_root = cache_root or out_dir / "cache"
    table: dict[str, dict[str, float]] = {s.name: {} for s in setups}
    timings: dict[str, float] = {}
    per_query: dict[str, dict] = {}  # issue 23: {dataset: {setup: {qid: {metric: score}}}}
    judged: dict[str, dict[str, float]] = {s.name: {} for s in setups}
    overlap: dict[str, dict[str, Any]] = {s.name: {} for s in setups}
    ann: dict[str, dict[str, Any]] = {}
    for data_dir in datasets:
        ds = load_beir(data_dir, split, allow_missing_docs=allow_missing_docs)
        fp = ds.corpus.fingerprint
        model_keys: dict[str, str] = {}
        for base in setups:
            setup = base.resolve(ds.name)
            if setup is None:
                log.info("%s: skipping %s (no model for this dataset)", ds.name, base.name)
                continue
            t0 = time.perf_counter()
            index_dir = bm25_dir = None
            if setup.retriever in ("dense", "hybrid"):
                model_keys.setdefault(setup.model, _model_key(setup.model))
                index_dir = _cache_dir(cache_root, fp, "dense", model_keys[setup.model])
            if setup.retriever in ("bm25", "hybrid"):
                bm25_dir = _cache_dir(cache_root, fp, "bm25")
            opts = dict(setup.options)
            ann_opts = {key: opts.pop(key) for key in ANN_KEYS if key in opts}  # issue 23
            retriever = build_retriever(setup.retriever, ds.corpus, model=setup.model,
                                        index_dir=index_dir if setup.retriever != "bm25" else bm25_dir,
                                        bm25_index=bm25_dir, rerank=setup.rerank,
                                        rerank_top_k=int(opts.pop("rerank_top_k", 100)), **opts)
            run_key = None
            if setup.rerank:  # reranking is the expensive part: its run is cached by everything that shapes it
                run_key = _run_key(setup, fp, model_keys, ds, k, split)
            result = _cached_or_evaluate(retriever, ds, k, threads, cache_root, run_key)
            if ann_opts:  # issue 23: the same vectors searched through an approximate index
                exact_result, retriever = result, ann_from_exact(retriever, ann_opts)
                result = evaluate(retriever, ds, k=k, threads=threads, metrics=LEADERBOARD_METRICS)
                ann.setdefault(setup.name, {})[ds.name] = ann_report(result, exact_result)
            seconds = time.perf_counter() - t0
            timings[f"{setup.name}/{ds.name}"] = round(seconds, 1)
            table[setup.name][ds.name] = result.metrics["nDCG@10"]
            # issue 23: per-query scores, Judged@10, training-data overlap of the row's models
            rows = per_query_metrics(ds.qrels, run_to_dict(result.run), suite_checks.ROW_METRICS)
            per_query.setdefault(ds.name, {})[setup.name] = rows
            suite_checks.write_row_per_query(rows, out_dir / "per_query" / setup.name / f"{ds.name}.tsv")
            judged[setup.name][ds.name] = sum(r["Judged@10"] for r in rows.values()) / max(len(rows), 1)
            overlap[setup.name][ds.name] = training_overlap([setup.model, setup.rerank], ds)
            record = {**result.to_json(), "setup": setup.name, **describe_retriever(retriever),
                      "training_overlap": overlap[setup.name][ds.name],
                      "ann": ann.get(setup.name, {}).get(ds.name),
                      "retr_version": retr_version(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                      "machine": machine_info(), "seconds": round(seconds, 2)}
            write_json_atomic(out_dir / "results" / setup.name / f"{ds.name}.json", record)
            write_trec_run(result.run, out_dir / "runs" / setup.name / f"{ds.name}.trec", tag=setup.name)
            task = MTEB_TASKS.get(ds.name.lower(), ds.name)
            write_json_atomic(out_dir / "mteb" / setup.name / f"{task}.json",
                              mteb_record(ds.name, split, result.metrics, seconds))
            log.info("%s / %s: nDCG@10 %.4f (%.0fs)", setup.name, ds.name, result.metrics["nDCG@10"], seconds)
    names = [d.name for d in datasets]
    sig = suite_checks.significance(per_query, baseline) if baseline else {}
    marks = suite_checks.marks(sig, overlap)
    write_leaderboard(table, names, out_dir, marks=marks, judged=judged, baseline=baseline, ann=ann)
    summary = {"table": table, "datasets": names, "timings": timings, "judged": judged, "baseline": baseline,
               "marks": marks, "significance": sig, "training_overlap": overlap, "ann": ann}
    write_json_atomic(out_dir / "leaderboard.json", summary)
    return summary


def _files_fingerprint(path: str) -> str:
    """sha256 of a model directory's weight and config files (no need to load the model)."""
    p = Path(path)
    h = hashlib.sha256()
    files = sorted(p.glob("*.safetensors")) + sorted(p.glob("*.json")) if p.is_dir() else []
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16] if files else path


def _run_key(setup: Setup, corpus_fp: str, model_keys: dict[str, str], ds, k: int, split: str) -> str:
    queries = hashlib.sha256(json.dumps(ds.eval_queries, sort_keys=True).encode()).hexdigest()[:16]
    parts = {"retriever": setup.retriever, "model": model_keys.get(setup.model, setup.model),
             "rerank": _files_fingerprint(setup.rerank), "options": setup.options, "corpus": corpus_fp,
             "queries": queries, "k": k, "split": split}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _cached_or_evaluate(retriever, ds, k: int, threads: int, cache_root: Path, run_key: str | None):
    from retr.retriever.data.trec import read_trec_run
    from retr.retriever.hits import run_to_dict

    from .evaluate import EvalResult
    from .metrics import compute_metrics

    path = cache_root / "runs" / f"{run_key}.trec" if run_key else None
    if path is not None and path.exists():
        run = read_trec_run(path)
        log.info("reusing cached run %s", path)
        return EvalResult(compute_metrics(ds.qrels, run_to_dict(run), LEADERBOARD_METRICS), run, len(run), 0.0,
                          {"dataset": ds.name, "split": ds.split, "k": k, "ignore_identical_ids": True,
                           "cached_run": str(path)})
    result = evaluate(retriever, ds, k=k, threads=threads, metrics=LEADERBOARD_METRICS)
    if path is not None:
        write_trec_run(result.run, path, tag="cached")
    return result


def leaderboard_rows(table: dict[str, dict[str, float]], datasets: list[str],
                     marks: dict[str, dict[str, str]] | None = None) -> list[list[str]]:
    """Rows of ``set-up, one value per dataset, average``; ``marks`` ({setup: {dataset: "†"}}) follow values."""
    rows = []
    for name, scores in table.items():
        vals = [scores.get(d) for d in datasets]
        have = [v for v in vals if v is not None]
        avg = sum(have) / len(have) if len(have) == len(vals) and have else None
        mk = (marks or {}).get(name, {})
        rows.append([name, *("-" if v is None else f"{v:.4f}{mk.get(d, '')}" for v, d in zip(vals, datasets)),
                     "-" if avg is None else f"{avg:.4f}"])
    return rows


def markdown_table(table: dict[str, dict[str, float]], datasets: list[str],
                   marks: dict[str, dict[str, str]] | None = None) -> str:
    head = ["set-up", *datasets, "average"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in leaderboard_rows(table, datasets, marks)]
    return "\n".join(lines) + "\n"


def write_leaderboard(table: dict[str, dict[str, float]], datasets: list[str], out_dir: Path,
                      marks: dict[str, dict[str, str]] | None = None, judged: dict[str, dict[str, float]] | None = None,
                      baseline: str | None = None, ann: dict | None = None) -> None:  # issue 23: marks ... ann
    from .suite_checks import legend

    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_file(out_dir / "leaderboard.md") as fh:
        fh.write("nDCG@10, test split\n\n" + markdown_table(table, datasets, marks))
        fh.write("\n" + legend(baseline) + "\n")
        if judged:
            fh.write("\nJudged@10 (share of the top 10 that the qrels judge)\n\n" + markdown_table(judged, datasets))
        for name, per_ds in (ann or {}).items():
            fh.write(f"\n{name}: approximate index vs exact search over the same vectors\n\n"
                     "| dataset | recall@10 | recall@100 | nDCG@10 exact | nDCG@10 lost |\n|---|---|---|---|---|\n")
            for d, r in per_ds.items():
                fh.write(f"| {d} | {r['recall@10_vs_exact']:.4f} | {r['recall@100_vs_exact']:.4f} | "
                         f"{r['nDCG@10_exact']:.4f} | {r['nDCG@10_lost']:+.4f} |\n")
    with atomic_file(out_dir / "leaderboard.csv") as fh:
        w = csv.writer(fh)
        w.writerow(["setup", *datasets, "average"])
        w.writerows(leaderboard_rows(table, datasets))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np

        fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(datasets), 4))
        width = 0.8 / max(1, len(table))
        for i, (name, scores) in enumerate(table.items()):
            xs = np.arange(len(datasets)) + i * width
            ax.bar(xs, [scores.get(d, 0) for d in datasets], width, label=name)
        ax.set_xticks(np.arange(len(datasets)) + 0.4 - width / 2, datasets)
        ax.set_ylabel("nDCG@10")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out_dir / "leaderboard.png", dpi=120)
        plt.close(fig)
    except Exception as e:  # the chart is a convenience
        log.warning("no chart: %s", e)


def print_leaderboard(table: dict[str, dict[str, float]], datasets: list[str],
                      marks: dict[str, dict[str, str]] | None = None, title: str = "nDCG@10"):
    from rich.table import Table

    t = Table(title=title)
    for c in ["set-up", *datasets, "average"]:
        t.add_column(c, justify="right" if c != "set-up" else "left", overflow="fold")
    for row in leaderboard_rows(table, datasets, marks):
        t.add_row(*row)
    return t
