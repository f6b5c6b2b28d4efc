"""Embedding shards: ``retr encode`` writes one directory per shard (``embeddings.npy`` + ``docids.json`` +
``meta.json``, atomically) so encoding can be split over processes or machines and done once for many
indexes; ``load_shards`` merges them back in shard order, checking they are complete and consistent."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import ArtifactError, atomic_dir, read_json
from .validate import check_fields, check_id_list, checksums, verify_files


def shard_name(shard: int, num_shards: int) -> str:
    return f"shard-{shard:05d}-of-{num_shards:05d}"


def shard_range(n: int, shard: int, num_shards: int) -> tuple[int, int]:
    """Contiguous [start, end) rows of shard ``shard`` (sizes differ by at most one)."""
    if not 0 <= shard < num_shards:
        raise ValueError(f"shard {shard} out of range for {num_shards} shards")
    base, extra = divmod(n, num_shards)
    start = shard * base + min(shard, extra)
    return start, start + base + (1 if shard < extra else 0)


def write_shard(root: str | Path, shard: int, num_shards: int, vectors: np.ndarray, docids: list[str],
                meta: dict[str, Any]) -> Path:
    final = Path(root) / shard_name(shard, num_shards)
    with atomic_dir(final) as tmp:
        np.save(tmp / "embeddings.npy", np.ascontiguousarray(vectors, dtype=np.float32))
        (tmp / "docids.json").write_text(json.dumps(docids, ensure_ascii=False))
        sums = checksums(tmp, ("embeddings.npy", "docids.json"))  # ties the ids to the rows (validate.py)
        (tmp / "meta.json").write_text(json.dumps({**meta, "shard": shard, "num_shards": num_shards,
                                                   "count": len(docids), "checksums": sums}, indent=2))
    return final


def load_shards(root: str | Path, mmap: bool = False) -> tuple[np.ndarray, list[str], dict[str, Any]]:
    """All shards under ``root`` concatenated in shard order -> (vectors, ids, meta of shard 0)."""
    root = Path(root)
    dirs = sorted(p for p in root.glob("shard-*-of-*") if p.is_dir())
    if not dirs:
        raise ArtifactError(f"{root}: no embedding shards (shard-*-of-*) found")
    metas = [check_fields(read_json(d / "meta.json"), {"shard": "integer", "num_shards": "integer",
                                                       "checksums": "object"}, str(d / "meta.json"),
                          required=("shard", "num_shards")) for d in dirs]
    for d, m in zip(dirs, metas):
        if "checksums" in m:
            verify_files(d, m["checksums"], full=("docids.json",) if mmap else ("embeddings.npy", "docids.json"))
    num = metas[0]["num_shards"]
    have = sorted(m["shard"] for m in metas)
    if have != list(range(num)) or any(m["num_shards"] != num for m in metas):
        missing = sorted(set(range(num)) - set(have))
        raise ArtifactError(f"{root}: incomplete shard set (have {len(have)} of {num}; missing {missing[:5]})")
    keys = ("encoder", "corpus")
    for d, m in zip(dirs, metas):
        for k in keys:
            if m.get(k) != metas[0].get(k):
                raise ArtifactError(f"{d}/meta.json: {k} differs from {dirs[0].name} (shards of different runs?)")
    vectors = [np.load(d / "embeddings.npy", mmap_mode="r" if mmap else None, allow_pickle=False) for d in dirs]
    ids: list[str] = []
    for d, v in zip(dirs, vectors):
        part = check_id_list(read_json(d / "docids.json"), str(d / "docids.json"))
        if len(part) != len(v):
            raise ArtifactError(f"{d}: {len(v)} vectors but {len(part)} ids")
        ids.extend(part)
    meta = {k: v for k, v in metas[0].items() if k not in ("shard", "count", "checksums")}
    return np.concatenate(vectors) if len(vectors) > 1 else np.asarray(vectors[0]), ids, meta
