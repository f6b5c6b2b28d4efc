"""Training: supervised and MoCo runs on tiny models, saved models load in sentence-transformers/transformers,
mined negatives never include a positive, and a run killed with a real signal resumes to the same weights."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, run_cli, write_beir
from retr.retriever.data import load_beir
from retr.retriever.data.training import read_tevatron
from retr.retriever.mining import MiningConfig, mine_negatives
from retr.retriever.modeling import DualEncoder
from retr.retriever.search import DenseRetriever
from retr.retriever.training.arguments import TrainConfig
from retr.retriever.training.driver import build_trainer

TEXTS = ["aspirin and the heart", "a passage about statins", "query: vitamin"]


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return DualEncoder.from_pretrained(model_dir).state_dict()


def test_mined_negatives_never_include_positives(tiny_beir, tiny_model_dir):
    ds = load_beir(tiny_beir, "test")
    teacher = DenseRetriever.build(DualEncoder.from_pretrained(tiny_model_dir), ds.corpus, show_progress=False)
    examples = mine_negatives(teacher, ds, MiningConfig(range_min=1, range_max=8, num_negatives=0))
    for ex in examples:
        positives = {d for d, g in ds.qrels[ex.query_id].items() if g > 0}
        assert ex.negatives and not positives & {n.docid for n in ex.negatives}
        assert ex.query_id not in {n.docid for n in ex.negatives}
    excluded = {e.query_id: {d for d, g in ds.qrels[e.query_id].items() if g > 0} | ({e.query_id} & set(ds.corpus.ids))
                for e in examples}
    assert [len(e.negatives) for e in examples] == [8 - len(excluded[e.query_id]) for e in examples]


def test_mine_cli_window(tiny_beir, tiny_model_dir, tmp_path, capsys):
    code, _, err = run_cli(["mine", "-d", tiny_beir, "--split", "test", "--teacher", tiny_model_dir, "--range-min", "2",
                            "--range-max", "5", "--num-negatives", "2", "-o", tmp_path / "negs.jsonl"], capsys)
    assert code == 0, err
    examples = read_tevatron(tmp_path / "negs.jsonl")
    assert len(examples) == 5 and all(len(e.negatives) <= 2 for e in examples)


def test_supervised_run_saves_a_model_that_sentence_transformers_loads(tiny_beir, tiny_model_dir, tmp_path):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    cfg = TrainConfig(output_dir=str(tmp_path / "run"), model=str(tiny_model_dir), train_data=[str(tiny_beir)],
                      train_split="test", batch_size=4, max_steps=6, lr=1e-3, logging_steps=2, save_steps=3,
                      train_negatives=1, warmup_ratio=0.0)
    summary = build_trainer(cfg).train()
    assert summary["steps"] == 6
    log = [json.loads(l) for l in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [2, 4, 6] and all(np.isfinite(r["loss"]) for r in log)
    saved = tmp_path / "run" / "model"
    ours = DualEncoder.from_pretrained(saved).encode_passages(TEXTS)
    st = SentenceTransformer(str(saved), device="cpu").encode(TEXTS)
    np.testing.assert_allclose(st, ours, atol=1e-5)
    hf = AutoModel.from_pretrained(saved)
    assert hf.config.num_hidden_layers == 2
    before = DualEncoder.from_pretrained(tiny_model_dir).encode_passages(TEXTS)
    assert not np.allclose(before, ours, atol=1e-4)  # training changed the weights


def test_separate_towers_train_and_reload(tiny_beir, tiny_model_dir, tmp_path):
    cfg = TrainConfig(output_dir=str(tmp_path / "run"), model=str(tiny_model_dir), train_data=[str(tiny_beir)],
                      train_split="test", batch_size=4, max_steps=2, lr=1e-3, separate_towers=True, save_steps=0)
    build_trainer(cfg).train()
    model = DualEncoder.from_pretrained(tmp_path / "run" / "model")
    assert not model.shared
    assert not np.allclose(model.encode_queries(TEXTS), model.encode_passages(TEXTS))


def test_moco_resume_in_process_is_exact(tiny_model_dir, tmp_path):
    corpus = write_beir(tmp_path / "c")
    common = dict(model=str(tiny_model_dir), mode="unsupervised", train_data=[str(corpus)], batch_size=4,
                  max_steps=6, save_steps=3, lr=1e-3, queue_size=10, chunk_length=8, momentum=0.9, seed=1)
    straight = TrainConfig(output_dir=str(tmp_path / "a"), **common)
    trainer = build_trainer(straight)
    trainer.train()
    assert int(trainer.task.loss.queue_len) == 10  # queue filled by the keys of 6 batches (FIFO, size 10)
    # a second run that stops after its step-3 checkpoint (simulated) and resumes
    interrupted = TrainConfig(output_dir=str(tmp_path / "b"), **common)
    build_trainer(interrupted).train()
    import shutil

    shutil.rmtree(tmp_path / "b" / "model")
    resumed = build_trainer(TrainConfig(output_dir=str(tmp_path / "b"), resume=True, **common))
    resumed.train()
    assert resumed.resumed_from == tmp_path / "b" / "checkpoints" / "step-3"
    a, b = _weights(tmp_path / "a" / "model"), _weights(tmp_path / "b" / "model")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(trainer.task.loss.queue, resumed.task.loss.queue)


def _train_cmd(out: Path, model: Path, data: Path, extra=()):
    return [sys.executable, "-m", "retr.cli.main", "train", "-o", str(out), "-m", str(model), "-d", str(data),
            "--split", "test", "--batch-size", "4", "--max-steps", "40", "--save-steps", "5", "--lr", "1e-3",
            "--seed", "3", "--logging-steps", "100", *extra]


def test_killed_run_resumes_to_same_weights(tiny_beir, tiny_model_dir, tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    ref = subprocess.run(_train_cmd(tmp_path / "ref", tiny_model_dir, tiny_beir), env=env, capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr[-2000:]

    proc = subprocess.Popen(_train_cmd(tmp_path / "run", tiny_model_dir, tiny_beir), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = tmp_path / "run" / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and not (ckpts.exists() and any(p.name == "step-10" for p in ckpts.iterdir())):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "run" / "model").exists(), "the run finished before it could be killed"
    resumed = subprocess.run(_train_cmd(tmp_path / "run", tiny_model_dir, tiny_beir, ["--resume"]), env=env,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stderr
    a, b = _weights(tmp_path / "ref" / "model"), _weights(tmp_path / "run" / "model")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)


def test_config_file_and_unknown_key(tmp_path, capsys, tiny_model_dir):
    (tmp_path / "bad.yaml").write_text("batch_sise: 8\n")
    code, _, err = run_cli(["train", "-c", tmp_path / "bad.yaml", "-o", tmp_path / "o"], capsys)
    assert code == 2 and "bad.yaml:1: unknown option 'batch_sise'" in err


def test_run_meta_records_what_made_it(tiny_beir, tiny_model_dir, tmp_path):
    calls = []
    cfg = TrainConfig(output_dir=str(tmp_path / "run"), model=str(tiny_model_dir), train_data=[str(tiny_beir)],
                      train_split="test", batch_size=4, max_steps=2, save_steps=0, eval_steps=1)
    trainer = build_trainer(cfg, eval_fn=lambda model: calls.append(1) or {"nDCG@10": 0.5})
    trainer.train()
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    assert meta["data_fingerprint"] and meta["retr_version"] and meta["config"]["batch_size"] == 4
    assert len(calls) == 3  # before training (start of the curve), after step 1 and after step 2
    log = [json.loads(l) for l in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "eval/nDCG@10" in r] == [0, 1, 2]


def test_reranker_groups_mix_mined_and_random_negatives():
    """Mined negatives first, then random ones (other queries' positives), never a known positive, no repeats."""
    from retr.retriever.data.training import Passage, TrainExample
    from retr.retriever.training.collator import pick_group

    examples = [TrainExample(f"q{i}", f"query {i}", [Passage(f"p{i}a", "", f"pos {i}a"), Passage(f"p{i}b", "", f"pos {i}b")],
                             [Passage(f"n{i}{j}", "", f"neg {i}{j}") for j in range(5)], known_positives=[f"p{i}a", f"p{i}b", "p1a"])
                for i in range(12)]
    for epoch in range(3):
        q, texts, ids = pick_group(examples, 0, epoch, n_negatives=2, seed=1, n_random=3)
        assert q == "query 0" and len(ids) == 6 == len(set(ids))
        assert ids[0] in ("p0a", "p0b") and all(d.startswith("n0") for d in ids[1:3])
        assert all(d.startswith("p") and d not in ("p0a", "p0b", "p1a") for d in ids[3:])
    assert pick_group(examples, 0, 0, 2, seed=1, n_random=3) == pick_group(examples, 0, 0, 2, seed=1, n_random=3)
    assert pick_group(examples, 0, 0, 2, seed=1)[2] == pick_group(examples, 0, 0, 2, seed=1, n_random=3)[2][:3]
    with pytest.raises(ValueError, match="too few distinct passages"):
        pick_group(examples[:1], 0, 0, n_negatives=0, seed=1, n_random=3)
