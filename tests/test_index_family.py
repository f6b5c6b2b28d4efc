"""Index family: every preset builds, saves, loads (also memory-mapped) and searches with recall close to flat;
PQ re-scoring from stored vectors; search-time knobs; sharded encoding + merge equals the one-process index;
appending documents encodes only the new ones."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import DOCS, run_cli, write_beir
from retr.indexing import FaissIndex
from retr.indexing.faiss_index import IndexSpec
from retr.indexing.shards import shard_range


@pytest.fixture(scope="module")
def clustered():
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((50, 32))
    x = (centers[rng.integers(0, 50, 6000)] + 0.3 * rng.standard_normal((6000, 32))).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[rng.choice(6000, 100, replace=False)] + 0.05 * rng.standard_normal((100, 32)).astype(np.float32)
    return x, [f"d{i}" for i in range(len(x))], q.astype(np.float32)


def _recall(ids, ref, k):
    return np.mean([len(set(a[:k]) & set(b[:k])) / k for a, b in zip(ids, ref)])


@pytest.mark.parametrize("index_type,min_recall", [("flat", 1.0), ("hnsw", 0.95), ("ivf", 0.9), ("sq8", 0.9),
                                                    ("pq", 0.1), ("ivfpq", 0.1), ("IVF32,Flat", 0.9)])
def test_presets_build_save_load_search(tmp_path, clustered, index_type, min_recall):
    x, ids, q = clustered
    _, ref = FaissIndex.build(x, ids).search(q, 10)
    spec = IndexSpec(index_type=index_type, nlist=32, nprobe=8, pq_m=8, pq_bits=6)
    idx = FaissIndex.build(x, ids, spec)
    _, got = idx.search(q, 10)
    assert _recall(got, ref, 10) >= min_recall
    idx.save(tmp_path / "i")
    meta = json.loads((tmp_path / "i" / "meta.json").read_text())
    assert meta["index_type"] == index_type and meta["params"]["nprobe"] == 8
    for mmap in (False, True):
        back = FaissIndex.load(tmp_path / "i", mmap=mmap)
        assert back.search(q, 10)[1] == got


def test_pq_rescoring_from_stored_vectors(tmp_path, clustered):
    x, ids, q = clustered
    _, ref = FaissIndex.build(x, ids).search(q, 10)
    idx = FaissIndex.build(x, ids, IndexSpec(index_type="ivfpq", nlist=32, nprobe=16, pq_m=4, pq_bits=6,
                                             store_vectors=True))
    plain = _recall(idx.search(q, 10)[1], ref, 10)
    idx.save(tmp_path / "pq")
    back = FaissIndex.load(tmp_path / "pq", mmap=True)
    scores, rescored = back.search(q, 10, rescore=100)
    assert _recall(rescored, ref, 10) > plain + 0.1
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # exact scores, sorted


def test_search_time_knobs_change_results(clustered):
    x, ids, q = clustered
    _, ref = FaissIndex.build(x, ids).search(q, 10)
    idx = FaissIndex.build(x, ids, IndexSpec(index_type="ivf", nlist=64, nprobe=1))
    low = _recall(idx.search(q, 10)[1], ref, 10)
    idx.set_search_params(nprobe=64)
    assert _recall(idx.search(q, 10)[1], ref, 10) == 1.0 > low
    hnsw = FaissIndex.build(x, ids, IndexSpec(index_type="hnsw", hnsw_m=4, ef_construction=8, ef_search=4))
    low = _recall(hnsw.search(q, 10)[1], ref, 10)
    hnsw.set_search_params(ef_search=256)
    assert _recall(hnsw.search(q, 10)[1], ref, 10) > low


def test_shard_ranges_cover_everything():
    for n, s in [(10, 3), (3, 5), (100, 1)]:
        ranges = [shard_range(n, i, s) for i in range(s)]
        assert ranges[0][0] == 0 and ranges[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))


def test_two_shards_merged_equal_single_process_index(tiny_beir, tiny_model_dir, tmp_path, capsys):
    for shard in (1, 0):  # order of completion does not matter
        code, _, err = run_cli(["encode", "-m", tiny_model_dir, "-d", tiny_beir, "-o", tmp_path / "emb",
                                "--shard", shard, "--num-shards", 2], capsys)
        assert code == 0, err
    code, _, err = run_cli(["index", "--from-embeddings", tmp_path / "emb", "-o", tmp_path / "merged"], capsys)
    assert code == 0, err
    code, _, err = run_cli(["index", "-m", tiny_model_dir, "-d", tiny_beir, "-o", tmp_path / "single"], capsys)
    assert code == 0, err
    merged, single = FaissIndex.load(tmp_path / "merged"), FaissIndex.load(tmp_path / "single")
    assert merged.docids == single.docids
    q = np.asarray(single.index.reconstruct_n(0, 8))
    s1, h1 = merged.search(q, 5)
    s2, h2 = single.search(q, 5)
    assert h1 == h2
    np.testing.assert_allclose(s1, s2, atol=1e-6)
    # the merged index is searchable by its model, from the CLI
    code, out, err = run_cli(["search", "-i", tmp_path / "merged", "-q", "aspirin", "-k", "2"], capsys)
    assert code == 0, err


def test_missing_shard_is_reported(tiny_beir, tiny_model_dir, tmp_path, capsys):
    code, _, err = run_cli(["encode", "-m", tiny_model_dir, "-d", tiny_beir, "-o", tmp_path / "emb",
                            "--shard", 0, "--num-shards", 3], capsys)
    assert code == 0
    code, _, err = run_cli(["index", "--from-embeddings", tmp_path / "emb", "-o", tmp_path / "x"], capsys)
    assert code == 2 and "incomplete shard set (have 1 of 3; missing [1, 2])" in err


def test_append_encodes_only_new_documents(tmp_path, tiny_model_dir, capsys):
    small = write_beir(tmp_path / "small", docs=DOCS[:5], qrels=[])
    full = write_beir(tmp_path / "full", docs=DOCS, qrels=[])
    assert run_cli(["index", "-m", tiny_model_dir, "-d", small, "-o", tmp_path / "idx", "-t", "hnsw"], capsys)[0] == 0
    code, out, err = run_cli(["index", "--append", "-d", full, "-o", tmp_path / "idx"], capsys)
    assert code == 0, err
    assert "appended 3 new documents" in out
    grown = FaissIndex.load(tmp_path / "idx")
    assert grown.docids == [d for d, _, _ in DOCS] and grown.meta["factory"].startswith("HNSW")
    code, out, err = run_cli(["eval", "-d", full, "-i", tmp_path / "idx", "--split", "test", "-k", "5"], capsys)
    assert code == 0, err
