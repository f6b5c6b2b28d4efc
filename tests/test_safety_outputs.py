"""Issue #17, writing: retr never replaces what it did not write, checks outputs before working, lets one
writer at a time write an output, says "no space left on device" in one line with the old data intact,
cleans up after killed runs, and treats SIGTERM like SIGINT."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys

import pytest

from conftest import run_cli
from safety_util import leftovers, make_shards, one_error_line, renamed_docs, start_retr, wait_stopped

from retr.indexing import FaissIndex
from retr.indexing.errors import OutputError


@pytest.fixture
def no_encoding(monkeypatch):
    """Fail the test if any corpus encoding starts (checks must come first)."""
    from retr.retriever.modeling.encoder import Encoder

    def boom(*a, **k):
        raise AssertionError("encoding started before the output was checked")

    monkeypatch.setattr(Encoder, "encode", boom)


@pytest.fixture(scope="module")
def shards(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("shards")
    return {"old": make_shards(root / "old", tiny_model_dir), "new": make_shards(root / "new", tiny_model_dir,
                                                                               renamed_docs("n"))}


# ---------- output-dir-replaced ----------
def test_index_refuses_a_directory_that_is_not_an_index(tmp_path, tiny_beir, tiny_model_dir, capsys, no_encoding):
    mydocs = tmp_path / "mydocs"
    (mydocs / "sub").mkdir(parents=True)
    (mydocs / "thesis.txt").write_text("thesis draft")
    (mydocs / "sub" / "notes.txt").write_text("notes")
    (tmp_path / "afile").write_text("precious")
    before = sorted(p.name for p in tmp_path.iterdir())
    for target in (mydocs, tmp_path / "afile"):
        code, _, err = run_cli(["index", "-m", tiny_model_dir, "-d", tiny_beir, "-o", target], capsys)
        line = one_error_line(err)
        assert code == 2 and str(target) in line and "not a retr index" in line and "move" in line, line
    assert (mydocs / "thesis.txt").read_text() == "thesis draft" and (mydocs / "sub" / "notes.txt").exists()
    assert (tmp_path / "afile").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing moved aside, no lock, no temp dir
    with pytest.raises(OutputError, match="not a retr index"):  # the library refuses too, not only the CLI
        FaissIndex.build(__import__("numpy").eye(4, dtype="float32"), list("abcd")).save(mydocs)


def test_index_replaces_an_index_or_fills_an_empty_directory(tmp_path, tiny_beir, tiny_model_dir, capsys):
    (tmp_path / "empty").mkdir()
    for _ in range(2):  # the second run replaces the index the first one wrote
        for out in ("empty", "idx"):
            code, _, err = run_cli(["index", "-m", tiny_model_dir, "-d", tiny_beir, "-o", tmp_path / out], capsys)
            assert code == 0, err
            assert len(FaissIndex.load(tmp_path / out)) == 8 and leftovers(tmp_path / out) == []


# ---------- unwritable-output-traceback ----------
def test_unwritable_outputs_fail_in_one_line_before_encoding(tmp_path, tiny_beir, tiny_model_dir, capsys, no_encoding,
                                                             monkeypatch):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    code, _, err = run_cli(["index", "-m", tiny_model_dir, "-d", tiny_beir, "-o", tmp_path / "afile" / "idx"], capsys)
    assert code == 2 and "afile is a file, not a directory" in one_error_line(err)
    code, _, err = run_cli(["eval", "-m", tiny_model_dir, "-d", tiny_beir, "--run", tmp_path / "adir"], capsys)
    assert code == 2 and "adir is a directory" in one_error_line(err)
    code, _, err = run_cli(["mine", "-d", tiny_beir, "--split", "test", "--teacher", tiny_model_dir,
                            "-o", tmp_path / "afile" / "m.jsonl"], capsys)
    assert code == 2 and "afile is a file" in one_error_line(err)
    # a read-only filesystem / no permission (root bypasses permission bits, so the probe is made to fail)
    import retr.indexing.outputs as outputs

    def readonly(*a, dir=None, **k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dir))

    monkeypatch.setattr(outputs.tempfile, "mkstemp", readonly)
    code, _, err = run_cli(["index", "-m", tiny_model_dir, "-d", tiny_beir, "-o", tmp_path / "ro" / "idx"], capsys)
    line = one_error_line(err)
    assert code == 2 and "read-only file system" in line and str(tmp_path / "ro" / "idx") in line
    code, _, err = run_cli(["train", "-o", tmp_path / "run", "-m", tiny_model_dir, "-d", tiny_beir, "--split", "test",
                            "--max-steps", "1"], capsys)
    assert code == 2 and "read-only file system" in one_error_line(err)
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permission bits")
def test_directory_without_write_permission(tmp_path, tiny_beir, tiny_model_dir, capsys, no_encoding):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    code, _, err = run_cli(["index", "-m", tiny_model_dir, "-d", tiny_beir, "-o", locked / "idx"], capsys)
    assert code == 2 and "permission denied" in one_error_line(err)


# ---------- concurrent-index-writers ----------
def test_second_writer_fails_in_one_line_while_the_first_finishes(tmp_path, shards, capsys, no_encoding, tiny_beir,
                                                                  tiny_model_dir):
    idx = tmp_path / "idx"
    assert run_cli(["index", "--from-embeddings", shards["old"], "-o", idx], capsys)[0] == 0
    first = start_retr(["index", "--from-embeddings", shards["new"], "-o", idx], fault_at="before swap", action="stop")
    try:
        wait_stopped(first)  # the first writer has written its whole index and is about to swap it in
        for args in (["index", "--from-embeddings", shards["old"], "-o", idx],
                     ["index", "-m", tiny_model_dir, "-d", tiny_beir, "-o", idx]):  # fails before encoding
            code, _, err = run_cli(args, capsys)
            line = one_error_line(err)
            assert code == 2 and "being written by another retr process" in line, line
    finally:
        first.send_signal(signal.SIGCONT)
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert FaissIndex.load(idx).docids[0] == "nd1"  # the first writer's index, complete
    assert leftovers(idx) == []  # no orphaned copy


# ---------- full-disk-traceback ----------
def test_full_disk_during_index_write_is_one_line_and_keeps_the_old_index(tmp_path, shards, capsys, monkeypatch):
    from retr.indexing import validate

    idx = tmp_path / "idx"
    assert run_cli(["index", "--from-embeddings", shards["old"], "-o", idx], capsys)[0] == 0
    old_bytes = {p.name: p.read_bytes() for p in idx.iterdir()}
    real_write = validate.HashingWriter.write

    def fill_up(self, data):
        if self.size + len(data) > 100:  # the disk fills up partway through index.faiss
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(self, data)

    monkeypatch.setattr(validate.HashingWriter, "write", fill_up)
    code, _, err = run_cli(["index", "--from-embeddings", shards["new"], "-o", idx], capsys)
    line = one_error_line(err)
    assert code == 2 and str(idx) in line and "no space left on device" in line, line
    assert {p.name: p.read_bytes() for p in idx.iterdir()} == old_bytes and leftovers(idx) == []


def test_full_disk_during_a_checkpoint_is_one_line_and_keeps_earlier_checkpoints(tmp_path, tiny_beir, tiny_model_dir,
                                                                                 capsys, monkeypatch):
    from safetensors import SafetensorError

    import retr.retriever.training.checkpoint as ckpt

    real, calls = ckpt.save_file, []

    def save_file(*a, **k):
        calls.append(1)
        if len(calls) > 3:  # the second checkpoint (3 files each) hits a full disk, worded as safetensors does
            raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: '
                                  '"No space left on device" })')
        return real(*a, **k)

    monkeypatch.setattr(ckpt, "save_file", save_file)
    run = tmp_path / "run"
    code, _, err = run_cli(["train", "-o", run, "-m", tiny_model_dir, "-d", tiny_beir, "--split", "test",
                            "--batch-size", "4", "--max-steps", "6", "--save-steps", "2"], capsys)
    line = one_error_line(err)
    assert code == 2 and "no space left on device" in line and str(run / "checkpoints" / "step-4") in line, line
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if not p.name.endswith(".lock")) == ["step-2"]
    ckpt.verify_checkpoint(run / "checkpoints" / "step-2")


def test_full_disk_while_writing_a_file_output(tmp_path):
    from retr.indexing.atomic import atomic_file

    (tmp_path / "run.trec").write_text("old run\n")
    with pytest.raises(OutputError, match=r"run.trec: no space left on device \(the previous version is unchanged\)"):
        with atomic_file(tmp_path / "run.trec") as fh:
            fh.write("partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert (tmp_path / "run.trec").read_text() == "old run\n" and len(list(tmp_path.iterdir())) == 1


# ---------- leftovers of killed runs ----------
def test_temp_dirs_of_killed_runs_are_removed_by_the_next_write(tmp_path, shards, capsys):
    from retr.indexing.atomic import recover

    idx = tmp_path / "idx"
    assert run_cli(["index", "--from-embeddings", shards["old"], "-o", idx], capsys)[0] == 0
    for name in (".idx.tmp-k1ll3d", ".idx.old-12345"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "index.faiss").write_bytes(b"partial")
    (tmp_path / ".other.tmp-keep").mkdir()  # another output's: not ours to touch
    assert run_cli(["index", "--from-embeddings", shards["new"], "-o", idx], capsys)[0] == 0
    assert leftovers(idx) == [] and (tmp_path / ".other.tmp-keep").exists()
    # a killed two-rename replacement (old retr, or a filesystem without RENAME_EXCHANGE) left no `idx` at all,
    # the old index in .idx.old-PID: the next write puts it back before anything else
    os.rename(idx, tmp_path / ".idx.old-999")
    with pytest.raises(Exception, match=r"left the previous index in .*\.idx\.old-999"):
        FaissIndex.load(idx)
    recover(idx)
    assert FaissIndex.load(idx).docids[0] == "nd1" and leftovers(idx) == []


def test_stale_checkpoint_temp_dirs_are_removed_at_the_next_save(tmp_path, tiny_beir, tiny_model_dir, capsys):
    stale = tmp_path / "run" / "checkpoints" / ".step-7.tmp-abc"
    stale.mkdir(parents=True)
    (stale / "task.safetensors").write_bytes(b"x")
    code, _, err = run_cli(["train", "-o", tmp_path / "run", "-m", tiny_model_dir, "-d", tiny_beir, "--split", "test",
                            "--batch-size", "4", "--max-steps", "3", "--save-steps", "2"], capsys)
    assert code == 0, err
    assert not stale.exists() and (tmp_path / "run" / "checkpoints" / "step-2").is_dir()


def test_training_output_that_is_not_a_run_is_refused(tmp_path, tiny_beir, tiny_model_dir, capsys):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "meta.json").write_text(json.dumps({"mine": True}))
    code, _, err = run_cli(["train", "-o", tmp_path / "docs", "-m", tiny_model_dir, "-d", tiny_beir, "--split", "test",
                            "--max-steps", "1"], capsys)
    assert code == 2 and "not a retr training run" in one_error_line(err)
    assert sorted(p.name for p in (tmp_path / "docs").iterdir()) == ["meta.json"]


# ---------- SIGTERM like SIGINT ----------
@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_sigint_clean_up_and_exit_in_one_line(tmp_path, shards, capsys, sig, code):
    idx = tmp_path / "idx"
    assert run_cli(["index", "--from-embeddings", shards["old"], "-o", idx], capsys)[0] == 0
    proc = start_retr(["index", "--from-embeddings", shards["new"], "-o", idx], fault_at="write chunk", action="stop")
    wait_stopped(proc)  # in the middle of writing index.faiss into .idx.tmp-*
    assert len(leftovers(idx)) == 1
    proc.send_signal(sig)
    proc.send_signal(signal.SIGCONT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    line = one_error_line(err)
    assert ("terminated" if sig == signal.SIGTERM else "interrupted") in line
    assert leftovers(idx) == [] and FaissIndex.load(idx).docids[0] == "d1"


def test_signal_handlers_are_restored_after_an_in_process_run(tmp_path, shards, capsys):
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    assert run_cli(["index", "--from-embeddings", shards["old"], "-o", tmp_path / "i"], capsys)[0] == 0
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_retr_module_runs_as_a_script():
    out = subprocess.run([sys.executable, "-m", "retr.cli.main", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "index" in out.stdout
