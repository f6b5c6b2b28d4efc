"""Streaming encoding: a SIGKILLed `retr encode` / `retr index` resumes from its last finished block and produces
the vectors of an uninterrupted run (one process, and two torchrun ranks); indexes built from memory-mapped shards
equal indexes built in memory."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, write_beir
from retr.indexing import FaissIndex
from retr.indexing.faiss_index import IndexSpec
from retr.indexing.shards import StackedVectors, load_shards


def _corpus(tmp_path, n=90):
    docs = [(f"doc{i}", f"title {i % 7}", " ".join(f"word{(i * j) % 53}" for j in range(5 + i % 11))) for i in range(n)]
    return write_beir(tmp_path / "c", docs=docs, queries=[("q1", "word3 word5")], qrels=[("q1", "doc3", 1)])


def _retr(args, env_extra=None, check=True):
    env = dict(os.environ, **(env_extra or {}))
    proc = subprocess.run([sys.executable, "-m", "retr.cli.main", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def _vectors(root):
    vectors, ids, meta = load_shards(root)
    return np.asarray(vectors), ids, meta


def test_killed_encode_resumes_and_equals_uninterrupted(tmp_path, tiny_model_dir):
    data = _corpus(tmp_path)
    args = ["encode", "-m", tiny_model_dir, "-d", data, "--block-size", "16"]
    _retr([*args, "-o", tmp_path / "ref"])
    killed = _retr([*args, "-o", tmp_path / "emb"], {"RETR_KILL_AFTER_BLOCKS": "2"}, check=False)
    assert killed.returncode == -signal.SIGKILL
    work = tmp_path / "emb" / ".shard-00000-of-00001.partial"
    assert json.loads((work / "progress.json").read_text())["done"] == 32
    assert not (tmp_path / "emb" / "shard-00000-of-00001").exists()  # nothing half-written under the final name
    resumed = _retr([*args, "-o", tmp_path / "emb", "-v"])
    assert "resuming encoding at row 32 of 90 (block 3 of 6)" in " ".join(resumed.stderr.split())
    ref, ref_ids, _ = _vectors(tmp_path / "ref")
    got, ids, _ = _vectors(tmp_path / "emb")
    assert ids == ref_ids and len(ids) == 90
    np.testing.assert_array_equal(got, ref)
    assert not work.exists()
    again = _retr([*args, "-o", tmp_path / "emb"])  # a finished shard is not encoded again
    assert "already encoded" in again.stdout


def test_changed_settings_start_over(tmp_path, tiny_model_dir):
    data = _corpus(tmp_path, 40)
    args = ["encode", "-m", tiny_model_dir, "-d", data, "-o", tmp_path / "emb"]
    _retr([*args, "--block-size", "8"], {"RETR_KILL_AFTER_BLOCKS": "1"}, check=False)
    proc = _retr([*args, "--block-size", "16", "-v"])
    assert "starting over" in proc.stderr and "resuming" not in proc.stderr
    _retr(["encode", "-m", tiny_model_dir, "-d", data, "-o", tmp_path / "ref"])
    np.testing.assert_allclose(_vectors(tmp_path / "emb")[0], _vectors(tmp_path / "ref")[0], atol=1e-6)


def test_killed_index_build_resumes_encoding(tmp_path, tiny_model_dir):
    data = _corpus(tmp_path)
    args = ["index", "-m", tiny_model_dir, "-d", data, "--block-size", "16", "--store-vectors"]
    _retr([*args, "-o", tmp_path / "ref"])
    killed = _retr([*args, "-o", tmp_path / "idx"], {"RETR_KILL_AFTER_BLOCKS": "3"}, check=False)
    assert killed.returncode == -signal.SIGKILL and not (tmp_path / "idx").exists()
    proc = _retr([*args, "-o", tmp_path / "idx", "-v"])
    assert "resuming encoding at row 48" in " ".join(proc.stderr.split())
    assert not (tmp_path / ".idx.encoding").exists()  # the work dir goes once the index is saved
    ref, got = FaissIndex.load(tmp_path / "ref"), FaissIndex.load(tmp_path / "idx")
    assert got.docids == ref.docids
    np.testing.assert_array_equal(np.asarray(got.vectors), np.asarray(ref.vectors))
    q = np.asarray(ref.vectors[:5])
    assert got.search(q, 10)[1] == ref.search(q, 10)[1]


@pytest.mark.distributed
def test_killed_torchrun_encode_resumes_per_rank(tmp_path, tiny_model_dir):
    from test_distributed import _port

    data = _corpus(tmp_path)

    def torchrun(out, extra_env=None, check=True):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--master-addr=127.0.0.1",
               f"--master-port={_port()}", "-m", "retr.cli.main", "encode", "-m", str(tiny_model_dir), "-d", str(data),
               "-o", str(out), "--block-size", "8"]
        env = dict(os.environ, OMP_NUM_THREADS="1", **(extra_env or {}))
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
        if check:
            assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    _retr(["encode", "-m", tiny_model_dir, "-d", data, "-o", tmp_path / "ref", "--block-size", "8"])
    assert torchrun(tmp_path / "emb", {"RETR_KILL_AFTER_BLOCKS": "2"}, check=False).returncode != 0
    # each rank kills itself after 2 blocks; torchrun then stops the other, which on a loaded machine may not
    # have reached its own kill point yet: at least one rank has 16 rows done, the other 0..16
    done = {}
    for rank in (0, 1):
        progress = tmp_path / "emb" / f".shard-0000{rank}-of-00002.partial" / "progress.json"
        done[rank] = json.loads(progress.read_text())["done"] if progress.exists() else 0
    assert max(done.values()) == 16 and all(d % 8 == 0 for d in done.values()), done
    proc = torchrun(tmp_path / "emb")
    resumed = " ".join(proc.stderr.split()).count("resuming encoding at row")
    assert sum(d > 0 for d in done.values()) <= resumed <= 2, (done, resumed)
    got, ids, _ = _vectors(tmp_path / "emb")
    ref, ref_ids, _ = _vectors(tmp_path / "ref")
    assert ids == ref_ids
    np.testing.assert_allclose(got, ref, atol=1e-6)  # block boundaries differ from one process: same math


def test_index_from_stacked_memmaps_equals_in_memory(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((700, 16)).astype(np.float32)
    parts = []
    for i, (s, e) in enumerate([(0, 250), (250, 251), (251, 700)]):
        np.save(tmp_path / f"p{i}.npy", x[s:e])
        parts.append(np.load(tmp_path / f"p{i}.npy", mmap_mode="r"))
    ids = [f"d{i}" for i in range(700)]
    stacked = StackedVectors(parts)
    np.testing.assert_array_equal(stacked.take(np.array([699, 0, 250, 251])), x[[699, 0, 250, 251]])
    for spec in (IndexSpec("flat", store_vectors=True), IndexSpec("ivf", nlist=8), IndexSpec("IVF4,PQ4x4")):
        a = FaissIndex.build(stacked, ids, spec, block=100)
        b = FaissIndex.build(x, ids, spec)
        sa, ha = a.search(x[:20], 10)
        sb, hb = b.search(x[:20], 10)
        assert ha == hb
        np.testing.assert_allclose(sa, sb, rtol=1e-5, atol=1e-5)
    a = FaissIndex.build(stacked, ids, IndexSpec("flat", store_vectors=True))
    a.save(tmp_path / "idx")
    np.testing.assert_array_equal(np.load(tmp_path / "idx" / "vectors.npy"), x)
