"""Embeddings on disk: shards that ``retr encode`` writes, the resumable writer behind every corpus encoding, and a
read-only view that stacks shards without copying them.

A shard is a directory ``shard-00000-of-00004/`` holding ``embeddings.npy`` (float32 [n, dim]), ``docids.json``
and ``meta.json``. While it is being written it lives in a hidden work directory beside it, filled block by
block through a memory map, with ``progress.json`` recording how many rows are done; a killed run that is
started again with the same settings continues from there, and the finished directory is renamed into place.

Memory: writing holds one block of vectors; ``StackedVectors`` memory-maps every shard and copies only the
rows a caller asks for, so merging shards into an index never needs a second full copy of the vectors.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from .atomic import ArtifactError, atomic_dir, read_json, write_json_atomic
from .validate import check_fields, check_id_list, file_digest, verify_files

log = logging.getLogger(__name__)

EMBEDDINGS_FILE = "embeddings.npy"
PROGRESS_FILE = "progress.json"


def shard_name(shard: int, num_shards: int) -> str:
    return f"shard-{shard:05d}-of-{num_shards:05d}"


def shard_range(n: int, shard: int, num_shards: int) -> tuple[int, int]:
    """Contiguous [start, end) rows of shard ``shard`` (sizes differ by at most one)."""
    if not 0 <= shard < num_shards:
        raise ValueError(f"shard {shard} out of range for {num_shards} shards")
    base, extra = divmod(n, num_shards)
    start = shard * base + min(shard, extra)
    return start, start + base + (1 if shard < extra else 0)


def drop_pages(array: np.ndarray, start: int, end: int) -> None:
    """Tell the kernel this process is done with rows ``start..end`` of a memory-mapped array (``MADV_DONTNEED``).

    Pages of a file mapping that a process touched count in its RSS until it unmaps them, so streaming through
    a 1.5 GiB memmap would show 1.5 GiB of RSS although the kernel may reclaim it; after this call they are only
    page cache. Call it only on clean pages (read-only maps, or after ``flush``). No-op for other arrays."""
    import mmap

    mm = getattr(array, "_mmap", None)
    if mm is None or not hasattr(mm, "madvise") or end <= start:
        return
    row = array.strides[0]
    base = int(getattr(array, "offset", 0)) % mmap.ALLOCATIONGRANULARITY
    lo = base + start * row
    hi = min(len(mm), base + end * row)
    lo -= lo % mmap.PAGESIZE
    try:
        mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
    except (OSError, ValueError):
        pass


class PartialEmbeddings:
    """A float32 [rows, dim] ``embeddings.npy`` in ``work_dir``, filled in order and resumable.

    ``key`` (JSON-able) names what is being encoded (model fingerprint, corpus, row range, block size,
    precision); a work directory left with another key is discarded and started over. ``done`` is the
    number of rows already written and flushed."""

    def __init__(self, work_dir: str | os.PathLike, rows: int, dim: int, key: dict[str, Any]):
        self.dir = Path(work_dir)
        self.rows, self.dim, self.key = rows, dim, key
        self.done = 0
        progress = self.dir / PROGRESS_FILE
        state = None
        if progress.exists():
            try:
                state = read_json(progress)
                self.vectors = np.load(self.dir / EMBEDDINGS_FILE, mmap_mode="r+", allow_pickle=False)
                if state.get("key") != key or self.vectors.shape != (rows, dim) or self.vectors.dtype != np.float32:
                    log.warning("%s holds another encoding (settings changed); starting over", self.dir)
                    state = None
            except (ArtifactError, OSError, ValueError) as e:
                log.warning("%s is damaged (%s); starting over", self.dir, e)
                state = None
        if state is None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir.mkdir(parents=True)
            self.vectors = np.lib.format.open_memmap(self.dir / EMBEDDINGS_FILE, mode="w+", dtype=np.float32,
                                                     shape=(rows, dim))
            reserve_blocks(self.dir / EMBEDDINGS_FILE)  # issue 18: a full disk is ENOSPC here, not SIGBUS later
            self._save_progress()
        else:
            self.done = int(state["done"])

    def _save_progress(self) -> None:
        write_json_atomic(self.dir / PROGRESS_FILE, {"key": self.key, "done": self.done, "rows": self.rows})

    @property
    def complete(self) -> bool:
        return self.done >= self.rows

    def write(self, vectors: np.ndarray) -> None:
        """Append the next block of rows; flushed to disk before ``done`` moves past them."""
        n = len(vectors)
        if self.done + n > self.rows:
            raise ValueError(f"{self.dir}: writing {n} rows past the end ({self.done} of {self.rows} done)")
        self.vectors[self.done:self.done + n] = vectors
        self.vectors.flush()
        drop_pages(self.vectors, self.done, self.done + n)
        self.done += n
        self._save_progress()

    def publish(self, final: str | os.PathLike, docids: Iterable[str], meta: dict[str, Any]) -> Path:
        """Move the finished embeddings, their ids and ``meta`` into ``final`` atomically; the work dir goes."""
        if not self.complete:
            raise ValueError(f"{self.dir}: only {self.done} of {self.rows} rows encoded")
        self.vectors.flush()
        del self.vectors
        final = Path(final)
        with atomic_dir(final) as tmp:
            os.replace(self.dir / EMBEDDINGS_FILE, tmp / EMBEDDINGS_FILE)
            count = write_ids_json(tmp / "docids.json", docids)
            if count != self.rows:
                raise ValueError(f"{count} ids for {self.rows} embeddings")
            (tmp / "meta.json").write_text(json.dumps({**meta, "count": count, "dim": self.dim,
                                                       "checksums": shard_checksums(tmp)}, indent=2))
        shutil.rmtree(self.dir, ignore_errors=True)
        self.vectors = np.load(final / EMBEDDINGS_FILE, mmap_mode="r", allow_pickle=False)
        return final

    def discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def shard_checksums(directory: Path) -> dict[str, Any]:
    """What ``load_shards`` verifies: the checksum of ``docids.json`` (ties the ids to the rows) and the size of
    ``embeddings.npy`` (memory-mapped when read, so not hashed)."""
    return {"docids.json": file_digest(directory / "docids.json"),
            EMBEDDINGS_FILE: {"bytes": (directory / EMBEDDINGS_FILE).stat().st_size}}


def write_ids_json(path: Path, docids: Iterable[str]) -> int:
    """Write a JSON list of ids without building the whole JSON string in memory; returns the count."""
    n = 0
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("[")
        for d in docids:
            fh.write((", " if n else "") + json.dumps(d, ensure_ascii=False))
            n += 1
        fh.write("]")
    return n


class StackedVectors:
    """Row-wise concatenation of several [n_i, dim] arrays (usually memory maps), read block by block."""

    def __init__(self, parts: Sequence[np.ndarray]):
        if not parts:
            raise ValueError("no vectors")
        dims = {p.shape[1] for p in parts if p.ndim == 2}
        if len(dims) != 1 or any(p.ndim != 2 for p in parts):
            raise ArtifactError(f"vector parts disagree in shape: {[p.shape for p in parts]}")
        self.parts = list(parts)
        self.offsets = np.cumsum([0] + [len(p) for p in parts])
        self.shape = (int(self.offsets[-1]), dims.pop())

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self.shape[1] * 4

    def rows(self, start: int, end: int) -> np.ndarray:
        """float32 [end - start, dim] copy of the given rows."""
        end = min(end, len(self))
        out = np.empty((max(0, end - start), self.shape[1]), np.float32)
        for i, part in enumerate(self.parts):
            lo, hi = max(start, self.offsets[i]), min(end, self.offsets[i + 1])
            if lo < hi:
                out[lo - start:hi - start] = part[lo - self.offsets[i]:hi - self.offsets[i]]
        return out

    def take(self, rows: np.ndarray) -> np.ndarray:
        """float32 [len(rows), dim] for arbitrary row numbers."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.shape[1]), np.float32)
        which = np.searchsorted(self.offsets, rows, side="right") - 1
        for i in np.unique(which):
            sel = which == i
            out[sel] = self.parts[i][rows[sel] - self.offsets[i]]
        return out

    def __getitem__(self, rows) -> np.ndarray:
        if isinstance(rows, slice):
            start, stop, step = rows.indices(len(self))
            return self.rows(start, stop)[::step]
        if np.ndim(rows) == 0:
            return self.take(np.array([int(rows)]))[0]
        return self.take(np.asarray(rows))

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        """Every row in one array (memory grows with the whole set: for small sets and tests)."""
        out = self.rows(0, len(self))
        return out if dtype is None else out.astype(dtype)

    def blocks(self, block: int = 65_536) -> Iterator[tuple[int, np.ndarray]]:
        """Consecutive copies of ``block`` rows; pages already read are released (``drop_pages``)."""
        for s in range(0, len(self), block):
            rows = self.rows(s, s + block)
            for i, part in enumerate(self.parts):
                lo, hi = max(s, self.offsets[i]), min(s + len(rows), self.offsets[i + 1])
                if lo < hi:
                    drop_pages(part, int(lo - self.offsets[i]), int(hi - self.offsets[i]))
            yield s, rows

    def save_npy(self, path: str | os.PathLike, block: int = 65_536) -> None:
        """Write the stacked rows as one .npy file, block by block."""
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=self.shape)
        reserve_blocks(path)
        for s, rows in self.blocks(block):
            out[s:s + len(rows)] = rows
            out.flush()
            drop_pages(out, s, s + len(rows))
        del out


def reserve_blocks(path: str | os.PathLike) -> None:
    """Allocate the disk blocks of a freshly created (sparse) memmapped file now (``posix_fallocate``), so a full
    disk raises ``OSError`` (ENOSPC) here instead of killing the process with SIGBUS when a page is written
    later (seen on tmpfs: `retr index` died with "Bus error"). Filesystems that cannot preallocate are left
    as they are."""
    import errno

    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, max(1, os.fstat(fd).st_size))
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise OSError(e.errno, e.strerror, str(path)) from None
    finally:
        os.close(fd)


def write_shard(root: str | Path, shard: int, num_shards: int, vectors: np.ndarray, docids: list[str],
                meta: dict[str, Any]) -> Path:
    """Write a whole shard at once (vectors already in memory)."""
    final = Path(root) / shard_name(shard, num_shards)
    with atomic_dir(final) as tmp:
        np.save(tmp / EMBEDDINGS_FILE, np.ascontiguousarray(vectors, dtype=np.float32))
        write_ids_json(tmp / "docids.json", docids)
        (tmp / "meta.json").write_text(json.dumps({**meta, "shard": shard, "num_shards": num_shards,
                                                   "count": len(docids), "dim": int(vectors.shape[1]),
                                                   "checksums": shard_checksums(tmp)}, indent=2))
    return final


def load_shards(root: str | Path, mmap: bool = True) -> tuple[StackedVectors, list[str], dict[str, Any]]:
    """All shards under ``root`` in shard order -> (stacked vectors, ids, meta of shard 0); ``root`` may also be
    one shard directory (to index shards separately and search them together).

    The vectors stay memory-mapped (``mmap=False`` reads each shard into RAM)."""
    root = Path(root)
    single = (root / EMBEDDINGS_FILE).exists() and (root / "meta.json").exists()  # one shard directory
    dirs = [root] if single else sorted(p for p in root.glob("shard-*-of-*") if p.is_dir())
    if not dirs:
        raise ArtifactError(f"{root}: no embedding shards (shard-*-of-*) found")
    metas = [check_fields(read_json(d / "meta.json"), {"shard": "integer", "num_shards": "integer",
                                                       "checksums": "object"}, str(d / "meta.json"),
                          required=("shard", "num_shards")) for d in dirs]
    for d, m in zip(dirs, metas):
        if "checksums" in m:
            verify_files(d, m["checksums"], full=("docids.json",))
    num = metas[0]["num_shards"]
    have = sorted(m["shard"] for m in metas)
    if not single and (have != list(range(num)) or any(m["num_shards"] != num for m in metas)):
        missing = sorted(set(range(num)) - set(have))
        raise ArtifactError(f"{root}: incomplete shard set (have {len(have)} of {num}; missing {missing[:5]})")
    for d, m in zip(dirs, metas):
        for k in ("encoder", "corpus"):
            if m.get(k) != metas[0].get(k):
                raise ArtifactError(f"{d}/meta.json: {k} differs from {dirs[0].name} (shards of different runs?)")
    parts, ids = [], []
    for d in dirs:
        try:
            v = np.load(d / EMBEDDINGS_FILE, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ArtifactError(f"{d / EMBEDDINGS_FILE}: cannot read embeddings ({e})") from None
        part = check_id_list(read_json(d / "docids.json"), str(d / "docids.json"))
        if len(part) != len(v):
            raise ArtifactError(f"{d}: {len(v)} vectors but {len(part)} ids")
        parts.append(v)
        ids.extend(part)
    meta = {k: v for k, v in metas[0].items() if k not in ("shard", "count", "checksums")}
    return StackedVectors(parts), ids, meta
