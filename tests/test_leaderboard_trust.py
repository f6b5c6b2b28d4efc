"""Issue 23 on leaderboard runs: a suite `baseline:` gives per-row paired tests (the same p-values as
`retr compare` on the written runs), per-query scores, Judged@10, and a flag on rows whose model's recorded
training data overlaps the evaluated split; the printed tables fit 80 columns."""
from __future__ import annotations

import json
import shutil

import pytest

from conftest import DOCS, QRELS, QUERIES, make_tiny_bert, run_cli, write_beir


def test_baseline_marks_per_query_and_overlap_flag(tmp_path, tiny_model_dir, capsys):
    data = write_beir(tmp_path / "beir" / "scifact")
    other = make_tiny_bert(tmp_path / "other-model", seed=3)
    # a "fine-tuned" model whose recorded training data holds a test query (q2's text, reworded in case)
    run = tmp_path / "ft-run"
    shutil.copytree(tiny_model_dir, run / "model")
    (tmp_path / "train.jsonl").write_text(json.dumps({"query": "Cholesterol lowering DRUGS", "positive_passages": [
        {"docid": "d2", "text": "x"}]}) + "\n")
    (run / "meta.json").write_text(json.dumps({"made_by": "retr train", "config": {
        "train_data": [str(tmp_path / "train.jsonl")], "train_split": "train"}}))
    suite = tmp_path / "suite.yaml"
    suite.write_text(f"""baseline: base
setups:
  - {{name: base, retriever: dense, model: "{tiny_model_dir}"}}
  - {{name: other, retriever: dense, model: "{other}"}}
  - {{name: ft, retriever: dense, model: "{run / 'model'}"}}
""")
    out = tmp_path / "lb"
    code, stdout, err = run_cli(["eval", "--suite", suite, "-d", data, "--output-dir", out, "-k", "10"], capsys)
    assert code == 0, err
    board = json.loads((out / "leaderboard.json").read_text())
    sig = board["significance"]["scifact"]
    assert sig["baseline"] == "base" and {r["name"] for r in sig["rows"]} == {"other", "ft"}
    # the leaderboard's p-values are those of `retr compare` on the written runs
    code, _, err = run_cli(["compare", out / "runs" / "base" / "scifact.trec", out / "runs" / "other" / "scifact.trec",
                            out / "runs" / "ft" / "scifact.trec", "--qrels", data / "qrels" / "test.tsv",
                            "-o", tmp_path / "cmp.json"], capsys)
    assert code == 0, err
    cmp = {r["name"]: r for r in json.loads((tmp_path / "cmp.json").read_text())["rows"]}  # named by set-up
    for row in sig["rows"]:
        assert row["p_t"] == pytest.approx(cmp[row["name"]]["p_t"], abs=1e-6)
        assert row["p_holm"] == pytest.approx(cmp[row["name"]]["p_holm"], abs=1e-6)
    # per-query scores: one line per judged query, mean = the row's nDCG@10
    lines = (out / "per_query" / "other" / "scifact.tsv").read_text().splitlines()
    assert lines[0] == "qid\tnDCG@10\tJudged@10" and len(lines) == 1 + len({q for q, _, _ in QRELS})
    mean = sum(float(x.split("\t")[1]) for x in lines[1:]) / (len(lines) - 1)
    assert mean == pytest.approx(board["table"]["other"]["scifact"], abs=1e-5)
    assert 0 < board["judged"]["other"]["scifact"] <= 1
    # the fine-tuned row is flagged: its training data holds a test query
    assert board["training_overlap"]["ft"]["scifact"]["queries"] == 1
    assert board["training_overlap"]["base"]["scifact"] is None
    assert "\u2021" in board["marks"]["ft"]["scifact"] and "\u2021" not in board["marks"].get("other", {}).get(
        "scifact", "")
    md = (out / "leaderboard.md").read_text()
    assert "\u2021" in md and "Judged@10" in md and "differs from base" in md
    assert max(map(len, stdout.splitlines())) <= 80


def test_marks_follow_holm_p():
    from retr.evaluation.suite_checks import SIGNIFICANT, marks

    sig = {"scifact": {"rows": [{"name": "a", "p_holm": 0.01}, {"name": "b", "p_holm": 0.2}]},
           "nfcorpus": {"rows": [{"name": "a", "p_holm": 0.049}]}}
    got = marks(sig, {"b": {"scifact": {"queries": 2}}, "a": {"scifact": None}})
    assert got == {"a": {"scifact": SIGNIFICANT, "nfcorpus": SIGNIFICANT}, "b": {"scifact": "\u2021"}}


def test_unknown_baseline_is_refused(tmp_path, tiny_model_dir, capsys):
    data = write_beir(tmp_path / "d", docs=DOCS, queries=QUERIES, qrels=QRELS)
    suite = tmp_path / "s.yaml"
    suite.write_text(f"baseline: bm25\nsetups:\n  - {{name: a, retriever: dense, model: \"{tiny_model_dir}\"}}\n")
    code, _, err = run_cli(["eval", "--suite", suite, "-d", data, "--output-dir", tmp_path / "o"], capsys)
    assert code == 2 and "s.yaml: baseline 'bm25' is not the name of a set-up" in err


def test_ann_row_reports_recall_and_loss_against_exact(tmp_path, tiny_model_dir, capsys):
    data = write_beir(tmp_path / "beir" / "scifact")
    suite = tmp_path / "suite.yaml"
    suite.write_text(f"""setups:
  - {{name: exact, retriever: dense, model: "{tiny_model_dir}"}}
  - {{name: hnsw, retriever: dense, model: "{tiny_model_dir}", index_type: hnsw, ef_search: 16}}
""")
    out = tmp_path / "lb"
    code, _, err = run_cli(["eval", "--suite", suite, "-d", data, "--output-dir", out, "-k", "10"], capsys)
    assert code == 0, err
    board = json.loads((out / "leaderboard.json").read_text())
    rep = board["ann"]["hnsw"]["scifact"]
    # 8 documents: HNSW finds them all, so nothing is lost against exact search over the same vectors
    assert rep["recall@10_vs_exact"] == 1.0 and rep["nDCG@10_lost"] == pytest.approx(0, abs=1e-6)
    assert rep["nDCG@10_exact"] == pytest.approx(board["table"]["exact"]["scifact"], abs=1e-6)
    rec = json.loads((out / "results" / "hnsw" / "scifact.json").read_text())
    assert rec["index"]["factory"].startswith("HNSW") and rec["ann"] == rep
    assert "approximate index vs exact" in (out / "leaderboard.md").read_text()
    suite.write_text(f"setups:\n  - {{name: x, retriever: bm25, index_type: hnsw}}\n")
    code, _, err = run_cli(["eval", "--suite", suite, "-d", data, "--output-dir", out], capsys)
    assert code == 2 and "index_type needs retriever dense" in err


def test_ann_from_exact_loses_recall_on_a_coarse_ivf():
    import numpy as np

    from retr.evaluation.ann_rows import ann_from_exact, flat_vectors, recall_vs_exact
    from retr.indexing.faiss_index import FaissIndex
    from retr.retriever.hits import hits_from_scores

    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(4000, 16)).astype(np.float32)
    ids = [f"d{i}" for i in range(len(vecs))]

    class Exact:  # the parts of a DenseRetriever that ann_from_exact reads
        index, batch_size, show_progress = FaissIndex.build(vecs, ids), 8, False
        encoder = type("Stub", (), {"name": "stub"})()

    assert np.array_equal(flat_vectors(Exact.index.index), vecs)
    approx = ann_from_exact(Exact, {"index_type": "ivf", "nlist": 64, "nprobe": 1})
    assert approx.index.meta["factory"] == "IVF64,Flat" and len(approx.index) == len(vecs)
    q = rng.normal(size=(50, 16)).astype(np.float32)

    def run(index):
        s, i = index.search(q, 10)
        return {str(n): hits_from_scores(list(r_i), r_s) for n, (r_i, r_s) in enumerate(zip(i, s))}

    r = recall_vs_exact(run(approx.index), run(Exact.index), 10)
    assert 0.1 < r < 0.95  # one list of 64 probed: clearly approximate
    approx.index.set_search_params(nprobe=64)
    assert recall_vs_exact(run(approx.index), run(Exact.index), 10) == 1.0
