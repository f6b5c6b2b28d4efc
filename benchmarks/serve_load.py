"""Load test of ``retr serve`` (issue 22): N requests at concurrency C from an asyncio client against
127.0.0.1, once with micro-batching and once with one request per forward; QPS, p50/p95/p99 latency, errors.

    heavy python benchmarks/serve_load.py                      # builds out/serve/scifact-minilm if missing
    heavy python benchmarks/serve_load.py --index DIR --requests 10000 --concurrency 32 --check

The client is a minimal HTTP/1.1 keep-alive client on asyncio streams (one connection per concurrent worker, at
most ``--concurrency`` requests in flight), so the numbers do not depend on an HTTP library. Client and server
share the machine's cores: the client's CPU time is taken from the server, on a 2-core machine noticeably so.
``--check`` first compares every SciFact test query's hits over HTTP (micro-batched, concurrent) with
``retr search``'s on the same index. Only loopback addresses are accepted.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RETR = [sys.executable, "-m", "retr.cli.main"]


def read_queries(data: Path, split: str | None = None) -> dict[str, str]:
    queries = {}
    with open(data / "queries.jsonl") as fh:
        for line in fh:
            row = json.loads(line)
            queries[str(row["_id"])] = row["text"]
    if split:
        with open(data / "qrels" / f"{split}.tsv") as fh:
            wanted = {line.split("\t")[0] for line in fh.read().splitlines()[1:] if line.strip()}
        queries = {q: t for q, t in queries.items() if q in wanted}
    return queries


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Conn:
    """One keep-alive HTTP/1.1 connection: ``post(path, body) -> (status, body bytes)``."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        self.writer.write(head + body)
        await self.writer.drain()
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("server closed the connection")
        status = int(status_line.split()[1])
        length, close = 0, False
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "connection" and value.strip().lower() == "close":
                close = True
        data = await self.reader.readexactly(length)
        if close:
            await self.close()
        return status, data

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


async def load(host: str, port: int, texts: list[str], n: int, concurrency: int, k: int) -> dict:
    """``n`` POST /search requests, at most ``concurrency`` in flight; latencies in ms."""
    latencies: list[float] = []
    errors = {"count": 0, "examples": []}
    counter = iter(range(n))

    async def worker() -> None:
        conn = Conn(host, port)
        for i in counter:
            body = json.dumps({"query": texts[i % len(texts)], "k": k}).encode()
            t0 = time.perf_counter()
            try:
                status, data = await conn.post("/search", body)
                ok = status == 200
            except (OSError, ConnectionError, asyncio.IncompleteReadError, ValueError) as e:
                ok, data = False, repr(e).encode()
                await conn.close()
            latencies.append((time.perf_counter() - t0) * 1000)
            if not ok:
                errors["count"] += 1
                if len(errors["examples"]) < 3:
                    errors["examples"].append(data[:200].decode(errors="replace"))
        await conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    lat = np.array(latencies)
    return {"requests": n, "concurrency": concurrency, "seconds": round(wall, 2), "qps": round(n / wall, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 1), "p95_ms": round(float(np.percentile(lat, 95)), 1),
            "p99_ms": round(float(np.percentile(lat, 99)), 1), "errors": errors["count"],
            "error_examples": errors["examples"]}


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def start_server(index: Path, port: int, extra: list[str], log: Path) -> subprocess.Popen:
    cmd = [*RETR, "serve", "-i", str(index), "--host", "127.0.0.1", "--port", str(port), *extra]
    proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, cwd=REPO)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"retr serve exited ({proc.returncode}); see {log}")
        try:
            if get_json(f"http://127.0.0.1:{port}/health")["status"] == "ok":
                return proc
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit("retr serve did not come up in 300 s")


def stop_server(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def check_against_search(index: Path, data: Path, port: int, common: list[str], k: int) -> dict:
    """Every test query over HTTP (concurrently, micro-batched) vs ``retr search`` on the same index."""
    queries = read_queries(data, "test")
    with tempfile.TemporaryDirectory() as tmp:
        qfile, out = Path(tmp) / "q.jsonl", Path(tmp) / "hits.json"
        qfile.write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in queries.items()))
        subprocess.run([*RETR, "search", "-i", str(index), "--queries", str(qfile), "-k", str(k), "-o", str(out),
                        *common[:2]], check=True, cwd=REPO, stdout=subprocess.DEVNULL)
        expected = json.loads(out.read_text())
    qids = list(queries)

    async def ask() -> list[dict]:
        conns = [Conn("127.0.0.1", port) for _ in range(32)]

        async def one(i: int) -> dict:
            status, body = await conns[i % 32].post("/search", json.dumps({"query": queries[qids[i]], "k": k}).encode())
            assert status == 200, body
            return json.loads(body)

        out = []  # waves of 32 concurrent requests, one per connection
        for s in range(0, len(qids), 32):
            out += await asyncio.gather(*(one(i) for i in range(s, min(s + 32, len(qids)))))
        for c in conns:
            await c.close()
        return out

    got = asyncio.run(ask())
    same_ids = sum([h["docid"] for h in g["hits"]] == [h["docid"] for h in expected[q]] for q, g in zip(qids, got))
    max_diff = max(abs(a["score"] - b["score"]) for q, g in zip(qids, got) for a, b in zip(g["hits"], expected[q]))
    return {"queries": len(qids), "identical_rankings": same_ids, "max_score_diff": max_diff}


def machine() -> str:
    cpu = platform.processor() or "cpu"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} vCPU {cpu}, {mem:.0f} GiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", type=Path, default=REPO / "out" / "serve" / "scifact-minilm")
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "scifact")
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--modes", default="on,off", help="Comma list of: on (micro-batching), off (one per forward).")
    ap.add_argument("--server-args", default="", help="Extra `retr serve` options for both runs (one string).")
    ap.add_argument("--check", action="store_true", help="First compare the test queries' hits with retr search.")
    ap.add_argument("--output", type=Path, help="Write the results as JSON here.")
    args = ap.parse_args()
    if args.requests < 1 or args.concurrency < 1:
        raise SystemExit("--requests and --concurrency must be >= 1")
    if not (args.index / "meta.json").exists():
        print(f"building {args.index} ...", flush=True)
        subprocess.run([*RETR, "index", "-m", "minilm", "-d", str(args.data), "-o", str(args.index)], check=True, cwd=REPO)
    texts = list(read_queries(args.data).values())
    common = ["--precision", args.precision, *args.server_args.split()]
    modes = {"on": ["--max-wait-ms", str(args.max_wait_ms), "--max-batch", str(args.max_batch)],
             "off": ["--no-micro-batching"]}
    results: dict[str, dict] = {"machine": machine(), "index": str(args.index), "precision": args.precision}
    log_dir = Path(tempfile.mkdtemp(prefix="retr-serve-load-"))
    for mode in args.modes.split(","):
        port = free_port()
        proc = start_server(args.index, port, [*common, *modes[mode]], log_dir / f"{mode}.log")
        try:
            if args.check and mode == "on":
                results["check"] = check_against_search(args.index, args.data, port, common, args.k)
                print(f"check: {results['check']}", flush=True)
            asyncio.run(load("127.0.0.1", port, texts, args.warmup, args.concurrency, args.k))
            res = asyncio.run(load("127.0.0.1", port, texts, args.requests, args.concurrency, args.k))
            info = get_json(f"http://127.0.0.1:{port}/info")["batching"]
            res["forwards"], res["largest_batch"] = info["forwards"], info["largest_batch"]
            res["mean_batch"] = round(info["queries"] / max(info["forwards"], 1), 1)
        finally:
            res_code = stop_server(proc)
        res["server_exit"] = res_code
        results[mode] = res
        print(f"{mode}: {res}", flush=True)
    print(f"\nretr serve load test: {args.requests} requests, concurrency {args.concurrency}, k={args.k}, "
          f"precision {args.precision}; {results['machine']} (client and server share these cores)")
    print(f"{'micro-batching':<16} {'QPS':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>7} {'mean batch':>11}")
    for mode in args.modes.split(","):
        r = results[mode]
        label = f"on (<= {args.max_wait_ms:g} ms)" if mode == "on" else "off"
        print(f"{label:<16} {r['qps']:>8} {r['p50_ms']:>8} {r['p95_ms']:>8} {r['p99_ms']:>8} {r['errors']:>7} "
              f"{r['mean_batch']:>11}")
    if "on" in results and "off" in results:
        results["qps_ratio"] = round(results["on"]["qps"] / results["off"]["qps"], 2)
        print(f"QPS ratio on/off: {results['qps_ratio']}x")
    if args.output:
        args.output.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
