"""Issue 23, fresh-user check: what broke when `retr compare` and `retr audit` were fed bad or odd input.

* a run file with a NaN score, a document listed twice for one query, or a non-integer rank: one line naming
  file, line and field (exit 2), not a silently reordered or deduplicated run;
* an empty run, or a run of another split/dataset: refused (it used to score 0 on every query and be marked
  significantly worse), and a run answering only some judged queries is warned about;
* `retr audit`: an evaluation item matched first nearly and later exactly was counted twice (share > 100%);
  an empty training file gave a clean 0% report; the leaderboard overlap flag counted one of several evaluation
  queries that share a text.
"""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from scipy.stats import ttest_rel

from conftest import one_line_error, run_cli, write_beir


def _qrels(path: Path, n: int = 12) -> dict[str, dict[str, int]]:
    qrels = {f"q{i}": {f"d{i}": 1} for i in range(n)}
    path.write_text("query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t1\n" for q, j in qrels.items() for d in j))
    return qrels


def _run(path: Path, qids, relevant_first: bool, tag: str = "t") -> None:
    with open(path, "w") as fh:
        for q in qids:
            docs = [f"d{q[1:]}", "x1", "x2"] if relevant_first else ["x1", "x2", f"d{q[1:]}"]
            fh.writelines(f"{q} Q0 {d} {r + 1} {3 - r}.5 {tag}\n" for r, d in enumerate(docs))


@pytest.mark.parametrize("line, field", [("q0 Q0 d0 1 nan t", '"score" must be a finite number'),
                                         ("q0 Q0 d0 1 inf t", '"score" must be a finite number'),
                                         ("q0 Q0 d0 one 2.0 t", '"rank" must be an integer'),
                                         ("q0 Q0 d0 1 high t", '"score" must be a number')])
def test_compare_names_the_bad_field(tmp_path, capsys, line, field):
    _qrels(tmp_path / "qrels.tsv")
    _run(tmp_path / "a.trec", [f"q{i}" for i in range(12)], True)
    (tmp_path / "b.trec").write_text("q0 Q0 x1 2 1.0 t\n" + line + "\n")
    code, _, err = run_cli(["compare", tmp_path / "a.trec", tmp_path / "b.trec", "--qrels", tmp_path / "qrels.tsv"],
                           capsys)
    assert code == 2 and one_line_error(err).endswith(f"b.trec:2: field {field}, got '{line.split()[3 if 'rank' in field else 4]}'")


def test_duplicate_document_refused_in_both_readers(tmp_path):
    from retr.retriever.data import DataError, read_trec_run
    from retr.retriever.data.trec import iter_trec_run_blocks

    path = tmp_path / "dup.trec"
    path.write_text("q1 Q0 d1 1 2.0 t\nq1 Q0 d2 2 1.5 t\nq1 Q0 d1 3 1.0 t\nq2 Q0 d1 1 1.0 t\n")
    for read in (read_trec_run, lambda p: list(iter_trec_run_blocks(p, 1))):
        with pytest.raises(DataError, match="dup.trec:3: field \"docid\": 'd1' is listed twice for query 'q1'"):
            read(path)
    path.write_text("q1 Q0 d1 1 2.0 t\nq2 Q0 d1 1 2.0 t\n")  # the same document for two queries is fine
    assert [h.docid for h in read_trec_run(path)["q2"]] == ["d1"]
    assert len(list(iter_trec_run_blocks(path, 1))) == 2


def test_empty_or_foreign_run_refused_partial_run_warned(tmp_path, capsys, caplog):
    qrels = _qrels(tmp_path / "qrels.tsv")
    qids = list(qrels)
    _run(tmp_path / "base.trec", qids, True)
    (tmp_path / "empty.trec").write_text("")
    _run(tmp_path / "other.trec", [f"z{i}" for i in range(12)], True)  # another split: no judged query
    for name in ("empty", "other"):
        code, out, err = run_cli(["compare", tmp_path / "base.trec", tmp_path / f"{name}.trec", "--qrels",
                                  tmp_path / "qrels.tsv"], capsys)
        assert code == 2 and out == ""
        assert one_line_error(err) == (f"error: {tmp_path / name}.trec: the run answers none of the 12 judged "
                                       "queries of the qrels (empty run, or another split/dataset?)")
    _run(tmp_path / "part.trec", qids[:4], True)
    code, out, err = run_cli(["compare", tmp_path / "base.trec", tmp_path / "part.trec", "--qrels",
                              tmp_path / "qrels.tsv", "-o", tmp_path / "c.json"], capsys)
    assert code == 0, err
    assert "answers 4 of 12 judged queries; the other 8 score 0" in caplog.text
    row = json.loads((tmp_path / "c.json").read_text())["rows"][0]
    assert row["mean"] == pytest.approx(4 / 12) and row["losses"] == 8 and row["wins"] == 0


def test_compare_p_values_equal_scipy_on_its_per_query_file(tmp_path, capsys):
    """The per-query TSV compare writes is what it tested: scipy's ttest_rel on it gives the reported p."""
    qrels = _qrels(tmp_path / "qrels.tsv", 40)
    rng = np.random.default_rng(3)
    qids = list(qrels)
    _run(tmp_path / "base.trec", qids, True)
    with open(tmp_path / "mixed.trec", "w") as fh:  # relevant doc at rank 1, 2 or 3 at random
        for q in qids:
            docs = ["x1", "x2"]
            docs.insert(int(rng.integers(0, 3)), f"d{q[1:]}")
            fh.writelines(f"{q} Q0 {d} {r + 1} {3 - r} t\n" for r, d in enumerate(docs))
    code, _, err = run_cli(["compare", tmp_path / "base.trec", tmp_path / "mixed.trec", "--qrels",
                            tmp_path / "qrels.tsv", "-M", "nDCG@10", "-M", "MRR@10", "-o", tmp_path / "c.json",
                            "--per-query", tmp_path / "pq.tsv", "--permutations", "2000"], capsys)
    assert code == 0, err
    rows = [ln.split("\t") for ln in (tmp_path / "pq.tsv").read_text().splitlines()[1:]]
    rec = json.loads((tmp_path / "c.json").read_text())
    for col, metric in ((2, "nDCG@10"), (3, "MRR@10")):
        scores = {run: {r[0]: float(r[col]) for r in rows if r[1] == run} for run in ("base", "mixed")}
        p = ttest_rel([scores["mixed"][q] for q in qids], [scores["base"][q] for q in qids]).pvalue
        row = next(r for r in rec["rows"] if r["metric"] == metric)
        assert row["p_t"] == pytest.approx(p, abs=1e-6) and row["p_t"] < 0.05
        assert row["p_randomisation"] < 0.05  # the randomisation test agrees


EVAL_Q = "does vitamin d supplementation reduce the risk of bone fractures in elderly women living at home"


def test_audit_counts_an_item_once_when_matched_nearly_then_exactly(tmp_path, capsys):
    pytest.importorskip("datasketch")
    from retr.evaluation.audit import audit

    ev = write_beir(tmp_path / "ev", docs=[("d1", "", "T cells and the immune system of mice and of men.")],
                    queries=[("q1", EVAL_Q)], qrels=[("q1", "d1", 1)])
    train = tmp_path / "train.jsonl"
    train.write_text(json.dumps({"query": EVAL_Q.replace("women", "woman")}) + "\n"  # near first
                     + json.dumps({"query": EVAL_Q.upper()}) + "\n")  # then exact
    rep = audit([train], ev)
    assert rep["queries"]["exact_ids"] == ["q1"] and rep["queries"]["near_ids"] == []
    assert rep["queries"]["any"] == 1 and [e["match"] for e in rep["queries"]["examples"]] == ["exact"]
    code, out, err = run_cli(["audit", "--train", train, "--eval", ev], capsys)
    assert code == 0, err
    assert "100.0%" in out and "200.0%" not in out


@pytest.mark.parametrize("content", ["", "\n\n"])
def test_audit_refuses_empty_training_data(tmp_path, capsys, content):
    ev = write_beir(tmp_path / "ev")
    for name in ("empty.jsonl", "empty.txt"):
        (tmp_path / name).write_text(content)
        code, out, err = run_cli(["audit", "--train", tmp_path / name, "--eval", ev, "--exact-only"], capsys)
        assert code == 2 and out == ""
        assert one_line_error(err) == f"error: {tmp_path / name}: no queries or passages in the training data"


def test_audit_query_of_wrong_type_names_the_field(tmp_path, capsys):
    ev = write_beir(tmp_path / "ev")
    (tmp_path / "t.jsonl").write_text(json.dumps({"query": "fine"}) + "\n" + json.dumps({"query": ["a"]}) + "\n")
    code, _, err = run_cli(["audit", "--train", tmp_path / "t.jsonl", "--eval", ev, "--exact-only"], capsys)
    assert code == 2 and one_line_error(err).endswith('t.jsonl:2: field "query" must be a string, got list')


def test_leaderboard_overlap_counts_every_query_sharing_a_text(tmp_path):
    from retr.evaluation.audit import training_overlap

    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    train = tmp_path / "train.jsonl"
    train.write_text(json.dumps({"query": "Is salt bad?"}) + "\n")
    (run / "meta.json").write_text(json.dumps({"made_by": "retr train", "config": {"train_data": [str(train)]}}))
    ds = SimpleNamespace(eval_queries={"a": "is salt bad", "b": "IS SALT BAD?!", "c": "is sugar bad"})
    assert training_overlap([str(run / "model")], ds)["queries"] == 2


@pytest.mark.parametrize("name, text, message", [
    ("list.yaml", "baseline: [bm25]\nsetups:\n  - {name: bm25, retriever: bm25}\n",
     "list.yaml: baseline ['bm25'] is not the name of a set-up (bm25)"),
    ("broken.yaml", "baseline: bm25\nsetups:\n  - {name: bm25, retriever: bm25\n",
     "broken.yaml:4: malformed YAML (expected ',' or '}', but got '<stream end>')"),
    ("broken.json", '{"setups": [\n{"name": "bm25"},\n}', "broken.json:3: malformed JSON (Expecting value)"),
    ("type.yaml", "setups:\n  - {name: m, model: minilm, index_type: hnsw, ef_search: abc}\n",
     "type.yaml: setups[0] (m): ef_search must be an integer, got 'abc'"),
    ("range.yaml", "setups:\n  - {name: b, retriever: bm25, rerank: x, rerank_alpha: {scifact: 2}}\n",
     "range.yaml: setups[0] (b): rerank_alpha.scifact must be in [0.0, 1.0], got 2"),
    ("choice.yaml", "setups:\n  - {name: h, retriever: hybrid, model: minilm, fusion: max}\n",
     "choice.yaml: setups[0] (h): fusion must be one of rrf, weighted, got 'max'"),
    ("kind.yaml", "setups:\n  - {name: b, retriever: bm25}\n  - {name: s, retriever: sparse}\n",
     "kind.yaml: setups[1] (s): retriever must be one of dense, bm25, hybrid, got 'sparse'"),
    ("tuning.yaml", "setups:\n  - {name: m, model: minilm, nprobe: 8}\n",
     "tuning.yaml: setups[0] (m): nprobe needs index_type (an approximate index)"),
])
def test_bad_suite_refused_before_anything_runs(tmp_path, capsys, name, text, message):
    ds = write_beir(tmp_path / "ds")
    (tmp_path / name).write_text(text)
    code, out, err = run_cli(["eval", "--suite", tmp_path / name, "-d", ds, "--output-dir", tmp_path / "out"],
                             capsys)
    assert code == 2 and one_line_error(err) == f"error: {tmp_path}/{message}"
    assert not (tmp_path / "out").exists()  # refused before the first set-up ran


def test_shipped_suite_passes_the_checks():
    from retr.evaluation.leaderboard import load_baseline, load_suite

    path = Path(__file__).parents[1] / "benchmarks" / "beir_suite.yaml"
    setups = load_suite(path)
    assert load_baseline(path, setups) == "bm25"
    reranked = [s for s in setups if s.rerank]
    assert reranked and all(0 <= s.options["rerank_alpha"] <= 1 for s in reranked)  # loaded through the schema


def test_compare_drops_identical_ids_as_retr_eval(tmp_path, capsys):
    """An ArguAna-like run from another tool ranks each query's own document first (unjudged): compare scores
    it as retr eval would (dropped); --keep-identical-ids keeps it. A judged self hit is always kept."""
    qrels = _qrels(tmp_path / "qrels.tsv", 20)
    with open(tmp_path / "qrels.tsv", "a") as fh:
        fh.write("q0\tq0\t1\n")  # q0's own document is judged relevant to it: kept either way
    qrels["q0"]["q0"] = 1
    with open(tmp_path / "self.trec", "w") as fh:
        for q in qrels:
            fh.writelines(f"{q} Q0 {d} {r + 1} {5 - r} t\n" for r, d in enumerate([q, "x1", f"d{q[1:]}", "x2"]))
    _run(tmp_path / "base.trec", list(qrels), False)
    from retr.evaluation.metrics import per_query_metrics

    expected = {}
    for keep in (False, True):
        run = {q: {d: 5.0 - r for r, d in enumerate([q, "x1", f"d{q[1:]}", "x2"]) if keep or d != q or q == "q0"}
               for q in qrels}
        expected[keep] = per_query_metrics(qrels, run, ["nDCG@10"])
        code, _, err = run_cli(["compare", tmp_path / "base.trec", tmp_path / "self.trec", "--qrels",
                                tmp_path / "qrels.tsv", "--per-query", tmp_path / f"pq{keep}.tsv", "-o",
                                tmp_path / f"c{keep}.json", *(["--keep-identical-ids"] if keep else [])], capsys)
        assert code == 0, err
        got = {r.split("\t")[0]: float(r.split("\t")[2]) for r in (tmp_path / f"pq{keep}.tsv").read_text()
               .splitlines()[1:] if r.split("\t")[1] == "self"}
        assert got == pytest.approx({q: v["nDCG@10"] for q, v in expected[keep].items()}, abs=1e-6)
        assert json.loads((tmp_path / f"c{keep}.json").read_text())["ignore_identical_ids"] is (not keep)
    assert expected[False]["q1"]["nDCG@10"] > expected[True]["q1"]["nDCG@10"]
    assert expected[False]["q0"] == expected[True]["q0"]


def test_audit_refuses_options_that_would_do_nothing(tmp_path, capsys):
    ev = write_beir(tmp_path / "ev")
    (tmp_path / "t.jsonl").write_text(json.dumps({"query": "does aspirin prevent heart attacks"}) + "\n")
    for extra, message in ((["--exact-only", "--threshold", "0.5"], "--threshold does not apply with --exact-only"),
                           (["--exact-only", "--num-perm", "64"], "--num-perm does not apply with --exact-only"),
                           (["--train-split", "dev"], "--train-split does not apply without a BEIR folder in --train")):
        code, out, err = run_cli(["audit", "--train", tmp_path / "t.jsonl", "--eval", ev, *extra], capsys)
        assert code == 2 and out == "" and one_line_error(err) == f"error: retr audit: {message}"
    code, out, err = run_cli(["audit", "--train", tmp_path / "t.jsonl", "--eval", ev, "--exact-only"], capsys)
    assert code == 0 and "queries" in out  # the same call without them runs


def test_compare_refuses_cutoff_zero_one_path_twice_and_counts_a_metric_once(tmp_path, capsys):
    _qrels(tmp_path / "qrels.tsv")
    _run(tmp_path / "a.trec", [f"q{i}" for i in range(12)], True)
    _run(tmp_path / "b.trec", [f"q{i}" for i in range(12)], False)
    base = ["compare", tmp_path / "a.trec", tmp_path / "b.trec", "--qrels", tmp_path / "qrels.tsv"]
    for metric in ("Judged@0", "nDCG@0"):  # Judged@0 used to divide by zero (traceback)
        code, _, err = run_cli([*base, "-M", metric], capsys)
        assert code == 2 and one_line_error(err).startswith(f"error: retr compare: --metric: unknown metric '{metric}'")
    code, _, err = run_cli([*base, "-o", tmp_path / "x", "--per-query", tmp_path / "x"], capsys)
    assert code == 2 and one_line_error(err) == (f"error: retr compare: --output and --per-query name the same "
                                                 f"path {tmp_path / 'x'}")
    assert not (tmp_path / "x").exists()
    code, out, err = run_cli([*base, "-M", "nDCG@10", "-M", "nDCG@10", "-o", tmp_path / "c.json"], capsys)
    assert code == 0, err
    rec = json.loads((tmp_path / "c.json").read_text())
    assert rec["metrics"] == ["nDCG@10"] and len(rec["rows"]) == 1 and out.count("baseline a") == 1


def test_output_to_a_pipe_or_device_is_refused_not_replaced(tmp_path, capsys):
    """`-o /dev/null` as root used to replace the device with a regular file (the atomic write renames a temp
    file over the target); a FIFO stands in for the device here."""
    import os
    import stat

    _qrels(tmp_path / "qrels.tsv")
    _run(tmp_path / "a.trec", [f"q{i}" for i in range(12)], True)
    _run(tmp_path / "b.trec", [f"q{i}" for i in range(12)], False)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    code, out, err = run_cli(["compare", tmp_path / "a.trec", tmp_path / "b.trec", "--qrels", tmp_path / "qrels.tsv",
                              "-o", fifo], capsys)
    assert code == 2 and out == "" and "is not a regular file (a device or pipe)" in one_line_error(err)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)  # still the pipe
    ev = write_beir(tmp_path / "ev")
    (tmp_path / "t.jsonl").write_text(json.dumps({"query": "does aspirin prevent heart attacks"}) + "\n")
    code, out, err = run_cli(["audit", "--train", tmp_path / "t.jsonl", "--eval", ev, "-o", fifo], capsys)
    assert code == 2 and "is not a regular file" in one_line_error(err) and stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_tiny_p_values_are_not_written_as_zero(tmp_path, capsys):
    """ArguAna's p-values (~1e-29) were written to the JSON as 0.0 (rounded to 6 decimals)."""
    qrels = _qrels(tmp_path / "qrels.tsv", 300)
    rng = np.random.default_rng(0)
    _run(tmp_path / "good.trec", list(qrels), True)
    with open(tmp_path / "worse.trec", "w") as fh:  # relevant document at rank 2 or 3: consistently worse
        for q in qrels:
            docs = ["x1", f"d{q[1:]}", "x2"] if rng.random() < 0.5 else ["x1", "x2", f"d{q[1:]}"]
            fh.writelines(f"{q} Q0 {d} {r + 1} {3 - r} t\n" for r, d in enumerate(docs))
    code, _, err = run_cli(["compare", tmp_path / "good.trec", tmp_path / "worse.trec", "--qrels",
                            tmp_path / "qrels.tsv", "-o", tmp_path / "c.json", "--per-query", tmp_path / "pq.tsv"],
                           capsys)
    assert code == 0, err
    row = json.loads((tmp_path / "c.json").read_text())["rows"][0]
    rows = [ln.split("\t") for ln in (tmp_path / "pq.tsv").read_text().splitlines()[1:]]
    s = {run: [float(r[2]) for r in rows if r[1] == run] for run in ("good", "worse")}
    p = ttest_rel(s["worse"], s["good"]).pvalue
    assert 0 < p < 1e-20 and row["p_t"] == pytest.approx(p, rel=1e-3)
    assert row["p_randomisation"] == pytest.approx(1 / 10_001)  # the randomisation floor
