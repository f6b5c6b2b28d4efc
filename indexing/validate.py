"""Checks that artifacts are what their writer wrote before anything reads them, each failing in one line.

* Checksums: writers record the size and a checksum of each file in ``meta.json`` (``"checksums"``); readers
  compare. For an index this is what ties ``docids.json`` to the rows of ``index.faiss``: a docids file
  rotated by one, or an index file swapped for another, no longer matches, so a search can never answer
  with the wrong ids. Sizes are always checked (catches truncation even with ``--mmap``); the checksum of a
  large file only when it is read in full anyway (not memory-mapped). The checksum is xxh3-128 (``xxhash``,
  ~6.5 GB/s here: verifying a 1.5 GB index adds ~0.3 s, sha256 added 2.2 s); it detects damage and mix-ups,
  not deliberate forgery (whoever can edit the files can edit ``meta.json`` too). ``sha256`` entries are
  verified as such.
* Shapes: ``meta.json`` of the wrong JSON type (a list, ``"encoder": "tiny"``) is refused by field.
* safetensors: the header says how many bytes of tensors follow; a truncated file (or one with extra
  bytes) is caught from the header alone, naming the file.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
from pathlib import Path
from typing import Any, Iterable

from .errors import ArtifactError

log = logging.getLogger(__name__)
CHUNK = 1 << 20


def _new_hash(algo: str | None = None) -> tuple[str, Any]:
    """(name, hash object): xxh3-128 when ``xxhash`` is installed (a dependency), else sha256."""
    if algo in (None, "xxh3_128"):
        try:
            import xxhash

            return "xxh3_128", xxhash.xxh3_128()
        except ImportError:
            if algo is not None:
                raise
    return "sha256", hashlib.sha256()


def file_digest(path: str | os.PathLike, algo: str | None = None) -> dict[str, Any]:
    name, h = _new_hash(algo)
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return {"bytes": size, name: h.hexdigest()}


class HashingWriter:
    """A writable file that hashes what passes through (``write(bytes) -> int``), so a checksum costs no
    second pass over a large file."""

    def __init__(self, path: str | os.PathLike):
        self.fh = open(path, "wb")
        self.algo, self.h = _new_hash()
        self.size = 0

    def write(self, data: bytes) -> int:
        from .atomic import fault_point

        self.fh.write(data)
        self.h.update(data)
        self.size += len(data)
        fault_point("write chunk")
        return len(data)

    def close(self) -> dict[str, Any]:
        self.fh.flush()
        self.fh.close()
        return {"bytes": self.size, self.algo: self.h.hexdigest()}


def checksums(directory: str | os.PathLike, names: Iterable[str]) -> dict[str, dict[str, Any]]:
    directory = Path(directory)
    return {n: file_digest(directory / n) for n in names if (directory / n).is_file()}


def verify_files(directory: str | os.PathLike, expected: dict[str, Any], full: Iterable[str] = (),
                 record: str = "meta.json") -> None:
    """Compare files with the checksums a writer recorded in ``record``: sizes of all, content checksums of those
    in ``full``."""
    directory = Path(directory)
    if not isinstance(expected, dict):
        raise ArtifactError(f"{directory / record}: checksums must be a JSON object")
    full = set(full)
    for name, want in expected.items():
        path = directory / name
        if not isinstance(want, dict) or not isinstance(want.get("bytes"), int):
            raise ArtifactError(f"{directory / record}: malformed checksum entry for {name}")
        if not path.is_file():
            raise ArtifactError(f"{path}: missing ({record} lists it)")
        size = path.stat().st_size
        if size != want["bytes"]:
            raise ArtifactError(f"{path}: {size:,} bytes, but {want['bytes']:,} were written (truncated or replaced)")
        algo = next((a for a in ("xxh3_128", "sha256") if want.get(a)), None)
        if name in full and algo and file_digest(path, algo)[algo] != want[algo]:
            raise ArtifactError(f"{path}: checksum differs from the one in {record} (changed after it was written)")



# ---------- meta.json shapes ----------
_TYPES = {"object": dict, "string": str, "integer": int, "boolean": bool, "list": list, "number": (int, float)}


def check_fields(obj: Any, schema: dict[str, str], where: str, required: Iterable[str] = ()) -> dict:
    """``obj`` must be a JSON object whose listed fields (when present) have the named JSON type."""
    if not isinstance(obj, dict):
        raise ArtifactError(f"{where}: expected a JSON object, found {_json_type(obj)}")
    for key in required:
        if key not in obj:
            raise ArtifactError(f"{where}: missing field \"{key}\"")
    for key, kind in schema.items():
        if key in obj and obj[key] is not None:
            want = _TYPES[kind]
            ok = isinstance(obj[key], want) and not (kind in ("integer", "number") and isinstance(obj[key], bool))
            if not ok:
                raise ArtifactError(f"{where}: field \"{key}\" must be {'an' if kind[0] in 'aeio' else 'a'} {kind}, "
                                    f"found {_json_type(obj[key])}")
    return obj


def _json_type(v: Any) -> str:
    for name, t in (("null", type(None)), ("a boolean", bool), ("a number", (int, float)), ("a string", str),
                    ("a list", list), ("an object", dict)):
        if isinstance(v, t):
            return name
    return type(v).__name__


INDEX_META = {"format_version": "integer", "index_type": "string", "factory": "string", "metric": "string",
              "dim": "integer", "count": "integer", "params": "object", "encoder": "object", "corpus": "object",
              "checksums": "object", "has_vectors": "boolean"}
ENCODER_META = {"model": "string", "model_path": "string", "dim": "integer", "pooling": "string",
                "normalize": "boolean", "query_prefix": "string", "passage_prefix": "string",
                "query_max_length": "integer", "passage_max_length": "integer", "passage_fingerprint": "string"}
CORPUS_META = {"path": "string", "fingerprint": "string", "count": "integer"}


def check_index_meta(meta: Any, where: str) -> dict:
    check_fields(meta, INDEX_META, where)
    for key, schema in (("encoder", ENCODER_META), ("corpus", CORPUS_META)):
        if isinstance(meta.get(key), dict):
            check_fields(meta[key], schema, f"{where} ({key})")
    return meta


def check_id_list(ids: Any, where: str) -> list[str]:
    if not isinstance(ids, list):
        raise ArtifactError(f"{where}: expected a JSON list of ids, found {_json_type(ids)}")
    bad = next((i for i, d in enumerate(ids) if not isinstance(d, str)), None)
    if bad is not None:
        raise ArtifactError(f"{where}: entry {bad} is {_json_type(ids[bad])}, not a string id")
    return ids


# ---------- safetensors ----------
def check_safetensors(path: str | os.PathLike) -> None:
    """A complete safetensors file: 8-byte header length, JSON header, and exactly the tensor bytes it lists."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: missing")
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise ArtifactError(f"{path}: truncated ({size} bytes, not a safetensors file)")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8 or n > 100 << 20:
            raise ArtifactError(f"{path}: truncated or not a safetensors file (header of {n:,} bytes, file {size:,})")
        try:
            header = json.loads(fh.read(n))
        except ValueError:
            raise ArtifactError(f"{path}: damaged safetensors header") from None
    if not isinstance(header, dict):
        raise ArtifactError(f"{path}: damaged safetensors header")
    end = 0
    for name, t in header.items():
        if name == "__metadata__":
            continue
        offsets = t.get("data_offsets") if isinstance(t, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise ArtifactError(f"{path}: damaged safetensors header (tensor {name})")
        end = max(end, offsets[1])
    expected = 8 + n + end
    if size < expected:
        raise ArtifactError(f"{path}: truncated ({size:,} of {expected:,} bytes)")
    if size > expected:
        raise ArtifactError(f"{path}: {size - expected:,} unexpected bytes after the tensors (damaged)")
