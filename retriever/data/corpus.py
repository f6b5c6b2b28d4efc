"""``Corpus``: documents in file order, held in an Arrow table that is memory-mapped from a cache file, so a
corpus of millions of passages costs page cache, not Python objects.

``load_corpus(path)`` parses and validates ``corpus.jsonl`` once (same ``file:line`` errors as every reader
here), writes an Arrow IPC file (columns ``_id``, ``title``, ``text``, ``line``) plus a sorted table of 64-bit
id hashes, and keeps them under ``$RETR_CACHE_DIR/corpora/<key>`` (default ``~/.cache/retr``), where the key
is the file's path, size, mtime, ctime and inode (the stat fields git trusts; ctime catches an edit that
keeps the size and restores the mtime, e.g. ``cp -p``/``rsync -t``/``touch -r``). Later loads open the cache in
milliseconds; a new store removes the stores of the same path it supersedes. When the cache root
cannot be written, the store is built in a temp dir that is unlinked at once (the mapping stays valid).

Memory: building holds one block of 65,536 rows as Python strings plus 24 bytes per document (hash, row,
line); an open corpus holds 16 bytes per document of id hashes in RAM-backed mmap pages touched by lookups,
and texts only for the rows a caller asks for. ``docid -> row`` is a binary search over the hashes
(``np.searchsorted``) checked against the stored id, so hash collisions cannot return a wrong row.

Why not a library: Arrow (pyarrow) is the store; what it lacks is a persistent string -> row lookup that does
not build a hash table of every id at open time, hence the sorted hash array.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import mmap
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
from filelock import FileLock

from retr.indexing.errors import OutputError, describe_errno, write_errno

from .errors import DataError

log = logging.getLogger(__name__)

STORE_VERSION = 1
BLOCK_ROWS = 65_536
STALE_SECONDS = 6 * 3600  # a temp store untouched this long belongs to a killed build
SCHEMA = pa.schema([("_id", pa.string()), ("title", pa.string()), ("text", pa.string()), ("line", pa.int64())])


def cache_root() -> Path:
    """Where retr caches derived data: ``$RETR_CACHE_DIR``, else ``$XDG_CACHE_HOME/retr``, else ``~/.cache/retr``."""
    if os.environ.get("RETR_CACHE_DIR"):
        return Path(os.environ["RETR_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")) / "retr"


def join_title_text(title: str, text: str, sep: str = " ") -> str:
    """Title and text joined as BEIR's dense models do: ``(title + sep + text).strip()``."""
    return (title + sep + text).strip() if title else text.strip()


def hash_ids(ids: Sequence[str]) -> np.ndarray:
    """64-bit BLAKE2b of each id's UTF-8 bytes, uint64 [n] (stable across processes, unlike ``hash``)."""
    digests = b"".join(hashlib.blake2b(d.encode("utf-8", "surrogatepass"), digest_size=8).digest() for d in ids)
    return np.frombuffer(digests, dtype="<u8").copy() if ids else np.zeros(0, np.uint64)


@dataclass(frozen=True)
class CorpusBlock:
    """Rows ``start .. start + len(ids)`` of a corpus: ids and joined passages (title + sep + text)."""

    start: int
    ids: list[str]
    texts: list[str]


class ColumnView(Sequence):
    """A read-only ``Sequence[str]`` over one column; slices return lists, iteration goes block by block."""

    def __init__(self, column: pa.ChunkedArray):
        self._col = column

    def __len__(self) -> int:
        return len(self._col)

    def __getitem__(self, i):
        if isinstance(i, slice):
            start, stop, step = i.indices(len(self._col))
            if step != 1:
                return self._col.slice(start, max(0, stop - start)).to_pylist()[::step]
            return self._col.slice(start, max(0, stop - start)).to_pylist()
        if i < 0:
            i += len(self._col)
        if not 0 <= i < len(self._col):
            raise IndexError(i)
        return self._col[i].as_py()

    def __iter__(self) -> Iterator[str]:
        for s in range(0, len(self._col), BLOCK_ROWS):
            yield from self._col.slice(s, BLOCK_ROWS).to_pylist()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, (list, tuple, ColumnView)):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other))

    __hash__ = None  # type: ignore[assignment]  (mutable-sequence semantics, like list)

    def __repr__(self) -> str:
        return f"ColumnView({len(self)} rows)"


class Corpus:
    """Documents in file order (``load_corpus`` for files, ``Corpus.from_lists`` for small in-memory ones).

    ``fingerprint`` is the sha256 of the file's bytes (first 16 hex), what indexes record to refuse another
    corpus. ``ids``, ``titles`` and ``texts`` are lazy sequences; ``iter_blocks`` streams joined passages."""

    def __init__(self, table: pa.Table, id_hashes: np.ndarray, id_rows: np.ndarray, fingerprint: str = "",
                 path: str = "", mapping=None):
        self._table = table
        self._mapping = mapping  # the mmap.mmap under ``table`` (None for in-memory corpora)
        self._hashes, self._rows = id_hashes, id_rows
        self.fingerprint, self.path = fingerprint, path
        self.ids = ColumnView(table.column("_id"))
        self.titles = ColumnView(table.column("title"))
        self.texts = ColumnView(table.column("text"))

    @classmethod
    def from_lists(cls, ids: Sequence[str], titles: Sequence[str], texts: Sequence[str], fingerprint: str = "",
                   path: str = "") -> "Corpus":
        """An in-memory corpus (tests, subsets). Ids must be unique."""
        ids = list(ids)
        if len(set(ids)) != len(ids):
            raise ValueError("duplicate document ids")
        table = pa.table([pa.array(ids, pa.string()), pa.array(list(titles), pa.string()),
                          pa.array(list(texts), pa.string()), pa.array(np.arange(1, len(ids) + 1), pa.int64())],
                         schema=SCHEMA)
        hashes = hash_ids(ids)
        order = np.argsort(hashes, kind="stable")
        return cls(table, hashes[order], order.astype(np.int64), fingerprint or _hash_strings(ids), path)

    def __len__(self) -> int:
        return self._table.num_rows

    def __contains__(self, docid: object) -> bool:
        return isinstance(docid, str) and self._find(docid) >= 0

    def _find(self, docid: str, h: int | None = None) -> int:
        if h is None:
            h = int(hash_ids([docid])[0])
        pos = int(np.searchsorted(self._hashes, np.uint64(h)))
        while pos < len(self._hashes) and int(self._hashes[pos]) == h:
            row = int(self._rows[pos])
            if self.ids[row] == docid:
                return row
            pos += 1
        return -1

    def index_of(self, docid: str) -> int:
        """Row of ``docid`` (``KeyError`` when absent)."""
        row = self._find(docid)
        if row < 0:
            raise KeyError(docid)
        return row

    def rows_of(self, docids: Sequence[str]) -> np.ndarray:
        """Rows of many ids at once, int64 [n], -1 for ids the corpus lacks."""
        hashes = hash_ids(list(docids))
        return np.array([self._find(d, int(h)) for d, h in zip(docids, hashes)], dtype=np.int64)

    def passage_at(self, row: int, sep: str = " ") -> str:
        return join_title_text(self.titles[row], self.texts[row], sep)

    def passage(self, docid: str, sep: str = " ") -> str:
        """Title and text of ``docid`` joined as BEIR's dense models do."""
        return self.passage_at(self.index_of(docid), sep)

    def passages(self, sep: str = " ", start: int = 0, end: int | None = None) -> list[str]:
        """Joined passages of rows ``start..end`` as a list: memory grows with the range; prefer ``iter_blocks``."""
        return [t for block in self.iter_blocks(BLOCK_ROWS, sep, start, end) for t in block.texts]

    def iter_blocks(self, block_size: int = 8192, sep: str = " ", start: int = 0,
                    end: int | None = None) -> Iterator[CorpusBlock]:
        """Rows ``start..end`` in blocks of ``block_size``: memory holds one block of Python strings."""
        end = len(self) if end is None else min(end, len(self))
        for s in range(start, end, block_size):
            part = self._table.slice(s, min(block_size, end - s))
            ids = part.column("_id").to_pylist()
            texts = [join_title_text(t, x, sep) for t, x in
                     zip(part.column("title").to_pylist(), part.column("text").to_pylist())]
            self.release()
            yield CorpusBlock(s, ids, texts)

    def release(self) -> None:
        """Drop the mapped pages read so far from this process's RSS (they stay in the page cache): a pass over a
        big corpus then shows one block in RSS, not the whole file."""
        if self._mapping is not None:
            import mmap

            try:
                self._mapping.madvise(mmap.MADV_DONTNEED)
            except (OSError, ValueError, AttributeError):
                pass

    def iter_ids(self, start: int = 0, end: int | None = None) -> Iterator[str]:
        """Ids of rows ``start..end``, read block by block."""
        end = len(self) if end is None else min(end, len(self))
        column = self._table.column("_id")
        for s in range(start, end, BLOCK_ROWS):
            ids = column.slice(s, min(BLOCK_ROWS, end - s)).to_pylist()
            self.release()
            yield from ids

    def line_of(self, row: int) -> int:
        """Line of ``corpus.jsonl`` the row came from (1-based)."""
        return int(self._table.column("line")[row].as_py())

    def subset(self, docids: Sequence[str]) -> "Corpus":
        """An in-memory corpus of the given documents (in that order)."""
        rows = [self.index_of(d) for d in docids]
        return Corpus.from_lists([self.ids[r] for r in rows], [self.titles[r] for r in rows],
                                 [self.texts[r] for r in rows], fingerprint=_hash_strings(list(docids), self.fingerprint),
                                 path=self.path)

    def __repr__(self) -> str:
        return f"Corpus({self.path or '<memory>'}, {len(self)} docs, fingerprint={self.fingerprint})"


def _hash_strings(items: Sequence[str], salt: str = "") -> str:
    h = hashlib.sha256(salt.encode())
    for s in items:
        h.update(s.encode("utf-8", "surrogatepass") + b"\0")
    return h.hexdigest()[:16]


# ---------------------------------------------------------------- building and caching the store

def _stat_key(path: Path) -> tuple[str, dict]:
    st = path.stat()
    ident = {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns,
             "inode": st.st_ino}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:20], ident


def load_corpus(path: str | os.PathLike, rebuild: bool = False) -> Corpus:
    """Open ``corpus.jsonl`` through its cached Arrow store (built, validated, on first use).

    Errors: ``DataError`` naming the file and line (malformed JSON, missing/empty ``_id``, missing ``text``,
    non-string fields, duplicate ids, an empty corpus)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, None, "corpus file not found" if not path.exists() else "corpus path is not a file")
    key, ident = _stat_key(path)
    store = cache_root() / "corpora" / key
    if not rebuild:
        corpus = _open_store(store, ident, path)
        if corpus is not None:
            return corpus
    try:
        store.parent.mkdir(parents=True, exist_ok=True)
        for stale in store.parent.glob(f".{key}.tmp-*"):  # left by a killed build (a live one renews its mtime)
            if time.time() - stale.stat().st_mtime > STALE_SECONDS:
                shutil.rmtree(stale, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=store.parent))
        persistent = True
    except OSError as e:
        log.warning("cannot write the corpus cache under %s (%s); building a temporary one", store.parent, e.strerror)
        work, persistent = Path(tempfile.mkdtemp(prefix="retr-corpus-")), False
    t0 = time.perf_counter()
    try:
        try:
            _build_store(path, work, ident)
        except BaseException as e:  # a bad line, a full disk, Ctrl-C: no partial copy left for hours
            shutil.rmtree(work, ignore_errors=True)
            code = None if isinstance(e, DataError) else write_errno(e)
            if code in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
                raise OutputError(f"cannot write the corpus store under {work.parent}: {describe_errno(code)} (it "
                                  f"needs about the size of {path.name}; set RETR_CACHE_DIR to another disk)") from None
            raise
        if persistent:
            # Publishing is serialised (e.g. two torchrun ranks building at once): without the lock, one
            # process could delete as "stale" the store another one had just renamed into place.
            with FileLock(str(store.parent / f".{key}.lock")):
                raced = _open_store(store, ident, path) if store.exists() else None
                if raced is not None:  # another process finished first: use its store
                    shutil.rmtree(work, ignore_errors=True)
                    return raced
                shutil.rmtree(store, ignore_errors=True)  # stale (the file changed), damaged, or --rebuild
                os.replace(work, store)
                work = store
                _remove_superseded(store, ident["path"])
                corpus = _open_store(work, ident, path)
        else:
            corpus = _open_store(work, ident, path)
        if corpus is None:
            raise DataError(path, None, f"could not open the corpus store just built in {work}")
        seconds = time.perf_counter() - t0
        log.log(logging.INFO if seconds > 2 else logging.DEBUG, "read %s: %d documents in %.1fs (cached in %s)",
                path, len(corpus), seconds, work if persistent else "a temp dir")
        return corpus
    finally:
        if not persistent:
            shutil.rmtree(work, ignore_errors=True)  # open mappings stay valid after unlink


def _remove_superseded(store: Path, source: str) -> None:
    """Remove the other stores of ``source`` (built from earlier versions of the file): each holds a full copy of
    the corpus. A process still reading one keeps its mapping (the pages live until it unmaps them)."""
    for other in store.parent.iterdir():
        if other == store or other.name.startswith(".") or not other.is_dir():
            continue
        try:
            if json.loads((other / "meta.json").read_text()).get("source", {}).get("path") == source:
                shutil.rmtree(other, ignore_errors=True)
                log.debug("removed the superseded corpus store %s", other)
        except (OSError, ValueError, AttributeError):
            continue


def _open_store(store: Path, ident: dict, source: Path) -> Corpus | None:
    meta_path = store / "meta.json"
    if not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("version") != STORE_VERSION or meta.get("source") != ident:
            return None
        with open(store / "corpus.arrow", "rb") as fh:  # our own mapping, so pages can be released (``release``)
            mapping = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        table = pa.ipc.open_file(pa.BufferReader(pa.py_buffer(mapping))).read_all()
        hashes = np.load(store / "id_hashes.npy", mmap_mode="r", allow_pickle=False)
        rows = np.load(store / "id_rows.npy", mmap_mode="r", allow_pickle=False)
        if table.num_rows != meta["count"] or len(hashes) != meta["count"] or len(rows) != meta["count"]:
            raise ValueError("row counts disagree")
    except (OSError, ValueError, KeyError, pa.ArrowException) as e:
        log.warning("corpus cache %s is damaged (%s); rebuilding it", store, str(e).splitlines()[0] if str(e) else e)
        return None
    return Corpus(table, hashes, rows, fingerprint=meta["fingerprint"], path=str(source), mapping=mapping)


def _build_store(path: Path, out: Path, ident: dict) -> None:
    """Parse ``path`` block by block into ``out`` (corpus.arrow, id_hashes.npy, id_rows.npy, meta.json)."""
    from .beir import read_jsonl  # the one validating JSONL reader

    hasher = hashlib.sha256()
    hashes: list[np.ndarray] = []
    buf: dict[str, list] = {"_id": [], "title": [], "text": [], "line": []}
    count = 0
    with pa.OSFile(str(out / "corpus.arrow"), "wb") as sink, pa.ipc.new_file(sink, SCHEMA) as writer:
        def flush() -> None:
            try:
                batch = pa.record_batch([pa.array(buf[c], SCHEMA.field(c).type) for c in SCHEMA.names], schema=SCHEMA)
            except (pa.ArrowException, UnicodeEncodeError):
                for i, line in enumerate(buf["line"]):
                    for c in ("_id", "title", "text"):
                        try:
                            buf[c][i].encode("utf-8")
                        except UnicodeEncodeError:
                            raise DataError(path, line, f'field "{c}" is not valid Unicode (a lone surrogate escape)') from None
                raise
            writer.write_batch(batch)
            hashes.append(hash_ids(buf["_id"]))
            for v in buf.values():
                v.clear()

        for line_no, obj in read_jsonl(path, ("_id", "text"), "corpus", hasher):
            title = obj.get("title") or ""
            if not isinstance(title, str):
                raise DataError(path, line_no, f'field "title" must be a string, got {type(title).__name__}')
            buf["_id"].append(obj["_id"])
            buf["title"].append(title)
            buf["text"].append(obj["text"])
            buf["line"].append(line_no)
            count += 1
            if len(buf["line"]) >= BLOCK_ROWS:
                flush()
        if buf["line"]:
            flush()
    if count == 0:
        raise DataError(path, None, "corpus is empty")
    all_hashes = np.concatenate(hashes)
    order = np.argsort(all_hashes, kind="stable").astype(np.int64)
    sorted_hashes = all_hashes[order]
    _check_duplicates(path, out, sorted_hashes, order)
    np.save(out / "id_hashes.npy", sorted_hashes)
    np.save(out / "id_rows.npy", order)
    meta = {"version": STORE_VERSION, "source": ident, "count": count, "fingerprint": hasher.hexdigest()[:16]}
    (out / "meta.json").write_text(json.dumps(meta, indent=2))


def _check_duplicates(path: Path, out: Path, sorted_hashes: np.ndarray, order: np.ndarray) -> None:
    """Raise for the duplicate id whose second occurrence comes first in the file (as a one-pass reader would)."""
    same = np.flatnonzero(sorted_hashes[1:] == sorted_hashes[:-1])
    if not len(same):
        return
    table = pa.ipc.open_file(pa.memory_map(str(out / "corpus.arrow"))).read_all()
    ids, lines = table.column("_id"), table.column("line")
    worst: tuple[int, int, str] | None = None
    for s in same:
        a, b = sorted((int(order[s]), int(order[s + 1])))
        docid = ids[a].as_py()
        if docid == ids[b].as_py():
            first, second = int(lines[a].as_py()), int(lines[b].as_py())
            if worst is None or second < worst[1]:
                worst = (first, second, docid)
    if worst is not None:
        raise DataError(path, worst[1], f'duplicate "_id" {worst[2]!r} (first on line {worst[0]})')
