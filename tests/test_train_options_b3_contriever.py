"""`retr train` B3 and Contriever options checked by their result (issue 18), through the CLI.

B3: with ``--lr 0`` the model does not move, so every logged loss is InfoNCE of the starting model on the batch
the trainer took; recomputed here from the mined clusters in the ``--b3-cache`` file, it shows which examples
trained together (B3 batches, not random ones; whole clusters; each query's B3++ cluster negatives in its
group). The cached graph statistics are recounted from the teacher's own embeddings (``--b3-teacher``,
``--b3-p``, ``--b3-m``, ``--b3-mutual-edges``, ``--b3-sibling-exclusion``), the clusters re-mined with the same
settings (``--b3-algorithm``, ``--b3-cluster-size``, ``--b3-exact-k``), and a hand-edited cache file is what the
next run trains on. ``--b3-clusters-per-batch`` changes no batch here (with exact K and batch = c x K, batches
cut end to end are whole clusters anyway): it shows by refusing a cache edited to uneven clusters.

Contriever: the number of steps of one epoch is the number of chunks (``--chunking``, ``--chunk-length``,
counted here from the tokenizer); the crops' token counts logged in ``train_log.jsonl`` follow
``--ratio-min/--ratio-max`` and ``--deletion-prob``; the checkpoints' task state holds the MoCo key encoder
(``m * old + (1 - m) * new`` under ``--momentum``) and the queue (``--queue-size``, ``--queue-init``)."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_tiny_bert, one_line_error, run_cli, write_beir
from retr.retriever.data.training import join_title_text
from retr.retriever.losses.infonce import InfoNCELoss
from retr.retriever.modeling import DualEncoder
from retr.retriever.training.b3 import B3BatchSampler, B3Config, mine_b3
from retr.retriever.training.collator import doc_key
from retr.retriever.training.samplers import RandomBatchSampler

WORDS = ("aspirin heart statin bone sleep salt lung cancer diet sugar insulin kidney fever virus gene blood "
         "liver brain skin cell protein drug trial risk").split()
N = 24  # training queries; q0 and q1 judge the same document (siblings), all others one document each


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("b3-contriever")
    rng = np.random.default_rng(11)
    docs = [(f"d{i}", "", " ".join(rng.choice(WORDS, 8))) for i in range(N + 8)]
    queries = [(f"q{i}", " ".join(rng.choice(WORDS, 3))) for i in range(N)]
    qrels = [("q0", "d0", 1)] + [(f"q{i}", f"d{i}", 1) for i in range(1, N)]
    qrels[1] = ("q1", "d0", 1)  # q1 shares q0's positive
    data = write_beir(root / "beir", docs, queries, qrels)
    (data / "qrels" / "train.tsv").write_text((data / "qrels" / "test.tsv").read_text())
    text = {d: join_title_text(t, x, " ") for d, t, x in docs}
    examples = [(q, dict(queries)[q], d) for q, d, _ in qrels]  # training examples in qrels order
    # corpus for Contriever: one text per line of 8..16 words (8..31 tokens)
    lines = [" ".join(rng.choice(WORDS, int(rng.integers(8, 17)))) for _ in range(40)]
    (root / "corpus.txt").write_text("\n".join(lines) + "\n")
    return {"root": root, "data": data, "examples": examples, "text": text, "corpus": root / "corpus.txt",
            "lines": lines,
            "student": make_tiny_bert(root / "student", seed=3, dropout=0.0, normalize=False),
            "teacher": make_tiny_bert(root / "teacher", seed=8, dropout=0.0)}


def _train(world, name, *extra):
    out = world["root"] / name
    args = ["train", "-o", out, "--save-steps", "0", "--logging-steps", "1", "--precision", "fp32", "--seed", "5",
            *map(str, extra)]
    code, _, err = run_cli(args, world["capsys"])
    assert code == 0, err
    return out, [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


@pytest.fixture
def w(world, capsys):
    return {**world, "capsys": capsys}


# ---------- B3 ----------
def _b3(w, name, *extra, cache: Path | None = None):
    cache = cache or w["root"] / f"cache-{name}"
    out, log = _train(w, name, "-m", w["student"], "-d", w["data"], "--split", "train", "--batching", "b3",
                      "--b3-teacher", w["teacher"], "--b3-cache", cache, "--lr", "0", "--epochs", "1", *extra)
    (mined,) = cache.glob("b3-*.json")
    return log, mined, json.loads(mined.read_text())


def _expected_losses(w, batches, negatives=None, temperature=0.05):
    """InfoNCE of the starting student on each batch: query i's group is its positive, then the positives of
    its cluster-negative examples; judged positives of a query elsewhere in the batch are masked."""
    model = DualEncoder.from_pretrained(w["student"])
    ex, text = w["examples"], w["text"]
    out = []
    for batch in batches:
        groups = [[ex[i][2]] + [ex[j][2] for j in (negatives[i] if negatives else [])] for i in batch]
        assert len({len(g) for g in groups}) == 1
        q = torch.tensor(model.encode_queries([ex[i][1] for i in batch], show_progress=False))
        p = torch.tensor(model.encode_passages([text[d] for g in groups for d in g], show_progress=False))
        known = torch.tensor([[doc_key(ex[i][2])] for i in batch])
        keys = torch.tensor([doc_key(d) for g in groups for d in g])
        out.append(float(InfoNCELoss(temperature)(q, p, known, keys)))
    return out


def _teacher_embeddings(w):
    teacher = DualEncoder.from_pretrained(w["teacher"])
    q = teacher.encode_queries([e[1] for e in w["examples"]], show_progress=False)
    p = teacher.encode_passages([w["text"][e[2]] for e in w["examples"]], show_progress=False)
    return q.astype(np.float32), p.astype(np.float32)


SIBLINGS = {0: [1], 1: [0]}


def _windows(q, p, rank_p, m):
    """Directed edges (i, j): j's positive ranks p+1..p+m for query i among the other examples, siblings skipped
    (an independent recount of the mined graph)."""
    sims = q @ p.T
    edges = set()
    for i in range(len(q)):
        others = [j for j in np.argsort(-sims[i], kind="stable") if j != i and j not in SIBLINGS.get(i, [])]
        edges |= {(i, int(j)) for j in others[rank_p:rank_p + m]}
    return edges


def test_b3_mining_options_and_batches_are_the_cached_clusters(w):
    p, m, k = 15, 10, 5  # p + m reaches past the 23 other examples: siblings visibly lose an edge
    args = ["--b3-p", p, "--b3-m", m, "--b3-cluster-size", k, "--b3-algorithm", "leiden", "--b3-sibling-exclusion",
            "--batch-size", 8, "--train-negatives", 0]  # no hard negatives: a query's group is its positive
    log, mined, cache = _b3(w, "b3-leiden", *args)
    assert mined.parent == w["root"] / "cache-b3-leiden" and list(mined.parent.glob("b3-emb-*.npz"))
    # --b3-p/--b3-m/--b3-sibling-exclusion: each example keeps ranks p+1.. of its other (non-sibling) examples
    assert cache["stats"]["edges"] == (N - 2) * min(m, N - 1 - p) + 2 * min(m, N - 2 - p) == 190
    # --b3-teacher/--b3-algorithm/--b3-cluster-size: the clusters are leiden's on the teacher's windows
    q, emb = _teacher_embeddings(w)
    exclude = lambda i: np.asarray(SIBLINGS.get(i, []), np.int64)
    mine = lambda q, emb, algorithm: mine_b3(q, emb, B3Config(p=p, m=m, cluster_size=k, algorithm=algorithm,
                                                              seed=5, sibling_exclusion=True),
                                             groups=[e[0] for e in w["examples"]], exclude=exclude)[0]
    clusters = cache["clusters"]
    assert clusters == mine(q, emb, "leiden") != mine(q, emb, "metis")
    student = DualEncoder.from_pretrained(w["student"])
    as_student = mine(student.encode_queries([e[1] for e in w["examples"]], show_progress=False),
                      student.encode_passages([w["text"][e[2]] for e in w["examples"]], show_progress=False), "leiden")
    assert clusters != as_student
    assert sorted(i for c in clusters for i in c) == list(range(N)) and max(map(len, clusters)) <= k
    # --batching b3: the 3 steps trained on the sampler's batches of those clusters, not on random batches
    b3_batches = B3BatchSampler(clusters, 8, seed=5).batches(0)
    losses = [r["loss"] for r in log]
    assert losses == pytest.approx(_expected_losses(w, b3_batches), rel=1e-4, abs=1e-5)
    random = _expected_losses(w, RandomBatchSampler(N, 8, seed=5).batches(0))
    assert losses != pytest.approx(random, rel=1e-3)

    # --b3-cache is read: a run with the same settings trains on whatever clusters the cache file holds
    hand = [list(range(s, N, k)) for s in range(k)]  # [0, 5, 10, ...], [1, 6, 11, ...], ...
    assert sorted(map(sorted, hand)) != sorted(map(sorted, clusters))
    cache["clusters"] = hand
    mined.write_text(json.dumps(cache))
    log, again, _ = _b3(w, "b3-edited", *args, cache=mined.parent)
    assert again == mined  # the same key: no new mining
    expected = _expected_losses(w, B3BatchSampler(hand, 8, seed=5).batches(0))
    assert [r["loss"] for r in log] == pytest.approx(expected, rel=1e-4, abs=1e-5)


def test_b3_authors_options_whole_clusters_and_cluster_negatives(w):
    p, m, k = 2, 6, 5
    args = ["--b3-p", p, "--b3-m", m, "--b3-cluster-size", k, "--b3-exact-k", "--b3-clusters-per-batch", 2,
            "--batch-size", 10, "--b3-mutual-edges", "--b3-cluster-negatives", 2, "--train-negatives", 2,
            "--b3-sibling-exclusion"]
    log, mined, cache = _b3(w, "b3-authors", *args)
    q, emb = _teacher_embeddings(w)
    window = _windows(q, emb, p, m)
    # --b3-p/--b3-m: every example has m edges; --b3-mutual-edges: the reciprocated ones are what was kept
    assert cache["stats"]["edges"] == len(window) == N * m
    assert cache["stats"]["mutual_edges"] == sum(1 for i, j in window if (j, i) in window) < N * m
    # --b3-exact-k: clusters of exactly K covering every example (24 is no multiple of 5)
    clusters = cache["clusters"]
    assert all(len(c) == k for c in clusters) and {i for c in clusters for i in c} == set(range(N))
    # --b3-cluster-negatives: 2 per example, none from its own cluster, never its sibling
    negatives = cache["negatives"]
    assert all(len(n) == 2 for n in negatives)
    for i, n in enumerate(negatives):
        assert not set(n) & {j for c in clusters if i in c for j in c} and not set(n) & set(SIBLINGS.get(i, []))
    # --b3-clusters-per-batch 2: each step trained on two whole clusters, each query with its cluster negatives
    batches = B3BatchSampler(clusters, 10, seed=5, clusters_per_batch=2).batches(0)
    assert len(log) == len(batches) == 2
    for b in batches:
        assert any(sorted(b) == sorted(a + c) for a, c in itertools.combinations(clusters, 2))
    losses = [r["loss"] for r in log]
    assert losses == pytest.approx(_expected_losses(w, batches, negatives), rel=1e-4, abs=1e-5)
    assert losses != pytest.approx(_expected_losses(w, batches), rel=1e-3)  # the negatives were in the groups
    # With exact K and batch = 2 x K, batches cut end to end are whole clusters too: what shows that
    # --b3-clusters-per-batch reaches the sampler is its refusal of clusters of another size (a cache edited so)
    cache["clusters"][1].append(cache["clusters"][0].pop())
    mined.write_text(json.dumps(cache))
    code, _, err = run_cli(["train", "-o", w["root"] / "b3-uneven", "-m", w["student"], "-d", w["data"], "--split",
                            "train", "--batching", "b3", "--b3-teacher", w["teacher"], "--b3-cache", mined.parent,
                            "--seed", "5", *map(str, args)], w["capsys"])  # the same cache key
    assert code == 2 and "needs clusters of exactly 5" in one_line_error(err)


# ---------- Contriever ----------
def _tokens_per_line(w) -> list[int]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(w["student"])
    return [len(tok(line, add_special_tokens=False)["input_ids"]) for line in w["lines"]]


def _unsup(w, name, *extra):
    return _train(w, name, "--mode", "unsupervised", "-m", w["student"], "-d", w["corpus"], "--token-cache",
                  w["root"] / "tokens", "--batch-size", 4, *extra)


def test_stream_chunks_and_crop_ratio(w):
    lengths = _tokens_per_line(w)
    total, length = sum(lengths), 32
    chunks = (total - min(length - 1, total - length)) // length  # Contriever: full chunks from a random offset
    _, log = _unsup(w, "stream", "--in-batch", "--chunking", "stream", "--chunk-length", length, "--ratio-min",
                    0.75, "--ratio-max", 0.75, "--deletion-prob", 0, "--epochs", 1)
    assert len(log) == chunks // 4
    assert all(r["crop_tokens_min"] == r["crop_tokens_max"] == 24 for r in log)  # int(0.75 x 32), every crop


def test_document_chunks_whole_documents(w):
    lengths = _tokens_per_line(w)
    assert max(lengths) < 32 and min(lengths) >= 8  # every document is one chunk
    _, log = _unsup(w, "document", "--in-batch", "--chunking", "document", "--chunk-length", 32, "--ratio-min",
                    1, "--ratio-max", 1, "--deletion-prob", 0, "--epochs", 1)
    assert len(log) == len(lengths) // 4 == 10  # one chunk per document: every document once
    assert np.mean([r["crop_tokens_mean"] for r in log]) == pytest.approx(np.mean(lengths))
    assert min(r["crop_tokens_min"] for r in log) == min(lengths)
    assert max(r["crop_tokens_max"] for r in log) == max(lengths)


def _task(run: Path, step: int) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run / "checkpoints" / f"step-{step}" / "task.safetensors")


def _model_weights(path: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in DualEncoder.from_pretrained(path).query_encoder.state_dict().items()
            if v.is_floating_point()}


def _key_encoder(task: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    prefix = "key_encoder.encoder."
    return {k[len(prefix):]: v for k, v in task.items() if k.startswith(prefix)}


def test_moco_momentum_queue_and_deletion(w):
    run, log = _unsup(w, "moco-random", "--moco", "--queue-size", 50, "--queue-init", "random", "--momentum", 0.5,
                      "--chunking", "stream", "--chunk-length", 32, "--ratio-min", 1, "--ratio-max", 1,
                      "--deletion-prob", 0.3, "--max-steps", 3, "--save-steps", 1, "--lr", "1e-2",
                      "--warmup-ratio", 0)
    # --deletion-prob 0.3 on whole 32-token chunks: about 70% of each crop's tokens kept
    kept = np.mean([r["crop_tokens_mean"] for r in log]) / 32
    assert kept == pytest.approx(0.7, abs=0.06) and max(r["crop_tokens_max"] for r in log) <= 32
    start = _model_weights(w["student"])
    first, second = _task(run, 1), _task(run, 2)
    theta1 = _model_weights(run / "checkpoints" / "step-1" / "model")
    key1, key2 = _key_encoder(first), _key_encoder(second)
    assert key1.keys() == start.keys() and len(key1) > 10
    for name, old in start.items():
        torch.testing.assert_close(key1[name], old)  # step 1 updates the key encoder towards the same weights
        # step 2: key <- m * key + (1 - m) * online, the online weights being those after step 1
        torch.testing.assert_close(key2[name], 0.5 * old + 0.5 * theta1[name], rtol=1e-5, atol=1e-6)
    assert any(not torch.allclose(theta1[n], start[n]) for n in start)  # the online encoder did move
    # --queue-size 50, --queue-init random: a full queue of unit vectors, the 4 oldest replaced by step 1's keys
    queue = first["loss.queue"]
    assert queue.shape == (50, 32) and int(first["loss.queue_len"]) == 50 and int(first["loss.queue_ptr"]) == 4
    torch.testing.assert_close(queue[4:].norm(dim=1), torch.ones(46))
    assert not torch.allclose(queue[:4].norm(dim=1), torch.ones(4))  # keys of a non-normalising model
    assert int(second["loss.queue_ptr"]) == 8  # step 2's keys went to rows 4..7, the random rows after stay
    torch.testing.assert_close(second["loss.queue"][8:], queue[8:])
    assert not torch.allclose(second["loss.queue"][4:8], queue[4:8])


def test_moco_empty_queue_fills_with_keys(w):
    run, _ = _unsup(w, "moco-empty", "--moco", "--queue-size", 50, "--queue-init", "empty", "--chunking", "stream",
                    "--chunk-length", 32, "--max-steps", 2, "--save-steps", 1)
    task = _task(run, 1)
    queue = task["loss.queue"]
    assert queue.shape == (50, 32) and int(task["loss.queue_len"]) == 4 and int(task["loss.queue_ptr"]) == 4
    assert bool((queue[4:] == 0).all()) and bool((queue[:4].norm(dim=1) > 0).all())
