"""Leaderboard runs: several set-ups x datasets in one command, indexes reused on re-run with identical numbers,
numbers equal to single `retr eval` runs, MTEB-format files that mteb's loader reads."""
from __future__ import annotations

import json

import pytest

from conftest import DOCS, QUERIES, QRELS, run_cli, write_beir


@pytest.fixture
def two_datasets(tmp_path):
    root = tmp_path / "beir"
    write_beir(root / "scifact")
    write_beir(root / "other", docs=DOCS[::-1], queries=QUERIES[:3], qrels=[r for r in QRELS if r[0] in ("q1", "q2", "q3")])
    return root


def test_suite_over_datasets(two_datasets, tiny_model_dir, tmp_path, capsys):
    suite = tmp_path / "suite.yaml"
    suite.write_text(f"""setups:
  - {{name: tiny, retriever: dense, model: "{tiny_model_dir}"}}
  - {{name: tiny-ft, retriever: dense, model: "{tmp_path}/ft/{{dataset}}"}}
  - {{name: tiny-cls, retriever: dense, model: "{tiny_model_dir}"}}
""")
    (tmp_path / "ft").mkdir()
    import shutil

    shutil.copytree(tiny_model_dir, tmp_path / "ft" / "other")  # a "fine-tuned" model for one dataset only
    out = tmp_path / "lb"
    code, stdout, err = run_cli(["eval", "--suite", suite, "-d", two_datasets, "--output-dir", out, "-k", "5"], capsys)
    assert code == 0, err
    board = json.loads((out / "leaderboard.json").read_text())
    assert board["datasets"] == ["other", "scifact"]
    assert set(board["table"]["tiny-ft"]) == {"other"}  # skipped where no model exists
    md = (out / "leaderboard.md").read_text()
    assert "| tiny-ft | " in md and " - |" in md
    assert (out / "leaderboard.csv").exists() and (out / "leaderboard.png").exists()
    assert (out / "runs" / "tiny" / "scifact.trec").exists()
    # one encoding per (model weights+settings, corpus): tiny, tiny-cls and the identical copy share it
    assert len(list((out / "cache").glob("dense-*"))) == 2
    # the same number as a single `retr eval`
    code, _, err = run_cli(["eval", "-m", tiny_model_dir, "-d", two_datasets / "scifact", "-k", "5",
                            "-o", tmp_path / "single.json"], capsys)
    single = json.loads((tmp_path / "single.json").read_text())["metrics"]["nDCG@10"]
    assert board["table"]["tiny"]["scifact"] == pytest.approx(single, abs=1e-6)
    # re-run: indexes reused, identical numbers
    code, _, err = run_cli(["eval", "--suite", suite, "-d", two_datasets, "--output-dir", out, "-k", "5"], capsys)
    assert code == 0
    assert json.loads((out / "leaderboard.json").read_text())["table"] == board["table"]
    rec = json.loads((out / "results" / "tiny" / "scifact.json").read_text())
    assert rec["retr_version"] and rec["machine"]["python"] and rec["encoder"]["passage_fingerprint"]


def test_mteb_file_loads_in_mteb(two_datasets, tiny_model_dir, tmp_path, capsys):
    mteb = pytest.importorskip("mteb")
    out = tmp_path / "lb"
    code, _, err = run_cli(["eval", "-m", tiny_model_dir, "-d", two_datasets / "scifact", "-d", two_datasets / "other",
                            "--output-dir", out, "-k", "5"], capsys)
    assert code == 0, err
    name = tiny_model_dir.name
    path = out / "mteb" / name / "SciFact.json"
    data = json.loads(path.read_text())
    ours = json.loads((out / "results" / name / "scifact.json").read_text())["metrics"]["nDCG@10"]
    assert data["scores"]["test"][0]["ndcg_at_10"] == pytest.approx(ours, abs=1e-5)
    result = mteb.TaskResult.from_disk(path)
    assert result.task_name == "SciFact"
    assert result.get_score() == pytest.approx(ours, abs=1e-5)


def test_bad_suite(tmp_path, capsys):
    (tmp_path / "s.yaml").write_text("setups:\n  - {name: x, retriever: dense}\n")
    code, _, err = run_cli(["eval", "--suite", tmp_path / "s.yaml", "-d", tmp_path], capsys)
    assert code == 2 and "retriever 'dense' needs a model" in err


def test_reranked_runs_are_cached_and_options_per_dataset(two_datasets, tiny_model_dir, tmp_path, capsys):
    from retr.retriever.modeling.cross_encoder import CrossEncoder

    CrossEncoder.from_pretrained(tiny_model_dir).save(tmp_path / "ce")
    suite = tmp_path / "suite.yaml"
    suite.write_text(f"""setups:
  - name: rr
    retriever: dense
    model: "{tiny_model_dir}"
    rerank: "{tmp_path}/ce"
    rerank_top_k: {{other: 2, default: 4}}
    rerank_alpha: 0.5
""")
    out = tmp_path / "lb"
    args = ["eval", "--suite", suite, "-d", two_datasets, "--output-dir", out, "-k", "5"]
    assert run_cli(args, capsys)[0] == 0
    first = json.loads((out / "leaderboard.json").read_text())
    assert json.loads((out / "results" / "rr" / "other.json").read_text())["rerank"]["top_k"] == 2
    assert json.loads((out / "results" / "rr" / "scifact.json").read_text())["rerank"] == {
        "model": f"{tmp_path}/ce", "top_k": 4, "alpha": 0.5}
    assert len(list((out / "cache" / "runs").glob("*.trec"))) == 2
    code, _, err = run_cli(args, capsys)
    assert code == 0 and "reusing cached run" in err
    assert json.loads((out / "leaderboard.json").read_text())["table"] == first["table"]


def test_per_dataset_mapping_without_default_skips_other_datasets(tmp_path):
    from retr.evaluation.leaderboard import Setup

    ce = tmp_path / "ce-scifact"
    ce.mkdir()
    setup = Setup("bm25+ce", "bm25", rerank={"scifact": str(ce)},
                  options={"rerank_top_k": {"arguana": 20, "default": 100}, "precision": "bf16"})
    got = setup.resolve("scifact")
    assert got.rerank == str(ce) and got.options == {"rerank_top_k": 100, "precision": "bf16"}
    assert setup.resolve("arguana") is None  # no entry and no default: shown as "-", not reranked by another model


def test_rerank_none_runs_the_first_stage_alone_on_that_dataset(tmp_path):
    from retr.evaluation.leaderboard import Setup

    ce = tmp_path / "ce-scifact"
    ce.mkdir()
    setup = Setup("pipeline", "hybrid", model="minilm", rerank={"scifact": str(ce), "arguana": "none"},
                  options={"rerank_alpha": 0.8})
    assert setup.resolve("scifact").rerank == str(ce)
    got = setup.resolve("arguana")
    assert got is not None and got.rerank is None and got.model == "minilm"
    assert setup.resolve("nfcorpus") is None  # neither an entry nor a default
