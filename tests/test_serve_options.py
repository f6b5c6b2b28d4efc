"""`retr serve` options reach the server: limits (--max-query-chars, --max-batch-queries, --max-k, -k), batching
(--max-batch, --max-wait-ms, --max-pending, --no-micro-batching) and --host, checked by requests and GET /info."""
from __future__ import annotations

import subprocess
import sys
import threading

from conftest import REPO, run_cli
from test_serve import _wait_health, free_port, http


def test_cli_limits_and_batching_options(tiny_beir, tiny_model_dir, tmp_path, capsys):
    code, _, err = run_cli(["index", "-m", tiny_model_dir, "-d", tiny_beir, "-o", tmp_path / "dense"], capsys)
    assert code == 0, err
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "retr.cli.main", "serve", "-i", str(tmp_path / "dense"),
                             "--host", "127.0.0.1", "--port", str(port), "-k", "2", "--max-k", "5",
                             "--max-query-chars", "20", "--max-batch-queries", "2", "--max-batch", "7",
                             "--max-wait-ms", "3", "--max-pending", "9", "--no-micro-batching"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_health(url, proc)
        status, info = http(f"{url}/info")
        assert info["limits"] == {"max_query_chars": 20, "max_k": 5, "max_batch_queries": 2, "default_k": 2}
        # --no-micro-batching wins over --max-batch/--max-wait-ms: one query per forward
        assert (info["batching"]["max_batch"], info["batching"]["max_wait_ms"]) == (1, 0)
        assert info["batching"]["max_pending"] == 9
        status, got = http(f"{url}/search", {"query": "aspirin heart"})
        assert status == 200 and len(got["hits"]) == 2  # -k
        assert http(f"{url}/search", {"query": "x" * 21})[0] == 422
        assert http(f"{url}/search", {"query": "aspirin", "k": 6})[0] == 422
        assert http(f"{url}/batch_search", {"queries": ["a", "b", "c"]})[0] == 413
        done = []
        threads = [threading.Thread(target=lambda i=i: done.append(http(f"{url}/search", {"query": f"q {i}"})[0]))
                   for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert done == [200] * 8 and http(f"{url}/info")[1]["batching"]["largest_batch"] == 1
    finally:
        proc.terminate()
        proc.wait(60)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "retr.cli.main", "serve", "-i", str(tmp_path / "dense"),
                             "--port", str(port), "--max-batch", "7", "--max-wait-ms", "3"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    try:
        _wait_health(url := f"http://127.0.0.1:{port}", proc)
        batching = http(f"{url}/info")[1]["batching"]
        assert (batching["max_batch"], batching["max_wait_ms"], batching["max_pending"]) == (7, 3.0, 4096)
    finally:
        proc.terminate()
        proc.wait(60)
