"""Issue 16, fresh-user check of the big-corpus paths: what broke when a 50k-passage corpus was pushed through
`retr encode` / `retr index` as a new user would, each pinned here on tiny data.

- A full disk while encoding: the vectors' memory map was a sparse file, so the first block written past the
  free space killed the process with SIGBUS (exit 135, no message, work dir left). The blocks are now reserved
  up front: one line, exit 2, nothing encoded; a resumed run keeps its progress.
- Two `retr encode` of the same shard at once: the second resumed the first one's work dir while it was being
  written and failed with "no such file or directory". Now it fails at once on the shard's writer lock.
- A corpus edited in place keeping its size and mtime (``cp -p``, ``rsync -t``, ``touch -r``) kept its cached
  store: old text, old fingerprint, so an index of the old corpus was accepted. The cache key now has ctime.
- A malformed JSON line said ``(Invalid control character at)``; the message now gives the column.
"""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import DOCS, run_cli, write_beir
from safety_util import one_error_line

from retr.indexing.errors import OutputError
from retr.indexing.shards import EMBEDDINGS_FILE, PROGRESS_FILE, PartialEmbeddings, StackedVectors
from retr.retriever.data import cache_root, load_corpus


def _no_space(monkeypatch):
    """Every block reservation fails as on a full filesystem."""
    import retr.indexing.shards as shards

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(shards.os, "posix_fallocate", full)


def test_embeddings_file_has_its_blocks_reserved(tmp_path):
    """Writing through a memory map cannot meet a full disk: the file's blocks exist before any row is written."""
    part = PartialEmbeddings(tmp_path / "w", rows=4096, dim=64, key={"k": 1})
    path = tmp_path / "w" / EMBEDDINGS_FILE
    assert os.stat(path).st_blocks * 512 >= 4096 * 64 * 4  # not sparse
    part.write(np.ones((10, 64), np.float32))
    np.testing.assert_array_equal(np.load(path, mmap_mode="r")[:10], 1.0)
    out = tmp_path / "stacked.npy"
    StackedVectors([np.load(path, mmap_mode="r")]).save_npy(out)
    assert os.stat(out).st_blocks * 512 >= 4096 * 64 * 4


def test_full_disk_before_encoding_is_one_line_and_leaves_nothing(tmp_path, tiny_model_dir, capsys, monkeypatch):
    data = write_beir(tmp_path / "d")
    _no_space(monkeypatch)
    for args, work in ((["encode", "-o", tmp_path / "emb"], tmp_path / "emb" / ".shard-00000-of-00001.partial"),
                       (["index", "-o", tmp_path / "idx"], tmp_path / ".idx.encoding")):
        code, _, err = run_cli([*args, "-m", tiny_model_dir, "-d", data], capsys)
        line = one_error_line(err)
        assert code == 2 and "no space left on device" in line and EMBEDDINGS_FILE in line, line
        assert f"{len(DOCS)} x 32 float32 vectors" in line, line
        assert not work.exists()
    assert not (tmp_path / "idx").exists()
    assert [p.name for p in (tmp_path / "emb").iterdir()] == [".shard-00000-of-00001.lock"]  # the 0-byte lock only


def test_full_disk_on_resume_keeps_the_progress(tmp_path, monkeypatch):
    key = {"model": "m", "rows": 100}
    part = PartialEmbeddings(tmp_path / "w", rows=100, dim=8, key=key)
    part.write(np.full((30, 8), 2.0, np.float32))
    del part
    _no_space(monkeypatch)
    with pytest.raises(OutputError, match="no space left on device"):
        PartialEmbeddings(tmp_path / "w", rows=100, dim=8, key=key)
    assert json.loads((tmp_path / "w" / PROGRESS_FILE).read_text())["done"] == 30  # not "damaged, start over"
    monkeypatch.undo()
    again = PartialEmbeddings(tmp_path / "w", rows=100, dim=8, key=key)
    assert again.done == 30 and float(again.vectors[29, 0]) == 2.0


def test_second_encode_of_a_shard_fails_at_once(tmp_path, tiny_model_dir, capsys):
    """While another process writes shard 0 (holds its lock), a second `retr encode` of it stops before touching
    the work dir; another shard of the same directory is still encoded."""
    data = write_beir(tmp_path / "d")
    out = tmp_path / "emb"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from filelock import FileLock; "
                               "l = FileLock(sys.argv[1]); l.acquire(); print('held', flush=True); time.sleep(60)",
                               str(out / ".shard-00000-of-00002.lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        code, _, err = run_cli(["encode", "-m", tiny_model_dir, "-d", data, "-o", out, "--shard", "0",
                                "--num-shards", "2"], capsys)
        line = one_error_line(err)
        assert code == 2 and "being written by another retr process" in line and "shard-00000-of-00002" in line
        assert not (out / ".shard-00000-of-00002.partial").exists()
        code, _, err = run_cli(["encode", "-m", tiny_model_dir, "-d", data, "-o", out, "--shard", "1",
                                "--num-shards", "2"], capsys)
        assert code == 0, err
        assert (out / "shard-00001-of-00002" / EMBEDDINGS_FILE).exists()
    finally:
        holder.kill()
        holder.wait()


def test_corpus_edited_in_place_with_size_and_mtime_kept_is_reread(tmp_path, tiny_model_dir, capsys):
    data = write_beir(tmp_path / "d")
    path = data / "corpus.jsonl"
    first = load_corpus(path)
    assert run_cli(["index", "-m", tiny_model_dir, "-d", data, "-o", tmp_path / "idx"], capsys)[0] == 0
    before = os.stat(path)
    raw = path.read_bytes()
    edited = raw.replace(b"Aspirin", b"Ibuprof", 1)  # same length
    assert edited != raw and len(edited) == len(raw)
    with open(path, "r+b") as fh:  # in place: same inode
        fh.write(edited)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # as cp -p / rsync -t / touch -r leave it
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (before.st_size, before.st_mtime_ns, before.st_ino)
    again = load_corpus(path)
    assert again.fingerprint != first.fingerprint and again.titles[0] == "Ibuprof"
    code, _, err = run_cli(["eval", "-d", data, "-i", tmp_path / "idx"], capsys)
    assert code == 2 and "built from another corpus" in one_error_line(err)
    stores = [p for p in (cache_root() / "corpora").iterdir()
              if not p.name.startswith(".") and json.loads((p / "meta.json").read_text())["source"]["path"]
              == str(path.resolve())]
    assert len(stores) == 1  # the store of the earlier version is removed, not left as a second copy


@pytest.mark.parametrize("line, detail", [
    ('{"_id": "x", "text": "broken\n', "malformed JSON at column 29 (Invalid control character)"),  # the newline
    ('{"_id": "x" "text": "a"}\n', "malformed JSON at column 13 (Expecting ',' delimiter)"),
    ('{"_id": "x", "text": "a"} tail\n', "malformed JSON at column 27 (Extra data)"),
    ('{"_id": "x", "text": "\xff"}\n', "malformed JSON: not UTF-8 at byte 22"),  # written as latin-1
])
def test_malformed_line_deep_in_the_corpus_names_line_and_column(tmp_path, tiny_model_dir, capsys, monkeypatch, line,
                                                                 detail):
    """... and the failed store build leaves no partial copy in the cache (it stayed 6 hours)."""
    monkeypatch.setenv("RETR_CACHE_DIR", str(tmp_path / "cache"))
    data = tmp_path / "d"
    data.mkdir()
    lines = [json.dumps({"_id": f"p{i}", "text": f"passage {i}"}) + "\n" for i in range(40)]
    lines[29] = line
    (data / "corpus.jsonl").write_bytes("".join(lines).encode("latin-1" if "\xff" in line else "utf-8"))
    code, _, err = run_cli(["encode", "-m", tiny_model_dir, "-d", data, "-o", tmp_path / "emb"], capsys)
    msg = one_error_line(err)
    assert code == 2 and msg.startswith(f"error: {data / 'corpus.jsonl'}:30: ") and detail in msg, msg
    assert not msg.endswith(" at)")
    assert [p.name for p in (tmp_path / "cache" / "corpora").iterdir() if not p.name.endswith(".lock")] == []


def test_full_cache_disk_while_building_the_corpus_store(tmp_path, tiny_model_dir, capsys, monkeypatch):
    """pyarrow's "[Errno 28] Error writing bytes to file" named no path and left the partial store behind."""
    import retr.retriever.data.corpus as corpus_mod

    monkeypatch.setenv("RETR_CACHE_DIR", str(tmp_path / "cache"))
    real = corpus_mod._build_store

    def fill_up(path, out, ident):
        (out / "corpus.arrow").write_bytes(b"x" * 4096)  # partway through, as pyarrow words a full disk:
        raise OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left on device")

    monkeypatch.setattr(corpus_mod, "_build_store", fill_up)
    data = write_beir(tmp_path / "d")
    code, _, err = run_cli(["encode", "-m", tiny_model_dir, "-d", data, "-o", tmp_path / "emb"], capsys)
    line = one_error_line(err)
    assert code == 2 and f"cannot write the corpus store under {tmp_path / 'cache' / 'corpora'}: no space left on " \
        "device" in line and "RETR_CACHE_DIR" in line, line
    assert [p.name for p in (tmp_path / "cache" / "corpora").iterdir()] == []
    monkeypatch.setattr(corpus_mod, "_build_store", real)
    assert len(load_corpus(data / "corpus.jsonl")) == len(DOCS)  # space again: built and cached


def test_shards_of_two_splits_in_one_directory_are_named(tmp_path, tiny_model_dir, capsys):
    """A 1-shard run and a 2-shard run written into one directory: the error said "incomplete shard set (have 2 of
    1; missing [])"; it now names the two splits. One shard of a split run indexes alone and says which."""
    from retr.indexing import FaissIndex
    from retr.indexing.shards import load_shards, write_shard
    from safety_util import make_shards

    root = make_shards(tmp_path / "emb", tiny_model_dir)  # shard-00000-of-00001
    vectors, ids, meta = load_shards(root)
    write_shard(root, 1, 2, np.asarray(vectors)[4:], ids[4:], meta)
    code, _, err = run_cli(["index", "--from-embeddings", root, "-o", tmp_path / "idx"], capsys)
    line = one_error_line(err)
    assert code == 2 and "shards of different splits (of 1, of 2" in line and "shard-00001-of-00002" in line, line
    code, out, err = run_cli(["index", "--from-embeddings", root / "shard-00001-of-00002", "-o", tmp_path / "idx"],
                             capsys)
    assert code == 0, err
    assert f"index of {len(ids) - 4} docs from shard-00001-of-00002" in " ".join(out.split())
    assert FaissIndex.load(tmp_path / "idx").docids == ids[4:]


def test_search_of_many_queries_shows_one_progress_bar(tmp_path, tiny_model_dir, capsys, monkeypatch):
    """Queries are searched in blocks; the progress bar used to restart for each block (one bar per 1,024
    queries, each with its own ETA). Now one bar counts all queries; the run is the same as unblocked."""
    import re

    import retr.cli.search_cmd as search_cmd

    data = write_beir(tmp_path / "d", queries=[(f"q{i}", f"aspirin statins word {i}") for i in range(7)],
                      qrels=[("q0", "d1", 1)])
    assert run_cli(["index", "-m", tiny_model_dir, "-d", data, "-o", tmp_path / "idx"], capsys)[0] == 0
    code, _, err = run_cli(["search", "-i", tmp_path / "idx", "--queries", data, "-k", "3", "--run",
                            tmp_path / "whole.trec"], capsys)
    assert code == 0, err
    monkeypatch.setattr(search_cmd, "QUERY_BLOCK", 3)
    code, _, err = run_cli(["search", "-i", tmp_path / "idx", "--queries", data, "-k", "3", "--run",
                            tmp_path / "blocks.trec"], capsys)
    assert code == 0, err
    totals = {int(t) for t in re.findall(r"queries:[^\r\n|]*\|[^|]*\| *\d+/(\d+)", err)}
    assert totals == {7}, err
    # the same ranking; scores may differ in the 7th digit (a block of 3 queries is another GEMM shape)
    blocks, whole = ([line.split() for line in (tmp_path / name).read_text().splitlines()]
                     for name in ("blocks.trec", "whole.trec"))
    assert [row[:4] for row in blocks] == [row[:4] for row in whole]
    assert np.allclose([float(row[4]) for row in blocks], [float(row[4]) for row in whole], atol=1e-5)
    assert len(blocks) == 7 * 3


def test_eval_mmap_reads_the_index_through_a_memory_map(tmp_path, tiny_beir, tiny_model_dir, capsys, monkeypatch):
    """`retr eval --mmap` (an index larger than RAM) gives the metrics and run of a normal eval, opening the
    index memory-mapped; refused without an existing dense index."""
    from retr.indexing import FaissIndex

    idx = tmp_path / "idx"
    assert run_cli(["index", "-m", tiny_model_dir, "-d", tiny_beir, "-o", idx], capsys)[0] == 0
    assert run_cli(["eval", "-d", tiny_beir, "-i", idx, "-o", tmp_path / "ram.json", "--run", tmp_path / "ram.trec"],
                   capsys)[0] == 0
    modes = []
    real_load = FaissIndex.load.__func__

    def spy(cls, directory, mmap=False, **kw):
        modes.append(mmap)
        return real_load(cls, directory, mmap=mmap, **kw)

    monkeypatch.setattr(FaissIndex, "load", classmethod(spy))
    code, _, err = run_cli(["eval", "-d", tiny_beir, "-i", idx, "--mmap", "-o", tmp_path / "map.json",
                            "--run", tmp_path / "map.trec"], capsys)
    assert code == 0, err
    assert modes == [True]
    ram, mapped = (json.loads((tmp_path / f"{n}.json").read_text())["metrics"] for n in ("ram", "map"))
    assert mapped == ram and ram["nDCG@10"] > 0
    assert (tmp_path / "map.trec").read_text() == (tmp_path / "ram.trec").read_text()
    for args, why in ((["-i", tmp_path / "none", "-m", tiny_model_dir], "--mmap reads an existing --index"),
                      (["-r", "bm25"], "--mmap")):
        code, _, err = run_cli(["eval", "-d", tiny_beir, "--mmap", *args], capsys)
        assert code == 2 and why in one_error_line(err), err
    assert not (tmp_path / "none").exists()
