"""False-negative-aware mining (issue 20): --exclude-siblings, --relative-margin, --max-score, --rescore-with, and
on real NFCorpus data no mined negative has the text of one of the query's positives."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import SHARED_DATA, run_cli, write_beir
from retr.retriever.data import load_beir
from retr.retriever.data.training import Passage
from retr.retriever.false_negatives import score_keep_mask, text_key
from retr.retriever.mining import MiningConfig, MiningStats, iter_mined
from retr.retriever.modeling import DualEncoder
from retr.retriever.scoring import CrossEncoderScorer, DenseScorer
from retr.retriever.search import DenseRetriever

DOCS = [(f"d{i}", "", f"passage {i} about heart blood pressure topic {i % 4}") for i in range(12)]
# q1 and q2 share d0; d1 is q2's other positive, so a sibling of q1; q3 is unrelated
QRELS = [("q1", "d0", 1), ("q2", "d0", 1), ("q2", "d1", 1), ("q3", "d5", 1)]
QUERIES = [("q1", "heart pressure"), ("q2", "blood pressure topic"), ("q3", "topic 1")]


@pytest.fixture
def data(tmp_path):
    return write_beir(tmp_path / "fn", docs=DOCS, queries=QUERIES, qrels=QRELS)


def _mine(tmp_path, data, capsys, *flags, model=None):
    out = tmp_path / f"m{len(list(tmp_path.iterdir()))}.jsonl"
    code, stdout, err = run_cli(["mine", "-d", data, "--split", "test", "--teacher", model, "--range-min", "1",
                                 "--range-max", "12", "--num-negatives", "0", "-o", out, *flags], capsys)
    assert code == 0, err
    rows = {r["query_id"]: [n["docid"] for n in r["negative_passages"]]
            for r in map(json.loads, out.read_text().splitlines())}
    return rows, " ".join(stdout.split())


def test_exclude_siblings_drops_exactly_the_siblings_positives(tmp_path, data, tiny_model_dir, capsys):
    plain, _ = _mine(tmp_path, data, capsys, model=tiny_model_dir)
    assert "d1" in plain["q1"]  # the whole ranking minus q1's positive
    assert len(plain["q1"]) == 11
    filtered, out = _mine(tmp_path, data, capsys, "--exclude-siblings", model=tiny_model_dir)
    assert filtered["q1"] == [d for d in plain["q1"] if d != "d1"]
    assert filtered["q3"] == plain["q3"]  # shares no positive: nothing to drop
    assert filtered["q2"] == plain["q2"]  # q1's positives are all q2's own
    assert "1 siblings" in out


def _teacher_scores(model_dir, data, qid, docids):
    ds = load_beir(data, "test")
    scorer = DenseScorer(model_dir)
    ps = [Passage(d, ds.corpus.titles[ds.corpus.index_of(d)], ds.corpus.texts[ds.corpus.index_of(d)]) for d in docids]
    return dict(zip(docids, scorer.score([ds.queries[qid]] * len(ps), ps)))


def test_relative_margin_keeps_exactly_the_candidates_below_the_margin(tmp_path, data, tiny_model_dir, capsys):
    plain, _ = _mine(tmp_path, data, capsys, model=tiny_model_dir)
    scores = _teacher_scores(tiny_model_dir, data, "q2", plain["q2"] + ["d0", "d1"])
    pos = max(scores["d0"], scores["d1"])
    margin = 0.02
    expect = [d for d in plain["q2"] if scores[d] <= pos - margin * abs(pos) + 1e-6]
    assert 0 < len(expect) < len(plain["q2"])  # the tiny model's scores straddle the limit
    filtered, out = _mine(tmp_path, data, capsys, "--relative-margin", str(margin), model=tiny_model_dir)
    assert filtered["q2"] == expect
    assert f"{sum(len(v) for v in plain.values()) - sum(len(v) for v in filtered.values())} above" in out


def test_max_score_caps_the_teacher_score(tmp_path, data, tiny_model_dir, capsys):
    plain, _ = _mine(tmp_path, data, capsys, model=tiny_model_dir)
    scores = _teacher_scores(tiny_model_dir, data, "q1", plain["q1"])
    cap = float(np.median(list(scores.values())))
    filtered, _ = _mine(tmp_path, data, capsys, "--max-score", str(cap), model=tiny_model_dir)
    assert filtered["q1"] == [d for d in plain["q1"] if scores[d] <= cap + 1e-6]
    assert 0 < len(filtered["q1"]) < len(plain["q1"])


def test_rescore_with_a_cross_encoder_uses_its_scores(tmp_path, data, tiny_model_dir, capsys):
    import torch

    torch.manual_seed(0)
    ce_dir = tmp_path / "ce"
    ce = CrossEncoderScorer(str(tiny_model_dir)).model
    with torch.no_grad():  # a fixed random head, scaled so scores spread far beyond float noise
        ce.model.classifier.weight.mul_(1000.0)
    ce.save(ce_dir)
    plain, _ = _mine(tmp_path, data, capsys, model=tiny_model_dir)
    ds = load_beir(data, "test")
    ids = plain["q1"] + ["d0"]
    ps = [Passage(d, "", ds.corpus.texts[ds.corpus.index_of(d)]) for d in ids]
    ce_scores = dict(zip(ids, CrossEncoderScorer(str(ce_dir)).score([ds.queries["q1"]] * len(ps), ps)))
    cap = float(np.median([ce_scores[d] for d in plain["q1"]]))
    default, _ = _mine(tmp_path, data, capsys, "--rescore-with", ce_dir, model=tiny_model_dir)
    capped, _ = _mine(tmp_path, data, capsys, "--rescore-with", ce_dir, "--max-score", str(cap),
                      model=tiny_model_dir)
    # default: relative margin 0 on the cross-encoder's scale: drop what it scores above the positive
    assert default["q1"] == [d for d in plain["q1"] if ce_scores[d] <= ce_scores["d0"] + 1e-5]
    assert capped["q1"] == [d for d in plain["q1"] if ce_scores[d] <= cap + 1e-5]
    assert 0 < len(capped["q1"]) < len(plain["q1"])


def test_score_keep_mask():
    cand = np.array([[0.9, 0.95, 0.96, 0.5], [-0.1, -0.5, -0.6, 0.0]])
    pos = np.array([1.0, -0.5])
    keep = score_keep_mask(cand, pos, relative_margin=0.05)
    # row 0: limit 0.95; row 1: a negative positive score, limit -0.5 - 0.025 = -0.525
    assert keep.tolist() == [[True, True, False, True], [False, False, True, False]]
    assert score_keep_mask(cand, pos, max_score=0.9).tolist() == [[True, False, False, True], [True] * 4]
    assert score_keep_mask(cand, pos).all()
    assert not score_keep_mask(cand, np.array([np.nan, 1.0]), relative_margin=0.0)[0].any()  # no positive score
    with pytest.raises(ValueError):
        score_keep_mask(cand, pos, relative_margin=-1)


@pytest.mark.parametrize("flags,needle", [
    (["--relative-margin", "1.5"], "--relative-margin"),
    (["--max-score", "high"], "--max-score"),
    (["--rescore-with", "/nonexistent/ce"], "--rescore-with"),
])
def test_bad_filter_values_are_one_line(tmp_path, data, flags, needle, capsys):
    from conftest import one_line_error

    code, _, err = run_cli(["mine", "-d", data, "--split", "test", *flags, "-o", tmp_path / "x.jsonl"], capsys)
    assert code == 2 and needle in one_line_error(err)
    assert not (tmp_path / "x.jsonl").exists()


def test_nfcorpus_bm25_mining_never_writes_a_copy_of_a_positive():
    """Real data: NFCorpus train holds distinct ids with the same title + text; BM25's window (README defaults,
    ranks 30..100, plus the sibling and margin filters) never yields one of a query's positives' texts, exact
    or normalised."""
    path = SHARED_DATA / "nfcorpus"
    if not (path / "corpus.jsonl").exists():
        pytest.fail(f"shared data not found at {path}")
    from retr.retriever.bm25 import BM25Retriever

    ds = load_beir(path, "train", allow_missing_docs=True)
    corpus = ds.corpus
    keys = [text_key(t, x) for t, x in zip(corpus.titles, corpus.texts)]
    dup_keys = {k for k, n in zip(*np.unique(keys, return_counts=True)) if n > 1}
    assert dup_keys  # the corpus does hold copies under other ids
    bm25 = BM25Retriever.for_corpus(corpus)
    cfg = MiningConfig(range_min=30, range_max=100, num_negatives=0)
    stats = MiningStats()
    exact = normalised = 0
    for ex in iter_mined(bm25, ds, cfg, stats=stats):
        pos_exact = {(p.title, p.text) for p in ex.positives}
        pos_norm = {text_key(p.title, p.text) for p in ex.positives}
        exact += sum((n.title, n.text) in pos_exact for n in ex.negatives)
        normalised += sum(text_key(n.title, n.text) in pos_norm for n in ex.negatives)
    assert stats.queries > 2000 and stats.negatives > 100_000
    assert stats.duplicates_of_positives > 0  # the window did hold copies: they were dropped
    assert exact == 0 and normalised == 0


def test_relative_margin_scores_unranked_positives_with_the_scorer(data):
    """When the teacher ranks none of the query's positives, the scorer gives the positive's score."""
    from retr.retriever.hits import Hit

    ds = load_beir(data, "test")

    class Teacher:  # ranks d2..d11 with scores 10, 9, ..., 1; never a positive
        def batch_search(self, queries, qids, k=10, threads=0):
            return {q: [Hit(f"d{i}", float(12 - i), i - 1) for i in range(2, 12)][:k] for q in qids}

    class Scorer:
        name = "fixed"
        calls = []

        def score(self, queries, passages):
            self.calls.append([p.docid for p in passages])
            return np.full(len(passages), 5.0, np.float32)

    scorer = Scorer()
    cfg = MiningConfig(range_min=1, range_max=10, num_negatives=0, relative_margin=0.2)
    out = {e.query_id: [n.docid for n in e.negatives] for e in iter_mined(Teacher(), ds, cfg, scorer=scorer)}
    # positive score 5 -> keep candidates scoring <= 4: d8 (4) .. d11 (1), minus q3's positive d5 anyway
    assert out["q1"] == ["d8", "d9", "d10", "d11"]
    assert ["d0"] in scorer.calls  # q1's one positive was scored
    # without a scorer there is no positive score: every candidate is dropped (never a likely false negative)
    none = {e.query_id: [n.docid for n in e.negatives] for e in iter_mined(Teacher(), ds, cfg)}
    assert none["q1"] == [] and none["q2"] == []
    # q3's positive d5 is ranked (score 7): its score comes from the run, limit 5.6
    assert none["q3"] == ["d7", "d8", "d9", "d10", "d11"]
