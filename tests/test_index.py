"""FAISS index directories: round trip, atomic writes, meta checks, presets, mismatch errors."""
from __future__ import annotations

import json

import faiss
import numpy as np
import pytest

from retr.indexing import FaissIndex, IndexMismatchError
from retr.indexing.atomic import ArtifactError
from retr.indexing.faiss_index import IndexSpec


def _vectors(n=300, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_flat_roundtrip_identical_hits(tmp_path):
    x = _vectors()
    ids = [f"doc{i}" for i in range(len(x))]
    idx = FaissIndex.build(x, ids, meta={"encoder": {"dim": 16}})
    scores, hits = idx.search(x[:5], 10)
    assert [h[0] for h in hits] == ids[:5]  # each vector finds itself first
    idx.save(tmp_path / "idx")
    assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == ["docids.json", "index.faiss", "meta.json"]
    meta = json.loads((tmp_path / "idx" / "meta.json").read_text())
    assert meta["factory"] == "Flat" and meta["dim"] == 16 and meta["count"] == 300 and meta["metric"] == "ip"
    back = FaissIndex.load(tmp_path / "idx")
    s2, h2 = back.search(x[:5], 10)
    assert h2 == hits
    np.testing.assert_array_equal(s2, scores)


def test_interrupted_save_leaves_no_partial_index_and_keeps_old(tmp_path, monkeypatch):
    x = _vectors()
    ids = [f"d{i}" for i in range(len(x))]
    old = FaissIndex.build(x[:10], ids[:10])
    old.save(tmp_path / "idx")
    new = FaissIndex.build(x, ids)
    real_write = faiss.write_index

    def crash(*a, **k):
        real_write(*a, **k)
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(faiss, "write_index", crash)
    with pytest.raises(KeyboardInterrupt):
        new.save(tmp_path / "idx")
    with pytest.raises(KeyboardInterrupt):
        new.save(tmp_path / "fresh")
    monkeypatch.undo()
    assert not (tmp_path / "fresh").exists()
    # temp dirs cleaned (the empty writer-lock files .NAME.lock stay by design)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock")] == []
    assert len(FaissIndex.load(tmp_path / "idx")) == 10  # the old index is intact


def test_load_rejects_non_index_and_inconsistent_dirs(tmp_path):
    with pytest.raises(ArtifactError, match="missing index.faiss"):
        FaissIndex.load(tmp_path)
    x = _vectors(20)
    FaissIndex.build(x, [str(i) for i in range(20)]).save(tmp_path / "i")
    (tmp_path / "i" / "docids.json").write_text(json.dumps(["a"]))
    with pytest.raises(ArtifactError, match="docids.json: 5 bytes, but 110 were written"):
        FaissIndex.load(tmp_path / "i")
    meta = json.loads((tmp_path / "i" / "meta.json").read_text())
    del meta["checksums"]  # as written before checksums existed: the counts still disagree
    (tmp_path / "i" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="holds 20 vectors but docids.json lists 1"):
        FaissIndex.load(tmp_path / "i")


def test_query_dim_mismatch(tmp_path):
    idx = FaissIndex.build(_vectors(20), [str(i) for i in range(20)])
    with pytest.raises(IndexMismatchError, match="dim 8, index has 16"):
        idx.search(np.zeros((1, 8), np.float32), 3)


def test_check_encoder():
    idx = FaissIndex.build(_vectors(20), [str(i) for i in range(20)], meta={"encoder": {"pooling": "mean", "dim": 16}})
    idx.check_encoder({"pooling": "mean", "dim": 16}, ["pooling", "dim"])
    with pytest.raises(IndexMismatchError, match="pooling='mean' but the query encoder has pooling='cls'"):
        idx.check_encoder({"pooling": "cls", "dim": 16}, ["pooling", "dim"])


def test_duplicate_ids_rejected():
    with pytest.raises(ValueError, match="duplicate"):
        FaissIndex.build(_vectors(3), ["a", "a", "b"])


def test_k_larger_than_index():
    idx = FaissIndex.build(_vectors(5), list("abcde"))
    _, hits = idx.search(_vectors(2, seed=1), 10)
    assert all(len(h) == 5 for h in hits)
