"""Issue 23: a retr model (with its prompts) as an MTEB encoder on a local retrieval task gives `retr eval`'s
numbers; nothing touches the network (HF_HUB_OFFLINE, the task is built from a local BEIR folder)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import run_cli

mteb = pytest.importorskip("mteb")


def test_mteb_encoder_equals_retr_eval(tiny_beir, tiny_model_dir, tmp_path, capsys):
    from mteb.types import PromptType

    from retr.evaluation.mteb_model import RetrMtebEncoder, beir_task

    enc = RetrMtebEncoder(str(tiny_model_dir), query_prefix="query: ", passage_prefix="passage: ")
    task = beir_task(tiny_beir, "test", ignore_identical_ids=False)
    result = mteb.evaluate(enc, task, cache=None, show_progress_bar=False)
    ours = result.task_results[0].scores["test"][0]
    code, _, err = run_cli(["eval", "-m", tiny_model_dir, "-d", tiny_beir, "--keep-identical-ids", "-k", "1000",
                            "--query-prefix", "query: ", "--passage-prefix", "passage: ",
                            "-o", tmp_path / "r.json"], capsys)
    assert code == 0, err
    retr = json.loads((tmp_path / "r.json").read_text())["metrics"]
    assert ours["ndcg_at_10"] == pytest.approx(retr["nDCG@10"], abs=1e-5)
    assert ours["recall_at_100"] == pytest.approx(retr["Recall@100"], abs=1e-5)
    assert result.task_results[0].get_score() == pytest.approx(retr["nDCG@10"], abs=1e-5)
    # the prompts are the model's: queries and documents are encoded differently, queries with "query: "
    loader = [{"text": ["aspirin heart"]}]
    q = enc.encode(loader, task_metadata=task.metadata, hf_split="test", hf_subset="default",
                   prompt_type=PromptType.query)
    d = enc.encode(loader, task_metadata=task.metadata, hf_split="test", hf_subset="default",
                   prompt_type=PromptType.document)
    assert q.shape == d.shape == (1, enc.model.dim) and not np.allclose(q, d)
    assert np.allclose(q, enc.model.encode_queries(["aspirin heart"]), atol=1e-6)
    assert enc.mteb_model_meta.embed_dim == enc.model.dim


def test_mteb_task_drops_identical_ids_as_retr_eval_does(tiny_model_dir, tmp_path, capsys):
    """As in ArguAna, a query is also a document of the corpus (same id, same text, not judged): retr eval drops
    that hit by default (BEIR's ignore_identical_ids), and so must the local task, or the two disagree."""
    from conftest import DOCS, write_beir

    from retr.evaluation.mteb_model import RetrMtebEncoder, beir_task

    queries = [("a1", "aspirin and heart attacks in adults"), ("a2", "salt and blood pressure"),
               ("a3", "statins lower cholesterol")]
    docs = list(DOCS) + [(q, "", t) for q, t in queries]  # each query is its own (unjudged) document
    data = write_beir(tmp_path / "arg", docs=docs, queries=queries,
                      qrels=[("a1", "d1", 1), ("a2", "d8", 1), ("a3", "d2", 1)])
    enc = RetrMtebEncoder(str(tiny_model_dir))
    scores = {}
    for keep in (False, True):
        task = beir_task(data, "test", ignore_identical_ids=not keep)
        res = mteb.evaluate(enc, task, cache=None, show_progress_bar=False)
        scores[keep] = res.task_results[0].scores["test"][0]["ndcg_at_10"]
        code, _, err = run_cli(["eval", "-m", tiny_model_dir, "-d", data, "-k", "1000", "-o",
                                tmp_path / f"r{keep}.json", *(["--keep-identical-ids"] if keep else [])], capsys)
        assert code == 0, err
        retr = json.loads((tmp_path / f"r{keep}.json").read_text())["metrics"]["nDCG@10"]
        assert scores[keep] == pytest.approx(retr, abs=1e-5)
    assert scores[True] < scores[False] - 1e-3  # the self hit (rank 1, unjudged) costs nDCG@10 when kept
    assert beir_task(data).ignore_identical_ids is True  # the default is retr eval's
