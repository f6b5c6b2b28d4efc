"""``retr serve``: answers over real HTTP on 127.0.0.1 equal ``retr search``'s (dense, BM25, hybrid, reranked);
bad requests get 4xx JSON and the server keeps serving; concurrent requests share one forward; SIGTERM drains."""
from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager

import pytest

from conftest import REPO, run_cli, write_beir
from retr.retriever.hits import Hit
from retr.retriever.serving import MicroBatcher, ServeConfig, create_app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url: str, body: bytes | dict | None = None, method: str | None = None) -> tuple[int, dict]:
    """(status, parsed JSON body) from a real HTTP request; 4xx/5xx are returned, not raised."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    req = urllib.request.Request(url, data=data, method=method or ("POST" if data is not None else "GET"),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        raw = e.read()
        assert e.headers.get("content-type", "").startswith("application/json"), raw
        return e.code, json.loads(raw)


@contextmanager
def serving(searcher, config: ServeConfig | None = None):
    """The app on a free 127.0.0.1 port, uvicorn in a thread; yields (base url, app)."""
    import uvicorn

    app = create_app(searcher, config or ServeConfig())
    port = free_port()
    # log_config=None: no logging.config.dictConfig, which would flush and close every handler in the process
    # (torch installs StreamHandlers on the stream pytest captured when an earlier test exported ONNX)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", log_config=None))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(30)


class FakeSearcher:
    """No model: docid i of query q is f"{q}#{i}"; records every batch_search call's queries."""

    def __init__(self, delay: float = 0.0):
        self.delay, self.calls, self.lock = delay, [], threading.Lock()

    def batch_search(self, queries, qids, k=10, threads=0):
        with self.lock:
            self.calls.append((list(queries), k))
        if any(q == "boom" for q in queries):
            raise RuntimeError("searcher exploded")
        time.sleep(self.delay)
        return {qid: [Hit(f"{q}#{i}", float(-i), i + 1) for i in range(k)] for q, qid in zip(queries, qids)}


def _hits(rows):
    return [(h["docid"], h["rank"]) for h in rows], [h["score"] for h in rows]


def _expect(rows):
    """As ``_hits``, the scores compared within 1e-5 (a forward over another batch may round apart)."""
    return [(h["docid"], h["rank"]) for h in rows], pytest.approx([h["score"] for h in rows], abs=1e-5)


@pytest.fixture
def indexes(tiny_beir, tiny_model_dir, tmp_path, capsys):
    code, _, err = run_cli(["index", "-m", tiny_model_dir, "-d", tiny_beir, "-o", tmp_path / "dense"], capsys)
    assert code == 0, err
    code, _, err = run_cli(["index", "--bm25", "-d", tiny_beir, "-o", tmp_path / "bm25"], capsys)
    assert code == 0, err
    return tmp_path / "dense", tmp_path / "bm25"


def test_serve_equals_search_for_dense_bm25_hybrid_and_rerank(indexes, tiny_beir, tiny_model_dir, tmp_path, capsys):
    from retr.retriever.data.queries import read_queries
    from retr.retriever.modeling.cross_encoder import CrossEncoder
    from retr.retriever.searcher import SearchSetup, open_searcher

    CrossEncoder.from_pretrained(tiny_model_dir).save(tmp_path / "ce")
    dense, bm25 = indexes
    queries = read_queries(tiny_beir / "queries.jsonl")
    setups = {
        "dense": ([dense], {}),
        "bm25": ([bm25], {}),
        "hybrid": ([bm25, dense], {"fusion": "weighted", "alpha": 0.3}),
        "rerank": ([dense], {"rerank": str(tmp_path / "ce"), "rerank_top_k": 4, "corpus": tiny_beir}),
    }
    for name, (dirs, opts) in setups.items():
        names = {"fusion": "--fusion", "alpha": "--alpha", "rerank": "--rerank", "rerank_top_k": "--rerank-top-k",
                 "corpus": "--corpus"}
        flags = [x for d in dirs for x in ("-i", d)] + [x for key, v in opts.items() for x in (names[key], v)]
        out = tmp_path / f"{name}.json"
        code, _, err = run_cli(["search", *flags, "--queries", tiny_beir / "queries.jsonl", "-k", "6", "-o", out], capsys)
        assert code == 0, err
        expected = json.loads(out.read_text())
        searcher = open_searcher(SearchSetup(index=dirs, show_progress=False, **opts))
        with serving(searcher, ServeConfig(max_wait_ms=20)) as (url, _):
            results: dict[str, list] = {}

            def ask(qid: str) -> None:
                status, body = http(f"{url}/search", {"query": queries[qid], "k": 6})
                assert status == 200, body
                results[qid] = body["hits"]

            threads = [threading.Thread(target=ask, args=(q,)) for q in queries]  # concurrent: merged forwards
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            status, batch = http(f"{url}/batch_search", {"queries": list(queries.values()), "qids": list(queries), "k": 6})
            assert status == 200, batch
        assert set(results) == set(expected) == set(queries), name
        for qid in queries:
            assert _hits(results[qid]) == _expect(expected[qid]), (name, qid)
        assert {r["qid"]: _hits(r["hits"]) for r in batch["results"]} == {q: _expect(expected[q]) for q in queries}, name


def test_bad_requests_get_4xx_json_and_the_server_keeps_serving():
    fake = FakeSearcher()
    cfg = ServeConfig(max_query_chars=50, max_k=20, max_batch_queries=3)
    with serving(fake, cfg) as (url, _):
        bad = [
            (b'{"query": "unterminated', 400, "malformed JSON"),
            (b"[1, 2", 400, "malformed JSON"),
            ({"k": 3}, 422, "query"),  # missing field
            ({"query": 12}, 422, "query"),  # wrong type
            ({"query": "   "}, 422, "empty query"),
            ({"query": "x" * 51}, 422, "limit 50"),
            ({"query": "ok", "k": 21}, 422, "k must be in 1..20"),
            ({"query": "ok", "k": 0}, 422, "k must be in 1..20"),
        ]
        for body, code, text in bad:
            status, got = http(f"{url}/search", body)
            assert status == code and text in got["error"], (body, status, got)
        for body, code, text in [({"queries": ["a", "b", "c", "d"]}, 413, "4 queries (limit 3"),
                                 ({"queries": []}, 422, "empty list"),
                                 ({"queries": ["a", ""]}, 422, "queries[1]: empty query"),
                                 ({"queries": ["a", "b"], "qids": ["x"]}, 422, "1 qids for 2 queries")]:
            status, got = http(f"{url}/batch_search", body)
            assert status == code and text in got["error"], (body, status, got)
        assert http(f"{url}/nope")[0] == 404
        assert http(f"{url}/search", method="GET")[0] == 405
        status, got = http(f"{url}/search", {"query": "boom"})  # the searcher fails: 500 JSON, still serving
        assert status == 500 and "searcher exploded" in got["error"]
        assert fake.calls == [(["boom"], 10)]  # nothing invalid reached the searcher
        status, got = http(f"{url}/search", {"query": "fine", "k": 2})
        assert status == 200 and [h["docid"] for h in got["hits"]] == ["fine#0", "fine#1"]
        assert http(f"{url}/health") == (200, {"status": "ok", "uptime_s": pytest.approx(0, abs=60)})
        assert http(f"{url}/openapi.json")[1]["paths"].keys() >= {"/search", "/batch_search", "/health", "/info"}


def test_concurrent_requests_share_forwards_and_baseline_does_not():
    for max_batch, max_wait in ((64, 50.0), (1, 0.0)):
        fake = FakeSearcher(delay=0.05)
        with serving(fake, ServeConfig(max_batch=max_batch, max_wait_ms=max_wait)) as (url, _):
            answers: dict[int, list] = {}

            def ask(i: int) -> None:
                k = 2 + i % 2  # two different k in flight: each answered with its own k
                status, body = http(f"{url}/search", {"query": f"q{i}", "k": k})
                assert status == 200, body
                answers[i] = [h["docid"] for h in body["hits"]]

            threads = [threading.Thread(target=ask, args=(i,)) for i in range(16)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            status, info = http(f"{url}/info")
        assert answers == {i: [f"q{i}#{j}" for j in range(2 + i % 2)] for i in range(16)}
        assert sum(len(q) for q, _ in fake.calls) == 16 and info["batching"]["queries"] == 16
        if max_batch == 1:
            assert len(fake.calls) == 16 and info["batching"]["largest_batch"] == 1
        else:  # one call per distinct k in each merged batch
            assert len(fake.calls) <= 6 and info["batching"]["largest_batch"] >= 4, fake.calls


def test_overload_gets_503_and_micro_batcher_drains_on_close():
    import asyncio

    fake = FakeSearcher(delay=0.2)

    async def scenario():
        batcher = MicroBatcher(fake.batch_search, max_batch=2, max_wait_ms=0, max_pending=3)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(["a"], 1))
        await asyncio.sleep(0.05)  # "a" is being searched; the next ones queue
        queued = [asyncio.ensure_future(batcher.submit([q], 1)) for q in ("b", "c")]
        await asyncio.sleep(0)
        with pytest.raises(Exception, match="limit 3"):
            await batcher.submit(["d"], 1)
        await batcher.close()  # drains: b and c are answered, in one call
        return await first, [await q for q in queued]

    first, queued = asyncio.run(scenario())
    assert first[0][0].docid == "a#0" and [q[0][0].docid for q in queued] == ["b#0", "c#0"]
    assert [c[0] for c in fake.calls] == [["a"], ["b", "c"]]


def _wait_health(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode()
        try:
            if http(f"{url}/health")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError("retr serve did not come up")


def test_cli_serve_answers_like_search_and_stops_on_sigterm(indexes, tiny_beir, tmp_path, capsys):
    dense, _ = indexes
    code, _, err = run_cli(["serve", "-i", dense, "--max-k", "0"], capsys)
    assert code == 2 and "max-k must be >= 1" in err and "Traceback" not in err
    out = tmp_path / "s.json"
    code, _, err = run_cli(["search", "-i", dense, "-q", "heart attack aspirin", "-k", "3", "-o", out], capsys)
    assert code == 0, err
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "retr.cli.main", "serve", "-i", str(dense), "--port", str(port),
                             "-k", "3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_health(url, proc)
        status, got = http(f"{url}/search", {"query": "heart attack aspirin"})
        assert status == 200 and _hits(got["hits"]) == _expect(json.loads(out.read_text())["q1"])
        status, info = http(f"{url}/info")
        assert info["searcher"]["retriever"] == "dense" and info["searcher"]["ntotal"] == 8
        assert info["searcher"]["dim"] == 32 and info["limits"]["max_k"] == 1000
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        assert "batcher drained: 1 forwards, 1 queries" in proc.stderr.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_minilm_scifact_subset_serve_equals_search(scifact_dir, tmp_path, capsys):
    """The packaged MiniLM over 300 SciFact documents: every one of 40 test queries, sent concurrently (so
    micro-batched), gets retr search's hits."""
    import numpy as np

    from retr.retriever.data import load_beir
    from retr.retriever.searcher import SearchSetup, open_searcher

    ds = load_beir(scifact_dir, "test")
    qids = sorted(ds.qrels)[:40]
    judged = sorted({d for q in qids for d in ds.qrels[q]})
    others = [d for d in np.random.default_rng(0).permutation(list(ds.corpus.ids)) if d not in set(judged)]
    docs = [(d, ds.corpus.titles[ds.corpus.index_of(d)], ds.corpus.texts[ds.corpus.index_of(d)])
            for d in judged + others[:300 - len(judged)]]
    data = write_beir(tmp_path / "sub", docs=docs, queries=[(q, ds.queries[q]) for q in qids],
                      qrels=[(q, d, s) for q in qids for d, s in ds.qrels[q].items()])
    code, _, err = run_cli(["index", "-m", "minilm", "-d", data, "-o", tmp_path / "idx"], capsys)
    assert code == 0, err
    code, _, err = run_cli(["search", "-i", tmp_path / "idx", "--queries", data, "-k", "10", "-o", tmp_path / "s.json"],
                           capsys)
    assert code == 0, err
    expected = json.loads((tmp_path / "s.json").read_text())
    results: dict[str, list] = {}
    with serving(open_searcher(SearchSetup(index=[tmp_path / "idx"], show_progress=False))) as (url, app):
        def ask(qid: str) -> None:
            status, body = http(f"{url}/search", {"query": ds.queries[qid]})
            assert status == 200, body
            results[qid] = body["hits"]

        threads = [threading.Thread(target=ask, args=(q,)) for q in qids]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stats = app.state.batcher.stats
    assert set(results) == set(expected) == set(qids)
    for q in qids:
        assert _hits(results[q]) == _expect(expected[q]), q
    assert stats.queries == 40 and stats.forwards < 40  # merged
