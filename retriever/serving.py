"""HTTP serving of any retr searcher (FastAPI): ``POST /search``, ``POST /batch_search``, ``GET /health``,
``GET /info``, OpenAPI docs at ``/docs``.

Micro-batching: concurrent requests are merged into one ``batch_search`` call (one encoder forward for all their
queries). ``MicroBatcher`` takes the first waiting request, then gathers more for at most ``max_wait_ms`` or until
``max_batch`` queries, and runs the batch in its single worker thread (the model is not thread-safe, so there is
never more than one batch in flight); requests that arrive meanwhile queue and form the next batch, so under load
batches fill up by themselves even with ``max_wait_ms=0``. ``max_batch=1`` is the one-query-per-forward baseline.

Memory: the searcher (index + model) plus, per queued query, its text and, per finished one, its ``k`` hits;
the queue holds at most ``max_pending`` queries (beyond that: 503), so it is bounded by
``max_pending * max_query_chars``.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


@dataclass
class ServeConfig:
    """Limits and batching. ``max_query_chars``: longest query text (longer: 422); ``max_k``: largest k (422);
    ``max_batch_queries``: most queries in one ``/batch_search`` request (413); ``max_batch``: most queries per
    forward; ``max_wait_ms``: how long the first request of a batch waits for company (milliseconds);
    ``max_pending``: queries queued at most (503 beyond); ``default_k``: k when a request gives none;
    ``threads``: FAISS/Lucene threads per batch (0 = all cores); ``info``: extra fields for ``GET /info``."""

    max_query_chars: int = 2048
    max_k: int = 1000
    max_batch_queries: int = 256
    max_batch: int = 64
    max_wait_ms: float = 5.0
    max_pending: int = 4096
    default_k: int = 10
    threads: int = 0
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("max_query_chars", "max_k", "max_batch_queries", "max_batch", "max_pending", "default_k"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0:
            raise ValueError(f"max-wait-ms must be >= 0, got {self.max_wait_ms}")
        if self.default_k > self.max_k:
            raise ValueError(f"default k {self.default_k} is above max-k {self.max_k}")


class Overloaded(Exception):
    """More than ``max_pending`` queries are queued."""


class NotRunning(Exception):
    """The batcher was not started, or is shutting down."""


@dataclass
class _Job:
    queries: list[str]
    k: int
    future: asyncio.Future


@dataclass
class BatcherStats:
    forwards: int = 0  # batch_search calls
    queries: int = 0
    largest_batch: int = 0


class MicroBatcher:
    """Merges concurrent ``submit`` calls into ``search_fn(queries, qids, k, threads)`` calls (see the module
    docstring). Jobs of one batch with different ``k`` are searched once per distinct ``k`` (so every answer is
    exactly what a lone search with that ``k`` gives). Start with ``start()`` inside the event loop; ``close()``
    answers everything queued, then stops the worker."""

    def __init__(self, search_fn: Callable[..., dict], max_batch: int = 64, max_wait_ms: float = 5.0,
                 max_pending: int = 4096, threads: int = 0):
        self.search_fn, self.max_batch, self.max_wait = search_fn, max_batch, max_wait_ms / 1000.0
        self.max_pending, self.threads = max_pending, threads
        self.stats = BatcherStats()
        self._queue: asyncio.Queue[_Job | None] | None = None
        self._pending = 0
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="retr-search")
        self._carry: _Job | None = None
        self._stopping = False

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def submit(self, queries: list[str], k: int) -> list[list[Any]]:
        """Hits (``Hit`` lists, best first) for each query; raises what the searcher raised, ``Overloaded`` or ``NotRunning``."""
        if self._queue is None or self._task is None or self._task.done():
            raise NotRunning("the batcher is not running")
        if self._pending + len(queries) > self.max_pending:
            raise Overloaded(f"{self._pending} queries queued (limit {self.max_pending}); retry later")
        future = asyncio.get_running_loop().create_future()
        self._pending += len(queries)
        await self._queue.put(_Job(queries, k, future))
        return await future

    async def close(self) -> None:
        """Answer every queued job, then stop the worker thread; a job queued after this fails (503)."""
        if self._task is not None and self._queue is not None:
            await self._queue.put(None)
            await self._task
            while not self._queue.empty():
                job = self._queue.get_nowait()
                if job is not None and not job.future.done():
                    job.future.set_exception(NotRunning("shutting down"))
        self._executor.shutdown(wait=True)

    async def _next_batch(self) -> list[_Job]:
        """The next batch: the first job waits without limit, then up to ``max_wait`` for more, up to
        ``max_batch`` queries (one job larger than that goes alone). Empty: stop."""
        assert self._queue is not None
        if self._carry is None and self._stopping:
            return []
        first = self._carry or await self._queue.get()
        self._carry = None
        if first is None:
            self._stopping = True
            return []
        jobs, size = [first], len(first.queries)
        deadline = time.monotonic() + self.max_wait
        while size < self.max_batch:
            try:
                job = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self._queue.get(), left)
                except asyncio.TimeoutError:
                    break
            if job is None:
                self._stopping = True
                break
            if size + len(job.queries) > self.max_batch:
                self._carry = job  # starts the next batch
                break
            jobs.append(job)
            size += len(job.queries)
        return jobs

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while jobs := await self._next_batch():
            try:
                results = await loop.run_in_executor(self._executor, self._search, jobs)
                for job, hits in zip(jobs, results):
                    if not job.future.done():
                        job.future.set_result(hits)
            except Exception as e:  # the searcher failed: every job of the batch gets the error
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(e)
            finally:
                self._pending -= sum(len(j.queries) for j in jobs)

    def _search(self, jobs: list[_Job]) -> list[list[list[Any]]]:
        """Worker thread: one ``search_fn`` call per distinct k over all the batch's queries."""
        out: list[list[list[Any]] | None] = [None] * len(jobs)
        for k in sorted({j.k for j in jobs}):
            members = [i for i, j in enumerate(jobs) if j.k == k]
            queries = [q for i in members for q in jobs[i].queries]
            qids = [str(n) for n in range(len(queries))]
            run = self.search_fn(queries, qids, k=k, threads=self.threads)
            self.stats.forwards += 1
            self.stats.queries += len(queries)
            self.stats.largest_batch = max(self.stats.largest_batch, len(queries))
            n = 0
            for i in members:
                out[i] = [run.get(str(n + m), []) for m in range(len(jobs[i].queries))]
                n += len(jobs[i].queries)
        return out  # type: ignore[return-value]


# ---------- request / response shapes ----------
class SearchRequest(BaseModel):
    query: str = Field(..., description="Query text (1..max_query_chars characters, not only spaces).")
    k: int | None = Field(None, description="Hits wanted (1..max_k; default: the server's --k).")


class BatchSearchRequest(BaseModel):
    queries: list[str] = Field(..., description="Query texts (1..max_batch_queries of them).")
    qids: list[str] | None = Field(None, description="Ids echoed back in the results (default q1, q2, ...).")
    k: int | None = Field(None, description="Hits per query (1..max_k).")


class HitOut(BaseModel):
    docid: str
    score: float
    rank: int


class SearchResponse(BaseModel):
    query: str
    k: int
    hits: list[HitOut]


class BatchResult(BaseModel):
    qid: str
    hits: list[HitOut]


class BatchSearchResponse(BaseModel):
    k: int
    results: list[BatchResult]


class ErrorResponse(BaseModel):
    error: str = Field(..., description="One line: what was wrong.")
    detail: Any = None


class _LimitError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def _check_query(q: str, cfg: ServeConfig, where: str) -> None:
    if not q.strip():
        raise _LimitError(422, f"{where}: empty query")
    if len(q) > cfg.max_query_chars:
        raise _LimitError(422, f"{where}: query of {len(q)} characters (limit {cfg.max_query_chars})")


def _check_k(k: int | None, cfg: ServeConfig) -> int:
    k = cfg.default_k if k is None else k
    if not 1 <= k <= cfg.max_k:
        raise _LimitError(422, f"k must be in 1..{cfg.max_k}, got {k}")
    return k


def _hits(hits: list[Any]) -> list[dict[str, Any]]:
    return [{"docid": h.docid, "score": h.score, "rank": h.rank} for h in hits]


def create_app(searcher: Any, config: ServeConfig | None = None, batcher: MicroBatcher | None = None) -> FastAPI:
    """A FastAPI app answering with ``searcher.batch_search`` through a ``MicroBatcher`` (started and drained by
    the app's lifespan). Errors are JSON ``{"error": "...", "detail": ...}``: 400 malformed JSON, 422 invalid
    fields or limits (empty/too long query, k out of range, qids not matching queries), 413 too many queries, 503
    overloaded or shutting down, 500 a searcher error (logged; the server keeps serving)."""
    cfg = config or ServeConfig()
    batcher = batcher or MicroBatcher(searcher.batch_search, max_batch=cfg.max_batch, max_wait_ms=cfg.max_wait_ms,
                                      max_pending=cfg.max_pending, threads=cfg.threads)
    state = {"ready": False, "started": time.time()}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        state["ready"] = True
        try:
            yield
        finally:
            state["ready"] = False
            await batcher.close()
            log.info("batcher drained: %d forwards, %d queries", batcher.stats.forwards, batcher.stats.queries)

    app = FastAPI(title="retr", version=str(cfg.info.get("retr_version") or "0"), lifespan=lifespan,
                  description="Dense / BM25 / hybrid retrieval with optional cross-encoder reranking.")
    app.state.batcher = batcher
    errors = {c: {"model": ErrorResponse} for c in (400, 413, 422, 503)}

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = exc.errors()
        if any(p.get("type") == "json_invalid" for p in problems):
            return JSONResponse({"error": "malformed JSON body", "detail": None}, status_code=400)
        first = problems[0] if problems else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        message = f"{where}: {first.get('msg', 'invalid request')}" if where else first.get("msg", "invalid request")
        detail = [{"loc": list(p.get("loc", ())), "msg": p.get("msg"), "type": p.get("type")} for p in problems]
        return JSONResponse({"error": message, "detail": detail}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail), "detail": None}, status_code=exc.status_code)

    @app.exception_handler(_LimitError)
    async def _limit(request: Request, exc: _LimitError) -> JSONResponse:
        return JSONResponse({"error": exc.message, "detail": None}, status_code=exc.status)

    async def run(queries: list[str], k: int) -> list[list[Any]]:
        if not state["ready"]:
            raise _LimitError(503, "shutting down")
        try:
            return await batcher.submit(queries, k)
        except (Overloaded, NotRunning) as e:
            raise _LimitError(503, str(e)) from None
        except Exception as e:
            log.exception("search failed")
            raise _LimitError(500, f"search failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")

    @app.post("/search", response_model=SearchResponse, responses=errors,
              summary="Top-k hits of one query (merged with concurrent requests into one forward).")
    async def search(req: SearchRequest) -> JSONResponse:
        _check_query(req.query, cfg, "query")
        k = _check_k(req.k, cfg)
        hits = (await run([req.query], k))[0]
        return JSONResponse({"query": req.query, "k": k, "hits": _hits(hits)})  # shape: SearchResponse

    @app.post("/batch_search", response_model=BatchSearchResponse, responses=errors,
              summary="Top-k hits of several queries, in the order given.")
    async def batch_search(req: BatchSearchRequest) -> JSONResponse:
        if not req.queries:
            raise _LimitError(422, "queries: empty list")
        if len(req.queries) > cfg.max_batch_queries:
            raise _LimitError(413, f"{len(req.queries)} queries (limit {cfg.max_batch_queries} per request)")
        for i, q in enumerate(req.queries):
            _check_query(q, cfg, f"queries[{i}]")
        qids = req.qids if req.qids is not None else [f"q{i + 1}" for i in range(len(req.queries))]
        if len(qids) != len(req.queries):
            raise _LimitError(422, f"{len(qids)} qids for {len(req.queries)} queries")
        k = _check_k(req.k, cfg)
        hits = await run(list(req.queries), k)
        return JSONResponse({"k": k, "results": [{"qid": q, "hits": _hits(h)} for q, h in zip(qids, hits)]})

    @app.get("/health", summary="Liveness: 200 while serving, 503 while starting or shutting down.")
    async def health() -> JSONResponse:
        body = {"status": "ok" if state["ready"] else "unavailable", "uptime_s": round(time.time() - state["started"], 1)}
        return JSONResponse(body, status_code=200 if state["ready"] else 503)

    @app.get("/info", summary="What is served: index type and size, model, limits, batching counters.")
    async def info() -> dict[str, Any]:
        return {**cfg.info, "limits": {"max_query_chars": cfg.max_query_chars, "max_k": cfg.max_k,
                                       "max_batch_queries": cfg.max_batch_queries, "default_k": cfg.default_k},
                "batching": {"max_batch": cfg.max_batch, "max_wait_ms": cfg.max_wait_ms,
                             "max_pending": cfg.max_pending, **asdict(batcher.stats)}}

    return app


def bind(host: str = "127.0.0.1", port: int = 8000) -> socket.socket:
    """A listening TCP socket on (host, port), taken before the model loads so a busy port fails at once
    (``OSError``: address already in use / cannot assign)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return sock


def run_server(app: FastAPI, sock: socket.socket, log_level: str = "info", graceful_timeout: float = 30.0,
               switch_interval_ms: float = 1.0) -> int | None:
    """Serve ``app`` with uvicorn until SIGINT/SIGTERM: then stop accepting, finish open requests (at most
    ``graceful_timeout`` seconds) on ``sock`` (from ``bind``), drain the batcher (lifespan shutdown) and return the signal that stopped it
    (``None`` if none did). In the main thread the caller's SIGINT/SIGTERM handlers are left out while serving
    (uvicorn re-raises the signal it handled once it has shut down; here that is swallowed: the stop was clean).
    ``switch_interval_ms``: Python's GIL switch interval while serving (default 5 ms): the search thread gives the
    GIL back between torch ops and must win it back from the HTTP thread; a shorter interval keeps the forward
    from waiting up to 5 ms per op while requests are being parsed."""
    import signal
    import threading

    import uvicorn

    host, port = sock.getsockname()[:2]
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False,
                                           timeout_graceful_shutdown=graceful_timeout))
    log.info("serving on http://%s:%d (API docs: /docs)", host, port)
    received: list[int] = []
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda signum, frame: received.append(signum))
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(switch_interval_ms / 1000.0)
    try:
        server.run(sockets=[sock])
    finally:
        sys.setswitchinterval(old_interval)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return received[0] if received else None
