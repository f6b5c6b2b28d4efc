"""Issue 21: the B3 authors' construction. Mutual edges are exactly the reciprocated window pairs; exact K gives
clusters of exactly K covering every example; whole-cluster batches are unions of whole clusters; B3++ cluster
negatives never take a member, a member's own group or a top-p-guarded candidate, and favour frequent ones;
sibling exclusion keeps queries sharing a judged positive out of each other's windows; and the CLI options
change what is mined and trained (checked in the mined cache and the batches)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import one_line_error, run_cli, write_beir
from retr.retriever.data.training import Passage, TrainExample
from retr.retriever.training.b3 import B3BatchSampler, B3Config, mine_b3, mine_clusters, rank_window_edges
from retr.retriever.training.b3_authors import ClusterNegativeExamples, cluster_negatives, exact_k, mutual_edges


@pytest.fixture(scope="module")
def topics():
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((20, 24))
    topic = np.repeat(np.arange(20), 30)  # 600 examples: not a multiple of 32
    q = centres[topic] + 0.6 * rng.standard_normal((600, 24))
    p = centres[topic] + 0.6 * rng.standard_normal((600, 24))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    p /= np.linalg.norm(p, axis=1, keepdims=True)
    return q.astype(np.float32), p.astype(np.float32)


def test_mutual_edges_are_exactly_the_reciprocated_pairs():
    rng = np.random.default_rng(0)
    edges = rng.integers(0, 40, (500, 2)).astype(np.int32)
    pairs = {tuple(e) for e in edges.tolist()}
    kept = mutual_edges(edges, 40, block=37)  # several lookup blocks
    assert [tuple(e) for e in kept.tolist()] == [tuple(e) for e in edges.tolist() if (e[1], e[0]) in pairs]
    assert 0 < len(kept) < len(edges)


def test_mutual_graph_keeps_only_reciprocated_window_edges(topics):
    q, p = topics
    window = rank_window_edges(q, p, p=5, m=20)
    both = {tuple(e) for e in window.tolist()}
    expected = sum(1 for i, j in both if (j, i) in both)
    _, stats, _ = mine_b3(q, p, B3Config(p=5, m=20, mutual_edges=True))
    assert stats["edges"] == len(window) and stats["mutual_edges"] == expected < len(window)


def test_exact_k_from_uneven_parts():
    rng = np.random.default_rng(0)
    ids = rng.permutation(203).tolist()
    parts, s = [], 0
    for size in (60, 3, 41, 17, 32, 9, 30, 11):  # 203 examples in uneven parts
        parts.append(ids[s:s + size])
        s += size
    out = exact_k(parts, 16, seed=3)
    flat = [i for c in out for i in c]
    assert all(len(c) == 16 and len(set(c)) == 16 for c in out)
    assert set(flat) == set(range(203)) and len(out) == 13  # ceil(203 / 16)
    assert len(flat) - len(set(flat)) == 16 * 13 - 203  # only the top-up repeats an example
    # the largest part keeps its first K members together
    assert parts[0][:16] in out


@pytest.mark.parametrize("algorithm", ["metis", "leiden"])
def test_mined_clusters_have_exactly_k(topics, algorithm):
    q, p = topics
    clusters, _ = mine_clusters(q, p, B3Config(p=2, m=20, cluster_size=32, algorithm=algorithm, exact_k=True))
    assert all(len(c) == 32 for c in clusters)
    assert {i for c in clusters for i in c} == set(range(600))
    loose, _ = mine_clusters(q, p, B3Config(p=2, m=20, cluster_size=32, algorithm=algorithm))
    assert any(len(c) != 32 for c in loose)  # without it sizes vary (600 is no multiple of 32)


def test_whole_cluster_batches(topics):
    q, p = topics
    clusters, _ = mine_clusters(q, p, B3Config(p=2, m=20, cluster_size=16, exact_k=True))
    sampler = B3BatchSampler(clusters, 48, seed=1, clusters_per_batch=3)
    assert len(sampler) == len(clusters) // 3
    as_sets = [frozenset(c) for c in clusters]
    for epoch in (0, 1):
        batches = sampler.batches(epoch)
        assert len(batches) == len(sampler) and all(len(b) == 48 for b in batches)
        for b in batches:  # three whole clusters, no pieces
            assert sum(1 for c in as_sets if c <= set(b)) == 3
    assert sampler.batches(0) != sampler.batches(1)
    with pytest.raises(ValueError, match="exactly 16"):
        B3BatchSampler([c[:15] for c in clusters], 48, clusters_per_batch=3)
    with pytest.raises(ValueError, match="does not divide"):
        B3BatchSampler(clusters, 50, clusters_per_batch=3)


def test_cluster_negatives_guard_and_weighting():
    # cluster {0, 1, 2}; p = 1: rank 1 of each member is its top p
    ranks = np.array([[5, 6, 7, 3], [5, 6, 8, 2], [5, 7, 9, 1]] + [[-1] * 4] * 7, np.int32)
    drawn = {j: 0 for j in range(10)}
    for seed in range(300):
        neg = cluster_negatives(ranks, [[0, 1, 2]], 1, p=1, seed=seed)
        for i in (0, 1, 2):
            assert len(neg[i]) == 1
            drawn[neg[i][0]] += 1
        assert len({neg[i][0] for i in (0, 1, 2)}) == 3  # without replacement over the cluster
    assert drawn[5] == 0  # in every member's top p: count 3 - 2 x 3 < 0
    assert drawn[0] == drawn[1] == drawn[2] == 0  # members (1 and 2 are ranked by others) are never drawn
    assert min(drawn[6], drawn[7]) > max(drawn[3], drawn[8], drawn[9]) > 0  # count 2 beats count 1


def test_cluster_negatives_skip_excluded_examples():
    ranks = np.array([[4, 5, 6], [4, 5, 6]] + [[-1] * 3] * 5, np.int32)
    neg = cluster_negatives(ranks, [[0, 1]], 2, p=0, seed=0, exclude=lambda i: np.array([4] if i == 0 else []))
    assert sorted(neg[0]) == [5, 6] and len(neg[1]) == 2


def test_cluster_negatives_skip_own_group_and_reuse_a_short_pool():
    ranks = np.array([[4, 5], [4, 5], [0, 1], [0, 1], [0, 1], [0, 1]], np.int32)
    groups = np.array([0, 0, 1, 2, 0, 3])  # example 4 is a pair of example 0's query
    neg = cluster_negatives(ranks, [[0, 1]], 2, p=0, seed=0, groups=groups)
    assert neg[0] == [5] and neg[1] == [5]  # 4 is their own query's pair; the one candidate serves both
    neg = cluster_negatives(ranks, [[2, 3]], 2, p=0, seed=0, groups=groups)
    assert sorted(neg[2]) == sorted(neg[3]) == [0, 1]


def _example(qid, pos, negs=()):
    return TrainExample(qid, f"query {qid}", [Passage(d, "", f"text {d}") for d in pos],
                        [Passage(d, "", f"text {d}") for d in negs])


def test_cluster_negative_examples_use_their_positives():
    ex = [_example("a", ["d1"], ["x"]), _example("b", ["d2", "d3"]), _example("c", ["d1"])]
    wrapped = ClusterNegativeExamples(ex, [[1, 2], [0], []], seed=0)
    assert len(wrapped[0].negatives) == 1 and wrapped[0].negatives[0].docid in ("d2", "d3")  # c's d1 is a's own
    assert [p.docid for p in wrapped[1].negatives] == ["d1"] and wrapped[2].negatives == []
    assert wrapped[0].positives == ex[0].positives and len(wrapped) == 3


def test_sibling_exclusion_keeps_sharing_queries_out_of_windows(topics):
    from retr.retriever.training.driver import sibling_exclusion

    ex = [_example("q1", ["d1"]), _example("q2", ["d1", "d2"]), _example("q3", ["d3"]), _example("q4", ["d2"])]
    exclude = sibling_exclusion(ex)
    assert sorted(exclude(0).tolist()) == [1] and sorted(exclude(1).tolist()) == [0, 3]
    assert exclude(2).tolist() == []
    q, p = topics
    banned = {i: np.arange(i + 1, i + 40) % 600 for i in range(600)}  # the 39 next examples share a positive
    edges, ranks = rank_window_edges(q, p, p=3, m=10, exclude=lambda i: banned[i], keep_ranks=True)
    plain = rank_window_edges(q, p, p=3, m=10)
    assert not any(j in set(banned[i].tolist()) for i, j in edges.tolist())
    assert any(j in set(banned[i].tolist()) for i, j in plain.tolist())  # they would have been there
    assert ranks.shape == (600, 13) and (ranks >= 0).all()


def _synthetic_beir(path):
    rng = np.random.default_rng(5)
    words = "aspirin heart statin bone sleep salt lung cancer diet sugar insulin kidney fever virus gene".split()
    docs = [(f"d{i}", "", " ".join(rng.choice(words, 6))) for i in range(80)]
    queries = [(f"q{i}", " ".join(rng.choice(words, 3))) for i in range(40)]
    qrels = [(f"q{i}", f"d{i}", 1) for i in range(40)] + [("q0", "d1", 1)]  # q0 and q1 share d1
    write_beir(path, docs, queries, qrels)
    (path / "qrels" / "train.tsv").write_text((path / "qrels" / "test.tsv").read_text())
    return path


def test_cli_options_change_what_is_mined_and_trained(tmp_path, tiny_model_dir, capsys):
    data = _synthetic_beir(tmp_path / "data")
    base = ["train", "-o", None, "-m", tiny_model_dir, "-d", data, "--batching", "b3", "--b3-teacher",
            tiny_model_dir, "--b3-p", "1", "--b3-m", "6", "--b3-cluster-size", "8", "--b3-cache", None,
            "--batch-size", "16", "--max-steps", "2", "--save-steps", "0"]

    def mined(name, *extra):
        args = list(base)
        args[2], args[args.index("--b3-cache") + 1] = tmp_path / name, tmp_path / f"cache-{name}"
        code, _, err = run_cli(args + list(extra), capsys)
        assert code == 0, err
        (path,) = [f for f in (tmp_path / f"cache-{name}").glob("b3-*.json")]
        return json.loads(path.read_text())

    plain = mined("plain")
    authors = mined("authors", "--b3-mutual-edges", "--b3-exact-k", "--b3-clusters-per-batch", "2",
                    "--b3-cluster-negatives", "2", "--train-negatives", "2", "--b3-sibling-exclusion")
    assert authors["key"]["mutual_edges"] and authors["key"]["sibling_exclusion"] and "exact_k" not in plain["key"]
    assert all(len(c) == 8 for c in authors["clusters"]) and len(authors["clusters"]) == 5
    assert authors["stats"]["mutual_edges"] < authors["stats"]["edges"] == plain["stats"]["edges"]
    assert plain["negatives"] == [] and all(len(n) == 2 for n in authors["negatives"])
    for i, negs in enumerate(authors["negatives"]):
        cluster = next(c for c in authors["clusters"] if i in c)
        assert not set(negs) & set(cluster)
    # examples are the 40 queries in qrels order: q0 (0) and q1 (1) share d1, so neither ranks the other
    assert 1 not in authors["negatives"][0] and 0 not in authors["negatives"][1]


def test_cli_refuses_inconsistent_b3_options(tmp_path, tiny_model_dir, capsys):
    data = _synthetic_beir(tmp_path / "data")
    base = ["train", "-o", tmp_path / "run", "-m", tiny_model_dir, "-d", data, "--batching", "b3",
            "--b3-cluster-size", "8", "--batch-size", "16"]
    code, _, err = run_cli(base + ["--b3-clusters-per-batch", "2"], capsys)
    assert code == 2 and "--b3-exact-k" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(base + ["--b3-exact-k", "--b3-clusters-per-batch", "3"], capsys)
    assert code == 2 and "must equal --batch-size 16" in err and "Traceback" not in err
    # issue 21's options are never ignored: without --batching b3, cluster negatives nobody trains with, or
    # cluster negatives that would silently replace a --negatives file
    random = [a for a in base if a not in ("--batching", "b3")]
    for flags, words in ((["--b3-mutual-edges"], "--b3-mutual-edges needs --batching b3"),
                         (["--b3-sibling-exclusion"], "--b3-sibling-exclusion needs --batching b3"),
                         (["--b3-cluster-negatives", "2", "--train-negatives", "2"], "needs --batching b3")):
        code, _, err = run_cli(random + flags, capsys)
        assert code == 2 and words in one_line_error(err)
    code, _, err = run_cli(base + ["--b3-cluster-negatives", "2", "--train-negatives", "0"], capsys)
    assert code == 2 and "needs --train-negatives" in one_line_error(err)
    code, _, err = run_cli(base + ["--b3-cluster-negatives", "2", "--train-negatives", "2", "--negatives",
                                   tmp_path / "mined.jsonl"], capsys)
    assert code == 2 and "replaces the hard negatives of --negatives" in one_line_error(err)
    code, _, err = run_cli(base + ["--mode", "unsupervised"], capsys)
    assert code == 2 and "use --mode supervised or reranker" in one_line_error(err)
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_cli_refuses_b3_flags_that_would_be_ignored(tmp_path, tiny_model_dir, capsys):
    """Fresh-user check (fu21): B3 mining flags without --batching b3 were silently ignored, and
    --b3-cluster-negatives N without --train-negatives trained with the default 1 of the N (the check only saw
    --train-negatives 0). Both are one-line errors now; a config file's train_negatives counts as given. A
    --b3-cache that is a file was reported only after the teacher had encoded everything; now before the teacher
    loads (nothing here trains or encodes)."""
    data = _synthetic_beir(tmp_path / "data")
    base = ["train", "-o", tmp_path / "run", "-m", tiny_model_dir, "-d", data, "--batch-size", "8",
            "--max-steps", "1", "--save-steps", "0"]
    for flags in (["--b3-teacher", tiny_model_dir], ["--b3-p", "1"], ["--b3-m", "6"], ["--b3-cluster-size", "8"],
                  ["--b3-algorithm", "leiden"], ["--b3-cache", tmp_path / "cache"]):
        code, _, err = run_cli(base + flags, capsys)
        assert code == 2 and f"{flags[0]} needs --batching b3" in one_line_error(err)
    a_file = tmp_path / "not-a-dir"
    a_file.write_text("keep")
    b3 = base + ["--batching", "b3", "--b3-teacher", tmp_path / "no-such-teacher", "--b3-p", "1", "--b3-m", "6",
                 "--b3-cluster-size", "8", "--b3-cache", a_file, "--b3-exact-k", "--b3-clusters-per-batch", "1",
                 "--b3-cluster-negatives", "2"]
    code, _, err = run_cli(b3, capsys)
    assert code == 2 and "--b3-cluster-negatives 2 needs --train-negatives" in one_line_error(err)
    assert not (tmp_path / "run").exists()  # refused before any work
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"train_negatives": 2}))
    for given in (["--train-negatives", "2"], ["-c", config]):  # past that check: the cache is refused next
        shutil.rmtree(tmp_path / "run", ignore_errors=True)
        code, _, err = run_cli(b3 + given, capsys)
        assert code == 2 and f"--b3-cache {a_file}: cannot be a cache directory" in one_line_error(err)
    assert a_file.read_text() == "keep"


def test_trainer_batches_whole_clusters_with_cluster_negatives(tmp_path, tiny_model_dir):
    from retr.retriever.training.arguments import TrainConfig
    from retr.retriever.training.driver import build_trainer

    data = _synthetic_beir(tmp_path / "data")
    cfg = TrainConfig(output_dir=str(tmp_path / "run"), model=str(tiny_model_dir), train_data=[str(data)],
                      batch_size=16, max_steps=1, batching="b3", b3_teacher=str(tiny_model_dir), b3_p=1, b3_m=6,
                      b3_cluster_size=8, b3_cache=str(tmp_path / "cache"), b3_exact_k=True,
                      b3_clusters_per_batch=2, b3_cluster_negatives=2, train_negatives=2, save_steps=0,
                      b3_sibling_exclusion=True)  # q0 and q1 share d1: never negatives for each other
    trainer = build_trainer(cfg)
    clusters = [set(c) for c in trainer.sampler.clusters]
    for b in trainer.sampler.batches(0):
        assert sum(1 for c in clusters if c <= set(b)) == 2
    examples = trainer.collate.examples
    assert isinstance(examples, ClusterNegativeExamples)
    for i in range(len(examples)):
        negs = trainer.sampler.negatives[i]
        pool = {p.docid for j in negs for p in examples.examples[j].positives}
        got = [p.docid for p in examples[i].negatives]
        assert len(negs) == 2 and set(got) <= pool and len(got) == 2  # no negative here is i's own positive
    batch = trainer.collate(trainer.sampler.batches(0)[0], 0)
    assert batch["passage_keys"].shape[0] == 16 * 3  # positive + 2 cluster negatives per query
    assert trainer.train()["steps"] == 1


def test_long_exclusions_search_fewer_rows_at_once(topics, monkeypatch):
    """Sibling exclusion widens the search depth by the longest exclusion of a search batch (NFCorpus pairs:
    up to ~100k rows, so 4096 rows x 100k = ~5 GiB of FAISS results): rows per search shrink so rows x depth
    stays within ``max_entries``, with the same windows as one unbounded search."""
    import faiss

    from retr.retriever.training.b3 import ranked_windows

    q, p = topics
    banned = {i: np.arange(i + 1, i + 1 + (300 if i % 50 == 0 else 5)) % 600 for i in range(600)}
    calls = []

    class Recording(faiss.IndexFlatIP):
        def search(self, x, k, *args, **kwargs):
            calls.append((len(x), k))
            return super().search(x, k, *args, **kwargs)

    monkeypatch.setattr(faiss, "IndexFlatIP", Recording)
    whole = np.concatenate([r for _, r in ranked_windows(q, p, 3, 10, exclude=lambda i: banned[i],
                                                         max_entries=10**9)])
    assert calls == [(600, 314)]  # one search, as deep as the longest exclusion needs
    calls.clear()
    parts = list(ranked_windows(q, p, 3, 10, batch=256, exclude=lambda i: banned[i], max_entries=5000))
    assert all(rows * depth <= 5000 or rows == 1 for rows, depth in calls) and len(calls) > 3
    assert [s for s, _ in parts] == np.cumsum([0] + [len(r) for _, r in parts])[:-1].tolist()
    assert np.array_equal(np.concatenate([r for _, r in parts]), whole)
    assert not any(j in set(banned[i].tolist()) for i, row in enumerate(whole) for j in row.tolist())


def test_damaged_b3_caches_are_one_line_errors_naming_the_file(tmp_path, tiny_model_dir, capsys):
    """A cache file with ids beyond the data, missing cluster negatives, or a damaged teacher-embedding file
    stops the run before training with the file named (exit 2), and is left as it was."""
    data = _synthetic_beir(tmp_path / "data")
    cache = tmp_path / "cache"
    args = ["train", "-o", tmp_path / "run", "-m", tiny_model_dir, "-d", data, "--batching", "b3", "--b3-teacher",
            tiny_model_dir, "--b3-p", "1", "--b3-m", "6", "--b3-cluster-size", "8", "--b3-cache", cache,
            "--batch-size", "8", "--b3-exact-k", "--b3-clusters-per-batch", "1", "--b3-cluster-negatives", "2",
            "--train-negatives", "2", "--max-steps", "1", "--save-steps", "0"]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    (mined,) = cache.glob("b3-[0-9a-f]*.json")
    (emb,) = cache.glob("b3-emb-*.npz")
    good = json.loads(mined.read_text())
    for edit, words in ((lambda d: d["clusters"][0].__setitem__(0, 999), "cluster 0 holds 999"),
                        (lambda d: d["negatives"][3].append(-1), "cluster negatives of example 3 holds -1"),
                        (lambda d: d.__setitem__("negatives", []), "0 cluster-negative lists for 40"),
                        (lambda d: d.pop("clusters"), "no 'clusters' list")):
        bad = json.loads(json.dumps(good))
        edit(bad)
        mined.write_text(json.dumps(bad))
        code, _, err = run_cli(args, capsys)
        assert code == 2 and str(mined) in one_line_error(err) and words in one_line_error(err)
        assert json.loads(mined.read_text()) == bad  # reported, not overwritten
    mined.unlink()  # mining again needs the teacher embeddings
    emb.write_bytes(emb.read_bytes()[:200])
    code, _, err = run_cli(args, capsys)
    assert code == 2 and str(emb) in one_line_error(err) and "damaged teacher embeddings" in one_line_error(err)


def test_cached_clusters_must_cover_every_example_once_per_cluster(tmp_path):
    """Fresh-user check (fu21): a cache whose clusters leave examples out (or repeat one inside a cluster) was
    accepted, so training silently used a subset. Mining puts every example in a cluster (exact K may repeat an
    example in a *second* cluster), so either is a damaged or foreign file, named, and left as it was."""
    from retr.indexing.errors import ArtifactError
    from retr.retriever.training.b3 import cached_mining

    def load(clusters, n=4):
        cached_mining(tmp_path, {"k": 1}, lambda: (clusters, {}, []), n=None)  # written as mining would
        (path,) = tmp_path.glob("b3-*.json")
        return path, cached_mining(tmp_path, {"k": 1}, lambda: pytest.fail("mined again"), n=n)

    path, (clusters, _, _) = load([[0, 1], [2, 3], [3, 0]])  # exact K's top-up: 3 and 0 twice, fine
    assert clusters == [[0, 1], [2, 3], [3, 0]]
    for bad, words in (([[0, 1]], "2 of the 4 training examples are in no cluster (first: 2)"),
                       ([[0, 0], [1, 2, 3]], "cluster 0 holds an example twice")):
        path.unlink()
        with pytest.raises(ArtifactError, match=r"delete it to mine again") as err:
            load(bad)
        assert str(path) in str(err.value) and words in str(err.value)
        assert json.loads(path.read_text())["clusters"] == bad  # reported, not overwritten


def test_b3_grid_refuses_to_mix_runs_of_other_settings(tmp_path, monkeypatch, capsys):
    """benchmarks/b3_grid.py keys runs by train sets / variant / seed: a second call with other --steps, --lr or
    --teacher in the same --out would have printed the first call's results under the new settings."""
    import sys
    from argparse import Namespace
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "benchmarks"))
    import b3_grid

    monkeypatch.setattr("retr.retriever.data.load_beir", lambda *a, **k: None)
    monkeypatch.setattr(b3_grid, "train_and_eval", lambda train, variant, seed, args, tests: {
        "nfcorpus": 0.1 + 0.01 * seed + (0.001 * args.steps + 0.0001 * seed if variant != "random" else 0)})
    args = Namespace(out=str(tmp_path / "grid"), data=str(tmp_path), cell=["d"], seeds=[1, 2, 3], steps=10,
                     lr=5e-4, teacher=None, mined=None)
    b3_grid.run_grid(args)
    assert "+0.0102 ± 0.0001 (n=3)" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="holds runs with .*'steps': 10.* not .*'steps': 20"):
        b3_grid.run_grid(Namespace(**{**vars(args), "steps": 20}))
    b3_grid.run_grid(Namespace(**{**vars(args), "out": str(tmp_path / "grid20"), "steps": 20}))
    assert "+0.0202 ± 0.0001 (n=3)" in capsys.readouterr().out
    # the table covers the seeds asked for, not every seed cached in the same grid.json
    b3_grid.run_grid(Namespace(**{**vars(args), "seeds": [1, 2]}))
    out = capsys.readouterr().out
    assert "(n=2)" in out and "(n=3)" not in out and ">= 5 paired seeds" in out
    sys.modules.pop("b3_grid", None)
