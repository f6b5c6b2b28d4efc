"""B3: edges only from ranks p..p+m, clusters of about K, every example once per epoch, seeded batches,
clusters cached, B3 batches harder than random ones, and the duplicate-query mask of InfoNCE."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from retr.retriever.losses import InfoNCELoss
from retr.retriever.training.b3 import (B3BatchSampler, B3Config, cached_clusters, in_batch_negative_similarity,
                                        mine_clusters, rank_window_edges)
from retr.retriever.training.samplers import RandomBatchSampler


@pytest.fixture(scope="module")
def topics():
    """640 examples in 20 topics: a query and its positive are near their topic centre."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((20, 24))
    topic = np.repeat(np.arange(20), 32)
    q = centres[topic] + 0.5 * rng.standard_normal((640, 24))
    p = centres[topic] + 0.5 * rng.standard_normal((640, 24))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    p /= np.linalg.norm(p, axis=1, keepdims=True)
    return q.astype(np.float32), p.astype(np.float32)


def test_edges_come_only_from_the_rank_window(topics):
    q, p = topics
    edges = rank_window_edges(q, p, p=5, m=10)
    sims = q @ p.T
    for i in (0, 17, 400):
        order = [j for j in np.argsort(-sims[i], kind="stable") if j != i]
        assert sorted(edges[edges[:, 0] == i][:, 1].tolist()) == sorted(order[5:15])
    assert len(edges) == 640 * 10 and not np.any(edges[:, 0] == edges[:, 1])


def test_same_query_pairs_take_no_rank_and_are_no_negatives(topics):
    """(query, positive) pairs of one query: the others of its group are skipped like the example itself."""
    q, p = topics
    groups = np.arange(640) // 4  # 160 "queries" of 4 pairs each
    edges = rank_window_edges(q, p, p=5, m=10, groups=groups)
    sims = q @ p.T
    for i in (0, 17, 400):
        order = [j for j in np.argsort(-sims[i], kind="stable") if groups[j] != groups[i]]
        assert sorted(edges[edges[:, 0] == i][:, 1].tolist()) == sorted(order[5:15])
    assert not np.any(groups[edges[:, 0]] == groups[edges[:, 1]])
    # the hardness measure leaves out same-group pairs: one batch of two groups, negatives only across them
    batch = [[0, 1, 4, 5]]
    expected = np.mean([sims[i, j] for i in batch[0] for j in batch[0] if groups[i] != groups[j]])
    assert in_batch_negative_similarity(q, p, batch, groups) == pytest.approx(expected, rel=1e-5)
    assert in_batch_negative_similarity(q, p, batch) != pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("algorithm", ["metis", "leiden", "louvain"])
def test_cluster_sizes_respect_k(topics, algorithm):
    q, p = topics
    clusters, stats = mine_clusters(q, p, B3Config(p=2, m=20, cluster_size=32, algorithm=algorithm))
    sizes = [len(c) for c in clusters]
    assert sorted(i for c in clusters for i in c) == list(range(640))  # a partition
    assert max(sizes) <= 32 * 1.1 and np.mean(sizes) >= 32 * 0.75  # about K (METIS balance; split/merge otherwise)


def test_every_example_once_per_epoch_and_seeded(topics):
    q, p = topics
    clusters, _ = mine_clusters(q, p, B3Config(p=2, m=20, cluster_size=16))
    sampler = B3BatchSampler(clusters, batch_size=64, seed=3, drop_last=False)
    for epoch in (0, 1):
        flat = [i for b in sampler.batches(epoch) for i in b]
        assert sorted(flat) == list(range(640))
    assert sampler.batches(0) == B3BatchSampler(clusters, 64, seed=3).batches(0)
    assert sampler.batches(0) != sampler.batches(1)
    assert sampler.batches(0) != B3BatchSampler(clusters, 64, seed=4).batches(0)
    full = B3BatchSampler(clusters[:-1], batch_size=64, seed=3)  # drop_last: only full batches, none repeated
    seen = [i for b in full.batches(0) for i in b]
    assert all(len(b) == 64 for b in full.batches(0)) and len(seen) == len(set(seen))


def test_b3_batches_are_harder_than_random(topics):
    q, p = topics
    clusters, _ = mine_clusters(q, p, B3Config(p=2, m=20, cluster_size=32))
    b3 = in_batch_negative_similarity(q, p, B3BatchSampler(clusters, 64).batches(0))
    rand = in_batch_negative_similarity(q, p, RandomBatchSampler(640, 64).batches(0))
    assert b3 > rand + 0.2


def test_clusters_are_cached(tmp_path, topics):
    q, p = topics
    calls = []

    def compute():
        calls.append(1)
        return mine_clusters(q, p, B3Config(p=2, m=20))

    a, s1 = cached_clusters(tmp_path, {"k": 1}, compute)
    b, s2 = cached_clusters(tmp_path, {"k": 1}, compute)
    assert a == b and len(calls) == 1 and s2["cached"] and not s1["cached"]
    cached_clusters(tmp_path, {"k": 2}, compute)
    assert len(calls) == 2


def test_known_positives_are_masked_from_negatives():
    q = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])  # groups of 2 (positive, negative)
    loss = InfoNCELoss(temperature=1.0)
    plain = loss(q, p)
    passage_keys = torch.tensor([10, 11, 12, 13])
    # both queries judge passages 10 and 12 relevant (e.g. one query twice, as (query, positive) pairs)
    known = torch.tensor([[10, 12, -1], [10, 12, -1]])
    masked = loss(q, p, known, passage_keys)
    expected = -1 + np.log(np.e + 2 * np.e ** 0)  # target scores 1, two hard negatives 0, the other positive masked
    assert masked.item() == pytest.approx(expected, rel=1e-6) and masked.item() < plain.item()
    unrelated = torch.tensor([[10, -1, -1], [12, -1, -1]])
    assert loss(q, p, unrelated, passage_keys).item() == pytest.approx(plain.item())


def test_collator_marks_known_positives(tiny_model_dir, tiny_beir):
    from retr.retriever.data import load_beir
    from retr.retriever.data.training import as_pairs, examples_from_beir
    from retr.retriever.modeling import DualEncoder
    from retr.retriever.training.collator import SupervisedCollator, doc_key

    examples = as_pairs(examples_from_beir(load_beir(tiny_beir, "test")))
    q2 = [i for i, e in enumerate(examples) if e.query_id == "q2"]
    assert len(q2) == 2 and examples[q2[0]].known_positives == ["d2", "d4"]
    batch = SupervisedCollator(DualEncoder.from_pretrained(tiny_model_dir), examples, n_negatives=0)(q2, 0)
    assert set(batch["passage_keys"].tolist()) == {doc_key("d2"), doc_key("d4")}
    assert set(batch["positive_keys"][0].tolist()) - {-1} == {doc_key("d2"), doc_key("d4")}


def test_b3_training_end_to_end(tmp_path, tiny_beir, tiny_model_dir):
    from retr.retriever.training.arguments import TrainConfig
    from retr.retriever.training.driver import build_trainer

    cfg = TrainConfig(output_dir=str(tmp_path / "run"), model=str(tiny_model_dir), train_data=[str(tiny_beir)],
                      train_split="test", batch_size=4, max_steps=2, batching="b3", b3_teacher=str(tiny_model_dir),
                      b3_p=1, b3_m=3, b3_cluster_size=2, b3_cache=str(tmp_path / "cache"), pairs=True,
                      grad_cache=True, gc_query_chunk=2, gc_passage_chunk=3, save_steps=0)
    trainer = build_trainer(cfg)
    assert isinstance(trainer.sampler, B3BatchSampler)
    assert trainer.train()["steps"] == 2
    assert len(list((tmp_path / "cache").glob("b3-*.json"))) == 1


def test_teacher_represents_a_multi_positive_example_by_its_mean_positive(tmp_path, tiny_model_dir):
    """The collator draws one of a query's positives at random, so mining ranks by the expected similarity."""
    from retr.retriever.modeling import DualEncoder
    from retr.retriever.training.driver import _teacher_embeddings

    teacher = DualEncoder.from_pretrained(tiny_model_dir)
    positives = [["red apples", "green pears", "blue plums"], ["green pears"]]
    emb = _teacher_embeddings(teacher, ["fruit", "pears"], positives, str(tmp_path), {"k": 1})
    each = teacher.encode_passages(positives[0], show_progress=False)
    assert emb["p"].dtype == np.float32 and emb["p"].shape == (2, each.shape[1])
    np.testing.assert_allclose(emb["p"][0], each.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(emb["p"][1], each[1], rtol=1e-5, atol=1e-6)
    again = _teacher_embeddings(teacher, ["x"], [["y"]], str(tmp_path), {"k": 1})  # same key: from the cache
    np.testing.assert_array_equal(again["p"], emb["p"])


def test_default_b3_cache_lives_under_retr_cache_dir(tmp_path, tiny_beir, tiny_model_dir, monkeypatch):
    """Without --b3-cache the clusters go under $RETR_CACHE_DIR/b3 (like the corpus and token caches), not
    into the user's ~/.cache."""
    from retr.retriever.training.arguments import TrainConfig
    from retr.retriever.training.driver import build_trainer

    monkeypatch.setenv("RETR_CACHE_DIR", str(tmp_path / "root"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    cfg = TrainConfig(output_dir=str(tmp_path / "run"), model=str(tiny_model_dir), train_data=[str(tiny_beir)],
                      train_split="test", batch_size=4, max_steps=1, batching="b3", b3_teacher=str(tiny_model_dir),
                      b3_p=1, b3_m=3, b3_cluster_size=2, pairs=True, save_steps=0)
    build_trainer(cfg)
    assert len(list((tmp_path / "root" / "b3").glob("b3-*.json"))) == 1
    assert not (tmp_path / "xdg").exists()
