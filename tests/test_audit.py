"""Issue 23: `retr audit` finds every planted exact and near duplicate (queries and passages), and nothing else;
training-data overlap recorded in a model's meta.json flags leaderboard rows."""
from __future__ import annotations

import json

import pytest

from conftest import run_cli, write_beir

pytest.importorskip("datasketch")

EVAL_DOCS = [
    ("e1", "Aspirin", "Aspirin reduces the risk of heart attack in adults over fifty who take it daily."),
    ("e2", "Statins", "Statins lower cholesterol and cardiovascular risk in patients with diabetes."),
    ("e3", "Vitamin D", "Vitamin D deficiency is linked to bone fractures in elderly women in Europe."),
    ("e4", "Salt", "High salt intake raises blood pressure in most adults according to this trial."),
    ("e5", "Sleep", "Short sleep duration is associated with obesity in children and adolescents."),
]
EVAL_QUERIES = [("t1", "Does aspirin prevent heart attacks in older adults?"),
                ("t2", "Cholesterol lowering drugs reduce cardiovascular events in diabetics."),
                ("t3", "Vitamin D supplements prevent bone fractures in elderly women."),
                ("t4", "Salt intake and blood pressure in hypertensive adults."),
                ("t5", "Sleep deprivation causes weight gain in teenagers.")]
EVAL_QRELS = [("t1", "e1", 1), ("t2", "e2", 1), ("t3", "e3", 1), ("t4", "e4", 1), ("t5", "e5", 1)]


def _line(query, pos=(), neg=(), key_pos="positive_passages", key_neg="negative_passages"):
    return json.dumps({"query": query, key_pos: [{"docid": f"x{i}", "title": "", "text": p} for i, p in enumerate(pos)],
                       key_neg: list(neg)}) + "\n"


@pytest.fixture
def planted(tmp_path):
    ev = write_beir(tmp_path / "eval", docs=EVAL_DOCS, queries=EVAL_QUERIES, qrels=EVAL_QRELS)
    train = tmp_path / "train.jsonl"
    train.write_text(
        # exact (case, punctuation, spacing differ): query t1, passage e2 (as a positive)
        _line("does ASPIRIN prevent heart-attacks   in older adults", pos=["Statins lower cholesterol and "
              "cardiovascular risk in patients with diabetes"])
        # near: query t3 with one word changed; passage e4 as a mined negative with one word changed
        + _line("Vitamin D supplements prevent hip fractures in elderly women.",
                pos=["Unrelated text about dental caries and fluoride in drinking water."],
                neg=["High salt intake raises blood pressure in many adults according to this trial."])
        # unrelated
        + _line("Coffee consumption and liver cancer risk.", pos=["Green tea and weight loss in a cohort."]))
    distill = tmp_path / "distill.jsonl"  # a distillation file: query, passages and teacher scores
    distill.write_text(json.dumps({"query": "Sleep deprivation causes weight gain in teenagers!!",
                                   "passages": ["Short sleep duration is associated with obesity in children "
                                                "and young adolescents."], "scores": [3.2]}) + "\n")
    return ev, train, distill


def test_audit_finds_every_planted_duplicate(planted):
    from retr.evaluation.audit import AuditConfig, audit

    ev, train, distill = planted
    rep = audit([train, distill], ev, cfg=AuditConfig(threshold=0.7))
    assert rep["queries"]["exact_ids"] == ["t1", "t5"] and rep["queries"]["near_ids"] == ["t3"]
    assert rep["passages"]["exact_ids"] == ["e2"] and rep["passages"]["near_ids"] == ["e4", "e5"]
    assert rep["queries"]["eval"] == 5 and rep["queries"]["train_seen"] == 4
    exact_only = audit([train, distill], ev, cfg=AuditConfig(near=False))
    assert exact_only["queries"]["near"] == 0 and exact_only["queries"]["exact_ids"] == ["t1", "t5"]


def test_audit_beir_train_split_and_cli(planted, tmp_path, capsys):
    ev, train, _ = planted
    # a BEIR folder whose train split repeats eval query t2 under another id, and judges eval passage e3
    with open(ev / "queries.jsonl", "a") as fh:
        fh.write(json.dumps({"_id": "tr9", "text": "cholesterol-lowering drugs reduce cardiovascular events "
                             "in diabetics"}) + "\n")
    (ev / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\ntr9\te3\t1\n")
    out = tmp_path / "audit.json"
    code, stdout, err = run_cli(["audit", "--train", ev, "--train", train, "--eval", ev, "-o", out], capsys)
    assert code == 0, err
    rep = json.loads(out.read_text())
    assert rep["queries"]["exact_ids"] == ["t1", "t2"] and rep["passages"]["exact_ids"] == ["e2", "e3"]
    assert "queries" in stdout and max(map(len, stdout.splitlines())) <= 80
    code, _, err = run_cli(["audit", "--train", tmp_path / "nope.jsonl", "--eval", ev], capsys)
    assert code == 2 and "nope.jsonl" in err
    (tmp_path / "bad.jsonl").write_text('{"query": "x"}\n{"text": "no query"}\n')
    code, _, err = run_cli(["audit", "--train", tmp_path / "bad.jsonl", "--eval", ev], capsys)
    assert code == 2 and "bad.jsonl:2:" in err and '"query"' in err
    code, _, err = run_cli(["audit", "--train", train, "--eval", ev, "--threshold", "0"], capsys)
    assert code == 2 and "--threshold" in err


def test_recorded_training_data_flags_overlap(planted, tmp_path):
    from retr.evaluation.audit import training_overlap
    from retr.retriever.data.beir import load_beir

    ev, train, _ = planted
    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    (run / "meta.json").write_text(json.dumps({"made_by": "retr train", "config": {
        "train_data": [str(train)], "train_split": "train", "negatives_file": None}}))
    ds = load_beir(ev, "test")
    assert training_overlap([str(run / "model"), None], ds) == {"queries": 1, "train_data": [str(train)],
                                                                 "missing": []}
    assert training_overlap(["minilm", None], ds) is None  # nothing recorded: no claim either way
    (run / "meta.json").write_text(json.dumps({"made_by": "retr train", "config": {"train_data": ["/gone.jsonl"]}}))
    assert training_overlap([str(run / "model")], ds) == {"queries": 0, "train_data": [], "missing": ["/gone.jsonl"]}


def test_audit_cli_options_by_result(planted, tmp_path, capsys):
    ev, train, distill = planted
    (ev / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\nt3\te3\t1\n")
    out = tmp_path / "a.json"

    def report(*args):
        code, stdout, err = run_cli(["audit", "--train", train, "--train", distill, "--eval", ev, "-o", out, *args],
                                    capsys)
        assert code == 0, err
        return json.loads(out.read_text()), stdout

    rep, _ = report("--eval-split", "dev")  # only t3 and e3 are judged in dev
    assert rep["queries"]["eval"] == 1 and rep["queries"]["near_ids"] == ["t3"] and rep["eval_split"] == "dev"
    rep, _ = report("--threshold", "0.95")  # the planted near duplicates (Jaccard 0.77-0.83) no longer count
    assert rep["queries"]["near_ids"] == [] and rep["queries"]["exact_ids"] == ["t1", "t5"]
    rep, _ = report("--num-perm", "256")
    assert rep["num_perm"] == 256 and rep["queries"]["near_ids"] == ["t3"]
    rep, stdout = report("--exact-only")
    assert rep["queries"]["near"] == 0 and rep["passages"]["near"] == 0 and rep["passages"]["exact_ids"] == ["e2"]
    rep, stdout = report("--examples", "0")
    assert rep["queries"]["examples"] == [] and "eval  t1" not in stdout
    rep, stdout = report("--examples", "1")
    assert len(rep["queries"]["examples"]) == 2 and "eval  t1" in stdout  # one exact + one near
    # --train-split: the BEIR training folder's split
    (ev / "qrels" / "other.tsv").write_text("query-id\tcorpus-id\tscore\nt4\te4\t1\n")
    code, _, err = run_cli(["audit", "--train", ev, "--train-split", "other", "--eval", ev, "-o", out], capsys)
    assert code == 0, err
    assert json.loads(out.read_text())["queries"]["exact_ids"] == ["t4"]
