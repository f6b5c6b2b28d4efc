"""Reading and writing FAISS index directories (``index.faiss`` + ``docids.json`` [+ ``vectors.npy``] +
``meta.json``), kept apart from ``FaissIndex`` so building and persistence evolve separately.

``write_index_dir`` writes atomically (``atomic.atomic_dir``) and records the size and checksum (xxh3-128) of each file
in ``meta.json`` (``"checksums"``); the index file is streamed through Python in 1 MiB chunks, so its
checksum costs no second pass and a full disk raises an ``OSError`` carrying ENOSPC (turned into one line).
``read_index_dir`` refuses, in one line, anything that is not what was written: missing or resized files,
checksum mismatches (every file unless memory-mapped; ``docids.json`` always), a
``meta.json`` of the wrong shape, counts or dims that disagree, non-string or duplicate ids. This is what
ties ids to rows: a ``docids.json`` rotated by one is refused rather than answering with wrong ids.
Directories written before checksums existed still load, with one warning. (Sizes only for ``vectors.npy``,
which is memory-mapped and read by rows.)
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from .atomic import atomic_dir, fault_point, read_json
from .errors import ArtifactError
from .shards import StackedVectors, write_ids_json
from .validate import CHUNK, HashingWriter, check_id_list, check_index_meta, file_digest, verify_files

log = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
IDS_FILE = "docids.json"
META_FILE = "meta.json"
VECTORS_FILE = "vectors.npy"


def write_index_dir(directory: Path, index: Any, docids: list[str], meta: dict[str, Any],
                    vectors: "np.ndarray | StackedVectors | None" = None) -> dict[str, Any]:
    """Write the directory atomically; returns the meta as written (with ``checksums``).

    ``docids.json`` and ``vectors.npy`` are streamed (memory-mapped vectors are never read whole).
    ``vectors.npy`` gets its size recorded, not a checksum: it is always memory-mapped on load and read by rows,
    so hashing it on every load would read it whole; its header is checked against the index instead."""
    with atomic_dir(directory, kind="index") as tmp:
        sums = {INDEX_FILE: _write_faiss(index, tmp / INDEX_FILE)}
        write_ids_json(tmp / IDS_FILE, docids)
        sums[IDS_FILE] = file_digest(tmp / IDS_FILE)
        fault_point("wrote docids")
        if vectors is not None:
            stacked = vectors if isinstance(vectors, StackedVectors) else StackedVectors([vectors])
            stacked.save_npy(tmp / VECTORS_FILE)
            sums[VECTORS_FILE] = {"bytes": (tmp / VECTORS_FILE).stat().st_size}
        meta = dict(meta, count=len(docids), has_vectors=vectors is not None, checksums=sums)
        with open(tmp / META_FILE, "w", encoding="utf-8") as fh:
            json.dump(meta, fh, indent=2)
    return meta


def read_index_dir(directory: Path, mmap: bool = False) -> tuple[Any, list[str], dict[str, Any], np.ndarray | None]:
    """(faiss index, ids, meta, stored vectors or None), each checked against the others and ``meta.json``.

    Readers take no lock. If a writer swaps a new index in while this reads the files one by one (the directory
    under the name changes: another inode), the mixed read fails its checks and is simply read again."""
    for attempt in range(3):
        before = _inode(directory)
        try:
            return _read_index_dir(directory, mmap)
        except (ArtifactError, OSError):  # OSError: a file of the swapped-out copy removed under us
            if attempt == 2 or before is None or _inode(directory) == before:
                raise
            log.info("%s was replaced while being read; reading it again", directory)
    raise AssertionError("unreachable")


def _inode(path: Path) -> tuple[int, int, int] | None:
    """Identity of the directory under the name; ctime too, as a freed inode number is soon reused."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_ctime_ns


def _read_index_dir(directory: Path, mmap: bool) -> tuple[Any, list[str], dict[str, Any], np.ndarray | None]:
    if not directory.is_dir():
        raise ArtifactError(f"{directory}: index directory not found" + _leftover_hint(directory))
    for name in (INDEX_FILE, IDS_FILE, META_FILE):
        if not (directory / name).exists():
            raise ArtifactError(f"{directory}: not an index directory (missing {name})")
    meta = check_index_meta(read_json(directory / META_FILE), str(directory / META_FILE))
    sums = meta.get("checksums")
    if sums is None:
        _warn_unverified(directory)
    else:
        verify_files(directory, sums, full=(IDS_FILE,) if mmap else (IDS_FILE, INDEX_FILE))
    docids = check_id_list(read_json(directory / IDS_FILE), str(directory / IDS_FILE))
    index = _read_faiss(directory / INDEX_FILE, mmap)
    if index.ntotal != len(docids):
        raise ArtifactError(f"{directory}: index holds {index.ntotal} vectors but {IDS_FILE} lists {len(docids)} ids")
    for key, have in (("count", len(docids)), ("dim", int(index.d))):
        if key in meta and meta[key] != have:
            raise ArtifactError(f"{directory / META_FILE}: says {key} {meta[key]} but the index has {have}")
    if len(set(docids)) != len(docids):
        raise ArtifactError(f"{directory / IDS_FILE}: duplicate ids")
    vectors = None
    if (directory / VECTORS_FILE).exists():
        try:  # memory-mapped either way: re-scoring reads only the candidate rows
            vectors = np.load(directory / VECTORS_FILE, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as e:
            raise ArtifactError(f"{directory / VECTORS_FILE}: cannot read ({_first_line(e)})") from None
        if vectors.shape != (len(docids), int(index.d)):
            raise ArtifactError(f"{directory / VECTORS_FILE}: shape {vectors.shape}, expected "
                                f"({len(docids)}, {int(index.d)})")
    return index, docids, meta, vectors


def _write_faiss(index: Any, path: Path) -> dict[str, Any]:
    w = HashingWriter(path)
    try:
        faiss.write_index(index, faiss.PyCallbackIOWriter(w.write, CHUNK))
    finally:
        digest = w.close()
    return digest


def _read_faiss(path: Path, mmap: bool) -> Any:
    if mmap:
        # IO_FLAG_MMAP_IFC maps flat codes too (IO_FLAG_MMAP alone maps only IVF lists), so a flat, IVF or HNSW
        # index larger than RAM is read from the page cache as it is searched
        flag = getattr(faiss, "IO_FLAG_MMAP_IFC", faiss.IO_FLAG_MMAP)
        try:
            return faiss.read_index(str(path), flag | faiss.IO_FLAG_READ_ONLY)
        except RuntimeError as e:
            log.info("cannot memory-map %s (%s); reading it into RAM", path, _first_line(e))
    try:
        return faiss.read_index(str(path))
    except RuntimeError as e:
        raise ArtifactError(f"{path}: cannot read FAISS index ({_first_line(e)}); rebuild it") from None


def _first_line(e: BaseException) -> str:
    """The informative part of a (possibly multi-line, C++-prefixed) library message."""
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    text = lines[-1] if lines else type(e).__name__
    return text.split("Error: ", 1)[-1].strip()[:200]


_warned: set[str] = set()


def _warn_unverified(directory: Path) -> None:
    key = str(directory.resolve())
    if key not in _warned:
        _warned.add(key)
        log.warning("%s was written by an older retr without checksums: its ids are not verified against the "
                    "rows; rebuild it (retr index) to add them", directory)


def _leftover_hint(directory: Path) -> str:
    olds = sorted(directory.parent.glob(f".{directory.name}.old-*")) if directory.parent.is_dir() else []
    if olds:
        return (f"; a run killed while replacing it left the previous index in {olds[-1]}: the next "
                f"`retr index -o {directory}` puts it back first")
    return ""
