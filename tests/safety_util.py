"""Helpers for the safety tests (issue #17): one-line errors, embedding shards from a tiny model, `retr` in a
subprocess that a test can stop, kill or signal at a chosen step of its write sequence."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from conftest import DOCS, write_beir


def one_error_line(err: str) -> str:
    """The CLI's error contract: no traceback, exactly one ``error:`` line (log lines may precede it)."""
    assert "Traceback" not in err, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err[-3000:]
    return lines[0]


def renamed_docs(prefix: str):
    """The test corpus with other ids: an index of it is told apart from the original by its hits."""
    return [(f"{prefix}{d}", t, x) for d, t, x in DOCS]


def make_shards(root: Path, model_dir: Path, docs=DOCS) -> Path:
    """``retr encode``'s output for ``docs`` (one shard), so `retr index --from-embeddings` needs no torch."""
    from retr.indexing.shards import write_shard
    from retr.retriever.data.beir import load_corpus
    from retr.retriever.modeling import DualEncoder
    from retr.retriever.search import index_meta

    corpus = load_corpus(write_beir(root.parent / f"{root.name}-data", docs=docs) / "corpus.jsonl")
    enc = DualEncoder.from_pretrained(model_dir)
    vectors = enc.encode_passages(corpus.passages(enc.passage_tower.config.title_sep))
    write_shard(root, 0, 1, vectors, corpus.ids, index_meta(enc, corpus))
    return root


def retr_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "retr.cli.main", *map(str, args)]


def start_retr(args, fault_at: str | int | None = None, action: str = "kill", **popen) -> subprocess.Popen:
    """`retr ARGS` in a subprocess; ``fault_at`` (step number or label) SIGKILLs it there, or with
    ``action="stop"`` SIGSTOPs it there (the test then signals it)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
    if fault_at is not None:
        env.update(RETR_TEST_FAULT_AT=str(fault_at), RETR_TEST_FAULT_ACTION=action)
    return subprocess.Popen(retr_cmd(*args), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **popen)


def wait_stopped(proc: subprocess.Popen, timeout: float = 60) -> None:
    """Wait until ``proc`` stopped itself (SIGSTOP at its fault step)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode} before its fault step: {proc.stderr.read()[-2000:]}")
        state = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state == "T":
            return
        time.sleep(0.02)
    proc.kill()
    raise AssertionError("the process never reached its fault step")


def leftovers(path: Path) -> list[str]:
    """Temp or backup directories a write of ``path`` may leave beside it (lock files excluded)."""
    return sorted(p.name for p in path.parent.iterdir()
                  if p.name.startswith((f".{path.name}.tmp-", f".{path.name}.old-")))
