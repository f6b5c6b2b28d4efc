"""Issue #18: the options of `retr index|search|eval|mine|encode` checked by their result, through the CLI.

References are computed here, independently of the code under test: exact inner products (or L2 distances) in
numpy on the vectors `retr encode` wrote, encodings of hand-prefixed or hand-truncated texts, and pytrec_eval on
the TREC run `retr eval` wrote. Rankings are compared up to float ties: position i must hold a document whose
exact score is the exact i-th best score, and report that score."""
from __future__ import annotations

import io
import json
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import pytrec_eval

from conftest import write_beir

N_DOCS = 300
VOCAB = ("aspirin heart statin cholesterol vitamin bone sleep obesity coffee liver salt pressure smoking lung cancer "
         "exercise mood diet sugar insulin kidney fever virus vaccine immune brain memory stress blood cell gene "
         "protein enzyme muscle skin eye ear tooth joint pain drug dose trial risk child adult elderly women men "
         "study effect cause treatment").split()


def _synthetic():
    rng = np.random.default_rng(7)
    docs = [(f"d{i}", " ".join(rng.choice(VOCAB, 2)) if i % 3 else "",
             " ".join(rng.choice(VOCAB, int(rng.integers(4, 16))))) for i in range(N_DOCS)]
    queries = [(f"q{i}", " ".join(rng.choice(VOCAB, 3))) for i in range(12)]
    qrels = [(f"q{i}", f"d{j}", g) for i in range(12) for j, g in ((2 * i, 1), (2 * i + 1, 2), (100 + i, 1))]
    return docs, queries, qrels


DOCS, QUERIES, QRELS = _synthetic()


def retr(*args) -> tuple[int, str, str]:
    """`retr ARGS` in-process: (exit code, stdout, stderr)."""
    from retr.cli.main import main

    out, err, old = io.StringIO(), io.StringIO(), sys.argv
    sys.argv = ["retr", *map(str, args)]
    code = 0
    try:
        with redirect_stdout(out), redirect_stderr(err):
            main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = old
    return code, out.getvalue(), err.getvalue()


def ok(*args) -> str:
    code, out, err = retr(*args)
    assert code == 0, err[-3000:]
    return out + err


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_model_dir):
    """A 300-document corpus, its `retr encode` vectors X, and the queries encoded by the library (Q)."""
    from retr.indexing.shards import load_shards
    from retr.retriever.modeling import DualEncoder

    root = tmp_path_factory.mktemp("options")
    data = write_beir(root / "c", docs=DOCS, queries=QUERIES, qrels=QRELS)
    ok("encode", "-m", tiny_model_dir, "-d", data, "-o", root / "emb")
    vectors, ids, _ = load_shards(root / "emb")
    enc = DualEncoder.from_pretrained(tiny_model_dir)
    Q = enc.encode_queries([t for _, t in QUERIES])
    return SimpleNamespace(root=root, data=data, model=tiny_model_dir, emb=root / "emb", X=np.asarray(vectors),
                           ids=ids, Q=Q, enc=enc, row={d: i for i, d in enumerate(ids)})


def search(world, index: Path, *extra, k: int = 10) -> dict[str, list[tuple[str, float]]]:
    out = index.parent / f"{index.name}-hits-{abs(hash(extra)) % 10**8}-{k}.json"
    ok("search", "-i", index, "--queries", world.data / "queries.jsonl", "-k", k, "-o", out, *extra)
    return {q: [(h["docid"], h["score"]) for h in hits] for q, hits in json.loads(out.read_text()).items()}


def exact_scores(world, X=None, Q=None, metric: str = "ip") -> np.ndarray:
    """[queries, docs] exact scores in float64, higher is better (minus the squared distance for l2)."""
    X = (world.X if X is None else X).astype(np.float64)
    Q = (world.Q if Q is None else Q).astype(np.float64)
    if metric == "l2":
        return -((Q[:, None, :] - X[None, :, :]) ** 2).sum(-1)
    return Q @ X.T


def assert_exact(world, hits, k: int, scores=None, atol: float = 1e-5) -> None:
    """Each query's hits are the exact top k (up to float ties) with their exact scores."""
    scores = exact_scores(world) if scores is None else scores
    for i, (qid, _) in enumerate(QUERIES):
        got = hits[qid]
        assert len(got) == min(k, N_DOCS) and len({d for d, _ in got}) == len(got)
        of_got = scores[i, [world.row[d] for d, _ in got]]
        best = np.sort(scores[i])[::-1][:len(got)]
        np.testing.assert_allclose(of_got, best, atol=atol, err_msg=f"{qid}: not the exact top {k}")
        np.testing.assert_allclose([s for _, s in got], of_got, atol=atol, rtol=1e-4, err_msg=f"{qid}: scores")


def recall(world, hits, k: int, scores=None) -> float:
    scores = exact_scores(world) if scores is None else scores
    ref = [{world.ids[j] for j in np.argsort(-scores[i])[:k]} for i in range(len(QUERIES))]
    return float(np.mean([len(ref[i] & {d for d, _ in hits[q]}) / k for i, (q, _) in enumerate(QUERIES)]))


# ---------- retr index: --index-type and its parameters, --metric, --store-vectors; retr search: -k, --rescore ----------
@pytest.mark.parametrize("args,factory,search_args,exact", [
    ([], "Flat", [], True),
    (["-t", "ivf", "--nlist", "4", "--nprobe", "4", "--train-sample", "200"], "IVF4,Flat", [], True),
    (["-t", "IVF4,Flat", "--nprobe", "4"], "IVF4,Flat", [], True),
    (["-t", "hnsw", "--hnsw-m", "16", "--ef-construction", "100", "--ef-search", "300"], "HNSW16,Flat", [], None),
    (["-t", "sq8"], "SQ8", [], None),
    (["-t", "pq", "--pq-m", "8", "--pq-bits", "4", "--store-vectors"], "PQ8x4", ["--rescore", N_DOCS], True),
    (["-t", "ivfpq", "--nlist", "4", "--nprobe", "4", "--pq-m", "8", "--pq-bits", "4", "--store-vectors"],
     "IVF4,PQ8x4", ["--rescore", N_DOCS], True),
], ids=["flat", "ivf", "factory-string", "hnsw", "sq8", "pq-rescore", "ivfpq-rescore"])
def test_index_types_rank_like_exact_inner_product(world, args, factory, search_args, exact):
    idx = world.root / f"idx-{factory.replace(',', '_')}"
    ok("index", "--from-embeddings", world.emb, "-o", idx, *args)
    meta = json.loads((idx / "meta.json").read_text())
    assert meta["factory"] == factory and meta["count"] == N_DOCS and meta["metric"] == "ip"
    given = dict(zip(args[::2], args[1::2]))
    for flag in ("--nlist", "--nprobe", "--hnsw-m", "--ef-construction", "--ef-search", "--pq-m", "--pq-bits",
                 "--train-sample"):
        if flag in given:  # every tuning flag given is recorded
            assert meta["params"][flag[2:].replace("-", "_")] == int(given[flag]), flag
    assert (idx / "vectors.npy").exists() == ("--store-vectors" in args)
    hits = search(world, idx, *search_args, k=10)
    if exact:
        assert_exact(world, hits, 10)
    elif factory.startswith("HNSW"):
        assert recall(world, hits, 10) >= 0.95
    else:  # SQ8: 8-bit codes; scores close to exact, ranking nearly so
        scores = exact_scores(world)
        for i, (qid, _) in enumerate(QUERIES):
            np.testing.assert_allclose([s for _, s in hits[qid]], scores[i, [world.row[d] for d, _ in hits[qid]]],
                                       atol=0.05)
        assert recall(world, hits, 10) >= 0.5
    if search_args:  # without --rescore the PQ codes' approximate scores come back instead
        plain = search(world, idx, k=10)
        assert [s for _, s in plain["q0"]] != [s for _, s in hits["q0"]]


def test_search_k_returns_the_whole_exact_ranking(world):
    idx = world.root / "idx-Flat"
    if not idx.exists():
        ok("index", "--from-embeddings", world.emb, "-o", idx)
    for k in (1, 37, N_DOCS + 50):  # more than the corpus: all of it
        assert_exact(world, search(world, idx, k=k), k)


def test_nprobe_at_search_time_changes_what_is_visited(world):
    idx = world.root / "ivf8"
    ok("index", "--from-embeddings", world.emb, "-o", idx, "-t", "ivf", "--nlist", "8", "--nprobe", "1")
    assert json.loads((idx / "meta.json").read_text())["params"]["nprobe"] == 1
    one = search(world, idx, k=N_DOCS)  # one list visited: only that list's documents come back
    assert all(len(h) < N_DOCS for h in one.values())
    assert_exact(world, search(world, idx, "--nprobe", "8", k=N_DOCS), N_DOCS)  # every list: exact


def test_ef_search_at_search_time(world):
    """A sparse graph searched with the stored efSearch (1: FAISS then uses k) against --ef-search 300."""
    idx = world.root / "hnsw4"
    ok("index", "--from-embeddings", world.emb, "-o", idx, "-t", "hnsw", "--hnsw-m", "4", "--ef-construction", "8",
       "--ef-search", "1")
    assert json.loads((idx / "meta.json").read_text())["params"]["ef_search"] == 1
    narrow, wide = search(world, idx, k=10), search(world, idx, "--ef-search", str(N_DOCS), k=10)
    assert recall(world, wide, 10) >= 0.8 and recall(world, wide, 10) > recall(world, narrow, 10) + 0.3  # ~0.92, ~0.1


# ---------- --metric l2 (retr index) through retr search and retr eval ----------
@pytest.fixture(scope="module")
def raw(world):
    """`retr encode --no-normalize` vectors and an l2 index of them: L2 and inner-product rankings differ."""
    from retr.indexing.shards import load_shards

    ok("encode", "-m", world.model, "-d", world.data, "-o", world.root / "emb-raw", "--no-normalize")
    X = np.asarray(load_shards(world.root / "emb-raw")[0])
    assert not np.allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-3)
    ok("index", "--from-embeddings", world.root / "emb-raw", "-o", world.root / "l2", "--metric", "l2")
    Q = world.enc.__class__.from_pretrained(world.model, normalize=False).encode_queries([t for _, t in QUERIES])
    return SimpleNamespace(X=X, Q=Q, index=world.root / "l2")


def test_metric_l2_ranks_by_euclidean_distance(world, raw):
    assert json.loads((raw.index / "meta.json").read_text())["encoder"]["normalize"] is False
    hits = search(world, raw.index, k=20)
    l2 = exact_scores(world, raw.X, raw.Q, "l2")
    assert_exact(world, hits, 20, scores=l2, atol=1e-4)  # scores are minus squared distances: higher is nearer
    ip = exact_scores(world, raw.X, raw.Q)
    assert any([d for d, _ in hits[q]] != [world.ids[j] for j in np.argsort(-ip[i])[:20]]
               for i, (q, _) in enumerate(QUERIES))  # the metric matters on these vectors


# ---------- retr eval: -k, --index, --run, --output: metrics agree with pytrec_eval on the written run ----------
def _pytrec_metrics(qrels, run_file: Path) -> dict[str, float]:
    run: dict[str, dict[str, float]] = {}
    for line in run_file.read_text().splitlines():
        q, _, d, _, s, _ = line.split()
        run.setdefault(q, {})[d] = float(s)
    per = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100", "map_cut.100", "recip_rank"}).evaluate(run)
    mean = lambda key: float(np.mean([per.get(q, {}).get(key, 0.0) for q in qrels]))  # noqa: E731
    rr10 = [v if v and 1 / v <= 10 + 1e-9 else 0.0 for v in (per.get(q, {}).get("recip_rank", 0.0) for q in qrels)]
    return {"nDCG@10": mean("ndcg_cut_10"), "Recall@100": mean("recall_100"), "MAP@100": mean("map_cut_100"),
            "MRR@10": float(np.mean(rr10))}


@pytest.mark.parametrize("which", ["encode-and-index", "flat-from-embeddings", "l2-index"])
def test_eval_metrics_agree_with_pytrec_eval_on_the_written_run(world, raw, which):
    out = world.root / f"eval-{which}"
    args = ["eval", "-d", world.data, "-k", "50", "--run", out / "run.trec", "-o", out / "r.json"]
    if which == "encode-and-index":
        ok(*args, "-m", world.model, "--index", out / "idx")
        assert (out / "idx" / "meta.json").exists()  # built and saved where --index says
        scores = exact_scores(world)
    elif which == "flat-from-embeddings":
        ok("index", "--from-embeddings", world.emb, "-o", out / "idx")
        ok(*args, "--index", out / "idx")
        scores = exact_scores(world)
    else:
        ok(*args, "--index", raw.index)
        scores = exact_scores(world, raw.X, raw.Q, "l2")
    lines = [line.split() for line in (out / "run.trec").read_text().splitlines()]
    run = {}
    for q, _, d, rank, s, _ in lines:
        run.setdefault(q, []).append((d, float(s)))
        assert int(rank) == len(run[q])
    assert_exact(world, run, 50, scores=scores, atol=1e-4)
    qrels = {}
    for q, d, g in QRELS:
        qrels.setdefault(q, {})[d] = g
    reported = json.loads((out / "r.json").read_text())["metrics"]
    for name, value in _pytrec_metrics(qrels, out / "run.trec").items():
        assert reported[name] == pytest.approx(value, abs=1e-6), name


# ---------- encoder options: prefixes, max lengths, pooling, normalisation, precision, batch and block sizes ----------
def test_passage_and_query_prefixes(world):
    idx = world.root / "prefixed"
    ok("index", "-m", world.model, "-d", world.data, "-o", idx, "--store-vectors", "--passage-prefix", "P: ",
       "--query-prefix", "Q: ")
    enc = world.enc
    passages = ["P: " + (f"{t} {x}" if t else x) for _, t, x in DOCS]
    ref = enc.encode_passages(passages)  # the plain encoder on hand-prefixed text
    np.testing.assert_allclose(np.load(idx / "vectors.npy"), ref, atol=1e-5)
    assert not np.allclose(ref, world.X, atol=1e-3)  # the prefix changed the vectors
    meta = json.loads((idx / "meta.json").read_text())["encoder"]
    assert meta["passage_prefix"] == "P: " and meta["query_prefix"] == "Q: "
    hits = search(world, idx, k=10)  # the query prefix recorded in the index is used by search
    Q = enc.encode_queries(["Q: " + t for _, t in QUERIES])
    assert_exact(world, hits, 10, scores=exact_scores(world, ref, Q))


def test_max_lengths_truncate(world, tmp_path):
    docs = [("a", "", "aspirin heart statin cholesterol"), ("b", "", "aspirin heart vitamin bone sleep"),
            ("c", "", "coffee liver salt")]
    queries = [("q1", "salt pressure smoking lung"), ("q2", "salt pressure vaccine")]
    data = write_beir(tmp_path / "t", docs=docs, queries=queries, qrels=[("q1", "c", 1)])
    for name, extra in (("short", ["--passage-max-length", "4", "--query-max-length", "4"]), ("long", [])):
        ok("index", "-m", world.model, "-d", data, "-o", tmp_path / name, "--store-vectors", *extra)
    short, long = np.load(tmp_path / "short" / "vectors.npy"), np.load(tmp_path / "long" / "vectors.npy")
    np.testing.assert_allclose(short[0], short[1], atol=1e-6)  # [CLS] aspirin heart [SEP]: the rest is cut
    assert not np.allclose(long[0], long[1], atol=1e-4)
    out = tmp_path / "hits.json"
    ok("search", "-i", tmp_path / "short", "--queries", data / "queries.jsonl", "-k", "3", "-o", out)
    hits = json.loads(out.read_text())
    assert hits["q1"] == hits["q2"]  # both queries read as "[CLS] salt pressure [SEP]"


def test_pooling_and_normalisation(world):
    from retr.retriever.modeling import DualEncoder

    ok("encode", "-m", world.model, "-d", world.data, "-o", world.root / "emb-cls", "--pooling", "cls",
       "--no-normalize")
    from retr.indexing.shards import load_shards

    vectors, _, meta = load_shards(world.root / "emb-cls")
    assert meta["encoder"]["pooling"] == "cls" and meta["encoder"]["normalize"] is False
    ref = DualEncoder.from_pretrained(world.model, pooling="cls", normalize=False).encode_passages(
        [(f"{t} {x}" if t else x) for _, t, x in DOCS])
    np.testing.assert_allclose(np.asarray(vectors), ref, atol=1e-5)
    assert not np.allclose(np.linalg.norm(ref, axis=1), 1.0, atol=1e-3)


def test_precision_batch_and_block_size(world):
    from retr.indexing.shards import load_shards

    runs = {"fp32": ["--precision", "fp32"], "bf16": ["--precision", "bf16"],
            "small-batches": ["--batch-size", "3", "--block-size", "7"]}
    got = {}
    for name, extra in runs.items():
        ok("encode", "-m", world.model, "-d", world.data, "-o", world.root / f"emb-{name}", *extra)
        got[name] = np.asarray(load_shards(world.root / f"emb-{name}")[0])
    np.testing.assert_array_equal(got["fp32"], world.X)  # auto is fp32 on CPU
    np.testing.assert_allclose(got["small-batches"], world.X, atol=1e-5)  # other padding, same vectors
    assert not np.array_equal(got["bf16"], world.X)  # bf16 autocast ran ...
    np.testing.assert_allclose(got["bf16"], world.X, atol=5e-2)  # ... and stays close


# ---------- retr search: --run, --mmap, --threads, --batch-size, several --index ----------
def test_search_run_file_mmap_threads_and_batch_size(world):
    idx = world.root / "flat-search"
    ok("index", "--from-embeddings", world.emb, "-o", idx)
    base = search(world, idx, k=15)
    assert_exact(world, base, 15)
    for extra in (["--mmap"], ["--threads", "1"], ["--batch-size", "2"], ["--precision", "fp32"]):
        other = search(world, idx, *extra, k=15)
        assert {q: [d for d, _ in h] for q, h in other.items()} == {q: [d for d, _ in h] for q, h in base.items()}
        for q in base:
            np.testing.assert_allclose([s for _, s in other[q]], [s for _, s in base[q]], atol=1e-5)
    run = world.root / "search.trec"
    ok("search", "-i", idx, "--queries", world.data / "queries.jsonl", "-k", "15", "--run", run)
    rows = [line.split() for line in run.read_text().splitlines()]
    assert len(rows) == 15 * len(QUERIES)
    for q, hits in base.items():
        mine = [(d, int(r), float(s)) for qq, _, d, r, s, _ in rows if qq == q]
        assert [(d, r) for d, r, _ in mine] == [(d, i + 1) for i, (d, _) in enumerate(hits)]
        np.testing.assert_allclose([s for *_, s in mine], [s for _, s in hits], atol=1e-5)


# ---------- retr index --append with --store-vectors ----------
def test_append_then_search_is_exact_over_all_documents(world, tmp_path):
    half = write_beir(tmp_path / "half", docs=DOCS[:150], queries=QUERIES, qrels=[])
    idx = tmp_path / "grown"
    ok("index", "-m", world.model, "-d", half, "-o", idx, "--store-vectors")
    out = ok("index", "--append", "-d", world.data, "-o", idx, "--batch-size", "16", "--precision", "fp32")
    assert "appended 150 new documents" in " ".join(out.split())
    np.testing.assert_allclose(np.load(idx / "vectors.npy"), world.X, atol=1e-5)
    assert_exact(world, search(world, idx, "--rescore", "40", k=20), 20)


# ---------- retr mine: --teacher, --range-min/--range-max, --num-negatives, --seed, --index ----------
def test_mine_samples_from_the_exact_rank_window(world, tmp_path):
    args = ["mine", "-d", world.data, "--split", "test", "--teacher", world.model, "--range-min", "4",
            "--range-max", "12", "--num-negatives", "3"]
    ok(*args, "--seed", "1", "-o", tmp_path / "a.jsonl", "--index", tmp_path / "teacher")
    assert (tmp_path / "teacher" / "index.faiss").exists()
    out = ok(*args, "--seed", "1", "-o", tmp_path / "b.jsonl", "--index", tmp_path / "teacher", "-v")
    assert "reusing index" in out  # the teacher's index is not built twice
    ok(*args, "--seed", "2", "-o", tmp_path / "c.jsonl")
    rows = {name: [json.loads(line) for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
            for name in "abc"}
    assert rows["a"] == rows["b"]  # same seed, same negatives
    assert rows["a"] != rows["c"]  # another seed, another sample
    scores = exact_scores(world)
    positives = {}
    for q, d, g in QRELS:
        positives.setdefault(q, set()).add(d)
    for row in rows["a"] + rows["c"]:
        i = [q for q, _ in QUERIES].index(row["query_id"])
        ranking = [world.ids[j] for j in np.argsort(-scores[i])]
        window = [d for d in ranking[3:12] if d not in positives[row["query_id"]]]
        negs = [n["docid"] for n in row["negative_passages"]]
        assert len(negs) == 3 and set(negs) <= set(window), (row["query_id"], negs, window)
        assert negs == [d for d in window if d in negs]  # in teacher rank order


# ---------- retr search on a BM25 index: --k1, --b (properties of the BM25 formula, not a re-run of Lucene) ----------
@pytest.mark.java
def test_bm25_k1_and_b(tmp_path):
    docs = [("short", "", "salt coffee"), ("long", "", "salt pressure heart lung brain memory stress blood"),
            ("twice", "", "salt salt pressure")]
    data = write_beir(tmp_path / "b", docs=docs, queries=[("q", "salt")], qrels=[("q", "short", 1)])
    ok("index", "--bm25", "-d", data, "-o", tmp_path / "bm25")

    def scores(*extra) -> dict[str, float]:
        out = tmp_path / f"hits{'_'.join(extra)}.json"
        ok("search", "-i", tmp_path / "bm25", "-q", "salt", "-k", "3", "-o", out, *extra)
        return {h["docid"]: h["score"] for h in json.loads(out.read_text())["q1"]}

    b1, b0, k0 = scores("--b", "1"), scores("--b", "0"), scores("--k1", "0")
    # (Lucene's float32 norms table: equal up to ~1e-5 relative, against ~30% for the differences that matter)
    assert b1["short"] > 1.1 * b1["long"]  # b=1: full length normalisation favours the short document
    assert b0["short"] == pytest.approx(b0["long"], rel=1e-4)  # b=0: same tf, no length normalisation
    assert b0["twice"] > 1.1 * b0["short"]
    assert k0["short"] == pytest.approx(k0["long"], rel=1e-4)  # k1=0: the idf alone, whatever tf and length
    assert k0["twice"] == pytest.approx(k0["short"], rel=1e-4)
