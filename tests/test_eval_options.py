"""`retr eval` options checked by their result: --rrf-k and --bm25-index give exactly the reciprocal-rank fusion of
the two single runs, --rerank-alpha the min-max interpolation of cross-encoder and BM25 scores, --keep-identical-ids
keeps what --ignore-identical-ids drops, --allow-missing-docs turns a one-line error into a warning, --cache-dir holds a
leaderboard's indexes, and `retr init-model` sizes its random BERT by --layers/--hidden/--heads/--max-length."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_cli


def _read_run(path: Path) -> dict[str, dict[str, float]]:
    run: dict[str, dict[str, float]] = {}
    for line in path.read_text().splitlines():
        qid, _, docid, _, score, _ = line.split()
        run.setdefault(qid, {})[docid] = float(score)
    return run


def _eval(capsys, *args):
    code, out, err = run_cli(["eval", *map(str, args)], capsys)
    assert code == 0, err
    return out, err


@pytest.fixture
def indexes(tiny_beir, tiny_model_dir, tmp_path, capsys):
    code, _, err = run_cli(["index", "--bm25", "-d", tiny_beir, "-o", tmp_path / "bm25"], capsys)
    assert code == 0, err
    code, _, err = run_cli(["index", "-d", tiny_beir, "-m", tiny_model_dir, "-o", tmp_path / "dense"], capsys)
    assert code == 0, err
    return tmp_path / "bm25", tmp_path / "dense"


@pytest.mark.java
def test_rrf_k_and_bm25_index_fuse_the_two_runs(tiny_beir, indexes, tmp_path, capsys):
    bm25, dense = indexes
    _eval(capsys, "-d", tiny_beir, "-r", "bm25", "--index", bm25, "--run", tmp_path / "b.trec")
    _eval(capsys, "-d", tiny_beir, "-r", "dense", "--index", dense, "--run", tmp_path / "d.trec")
    parts = [_read_run(tmp_path / "b.trec"), _read_run(tmp_path / "d.trec")]
    for k in (0, 5, 60):
        _eval(capsys, "-d", tiny_beir, "-r", "hybrid", "-i", dense, "--bm25-index", bm25, "--fusion", "rrf",
              "--rrf-k", k, "--run", tmp_path / f"h{k}.trec")
        fused = _read_run(tmp_path / f"h{k}.trec")
        for qid in fused:
            expected: dict[str, float] = {}
            for part in parts:
                ranked = sorted(part.get(qid, {}).items(), key=lambda x: (-x[1], x[0]))
                for rank, (docid, _) in enumerate(ranked, 1):
                    expected[docid] = expected.get(docid, 0.0) + 1.0 / (k + rank)
            assert fused[qid] == pytest.approx(expected, rel=1e-5), (k, qid)


@pytest.mark.java
def test_rerank_alpha_interpolates_min_max_scores(tiny_beir, tiny_model_dir, indexes, tmp_path, capsys):
    from retr.retriever.data import load_beir
    from retr.retriever.modeling.cross_encoder import CrossEncoder
    from retr.retriever.training.arguments import TrainConfig
    from retr.retriever.training.driver import build_trainer

    cfg = TrainConfig(output_dir=str(tmp_path / "ce"), mode="reranker", model=str(tiny_model_dir),
                      train_data=[str(tiny_beir)], train_split="test", batch_size=4, max_steps=2, lr=1e-3,
                      train_negatives=1, save_steps=0)
    build_trainer(cfg).train()
    ce_dir = tmp_path / "ce" / "model"
    bm25, _ = indexes
    _eval(capsys, "-d", tiny_beir, "-r", "bm25", "--index", bm25, "--run", tmp_path / "b.trec")
    first = _read_run(tmp_path / "b.trec")
    ds = load_beir(tiny_beir, "test")
    ce = CrossEncoder.from_pretrained(ce_dir)
    # a run's hits with no span (one BM25 hit) are its best: 1, not 0 (hybrid.weighted_sum)
    minmax = lambda s: {d: (v - min(s.values())) / (max(s.values()) - min(s.values()))  # noqa: E731
                        if max(s.values()) > min(s.values()) else 1.0 for d, v in s.items()}
    for alpha in (0.0, 0.3, 1.0):
        _eval(capsys, "-d", tiny_beir, "-r", "bm25", "--index", bm25, "--rerank", ce_dir, "--rerank-top-k", "100",
              "--rerank-alpha", alpha, "--run", tmp_path / f"r{alpha}.trec")
        reranked = _read_run(tmp_path / f"r{alpha}.trec")
        for qid, hits in first.items():
            docids = sorted(hits)
            scores = dict(zip(docids, ce.score([ds.queries[qid]] * len(docids),
                                               [ds.corpus.passage(d) for d in docids])))
            expected = {d: alpha * c + (1 - alpha) * b for (d, c), b in
                        zip(sorted(minmax(scores).items()), [minmax(hits)[d] for d in docids])}
            assert reranked[qid] == pytest.approx(expected, abs=1e-4), (alpha, qid)


def test_keep_identical_ids_keeps_the_query_own_document(tiny_beir, tiny_model_dir, tmp_path, capsys):
    # a query whose id is also an (unjudged) document's, as ArguAna's arguments; tiny_beir's query "d6" is judged
    # relevant to document "d6", a self hit that is kept either way
    with open(tiny_beir / "queries.jsonl", "a") as fh:
        fh.write(json.dumps({"_id": "d7", "text": "coffee and the liver"}) + "\n")
    with open(tiny_beir / "qrels" / "test.tsv", "a") as fh:
        fh.write("d7\td5\t1\n")
    _eval(capsys, "-d", tiny_beir, "-m", tiny_model_dir, "--run", tmp_path / "drop.trec", "-o", tmp_path / "d.json")
    _eval(capsys, "-d", tiny_beir, "-m", tiny_model_dir, "--keep-identical-ids", "--run", tmp_path / "keep.trec",
          "-o", tmp_path / "k.json")
    drop, keep = _read_run(tmp_path / "drop.trec"), _read_run(tmp_path / "keep.trec")
    assert "d7" not in drop["d7"] and "d7" in keep["d7"]
    assert "d6" in drop["d6"] and "d6" in keep["d6"]
    for qid in drop:
        if qid != "d7":
            assert drop[qid] == keep[qid]
    dropped, kept = json.loads((tmp_path / "d.json").read_text()), json.loads((tmp_path / "k.json").read_text())
    assert (dropped["ignore_identical_ids"], dropped["identical_ids_kept"]) == (True, 1)  # the judged self hit
    assert kept["ignore_identical_ids"] is False


def test_allow_missing_docs_turns_the_error_into_a_warning(tiny_beir, tiny_model_dir, tmp_path, capsys):
    with open(tiny_beir / "qrels" / "test.tsv", "a") as fh:
        fh.write("q1\tgone\t1\n")
    code, _, err = run_cli(["eval", "-d", tiny_beir, "-m", tiny_model_dir], capsys)
    assert code == 2 and "test.tsv" in err and "gone" in err and "Traceback" not in err
    _, err = _eval(capsys, "-d", tiny_beir, "-m", tiny_model_dir, "--allow-missing-docs", "-o", tmp_path / "r.json")
    assert "gone" in err or "missing" in err.lower()
    assert 0.0 <= json.loads((tmp_path / "r.json").read_text())["metrics"]["nDCG@10"] <= 1.0


def test_cache_dir_holds_the_suite_indexes(tiny_beir, tiny_model_dir, tmp_path, capsys):
    suite = tmp_path / "suite.yaml"
    suite.write_text(f"setups:\n  - {{name: tiny, retriever: dense, model: {tiny_model_dir}}}\n")
    _eval(capsys, "--suite", suite, "-d", tiny_beir, "--output-dir", tmp_path / "lb", "--cache-dir", tmp_path / "cache")
    cached = [p for p in (tmp_path / "cache").rglob("meta.json")]
    assert cached, "no index was cached under --cache-dir"
    assert not (tmp_path / "lb" / "cache").exists()
    stamp = {p: p.stat().st_mtime_ns for p in cached}
    _eval(capsys, "--suite", suite, "-d", tiny_beir, "--output-dir", tmp_path / "lb2", "--cache-dir", tmp_path / "cache")
    assert {p: p.stat().st_mtime_ns for p in cached} == stamp  # reused, not rebuilt


def test_init_model_sizes(tmp_path, capsys):
    from transformers import AutoConfig

    code, _, err = run_cli(["init-model", "-o", tmp_path / "m", "--layers", "3", "--hidden", "48", "--heads", "4",
                            "--max-length", "96"], capsys)
    assert code == 0, err
    cfg = AutoConfig.from_pretrained(tmp_path / "m")
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads) == (3, 48, 4)
    assert cfg.max_position_embeddings >= 96
    code, _, err = run_cli(["init-model", "-o", tmp_path / "bad", "--hidden", "50", "--heads", "4"], capsys)
    assert code == 2 and "Traceback" not in err
