"""Issue #17, reading: damaged artifacts are refused in one line (exit 2), never answered from with wrong ids;
`retr train --resume` falls back to the previous intact checkpoint; no code from a model directory runs;
BM25 without --index leaves nothing in the temp dir."""
from __future__ import annotations

import gc
import json
import logging
import shutil
import time
from pathlib import Path

import pytest
import torch

from conftest import make_tiny_bert, run_cli, write_beir
from safety_util import one_error_line

from retr.indexing import FaissIndex
from retr.indexing.atomic import ArtifactError


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_model_dir):
    """A flat and an HNSW index of the test corpus, and the hits a good index gives."""
    import sys

    from conftest import write_beir as wb
    from retr.cli.main import main

    root = tmp_path_factory.mktemp("built")
    data = wb(root / "data")
    for t in ("flat", "hnsw"):
        sys.argv = ["retr", "index", "-m", str(tiny_model_dir), "-d", str(data), "-o", str(root / t), "-t", t]
        try:
            main()
        except SystemExit as e:
            assert not e.code
    return root


def _search(index: Path, capsys, *extra) -> tuple[int, list[str], str]:
    out = index.parent / f"{index.name}-hits.json"
    code, _, err = run_cli(["search", "-i", index, "-q", "aspirin heart attack", "-k", "3", "-o", out, *extra], capsys)
    hits = [h["docid"] for h in json.loads(out.read_text())["q1"]] if code == 0 else []
    out.unlink(missing_ok=True)
    return code, hits, err


def _damaged(built: Path, tmp_path: Path, kind: str = "flat") -> Path:
    bad = tmp_path / f"bad-{kind}"
    shutil.copytree(built / kind, bad)
    return bad


def _edit_json(path: Path, fn) -> None:
    path.write_text(json.dumps(fn(json.loads(path.read_text()))))


# ---------- corrupt-index-metadata ----------
@pytest.mark.parametrize("name,file,fn,expect", [
    ("meta.json is a list", "meta.json", lambda d: [1, 2], "meta.json: expected a JSON object, found a list"),
    ("encoder a string", "meta.json", lambda d: {**d, "encoder": "tiny"}, 'field "encoder" must be an object'),
    ("count a string", "meta.json", lambda d: {**d, "count": "8"}, 'field "count" must be an integer'),
    ("docids numbers", "docids.json", lambda d: list(range(len(d))), "docids.json"),
    ("docids rotated by one", "docids.json", lambda d: d[1:] + d[:1], "docids.json: checksum differs"),
])
def test_damaged_index_metadata_is_refused_in_one_line(built, tmp_path, capsys, name, file, fn, expect):
    code, good_hits, err = _search(built / "flat", capsys)
    assert code == 0 and len(good_hits) == 3, err
    bad = _damaged(built, tmp_path)
    _edit_json(bad / file, fn)
    for extra in ((), ("--mmap",)):
        code, hits, err = _search(bad, capsys, *extra)
        assert code == 2 and hits == [] and expect in one_error_line(err), (name, err)
    if file == "meta.json":
        code, _, err = run_cli(["index", "info", bad], capsys)
        assert code in (0, 2) and "Traceback" not in err
    with pytest.raises(ArtifactError):
        FaissIndex.load(bad)


def test_rotated_ids_of_same_byte_size_are_refused(built, tmp_path):
    """Rotation that keeps docids.json's size (ids of equal length): only the checksum can tell."""
    bad = _damaged(built, tmp_path)
    ids = json.loads((bad / "docids.json").read_text())
    (bad / "docids.json").write_text(json.dumps(ids[1:] + ids[:1], ensure_ascii=False))
    assert (bad / "docids.json").stat().st_size == (built / "flat" / "docids.json").stat().st_size
    for mmap in (False, True):
        with pytest.raises(ArtifactError, match="checksum differs"):
            FaissIndex.load(bad, mmap=mmap)


def test_swapped_index_file_is_refused(built, tmp_path):
    bad = _damaged(built, tmp_path)
    data = bytearray((bad / "index.faiss").read_bytes())
    data[-5] ^= 0xFF  # one vector changed, same size
    (bad / "index.faiss").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="index.faiss: checksum differs"):
        FaissIndex.load(bad)


def test_embedding_shards_with_rotated_ids_are_refused(tmp_path, tiny_model_dir, capsys):
    from safety_util import make_shards

    shards = make_shards(tmp_path / "emb", tiny_model_dir)
    ids_file = next(shards.glob("shard-*")) / "docids.json"
    _edit_json(ids_file, lambda d: d[1:] + d[:1])
    code, _, err = run_cli(["index", "--from-embeddings", shards, "-o", tmp_path / "idx"], capsys)
    assert code == 2 and "docids.json: checksum differs" in one_error_line(err)
    assert not (tmp_path / "idx").exists()


# ---------- corrupt-index-mmap ----------
@pytest.mark.parametrize("kind", ["flat", "hnsw"])
@pytest.mark.parametrize("old_format", [False, True], ids=["checksummed", "no-checksums"])
def test_truncated_index_file_with_and_without_mmap(built, tmp_path, capsys, kind, old_format):
    bad = _damaged(built, tmp_path, kind)
    if old_format:  # as written before checksums existed: FAISS's own read fails, still one line
        _edit_json(bad / "meta.json", lambda d: {k: v for k, v in d.items() if k != "checksums"})
    with open(bad / "index.faiss", "r+b") as fh:
        fh.truncate((bad / "index.faiss").stat().st_size - 1)
    for extra in ((), ("--mmap",)):
        code, hits, err = _search(bad, capsys, *extra)
        line = one_error_line(err)
        assert code == 2 and hits == [] and "index.faiss" in line, err


def test_index_written_before_checksums_still_loads_with_one_warning(built, tmp_path, capsys, caplog):
    old = _damaged(built, tmp_path)
    _edit_json(old / "meta.json", lambda d: {k: v for k, v in d.items() if k not in ("checksums", "has_vectors")})
    code, good, _ = _search(built / "flat", capsys)
    with caplog.at_level(logging.WARNING, logger="retr.indexing"):
        code, hits, err = _search(old, capsys)
        code2, hits2, _ = _search(old, capsys, "--mmap")
    assert code == code2 == 0 and hits == hits2 == good
    warnings = [r for r in caplog.records if "without checksums" in r.getMessage()]
    assert len(warnings) == 1  # once per index per process


# ---------- corrupt-model-safetensors ----------
def test_truncated_or_missing_model_weights_fail_in_one_line(tmp_path, tiny_model_dir, tiny_beir, capsys, built):
    half, gone = tmp_path / "half", tmp_path / "gone"
    shutil.copytree(tiny_model_dir, half)
    shutil.copytree(tiny_model_dir, gone)
    st = half / "model.safetensors"
    with open(st, "r+b") as fh:
        fh.truncate(st.stat().st_size // 2)
    (gone / "model.safetensors").unlink()
    for model, expect in ((half, "model.safetensors: truncated"), (gone, "no model weights")):
        code, _, err = run_cli(["index", "-m", model, "-d", tiny_beir, "-o", tmp_path / f"idx-{model.name}"], capsys)
        assert code == 2 and expect in one_error_line(err), err
        code, _, err = run_cli(["eval", "-d", tiny_beir, "--retriever", "dense", "-m", tiny_model_dir,
                                "--rerank", model, "-k", "5"], capsys)
        assert code == 2 and expect in one_error_line(err), err
    # the model an index's meta.json names was damaged after the index was built
    idx = tmp_path / "idx"
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    assert run_cli(["index", "-m", model, "-d", tiny_beir, "-o", idx], capsys)[0] == 0
    with open(model / "model.safetensors", "r+b") as fh:
        fh.truncate(1000)
    code, hits, err = _search(idx, capsys)
    assert code == 2 and "model.safetensors: truncated" in one_error_line(err)


# ---------- corrupt-checkpoint-model ----------
def _train(out: Path, model: Path, data: Path, resume: bool = False):
    from retr.retriever.training.arguments import TrainConfig
    from retr.retriever.training.driver import build_trainer

    cfg = TrainConfig(output_dir=str(out), model=str(model), train_data=[str(data)], train_split="test",
                      batch_size=4, max_steps=6, save_steps=2, lr=1e-3, seed=3, warmup_ratio=0.0, resume=resume)
    trainer = build_trainer(cfg)
    trainer.train()
    return trainer


def _truncate(p: Path, size: int | None = None) -> None:
    with open(p, "r+b") as fh:
        fh.truncate(p.stat().st_size // 2 if size is None else size)


def _flip_byte(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[-3] ^= 0x01
    p.write_bytes(bytes(data))


DAMAGES = {
    "model weights truncated": lambda c: _truncate(c / "model" / "model.safetensors"),
    "model weights missing": lambda c: (c / "model" / "model.safetensors").unlink(),
    "optimizer truncated": lambda c: _truncate(c / "optimizer.safetensors", 5000),
    "rng missing": lambda c: (c / "rng.safetensors").unlink(),
    "one byte changed": lambda c: _flip_byte(c / "optimizer.safetensors"),
    "bad trainer_state": lambda c: (c / "trainer_state.json").write_text("[1, 2]"),
    "no manifest, truncated": lambda c: ((c / "manifest.json").unlink(), _truncate(c / "task.safetensors", 20)),
}


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("ref")
    data = write_beir(root / "data")
    _train(root / "ref", tiny_model_dir, data)
    return root


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_resume_falls_back_to_the_previous_intact_checkpoint(reference_run, tiny_model_dir, tmp_path, caplog, damage):
    from retr.retriever.modeling import DualEncoder

    data = reference_run / "data"
    run = tmp_path / "run"
    shutil.copytree(reference_run / "ref", run)
    shutil.rmtree(run / "model")  # as if killed after its last checkpoint (step-4)
    DAMAGES[damage](run / "checkpoints" / "step-4")
    with caplog.at_level(logging.WARNING, logger="retr"):
        trainer = _train(run, tiny_model_dir, data, resume=True)
    assert trainer.resumed_from == run / "checkpoints" / "step-2"
    assert any("step-4 is damaged" in r.getMessage() and "falling back to step-2" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]
    a = DualEncoder.from_pretrained(reference_run / "ref" / "model").state_dict()
    b = DualEncoder.from_pretrained(run / "model").state_dict()
    for k in a:  # re-running steps 3-4 from step-2 ends where the uninterrupted run ended
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)


def test_checkpoint_written_before_manifests_still_resumes(reference_run, tiny_model_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference_run / "ref", run)
    shutil.rmtree(run / "model")
    for step in ("step-2", "step-4"):
        (run / "checkpoints" / step / "manifest.json").unlink()
    assert _train(run, tiny_model_dir, reference_run / "data", resume=True).resumed_from == run / "checkpoints" / "step-4"


def test_resume_with_no_intact_checkpoint_is_one_line(reference_run, tiny_model_dir, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(reference_run / "ref", run)
    for step in ("step-2", "step-4"):
        _truncate(run / "checkpoints" / step / "model" / "model.safetensors")
    code, _, err = run_cli(["train", "-o", run, "-m", tiny_model_dir, "-d", reference_run / "data", "--split", "test",
                            "--batch-size", "4", "--max-steps", "6", "--save-steps", "2", "--lr", "1e-3", "--seed", "3",
                            "--warmup-ratio", "0", "--resume"], capsys)  # the reference run's settings
    assert code == 2 and "no intact checkpoint to resume from" in one_error_line(err)


# ---------- model-code-runs-on-yes ----------
def _evil_model(tmp_path: Path) -> Path:
    evil = make_tiny_bert(tmp_path / "evil", hidden=16, layers=1)
    for name, body in (("configuration_evil.py", "from transformers import BertConfig\n"
                        "class EvilConfig(BertConfig):\n    model_type = 'evilbert'\n"),
                       ("modeling_evil.py", "from transformers import BertModel\n"
                        "from .configuration_evil import EvilConfig\n"
                        "class EvilModel(BertModel):\n    config_class = EvilConfig\n")):
        marker = tmp_path / f"RAN_{name}"
        (evil / name).write_text(f"open({str(marker)!r}, 'w').write('model-directory code ran')\n" + body)
    cfg = json.loads((evil / "config.json").read_text())
    cfg.update(model_type="evilbert", architectures=["EvilModel"],
               auto_map={"AutoConfig": "configuration_evil.EvilConfig", "AutoModel": "modeling_evil.EvilModel",
                         "AutoModelForSequenceClassification": "modeling_evil.EvilModel"})
    (evil / "config.json").write_text(json.dumps(cfg))
    return evil


def test_model_directory_code_never_runs_even_when_the_user_answers_yes(tmp_path, tiny_beir, capsys, monkeypatch):
    evil = _evil_model(tmp_path)
    monkeypatch.setattr("builtins.input", lambda *a, **k: "y")  # `yes | retr ...` / a user typing y
    monkeypatch.setattr("sys.stdin.isatty", lambda: True, raising=False)
    commands = (["index", "-m", evil, "-d", tiny_beir, "-o", tmp_path / "idx"],
                ["eval", "-m", evil, "-d", tiny_beir, "-k", "5"],
                ["train", "--mode", "reranker", "-m", evil, "-d", tiny_beir, "--split", "test", "-o", tmp_path / "r",
                 "--max-steps", "1"])
    for args in commands:
        code, _, err = run_cli(args, capsys)
        line = one_error_line(err)
        assert code == 2 and "retr never runs code from model directories" in line, err
    assert not list(tmp_path.glob("RAN_*")), "code from the model directory ran"
    assert not (tmp_path / "idx").exists()


def test_every_loader_is_told_not_to_trust_remote_code():
    """Static guard: each from_pretrained / SentenceTransformer call in retr's code says trust_remote_code=False
    or goes through safe_load.hf_load (which does)."""
    import re

    repo = Path(__file__).resolve().parents[1]
    offenders = []
    for path in list(repo.glob("[!t.]*/**/*.py")):
        if ".venv" in path.parts or "tests" in path.parts:
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\b(Auto\w+\.from_pretrained|SentenceTransformer|sentence_transformers\.CrossEncoder)\(",
                         line) and "trust_remote_code=False" not in line:
                offenders.append(f"{path.relative_to(repo)}:{n}: {line.strip()}")
    assert offenders == []


# ---------- bm25-temp-index-left ----------
def test_bm25_temp_dirs_of_dead_runs_are_swept_and_live_ones_kept(tmp_path, monkeypatch):
    import os
    import subprocess
    import sys

    from retr.indexing.locks import OwnedTempDir

    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    dead = tmp_path / "retr-bm25-dead"
    (dead / "index").mkdir(parents=True)
    (dead / ".retr-owner.lock").touch()
    old = time.time() - 3600
    os.utime(dead, (old, old))
    live = tmp_path / "retr-bm25-live"
    live.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from filelock import FileLock; "
                               f"l = FileLock({str(live / '.retr-owner.lock')!r}); l.acquire(); print('ok', flush=True);"
                               " time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ok"
        os.utime(live, (old, old))
        mine = OwnedTempDir("retr-bm25-")
        assert not dead.exists() and live.exists() and mine.path.exists()
        mine.cleanup()
        assert not mine.path.exists()
    finally:
        holder.kill()


@pytest.mark.java
def test_bm25_without_index_leaves_nothing_in_the_temp_dir(tmp_path, tiny_beir, capsys, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    code, _, err = run_cli(["eval", "-d", tiny_beir, "--retriever", "bm25", "-k", "5"], capsys)
    assert code == 0, err
    code, _, err = run_cli(["mine", "-d", tiny_beir, "--split", "test", "--teacher", "bm25", "--range-min", "1",
                            "--range-max", "5", "-o", tmp_path / "m.jsonl"], capsys)
    assert code == 0, err
    gc.collect()
    assert [p.name for p in (tmp_path / "tmp").iterdir() if p.name.startswith("retr-bm25-")] == []
    # and on an error after the index was built (here: a damaged rerank model)
    half = tmp_path / "half"
    make_tiny_bert(half, hidden=16, layers=1)
    with open(half / "model.safetensors", "r+b") as fh:
        fh.truncate(100)
    code, _, err = run_cli(["eval", "-d", tiny_beir, "--retriever", "bm25", "--rerank", half, "-k", "5"], capsys)
    assert code == 2, err
    gc.collect()
    assert [p.name for p in (tmp_path / "tmp").iterdir() if p.name.startswith("retr-bm25-")] == []
