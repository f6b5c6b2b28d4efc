"""Contriever crops: independent, within the ratio bounds; deletion rate ~ p; reproducible per (seed, epoch)."""
from __future__ import annotations

import numpy as np
import pytest

from retr.retriever.data.contriever import ContrieverPairs, CropConfig, delete_words, random_crop


def test_crop_lengths_within_bounds_and_contiguous():
    rng = np.random.default_rng(0)
    chunk = np.arange(200)
    for _ in range(500):
        crop = random_crop(chunk, rng, 0.1, 0.5)
        assert 20 <= len(crop) <= 100
        assert np.all(np.diff(crop) == 1)  # a contiguous span of the chunk


def test_crops_are_independent():
    chunks = [np.arange(1000, 1256)] * 1
    pairs = ContrieverPairs(chunks * 400, cls_id=101, sep_id=102, cfg=CropConfig(deletion_prob=0.0), seed=0)
    starts_a, starts_b, same = [], [], 0
    for i in range(400):
        a, b = pairs[i]
        assert a[0] == 101 and a[-1] == 102
        starts_a.append(a[1])
        starts_b.append(b[1])
        same += a == b
    assert same < 5  # not copies of each other
    corr = np.corrcoef(starts_a, starts_b)[0, 1]
    assert abs(corr) < 0.15  # start positions of the two crops are uncorrelated


def test_deletion_rate_close_to_p():
    rng = np.random.default_rng(1)
    x = np.arange(100_000)
    kept = delete_words(x, rng, 0.1)
    assert len(kept) / len(x) == pytest.approx(0.9, abs=0.005)
    assert np.all(np.diff(kept) > 0)  # order preserved
    assert len(delete_words(np.arange(1), rng, 0.99)) == 1


def test_same_seed_same_epoch_same_pairs_and_epochs_differ():
    chunks = [np.arange(i, i + 100) for i in range(20)]
    a = ContrieverPairs(chunks, 1, 2, seed=3)
    b = ContrieverPairs(chunks, 1, 2, seed=3)
    assert [a[i] for i in range(20)] == [b[i] for i in range(20)]
    b.set_epoch(1)
    assert [a[i] for i in range(20)] != [b[i] for i in range(20)]


def test_chunking_per_document(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    from retr.retriever.data.contriever import DocumentChunks
    from retr.retriever.data.token_store import TokenStore

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    texts = ["word " * 50, "short", "other " * 30]
    store = TokenStore.build([texts], tok, tmp_path / "store")
    chunks = DocumentChunks(store.tokens, store.offsets, 20, min_tokens=5)
    # "short" (1 token) dropped; no chunk spans two docs
    assert [len(chunks.get(i, 0)) for i in range(len(chunks))] == [20, 20, 10, 20, 10]
