"""`retr train` options checked by their result: the first step's logged loss equals InfoNCE recomputed from the
starting model's own embeddings (so --temperature, --similarity, --symmetric, --negatives, --train-negatives,
--batch-size and --normalize each change exactly what they claim), the step count follows --epochs and --pairs,
the learning-rate schedule follows --lr/--warmup-ratio, and --weight-decay, --max-grad-norm,
--learnable-temperature, --config, --eval-data/--eval-split/--eval-steps and --report-to leave their marks."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_tiny_bert, one_line_error, run_cli
from retr.retriever.modeling import DualEncoder

# four queries, each with one positive and two hard negatives of its own: no passage is shared, so no
# known-positive masking and every batch of 4 holds 4 x (1 + K) distinct candidates
TOPICS = ["aspirin heart", "statin cholesterol", "vitamin bone", "salt blood pressure"]


def _beir(root: Path) -> tuple[Path, Path]:
    root.mkdir(parents=True, exist_ok=True)
    docs, queries, qrels, negs = [], [], [], []
    for i, topic in enumerate(TOPICS):
        queries.append({"_id": f"q{i}", "text": f"what about {topic}"})
        docs.append({"_id": f"p{i}", "title": topic, "text": f"{topic} study number {i} positive"})
        qrels.append(f"q{i}\tp{i}\t1")
        mine = []
        for j in range(2):
            docs.append({"_id": f"n{i}{j}", "title": "", "text": f"unrelated passage {i} {j} about {topic[::-1]}"})
            mine.append({"docid": f"n{i}{j}", "title": "", "text": docs[-1]["text"]})
        negs.append({"query_id": f"q{i}", "query": queries[-1]["text"],
                     "positive_passages": [{"docid": f"p{i}", "title": topic, "text": docs[-3]["text"]}],
                     "negative_passages": mine})
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (root / "qrels").mkdir(exist_ok=True)
    (root / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(qrels) + "\n")
    negatives = root.parent / "negatives.jsonl"
    negatives.write_text("".join(json.dumps(n) + "\n" for n in negs))
    return root, negatives


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("train-options")
    data, negatives = _beir(root / "beir")
    model = make_tiny_bert(root / "model", seed=5, dropout=0.0, normalize=False)  # no dropout: step 1 is exact
    return {"data": data, "negatives": negatives, "model": model, "root": root}


def _train(world, tmp_path, capsys, *extra, name="run"):
    out = tmp_path / name
    args = ["train", "-o", out, "-m", world["model"], "-d", world["data"], "--split", "train", "--batch-size", "4",
            "--max-steps", "1", "--logging-steps", "1", "--save-steps", "0", "--precision", "fp32", "--seed", "1",
            "--lr", "1e-3", *map(str, extra)]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    return out, [json.loads(l) for l in (out / "train_log.jsonl").read_text().splitlines()]


def _expected_first_loss(world, k: int, temperature: float, similarity: str, symmetric: bool,
                         normalize: bool) -> float:
    model = DualEncoder.from_pretrained(world["model"])
    lines = [json.loads(l) for l in world["negatives"].read_text().splitlines()]
    q = torch.tensor(model.encode_queries([x["query"] for x in lines]))  # the fixture model does not normalise
    groups = []
    for x in lines:
        ps = x["positive_passages"][:1] + x["negative_passages"][:k]
        groups += [f"{p['title']} {p['text']}".strip() for p in ps]
    p = torch.tensor(model.encode_passages(groups))
    if similarity == "cos" or normalize:
        q, p = torch.nn.functional.normalize(q, dim=-1), torch.nn.functional.normalize(p, dim=-1)
    scores = q @ p.T / temperature
    target = torch.arange(len(lines)) * (1 + k)
    loss = torch.nn.functional.cross_entropy(scores, target)
    if symmetric:
        back = p[target] @ q.T / temperature
        loss = (loss + torch.nn.functional.cross_entropy(back, torch.arange(len(lines)))) / 2
    return float(loss)


@pytest.mark.parametrize("k,temperature,similarity,symmetric,normalize", [
    (0, 0.05, "dot", False, False),
    (2, 0.05, "dot", False, False),
    (2, 0.5, "cos", False, False),  # K < 2 would sample which negative: K = all keeps it exact
    (2, 0.2, "dot", True, True),
])
def test_first_loss_is_infonce_of_the_starting_model(world, tmp_path, capsys, k, temperature, similarity,
                                                     symmetric, normalize):
    extra = ["--negatives", world["negatives"], "--train-negatives", k, "--temperature", temperature,
             "--similarity", similarity, "--normalize" if normalize else "--no-normalize"]
    if symmetric:
        extra.append("--symmetric")
    _, log = _train(world, tmp_path, capsys, *extra)
    expected = _expected_first_loss(world, k, temperature, similarity, symmetric, normalize)
    assert log[0]["loss"] == pytest.approx(expected, rel=1e-4, abs=1e-5)


def test_epochs_and_pairs_set_the_number_of_steps(world, tmp_path, capsys):
    _, log = _train(world, tmp_path, capsys, "--max-steps", "0", "--epochs", "3", "--batch-size", "2", name="a")
    assert [r["step"] for r in log] == list(range(1, 7))  # 4 queries / 2 per batch x 3 epochs
    # the 4th query gains a second positive: --pairs makes one example per (query, positive) pair
    data = world["root"] / "pairs"
    import shutil

    shutil.copytree(world["data"], data)
    with open(data / "qrels" / "train.tsv", "a") as fh:
        fh.write("q3\tn30\t1\nq2\tn20\t1\n")
    run = lambda name, *x: _train({**world, "data": data}, tmp_path, capsys, "--max-steps", "0", "--epochs", "1",
                                  "--batch-size", "2", *x, name=name)[1]
    assert len(run("per-query")) == 2 and len(run("per-pair", "--pairs")) == 3


def test_lr_and_warmup_ratio_shape_the_schedule(world, tmp_path, capsys):
    _, log = _train(world, tmp_path, capsys, "--max-steps", "4", "--batch-size", "1", "--lr", "2e-3",
                    "--warmup-ratio", "0.5", name="warm")
    # logged after the scheduler step (as Hugging Face Trainer): the rate of the *next* step; 2 warmup steps
    assert [r["lr"] for r in log] == pytest.approx([2e-3, 2e-3, 1e-3, 0.0])
    _, log = _train(world, tmp_path, capsys, "--max-steps", "4", "--batch-size", "1", "--lr", "2e-3",
                    "--warmup-ratio", "0", name="cold")
    assert [r["lr"] for r in log] == pytest.approx([1.5e-3, 1e-3, 5e-4, 0.0])


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in DualEncoder.from_pretrained(run / "model").state_dict().items() if v.dim() == 2}


def test_weight_decay_and_max_grad_norm_change_the_update(world, tmp_path, capsys):
    start = {k: v for k, v in DualEncoder.from_pretrained(world["model"]).state_dict().items() if v.dim() == 2}
    common = ["--max-steps", "3", "--lr", "1e-2", "--warmup-ratio", "0"]
    plain = _weights(_train(world, tmp_path, capsys, *common, "--weight-decay", "0", name="plain")[0])
    decayed = _weights(_train(world, tmp_path, capsys, *common, "--weight-decay", "5", name="decay")[0])
    norm = lambda w: math.sqrt(sum(float((v ** 2).sum()) for v in w.values()))
    assert norm(decayed) < 0.95 * norm(plain)  # AdamW shrinks every matrix by lr x decay per step
    clipped = _weights(_train(world, tmp_path, capsys, *common, "--weight-decay", "0", "--max-grad-norm", "1e-12",
                              name="clip")[0])
    moved = lambda w: math.sqrt(sum(float(((w[k] - start[k]) ** 2).sum()) for k in w))
    assert moved(clipped) < 0.01 * moved(plain)  # a gradient clipped to ~0 is below Adam's eps: no step


def test_learnable_temperature_is_trained_and_checkpointed(world, tmp_path, capsys):
    from safetensors.torch import load_file

    for name, flag in (("fixed", []), ("learned", ["--learnable-temperature"])):
        out, _ = _train(world, tmp_path, capsys, "--max-steps", "3", "--save-steps", "2", "--lr", "5e-2",
                        "--temperature", "0.1", *flag, name=name)
        task = load_file(out / "checkpoints" / "step-2" / "task.safetensors")
        scale = [v for k, v in task.items() if k.endswith("log_scale")]
        if flag:
            assert scale and abs(float(scale[0]) - math.log(10.0)) > 1e-3  # moved away from 1 / 0.1
        else:
            assert not scale  # a fixed temperature is no state


def test_config_file_with_flags_overriding_it(world, tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"model: {world['model']}\ntrain_data: [{world['data']}]\ntrain_split: train\nbatch_size: 2\n"
                   "max_steps: 3\nlogging_steps: 1\nsave_steps: 0\nlr: 0.004\nwarmup_ratio: 0\n")
    code, _, err = run_cli(["train", "-c", cfg, "-o", tmp_path / "c1"], capsys)
    assert code == 0, err
    log = [json.loads(l) for l in (tmp_path / "c1" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3] and log[0]["lr"] == pytest.approx(0.004 * 2 / 3)
    code, _, err = run_cli(["train", "-c", cfg, "-o", tmp_path / "c2", "--max-steps", "2", "--lr", "1e-3"], capsys)
    assert code == 0, err
    log = [json.loads(l) for l in (tmp_path / "c2" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2] and log[0]["lr"] == pytest.approx(5e-4)
    saved = json.loads((tmp_path / "c2" / "train_config.json").read_text())
    assert saved["max_steps"] == 2 and saved["batch_size"] == 2


def test_eval_data_split_and_steps(world, tmp_path, capsys):
    out, log = _train(world, tmp_path, capsys, "--max-steps", "4", "--batch-size", "2", "--eval-data",
                      world["data"], "--eval-split", "train", "--eval-steps", "2", name="ev")
    evals = [r for r in log if "eval/nDCG@10" in r]
    assert [r["step"] for r in evals] == [0, 2, 4]
    assert all(0.0 <= r["eval/nDCG@10"] <= 1.0 for r in evals)
    code, _, err = run_cli(["train", "-o", tmp_path / "bad", "-m", world["model"], "-d", world["data"], "--split",
                            "train", "--max-steps", "1", "--eval-data", world["data"], "--eval-split", "dev"], capsys)
    assert code == 2 and "dev" in err and "Traceback" not in err


def test_report_to_tensorboard_writes_the_logged_scalars(world, tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _ = _train(world, tmp_path, capsys, "--max-steps", "2", "--report-to", "tensorboard", name="tb")
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("loss")] == [1, 2]


def test_a_non_finite_loss_stops_the_run_before_the_update_in_one_line(world, tmp_path, capsys):
    # --lr 1e30: Adam's first step moves every weight by ~1e30, so the second forward overflows float32
    out = tmp_path / "nan"
    code, _, err = run_cli(["train", "-o", out, "-m", world["model"], "-d", world["data"], "--split", "train",
                            "--batch-size", "4", "--max-steps", "3", "--logging-steps", "1", "--save-steps", "1",
                            "--precision", "fp32", "--seed", "1", "--lr", "1e30"], capsys)
    line = one_line_error(err)
    assert code == 2 and "step 2: the training loss is" in line and "stopped before the update" in line, line
    # a new run: not --resume (it refuses a new --lr), nor from the checkpoint (step 1's update may have diverged)
    assert "--resume" not in line and "in a new --output" in line and "checkpoints" not in line, line
    assert not (out / "model").exists()  # no NaN model handed on as if trained
    logged = [json.loads(l) for l in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "loss" in r] == [1] and math.isfinite(logged[0]["loss"])


def _resumable(world, tmp_path, capsys, *extra):
    """A 2-step run with a checkpoint at step 1 and its model/ removed, as if killed after that checkpoint;
    returns the arguments that made it (without --resume) and the checkpoint's file digests."""
    out = tmp_path / "run"
    args = ["train", "-o", out, "-m", world["model"], "-d", world["data"], "--split", "train", "--batch-size", "4",
            "--max-steps", "2", "--logging-steps", "1", "--save-steps", "1", "--precision", "fp32", "--seed", "1",
            "--lr", "1e-3", *extra]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    import shutil

    shutil.rmtree(out / "model")
    ckpt = out / "checkpoints" / "step-1"
    return args, ckpt, {f.name: f.read_bytes() for f in ckpt.rglob("*") if f.is_file()}


@pytest.mark.parametrize("change,shown", [
    (["--lr", "5e-4"], "lr 0.001 -> 0.0005"),  # the checkpoint's schedule would have kept 1e-3 silently
    (["--max-steps", "3"], "max_steps 2 -> 3"),
    (["--temperature", "0.1"], "temperature 0.05 -> 0.1"),
])
def test_resume_refuses_changed_training_settings_in_one_line(world, tmp_path, capsys, change, shown):
    args, ckpt, before = _resumable(world, tmp_path, capsys)
    code, _, err = run_cli([*args, *change, "--resume"], capsys)
    line = one_line_error(err)
    assert code == 2 and str(ckpt) in line and shown in line, line
    assert f"-m {ckpt / 'model'}" in line, line  # where a run with the new settings can start
    assert {f.name: f.read_bytes() for f in ckpt.rglob("*") if f.is_file()} == before  # checkpoint untouched
    assert not (ckpt.parent.parent / "model").exists()


def test_resume_refuses_another_shape_model_or_data_before_loading(world, tmp_path, capsys):
    args, ckpt, before = _resumable(world, tmp_path, capsys)
    # a setting that changes the model's shape: one line naming it, not a traceback from inside the load
    code, _, err = run_cli([*args, "--separate-towers", "--resume"], capsys)
    assert code == 2 and "separate_towers False -> True" in one_line_error(err), err
    # another start model (same shapes, other weights) under the same flags
    other = make_tiny_bert(tmp_path / "other-model", seed=6, dropout=0.0, normalize=False)
    code, _, err = run_cli([*[str(other) if a == world["model"] else a for a in args], "--resume"], capsys)
    line = one_line_error(err)
    assert code == 2 and "continues a run with its own model" in line and "-m " not in line, err
    # other training examples (one query reworded)
    import shutil

    data = tmp_path / "data2"
    shutil.copytree(world["data"], data)
    queries = data / "queries.jsonl"
    queries.write_text(queries.read_text().replace("what about aspirin heart", "what about aspirin and the heart"))
    code, _, err = run_cli([*[str(data) if a == world["data"] else a for a in args], "--resume"], capsys)
    assert code == 2 and "on its own training examples" in one_line_error(err), err
    assert {f.name: f.read_bytes() for f in ckpt.rglob("*") if f.is_file()} == before
    # the same run named differently is not refused: --precision auto is fp32 on a CPU, --epochs under --max-steps
    code, _, err = run_cli([*[("auto" if a == "fp32" else a) for a in args], "--epochs", "3", "--resume"], capsys)
    assert code == 0 and (ckpt.parent.parent / "model").exists(), err


def test_resume_refusal_of_a_lora_run_names_no_adapter_as_a_start(world, tmp_path, capsys):
    args, ckpt, _ = _resumable(world, tmp_path, capsys, "--lora-r", "2")
    code, _, err = run_cli([*args, "--lr", "5e-4", "--resume"], capsys)
    line = one_line_error(err)
    assert code == 2 and "lr 0.001 -> 0.0005" in line and "-m " not in line, line  # an adapter cannot start a run


def test_resume_may_change_logging_saving_and_grad_cache_chunks(world, tmp_path, capsys):
    args, ckpt, _ = _resumable(world, tmp_path, capsys)
    log = ckpt.parent.parent / "train_log.jsonl"
    straight = [json.loads(l) for l in log.read_text().splitlines()]
    code, _, err = run_cli([*args, "--logging-steps", "2", "--save-steps", "5", "--grad-cache", "--gc-query-chunk",
                            "2", "--resume"], capsys)
    assert code == 0 and (ckpt.parent.parent / "model").exists(), err
    resumed = [json.loads(l) for l in log.read_text().splitlines()][len(straight):]
    # it went on from step 1 (a fresh start would log step 1 again) with the same step-2 loss (GradCache is exact)
    assert [r["step"] for r in resumed] == [2], resumed
    assert resumed[0]["loss"] == pytest.approx(straight[-1]["loss"], rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("extra,message", [
    (["--mode", "reranker"], "dual encoders only"),
    (["--teacher-scores", "{negatives}", "--distill", "kl"], "the InfoNCE term is off"),
])
def test_symmetric_where_there_is_no_infonce_term_is_refused(world, tmp_path, capsys, extra, message):
    extra = [e.format(negatives=world["negatives"]) for e in extra]
    data = [] if "--teacher-scores" in extra else ["-d", world["data"], "--split", "train"]
    code, _, err = run_cli(["train", "-o", tmp_path / "run", "-m", world["model"], *data, "--symmetric",
                            "--max-steps", "1", *extra], capsys)
    assert code == 2 and "--symmetric" in one_line_error(err) and message in one_line_error(err), err
    assert not (tmp_path / "run").exists()
