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
    task = beir_task(tiny_beir, "test")
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
