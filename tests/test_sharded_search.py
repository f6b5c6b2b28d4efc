"""Indexes built per embeddings shard and searched together equal one index over the corpus; --mmap searches
flat/IVF/HNSW indexes without reading them into RAM and returns the same hits."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import run_cli, write_beir
from retr.indexing import FaissIndex
from retr.indexing.faiss_index import IndexSpec


def _data(tmp_path, n=60):
    docs = [(f"d{i}", "", f"passage {i} about topic {i % 9} and item {i % 4}") for i in range(n)]
    queries = [(f"q{t}", f"topic {t} item {t % 4}") for t in range(6)]
    return write_beir(tmp_path / "c", docs=docs, queries=queries, qrels=[(f"q{t}", f"d{t}", 1) for t in range(6)])


def test_per_shard_indexes_search_as_one(tmp_path, tiny_model_dir, capsys):
    data = _data(tmp_path)
    for shard in (0, 1, 2):
        code, _, err = run_cli(["encode", "-m", tiny_model_dir, "-d", data, "-o", tmp_path / "emb",
                                "--shard", shard, "--num-shards", 3], capsys)
        assert code == 0, err
        code, _, err = run_cli(["index", "--from-embeddings", tmp_path / "emb" / f"shard-0000{shard}-of-00003",
                                "-o", tmp_path / f"idx{shard}"], capsys)
        assert code == 0, err
    code, _, err = run_cli(["index", "--from-embeddings", tmp_path / "emb", "-o", tmp_path / "whole"], capsys)
    assert code == 0, err
    runs = []
    for args in (["-i", tmp_path / "whole"], ["-i", tmp_path / "idx2", "-i", tmp_path / "idx0", "-i", tmp_path / "idx1"]):
        out = tmp_path / f"run{len(runs)}.json"
        code, _, err = run_cli(["search", *args, "--queries", data / "queries.jsonl", "-k", "12", "--output", out], capsys)
        assert code == 0, err
        runs.append(json.loads(out.read_text()))
    for qid in runs[0]:
        assert [h["docid"] for h in runs[0][qid]] == [h["docid"] for h in runs[1][qid]]
        np.testing.assert_allclose([h["score"] for h in runs[0][qid]], [h["score"] for h in runs[1][qid]], rtol=1e-6)
    assert len(FaissIndex.load(tmp_path / "idx1")) == 20
    code, _, err = run_cli(["search", "-i", tmp_path / "idx0", "-i", tmp_path / "idx0", "-q", "x"], capsys)
    assert code == 2 and "share document ids" in err


@pytest.mark.parametrize("spec", [IndexSpec("flat"), IndexSpec("ivf", nlist=4), IndexSpec("hnsw", hnsw_m=8),
                                  IndexSpec("IVF4,PQ4x4")])
def test_mmap_search_equals_in_ram(tmp_path, spec):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((500, 16)).astype(np.float32)
    FaissIndex.build(x, [f"d{i}" for i in range(500)], spec).save(tmp_path / "i")
    ram, mapped = FaissIndex.load(tmp_path / "i"), FaissIndex.load(tmp_path / "i", mmap=True)
    a, b = ram.search(x[:10], 5), mapped.search(x[:10], 5)
    assert a[1] == b[1]
    np.testing.assert_array_equal(a[0], b[0])
