"""Teacher scores and distillation (issue 20): `retr score` writes each scorer's own scores (cross-encoder, dense,
BM25, fusion); MarginMSE / KL losses; `retr train --distill` moves the student toward the teacher, for dual
encoders and cross-encoders, equal with GradCache and under 2 gloo DDP ranks."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO, make_tiny_bert, one_line_error, run_cli
from retr.retriever.data import load_beir
from retr.retriever.data.training import Passage
from retr.retriever.losses.distill import KLDistillLoss, MarginMSELoss, SoftInfoNCELoss, distill_loss
from retr.retriever.losses.infonce import InfoNCELoss
from retr.retriever.scoring import CrossEncoderScorer, DenseScorer, FusionScorer


# ---------- losses ----------
def test_margin_mse_is_the_mse_of_margins():
    student = torch.tensor([[3.0, 1.0, 0.0], [0.0, 1.0, 2.0]])
    teacher = torch.tensor([[10.0, 8.0, 7.0], [5.0, 5.0, 5.0]])  # margins [2, 3] and [0, 0]
    # student margins [2, 3] and [-1, -2]: errors 0, 0, 1, 4
    assert float(MarginMSELoss()(student, teacher)) == pytest.approx(5 / 4)
    assert float(MarginMSELoss()(teacher - 4.0, teacher)) == pytest.approx(0.0)  # a shift does not matter


def test_kl_is_zero_at_the_teacher_and_follows_its_temperature():
    teacher = torch.tensor([[4.0, 2.0, 0.0]])
    assert float(KLDistillLoss(2.0)(teacher / 2.0, teacher)) == pytest.approx(0.0, abs=1e-7)
    p = torch.softmax(teacher, -1)
    student = torch.tensor([[0.0, 0.0, 0.0]])
    expect = float((p * (p.log() - torch.log_softmax(student, -1))).sum())
    assert float(KLDistillLoss(1.0)(student, teacher)) == pytest.approx(expect, rel=1e-6)
    with pytest.raises(ValueError):
        distill_loss("mse")
    with pytest.raises(ValueError):
        KLDistillLoss()(torch.zeros(2, 1), torch.zeros(2, 1))  # no negative


def test_soft_infonce_is_infonce_when_the_teacher_is_certain_and_keeps_in_batch_negatives():
    torch.manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)  # 3 queries, groups of 4 (positive first)
    p = torch.nn.functional.normalize(torch.randn(3 * 4, 8), dim=-1)
    scores = q @ p.T / 0.05
    certain = torch.tensor([[50.0, 0.0, 0.0, 0.0]] * 3)  # softmax(certain / 0.1): all mass on the positive
    soft = SoftInfoNCELoss(0.1)
    assert float(soft(scores, certain)) == pytest.approx(float(InfoNCELoss(0.05)(q, p)), rel=1e-5)
    teacher = torch.randn(3, 4)
    base = float(soft(scores, teacher))
    moved = scores.clone()
    moved[0, 5] += 30.0  # query 0 scores an in-batch passage (query 1's first negative) higher
    assert float(soft(moved, teacher)) > base  # ... which the group-only KL would not see:
    group = torch.stack([scores[i, i * 4:(i + 1) * 4] for i in range(3)])
    assert float(KLDistillLoss(0.1)(group, teacher)) == pytest.approx(
        float(KLDistillLoss(0.1)(torch.stack([moved[i, i * 4:(i + 1) * 4] for i in range(3)]), teacher)))
    mask = torch.zeros_like(scores, dtype=torch.bool)
    mask[0, 5] = True  # a judged positive of query 0 in query 1's group leaves query 0's softmax
    mask[0, 1] = True  # own group: never masked
    assert float(soft(moved, teacher, mask)) == pytest.approx(float(soft(scores, teacher, mask)), rel=1e-6)
    assert float(soft(moved, teacher, mask)) < float(soft(moved, teacher))
    with pytest.raises(ValueError):
        soft(scores[:, :8], teacher)


def test_soft_infonce_leaves_out_in_batch_copies_of_a_query_s_own_group():
    """Two queries share their hard negative x (groups [a+, x] and [b+, x]): for query A the copy of x in B's
    group would be a zero-probability twin of a passage the teacher scored; the task masks it (helper's repro:
    the learnt margin was off by log 2)."""
    from retr.retriever.losses.distill import SoftInfoNCELoss
    from retr.retriever.training.distill import DistillTask

    torch.manual_seed(0)
    q, p = torch.randn(2, 8), torch.randn(4, 8)
    p[3] = p[1]  # the same passage x in both groups
    keys = torch.tensor([10, 11, 12, 11])
    extras = {"teacher_scores": torch.tensor([[1.0, 0.0], [1.0, 0.0]]), "passage_keys": keys,
              "positive_keys": torch.tensor([[10], [12]])}
    task = DistillTask(SoftInfoNCELoss(1.0), InfoNCELoss(0.05))
    got = float(task.compute_loss({"queries": q, "passages": p}, extras))
    scores = q @ p.T / 0.05
    mask = torch.tensor([[False, False, True, True], [True, True, False, False]])
    mask[0, 2] = mask[1, 0] = False  # the other query's positive stays a negative; only x's copy leaves
    assert got == pytest.approx(float(SoftInfoNCELoss(1.0)(scores, extras["teacher_scores"], mask)), rel=1e-5)
    assert got != pytest.approx(float(SoftInfoNCELoss(1.0)(scores, extras["teacher_scores"])), rel=1e-3)


# ---------- retr score ----------
def _candidates(tmp_path, data):
    ds = load_beir(data, "test")
    rows = []
    for qid, judged in ds.qrels.items():
        pos = [d for d, g in judged.items() if g > 0]
        negs = [d for d in ds.corpus.ids if d not in judged][:4]
        passage = lambda d: {"docid": d, "title": ds.corpus.titles[ds.corpus.index_of(d)],  # noqa: E731
                             "text": ds.corpus.texts[ds.corpus.index_of(d)]}
        rows.append({"query_id": qid, "query": ds.queries[qid], "positive_passages": [passage(d) for d in pos],
                     "negative_passages": [passage(d) for d in negs]})
    path = tmp_path / "cands.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, rows


def _scored(path):
    out = []
    for line in path.read_text().splitlines():
        r = json.loads(line)
        out.append((r["query"], [Passage(p["docid"], p["title"], p["text"]) for p in r["positive_passages"] +
                                 r["negative_passages"]], [p["score"] for p in r["positive_passages"] +
                                                           r["negative_passages"]]))
    return out


def test_score_dense_cross_encoder_bm25_and_fusion(tmp_path, tiny_beir, tiny_model_dir, capsys):
    cands, rows = _candidates(tmp_path, tiny_beir)
    ce_dir = tmp_path / "ce"
    torch.manual_seed(0)
    CrossEncoderScorer(str(tiny_model_dir)).model.save(ce_dir)
    outs, errs = {}, {}
    for name, flags in {"dense": ["-t", f"dense:{tiny_model_dir}"], "ce": ["-t", f"ce:{ce_dir}"],
                        "bm25": ["-t", "bm25", "-d", tiny_beir],
                        "fusion": ["-t", f"dense:{tiny_model_dir}", "-t", "bm25", "-d", tiny_beir,
                                   "--weights", "0.3,0.7", "--block-size", "2"]}.items():
        outs[name] = tmp_path / f"{name}.jsonl"
        code, out, err = run_cli(["score", "-c", cands, "-o", outs[name], *flags], capsys)
        assert code == 0, err
        assert f"of {len(rows)} queries" in " ".join(out.split())
        errs[name] = err
    # the long passes show progress (a CE pass over a big candidate file used to look hung)
    pairs = sum(len(ps) for _, ps, _ in _scored(outs["ce"]))
    assert re.search(rf"rerank[^\r\n]*\b{pairs}/{pairs}\b", errs["ce"]), errs["ce"]
    assert re.search(r"passages:[^\r\n|]*\|[^|]*\| *\d+/\d+", errs["dense"]), errs["dense"]
    dense, ce = DenseScorer(str(tiny_model_dir)), CrossEncoderScorer(str(ce_dir))
    for q, ps, s in _scored(outs["dense"]):
        np.testing.assert_allclose(s, dense.score([q] * len(ps), ps), rtol=1e-4, atol=1e-5)
    for q, ps, s in _scored(outs["ce"]):
        np.testing.assert_allclose(s, ce.score([q] * len(ps), ps), rtol=1e-4, atol=1e-5)
    # BM25: the score the searcher gives each document (docs it does not return for the query score 0)
    from retr.retriever.bm25 import BM25Retriever

    ds = load_beir(tiny_beir, "test")
    bm25 = BM25Retriever.for_corpus(ds.corpus)
    any_positive = False
    for q, ps, s in _scored(outs["bm25"]):
        found = {h.docid: h.score for h in bm25.search(q, k=100)}
        np.testing.assert_allclose(s, [found.get(p.docid, 0.0) for p in ps], atol=1e-3)
        any_positive |= max(s) > 0
    assert any_positive
    # fusion: per query, 0.3 * minmax(dense) + 0.7 * minmax(bm25)
    for (q, ps, f), (_, _, d), (_, _, b) in zip(_scored(outs["fusion"]), _scored(outs["dense"]), _scored(outs["bm25"])):
        mm = lambda x: (np.array(x) - min(x)) / (max(x) - min(x)) if max(x) > min(x) else np.zeros(len(x))  # noqa
        np.testing.assert_allclose(f, 0.3 * mm(d) + 0.7 * mm(b), atol=1e-4)


def test_fusion_normalises_per_query():
    class Fixed:
        name = "fixed"

        def __init__(self, values):
            self.values = values

        def score(self, queries, passages):
            return np.array(self.values, np.float32)

    fused = FusionScorer([Fixed([1, 3, 100, 300]), Fixed([0, 0, 5, 1])], [0.5, 0.5])
    out = fused.score(["a", "a", "b", "b"], [Passage("", "", "")] * 4)
    np.testing.assert_allclose(out, [0.0, 0.5, 0.5, 0.5])  # query b: dense [0, 1], bm25 [1, 0]


@pytest.mark.parametrize("args,needle", [
    (["-t", "nope:x"], "--teacher 'nope:x'"),
    (["-t", "bm25"], "--teacher bm25 needs --data"),
    (["-t", "dense:minilm", "--weights", "1,2"], "--weights has 2 values for 1 --teacher"),
])
def test_score_usage_errors_are_one_line(tmp_path, tiny_beir, args, needle, capsys):
    cands, _ = _candidates(tmp_path, tiny_beir)
    code, _, err = run_cli(["score", "-c", cands, "-o", tmp_path / "o.jsonl", *args], capsys)
    assert code == 2 and needle in one_line_error(err)
    assert not (tmp_path / "o.jsonl").exists()


def test_bad_candidates_line_names_file_line_field(tmp_path, tiny_model_dir, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"query": "q", "positive_passages": [{"docid": "a", "text": "t"}]}) + "\n" +
                   json.dumps({"query": "q", "positive_passages": [{"docid": "a"}]}) + "\n")
    code, _, err = run_cli(["score", "-c", bad, "-o", tmp_path / "o.jsonl", "-t", f"dense:{tiny_model_dir}"], capsys)
    line = one_line_error(err)
    assert code == 2 and "bad.jsonl" in line and ":2" in line and "positive_passages[0].text" in line
    assert not (tmp_path / "o.jsonl").exists()


# ---------- distillation ----------
def _teacher_file(tmp_path, data, teacher_dir, capsys, name="scores.jsonl"):
    cands, _ = _candidates(tmp_path, data)
    out = tmp_path / name
    code, _, err = run_cli(["score", "-c", cands, "-o", out, "-t", f"dense:{teacher_dir}"], capsys)
    assert code == 0, err
    return out


def _group_kl(model, path, temperature=0.05):
    """Mean KL(teacher || student) over every example's whole scored list."""
    from retr.retriever.modeling import DualEncoder

    enc = DualEncoder.from_pretrained(model) if not isinstance(model, DualEncoder) else model
    scorer = DenseScorer(enc)
    total = []
    for q, ps, t in _scored(path):
        s = torch.tensor(scorer.score([q] * len(ps), ps)) / temperature
        total.append(float(KLDistillLoss()(s[None], torch.tensor(t)[None] / temperature)))
    return float(np.mean(total))


@pytest.mark.parametrize("loss", ["kl", "margin-mse", "soft-infonce"])
def test_distilled_dual_encoder_moves_toward_the_teacher(tmp_path, tiny_beir, tiny_model_dir, loss, capsys):
    teacher = make_tiny_bert(tmp_path / "teacher", seed=7)
    scores = _teacher_file(tmp_path, tiny_beir, teacher, capsys)
    before = _group_kl(str(tiny_model_dir), scores)
    code, _, err = run_cli(["train", "-o", tmp_path / "run", "-m", tiny_model_dir, "--teacher-scores", scores,
                            "--distill", loss, "--train-negatives", "3", "--batch-size", "2", "--max-steps", "30",
                            "--lr", "3e-3", "--warmup-ratio", "0", "--teacher-temperature", "0.05",
                            "--save-steps", "0"], capsys)
    assert code == 0, err
    after = _group_kl(str(tmp_path / "run" / "model"), scores)
    assert after < 0.5 * before, (before, after)
    cfg = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert cfg["distill"] == loss and cfg["teacher_scores"] == str(scores) and cfg["teacher_temperature"] == 0.05


def _first_loss(tmp_path, tiny_beir, model, scores, capsys, name, *flags):
    code, _, err = run_cli(["train", "-o", tmp_path / name, "-m", model, "--teacher-scores", scores, "--distill", "kl",
                            "--train-negatives", "2", "--batch-size", "2", "--max-steps", "1", "--lr", "0",
                            "--logging-steps", "1", "--save-steps", "0", "--seed", "3", *flags], capsys)
    assert code == 0, err
    return json.loads((tmp_path / name / "train_log.jsonl").read_text().splitlines()[0])["loss"]


def test_teacher_temperature_and_infonce_weight_change_the_loss_as_defined(tmp_path, tiny_beir, capsys):
    """First-step losses (lr 0, no dropout): kl at T, kl at 2T, and kl + 1 x InfoNCE, checked against the task's
    loss computed on the same batch."""
    from retr.retriever.training.arguments import TrainConfig
    from retr.retriever.training.driver import build_trainer

    model = make_tiny_bert(tmp_path / "nd", dropout=0.0)
    scores = _teacher_file(tmp_path, tiny_beir, make_tiny_bert(tmp_path / "t", seed=9), capsys)
    base = _first_loss(tmp_path, tiny_beir, model, scores, capsys, "a", "--teacher-temperature", "0.05")
    warm = _first_loss(tmp_path, tiny_beir, model, scores, capsys, "b", "--teacher-temperature", "0.1")
    mixed = _first_loss(tmp_path, tiny_beir, model, scores, capsys, "c", "--teacher-temperature", "0.05",
                        "--distill-infonce-weight", "1")
    trainer = build_trainer(TrainConfig(output_dir=str(tmp_path / "x"), model=str(model), teacher_scores=str(scores),
                                         distill="kl", train_negatives=2, batch_size=2, seed=3,
                                         teacher_temperature=0.05))
    batch = trainer.collate(trainer.sampler.batches(0)[0], 0)
    with torch.no_grad():
        reps = trainer.model(queries=batch["queries"], passages=batch["passages"])
        extras = trainer.task.extras(batch, trainer.model, trainer.device)
        kl = float(trainer.task.compute_loss(reps, extras))
        infonce = float(trainer.task.loss(reps["queries"], reps["passages"], extras["positive_keys"],
                                          extras["passage_keys"]))
    assert base == pytest.approx(kl, rel=1e-4)
    assert mixed == pytest.approx(kl + infonce, rel=1e-4)
    assert warm != pytest.approx(base, rel=1e-3)


def test_distilled_cross_encoder_follows_the_teacher_order(tmp_path, tiny_beir, tiny_model_dir, capsys):
    teacher = make_tiny_bert(tmp_path / "teacher", seed=7)
    scores = _teacher_file(tmp_path, tiny_beir, teacher, capsys)
    torch.manual_seed(0)
    start = tmp_path / "ce0"
    CrossEncoderScorer(str(tiny_model_dir)).model.save(start)

    def agreement(model_dir):
        ce = CrossEncoderScorer(str(model_dir))
        rho = []
        for q, ps, t in _scored(scores):
            s = ce.score([q] * len(ps), ps)
            rho.append(np.corrcoef(np.argsort(np.argsort(s)), np.argsort(np.argsort(t)))[0, 1])
        return float(np.mean(rho))

    code, _, err = run_cli(["train", "--mode", "reranker", "-o", tmp_path / "run", "-m", start, "--teacher-scores",
                            scores, "--distill", "margin-mse", "--train-negatives", "3", "--batch-size", "2",
                            "--max-steps", "120", "--lr", "3e-3", "--warmup-ratio", "0", "--save-steps", "0",
                            "--grad-cache", "--gc-passage-chunk", "3"], capsys)
    assert code == 0, err
    before, after = agreement(start), agreement(tmp_path / "run" / "model")
    assert after > before + 0.3 and after > 0.6, (before, after)


def test_teacher_scores_file_without_scores_is_one_line(tmp_path, tiny_beir, tiny_model_dir, capsys):
    cands, _ = _candidates(tmp_path, tiny_beir)  # no scores
    code, _, err = run_cli(["train", "-o", tmp_path / "run", "-m", tiny_model_dir, "--teacher-scores", cands,
                            "--distill", "kl", "--max-steps", "1"], capsys)
    line = one_line_error(err)
    assert code == 2 and "cands.jsonl:1" in line.replace(", line ", ":") and "positive_passages[0].score" in line
    code, _, err = run_cli(["train", "-o", tmp_path / "run2", "-m", tiny_model_dir, "--distill", "kl"], capsys)
    assert code == 2 and "--distill and --teacher-scores go together" in one_line_error(err)
    rows = [json.loads(line) for line in cands.read_text().splitlines()]
    for r in rows:
        for p in r["positive_passages"] + r["negative_passages"]:
            p["score"] = 1.0
    rows[1]["negative_passages"][0]["score"] = 1e39  # finite in JSON, inf in the float32 loss
    huge = tmp_path / "huge.jsonl"
    huge.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, _, err = run_cli(["train", "-o", tmp_path / "run4", "-m", tiny_model_dir, "--teacher-scores", huge,
                            "--distill", "kl", "--max-steps", "1"], capsys)
    line = one_line_error(err)
    assert code == 2 and "huge.jsonl" in line and "negative_passages[0].score" in line and "float32" in line
    code, _, err = run_cli(["train", "--mode", "reranker", "-o", tmp_path / "run3", "-m", tiny_model_dir,
                            "--teacher-scores", cands, "--distill", "soft-infonce"], capsys)
    assert code == 2 and "dual encoders only" in one_line_error(err)


def _cfg(model, scores, out, grad_cache, mode="supervised", distill="kl", **extra):
    from ddp_worker import config

    return config(str(model), "", str(out), grad_cache, True, mode, train_data=[], teacher_scores=str(scores),
                  distill=distill, train_negatives=2, **extra)


@pytest.mark.parametrize("mode,distill", [("supervised", "kl"), ("reranker", "kl"), ("supervised", "soft-infonce")])
def test_grad_cache_distillation_equals_plain(tmp_path, tiny_beir, mode, distill, capsys):
    from ddp_worker import one_step

    model = make_tiny_bert(tmp_path / "nd", dropout=0.0)
    scores = _teacher_file(tmp_path, tiny_beir, make_tiny_bert(tmp_path / "t", seed=9), capsys)
    plain = one_step(_cfg(model, scores, tmp_path / "p", False, mode, distill, distill_infonce_weight=0.5))
    cached = one_step(_cfg(model, scores, tmp_path / "g", True, mode, distill, distill_infonce_weight=0.5))
    grads = [k for k in plain if k.startswith("grad.")]
    assert grads
    for k in grads:
        torch.testing.assert_close(cached[k], plain[k], atol=1e-5, rtol=1e-4, msg=k)


@pytest.mark.distributed
@pytest.mark.parametrize("mode,grad_cache", [("supervised", "1"), ("reranker", "0")])
def test_ddp_distillation_equals_one_process_on_the_global_batch(tmp_path, tiny_beir, mode, grad_cache, capsys):
    """2 gloo ranks, no dropout: each rank's gradient after the all-reduce equals one process's on the whole batch
    (teacher scores gathered with the representations)."""
    from ddp_worker import one_step
    from safetensors.torch import load_file

    model = make_tiny_bert(tmp_path / "nd", dropout=0.0)
    scores = _teacher_file(tmp_path, tiny_beir, make_tiny_bert(tmp_path / "t", seed=9), capsys)
    extra = {"train_data": [], "teacher_scores": str(scores), "distill": "kl", "train_negatives": 2}
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]))
    from test_distributed import _port

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--master-addr=127.0.0.1",
           f"--master-port={_port()}", str(REPO / "tests" / "ddp_worker.py"), str(model), "unused", str(tmp_path),
           grad_cache, "1", mode, json.dumps(extra)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1)]
    single = one_step(_cfg(model, scores, tmp_path / "single", grad_cache == "1", mode))
    grads = [k for k in single if k.startswith("grad.")]
    assert grads
    for r in ranks:
        for k in grads:
            torch.testing.assert_close(r[k], single[k], atol=1e-5, rtol=1e-4, msg=k)


def test_score_precision_batch_size_and_bm25_index(tmp_path, tiny_beir, tiny_model_dir, capsys):
    """bf16 / batch 1 give the fp32 scores to bf16 accuracy (not bit-equal); --bm25-index is written, then reused
    with the same scores."""
    cands, _ = _candidates(tmp_path, tiny_beir)
    outs = []
    for i, flags in enumerate([[], ["--precision", "bf16", "--batch-size", "1"]]):
        outs.append(tmp_path / f"p{i}.jsonl")
        code, _, err = run_cli(["score", "-c", cands, "-o", outs[-1], "-t", f"dense:{tiny_model_dir}", *flags], capsys)
        assert code == 0, err
    a = np.concatenate([s for _, _, s in _scored(outs[0])])
    b = np.concatenate([s for _, _, s in _scored(outs[1])])
    assert not np.array_equal(a, b)
    np.testing.assert_allclose(a, b, atol=3e-2)
    idx = tmp_path / "bm25-idx"
    runs = []
    for i in range(2):
        runs.append(tmp_path / f"b{i}.jsonl")
        code, _, err = run_cli(["score", "-c", cands, "-o", runs[-1], "-t", "bm25", "-d", tiny_beir, "--bm25-index",
                                idx], capsys)
        assert code == 0, err
        if i == 0:
            assert (idx / "meta.json").exists()
            stamp = (idx / "meta.json").stat().st_mtime_ns
    assert (idx / "meta.json").stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert runs[0].read_text() == runs[1].read_text()


@pytest.mark.parametrize("command", ["score", "mine", "train"])
def test_help_explains_the_new_options(command, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # rich abbreviates long option names in 80 columns
    code, out, _ = run_cli([command, "--help"], capsys)
    text = " ".join(out.split())
    assert code == 0
    wanted = {"score": ["--candidates", "--teacher", "--weights", "--bm25-index", "--block-size"],
              "mine": ["--exclude-siblings", "--relative-margin", "--max-score", "--rescore-with"],
              "train": ["--distill", "--teacher-scores", "--teacher-temperature", "--distill-infonce-weight"]}
    assert all(flag in text for flag in wanted[command])
