"""Metrics agree with an independent pytrec_eval run on the written TREC file; unjudged identical ids are dropped."""
from __future__ import annotations

import json

import numpy as np
import pytest
import pytrec_eval

from conftest import make_tiny_bert, run_cli, write_beir
from retr.evaluation import compute_metrics, evaluate, remove_identical_ids
from retr.retriever.data import load_beir, read_trec_run, write_trec_run
from retr.retriever.hits import Hit
from retr.retriever.modeling import DualEncoder
from retr.retriever.search import DenseRetriever


def _pytrec(qrels, run_file):
    run = {}
    with open(run_file) as fh:
        for line in fh:
            q, _, d, _, s, _ = line.split()
            run.setdefault(q, {})[d] = float(s)
    ev = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100", "map_cut.100", "recip_rank"})
    per = ev.evaluate(run)
    n = len(per)
    return {"nDCG@10": sum(v["ndcg_cut_10"] for v in per.values()) / n,
            "Recall@100": sum(v["recall_100"] for v in per.values()) / n,
            "MAP@100": sum(v["map_cut_100"] for v in per.values()) / n}


def test_metrics_hand_checked():
    qrels = {"q": {"a": 1, "b": 0}}
    run = {"q": {"x": 3.0, "a": 2.0, "b": 1.0}}
    m = compute_metrics(qrels, run, ["nDCG@10", "MRR@10", "Recall@1", "Recall@10", "P@2"])
    assert m["MRR@10"] == pytest.approx(0.5)
    assert m["nDCG@10"] == pytest.approx(1 / np.log2(3))
    assert m["Recall@1"] == 0 and m["Recall@10"] == 1
    assert m["P@2"] == pytest.approx(0.5)


def test_missing_query_counts_as_zero():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}}
    m = compute_metrics(qrels, {"q1": {"a": 1.0}}, ["nDCG@10"])
    assert m["nDCG@10"] == pytest.approx(0.5)


def test_remove_identical_ids():
    run = {"q": [Hit("q", 9.0, 1), Hit("a", 5.0, 2), Hit("b", 1.0, 3)]}
    assert remove_identical_ids(run, 1) == ({"q": [Hit("a", 5.0, 1)]}, 0)
    # a self hit the qrels judge relevant to that query is a right answer: kept and counted
    assert remove_identical_ids(run, 2, {"q": {"q": 1}}) == ({"q": [Hit("q", 9.0, 1), Hit("a", 5.0, 2)]}, 1)
    assert remove_identical_ids(run, 2, {"q": {"q": 0, "a": 1}})[0] == {"q": [Hit("a", 5.0, 1), Hit("b", 1.0, 2)]}


def test_judged_self_hit_scores_as_pytrec_eval_on_the_full_ranking(tmp_path, tiny_model_dir, capsys):
    """Case identical-ids: query and doc ids are separate namespaces; qrels judge doc "0" relevant to query "0"."""
    docs = [(str(i), "", t) for i, t in enumerate(["aspirin heart", "statins cholesterol", "vitamin d bone",
                                                   "salt blood pressure", "sleep obesity"])]
    queries = [("0", "aspirin heart attack"), ("1", "cholesterol drugs")]
    qrels = [("0", "0", 1), ("1", "1", 1)]
    data = write_beir(tmp_path / "ids", docs=docs, queries=queries, qrels=qrels)
    code, _, err = run_cli(["eval", "-m", tiny_model_dir, "-d", data, "--k", "5", "--run", tmp_path / "run.trec",
                            "-o", tmp_path / "out.json"], capsys)
    assert code == 0, err
    code, _, _ = run_cli(["eval", "-m", tiny_model_dir, "-d", data, "--k", "5", "--keep-identical-ids",
                          "--run", tmp_path / "keep.trec", "-o", tmp_path / "keep.json"], capsys)
    default = json.loads((tmp_path / "out.json").read_text())
    keep = json.loads((tmp_path / "keep.json").read_text())
    indep = _pytrec(load_beir(data, "test").qrels, tmp_path / "keep.trec")
    assert default["metrics"]["nDCG@10"] == pytest.approx(indep["nDCG@10"], abs=1e-6)
    assert keep["metrics"]["nDCG@10"] == pytest.approx(indep["nDCG@10"], abs=1e-6)
    assert default["identical_ids_kept"] == 2
    assert (tmp_path / "run.trec").read_text() == (tmp_path / "keep.trec").read_text()  # both self hits judged


def test_evaluate_equals_independent_pytrec_eval_on_run_file(tiny_beir, tiny_model_dir, tmp_path):
    ds = load_beir(tiny_beir, "test")
    retriever = DenseRetriever.build(DualEncoder.from_pretrained(tiny_model_dir), ds.corpus, show_progress=False)
    result = evaluate(retriever, ds, k=5)
    assert any(h.docid == "d6" for h in result.run["d6"])  # its own id is judged relevant to it: kept
    assert all(len(h) == 5 for h in result.run.values())
    write_trec_run(result.run, tmp_path / "run.trec")
    indep = _pytrec(ds.qrels, tmp_path / "run.trec")
    for name, value in indep.items():
        assert result.metrics[name] == pytest.approx(value, abs=1e-4)
    assert read_trec_run(tmp_path / "run.trec").keys() == result.run.keys()


def test_cli_index_search_eval(tiny_beir, tiny_model_dir, tmp_path, capsys):
    import json

    code, out, err = run_cli(["index", "-m", tiny_model_dir, "-d", tiny_beir, "-o", tmp_path / "idx"], capsys)
    assert code == 0, err
    code, out, err = run_cli(["search", "-i", tmp_path / "idx", "-q", "aspirin heart", "-k", "3",
                              "--output", tmp_path / "hits.json"], capsys)
    assert code == 0, err
    hits = json.loads((tmp_path / "hits.json").read_text())["q1"]
    assert [h["rank"] for h in hits] == [1, 2, 3]
    code, out, err = run_cli(["eval", "-d", tiny_beir, "-i", tmp_path / "idx", "-o", tmp_path / "r.json",
                              "--run", tmp_path / "r.trec", "-k", "5"], capsys)
    assert code == 0, err
    rec = json.loads((tmp_path / "r.json").read_text())
    assert set(rec["metrics"]) >= {"nDCG@10", "Recall@100", "MAP@100", "MRR@10"}
    assert rec["dataset"] == "tiny" and rec["split"] == "test" and rec["encoder"]["pooling"] == "mean"
    indep = _pytrec(load_beir(tiny_beir, "test").qrels, tmp_path / "r.trec")
    assert rec["metrics"]["nDCG@10"] == pytest.approx(indep["nDCG@10"], abs=1e-4)
    code, out, err = run_cli(["index", "info", tmp_path / "idx"], capsys)
    assert code == 0 and "Flat" in out


def test_index_with_other_model_settings_is_refused(tiny_beir, tiny_model_dir, tmp_path, capsys):
    code, _, err = run_cli(["index", "-m", tiny_model_dir, "-d", tiny_beir, "-o", tmp_path / "idx"], capsys)
    assert code == 0, err
    other = make_tiny_bert(tmp_path / "cls-model", pooling="cls")
    code, _, err = run_cli(["search", "-i", tmp_path / "idx", "-q", "x", "--model", other], capsys)
    assert code == 2
    assert "pooling='mean' but the query encoder has pooling='cls'" in err
    retrained = make_tiny_bert(tmp_path / "other-weights", seed=1)
    code, _, err = run_cli(["search", "-i", tmp_path / "idx", "-q", "x", "--model", retrained], capsys)
    assert code == 2 and "passage_fingerprint" in err


def test_index_of_another_corpus_is_refused(tiny_beir, tiny_model_dir, tmp_path, capsys):
    from conftest import DOCS, write_beir

    other = write_beir(tmp_path / "other", docs=DOCS[:6], qrels=[("q1", "d1", 1)])
    assert run_cli(["index", "-m", tiny_model_dir, "-d", other, "-o", tmp_path / "idx"], capsys)[0] == 0
    code, _, err = run_cli(["eval", "-d", tiny_beir, "-i", tmp_path / "idx"], capsys)
    assert code == 2 and "index was built from another corpus" in err


def test_search_streams_query_blocks(tiny_beir, tiny_model_dir, tmp_path, capsys, monkeypatch):
    """`retr search --queries` writes the same run and JSON whether the queries go in one block or several."""
    import json

    from retr.cli import search_cmd

    code, _, err = run_cli(["index", "-m", tiny_model_dir, "-d", tiny_beir, "-o", tmp_path / "idx"], capsys)
    assert code == 0, err
    outputs = []
    for block in (1024, 2):
        monkeypatch.setattr(search_cmd, "QUERY_BLOCK", block)
        run, js = tmp_path / f"run{block}.trec", tmp_path / f"hits{block}.json"
        code, _, err = run_cli(["search", "-i", tmp_path / "idx", "--queries", tiny_beir / "queries.jsonl", "-k", "4",
                                "--run", run, "--output", js], capsys)
        assert code == 0, err
        outputs.append((run.read_text(), json.loads(js.read_text())))
    assert outputs[0] == outputs[1]
    assert len(outputs[0][1]) == 5 and all(len(h) == 4 for h in outputs[0][1].values())
    assert len(outputs[0][0].splitlines()) == 20
