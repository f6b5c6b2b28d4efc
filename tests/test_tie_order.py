"""Tied scores: every metric (MRR@k included) and every sort/cut in retr use trec_eval's order (score desc, then
docid desc), so MRR@10 is what pytrec_eval gives on the same run (case ../shared/cases/mrr-ties)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import pytrec_eval

from conftest import run_cli, write_beir
from retr.evaluation import compute_metrics
from retr.retriever.hits import Hit, break_ties, hits_from_scores, rerank_order, trec_sorted
from retr.retriever.hybrid import rrf
from retr.retriever.rerank import merge_reranked


def _pytrec_rr_at(qrels, run, k):
    """Independent reference: pytrec_eval's recip_rank over the whole run; RR@k is it if the first relevant
    document is within the top k (1/rr <= k), else 0. No cutting of the run by retr's code."""
    per = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(run)
    vals = [per.get(q, {}).get("recip_rank", 0.0) for q in qrels]
    return sum(v if v and 1 / v <= k + 1e-9 else 0.0 for v in vals) / len(qrels)


def test_mrr_with_ties_equals_pytrec_eval():
    qrels = {"q1": {"d00": 1}, "q2": {"b": 1}, "q3": {"d0": 1}}
    run = {"q1": {"d00": 0.9, "d00b": 0.9, "d00c": 0.9, "x": 0.5},  # trec_eval: d00c, d00b, d00 -> RR 1/3
           "q2": {c: 1.0 for c in "abcdefghijkl"},  # all tied; b is 11th in trec order -> RR@10 = 0
           "q3": {"d00b": 2.0, "d00": 2.0, "d0": 2.0}}  # prefixes: strcmp puts the shorter docid last -> 1/3
    m = compute_metrics(qrels, run, ["MRR@10", "MAP@100"])
    assert m["MRR@10"] == pytest.approx((1 / 3 + 0 + 1 / 3) / 3)
    assert m["MRR@10"] == pytest.approx(_pytrec_rr_at(qrels, run, 10))
    one = {q: qrels[q] for q in ("q1", "q3")}  # one relevant doc, inside both cutoffs: MRR == MAP
    m = compute_metrics(one, run, ["MRR@10", "MAP@100"])
    assert m["MRR@10"] == pytest.approx(m["MAP@100"])


@pytest.mark.parametrize("k", [1, 3, 10])
def test_mrr_random_tied_runs_equal_pytrec_eval(k):
    rng = np.random.default_rng(0)
    docids = ["d", "d0", "d00", "d1", "d10", "D1", "é", "e", "z9", "a"]
    qrels, run = {}, {}
    for i in range(200):
        q = f"q{i}"
        docs = list(rng.choice(docids, size=int(rng.integers(3, 10)), replace=False))
        run[q] = {d: float(rng.integers(0, 3)) for d in docs}  # few distinct scores: many ties
        qrels[q] = {str(rng.choice(docids)): 1}
    assert compute_metrics(qrels, run, [f"MRR@{k}"])[f"MRR@{k}"] == pytest.approx(_pytrec_rr_at(qrels, run, k))


def test_sorting_helpers_use_trec_eval_order():
    assert [d for d, _ in trec_sorted([("a", 1.0), ("c", 1.0), ("b", 2.0), ("d00", 1.0), ("d00b", 1.0)])] == \
        ["b", "d00b", "d00", "c", "a"]
    hits = [Hit("a", 1.0, 1), Hit("b", 1.0, 2), Hit("c", 0.5, 3)]
    assert [h.docid for h in rerank_order(hits)] == ["b", "a", "c"]
    # a distance ranking (ascending scores) keeps its order; only the tie inside it is re-ordered
    assert [(h.docid, h.rank) for h in break_ties([Hit("x", 0.1, 1), Hit("a", 0.3, 2), Hit("b", 0.3, 3)])] == \
        [("x", 1), ("b", 2), ("a", 3)]
    assert [h.docid for h in hits_from_scores(["a", "b", "c"], [2.0, 2.0, 1.0])] == ["b", "a", "c"]
    # RRF: two runs with mirrored ranks give every document the same fused score
    fused = rrf([{"q": [Hit("a", 0, 1), Hit("b", 0, 2)]}, {"q": [Hit("b", 0, 1), Hit("a", 0, 2)]}])
    assert [h.docid for h in fused["q"]] == ["b", "a"]
    merged = merge_reranked({"q": [Hit("a", 3, 1), Hit("b", 2, 2), Hit("c", 1, 3)]}, {"q": {"a": 0.5, "b": 0.5}}, 2)
    assert [(h.docid, h.rank) for h in merged["q"]] == [("b", 1), ("a", 2), ("c", 3)]


def test_reranker_rank_ties_by_docid_descending():
    from retr.retriever.rerank import Reranker

    class Flat:
        name = "flat"

        def score(self, queries, passages, batch_size=32, show_progress=False):
            return [1.0 if p.startswith("same") else 0.0 for p in passages]

    reranker = Reranker.__new__(Reranker)  # any back end with .score(); no model to load
    reranker.model, reranker.batch_size, reranker.show_progress = Flat(), 32, False
    ranked = reranker.rank("q", ["same x", "other", "same y"], ["d1", "d2", "d3"])
    assert [r.docid for r in ranked.results] == ["d3", "d1", "d2"]


def test_cli_eval_with_duplicate_documents_mrr_equals_pytrec_eval(tiny_model_dir, tmp_path, capsys):
    """The mrr-ties case rebuilt: exact-duplicate passages tie; each query has one relevant document."""
    text = {"cat": "Cats are small domesticated carnivores that purr and hunt mice.",
            "bread": "Bread is baked from flour, water, yeast and salt in a hot oven.",
            "sun": "Solar panels turn sunlight into electricity with photovoltaic cells."}
    docs = [("d00", "", text["cat"]), ("d00b", "", text["cat"]), ("d00c", "", text["cat"]),
            ("d05", "", text["bread"]), ("d05b", "", text["bread"]), ("d07", "", text["sun"])]
    queries = [("q1", text["cat"]), ("q2", text["bread"]), ("q3", text["sun"])]
    qrels = [("q1", "d00", 1), ("q2", "d05", 1), ("q3", "d07", 1)]
    data = write_beir(tmp_path / "ties", docs=docs, queries=queries, qrels=qrels)
    code, _, err = run_cli(["eval", "-m", tiny_model_dir, "-d", data, "-k", "10", "--run", tmp_path / "run.trec",
                            "-o", tmp_path / "out.json"], capsys)
    assert code == 0, err
    lines = [l.split() for l in (tmp_path / "run.trec").read_text().splitlines()]
    run: dict[str, dict[str, float]] = {}
    for q, _, d, rank, s, _ in lines:
        run.setdefault(q, {})[d] = float(s)
    q1 = [(d, int(r)) for q, _, d, r, _, _ in lines if q == "q1"][:3]
    assert q1 == [("d00c", 1), ("d00b", 2), ("d00", 3)]  # the written ranks follow trec_eval's order
    metrics = json.loads((tmp_path / "out.json").read_text())["metrics"]
    ref_qrels = {q: {d: s} for q, d, s in qrels}
    assert metrics["MRR@10"] == pytest.approx(_pytrec_rr_at(ref_qrels, run, 10), abs=1e-6)
    assert metrics["MRR@10"] == pytest.approx((1 / 3 + 1 / 2 + 1) / 3, abs=1e-6)
    assert metrics["MRR@10"] == pytest.approx(metrics["MAP@100"], abs=1e-6)
