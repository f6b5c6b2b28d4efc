"""FAISS vector indexes saved as directories: ``index.faiss`` + ``docids.json`` + ``meta.json``.

The index knows vectors and string ids, nothing of models: what made the vectors travels as an opaque
``encoder`` dict inside ``meta.json`` and callers compare it (``check_encoder``). Index types are named
presets (flat, hnsw, ivf, pq, ivfpq, sq8) or any FAISS ``index_factory`` string. Optional
``vectors.npy`` keeps the float32 vectors so compressed (PQ) indexes can re-score their candidates
exactly. Directories are written atomically (temp dir, then rename). Building adds vectors block by block from
arrays, memory maps or stacked shards, so RAM holds the index plus one block (see ``FaissIndex.build``).
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import faiss
import numpy as np

from .atomic import ArtifactError
from .faiss_io import IDS_FILE, INDEX_FILE, META_FILE, VECTORS_FILE, read_index_dir, write_index_dir  # noqa: F401
from .shards import StackedVectors

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
PRESETS = ("flat", "hnsw", "ivf", "pq", "ivfpq", "sq8")
ADD_BLOCK = 65_536  # vectors copied and added per step while building


class IndexMismatchError(ArtifactError):
    """The index was built with settings that disagree with the model used to query it."""


@dataclass
class IndexSpec:
    """How to build an index. ``index_type`` is a preset name or a FAISS ``index_factory`` string."""

    index_type: str = "flat"
    metric: str = "ip"  # "ip" (inner product; cosine on normalised vectors) or "l2"
    hnsw_m: int = 32
    ef_construction: int = 200
    ef_search: int = 128
    nlist: int | None = None  # default: ~4*sqrt(N), capped so each list gets >= 39 training points
    nprobe: int = 16
    pq_m: int | None = None  # default: dim/4 sub-quantisers (rounded to a divisor of dim)
    pq_bits: int = 8
    train_sample: int = 100_000
    store_vectors: bool = False  # keep vectors.npy for exact re-scoring
    seed: int = 0

    def factory_string(self, dim: int, n: int) -> str:
        nlist = self.nlist or _default_nlist(n)
        pq_m = self.pq_m or _default_pq_m(dim)
        t = self.index_type
        if t == "flat":
            return "Flat"
        if t == "hnsw":
            return f"HNSW{self.hnsw_m},Flat"
        if t == "ivf":
            return f"IVF{nlist},Flat"
        if t == "pq":
            return f"PQ{pq_m}x{self.pq_bits}"
        if t == "ivfpq":
            return f"IVF{nlist},PQ{pq_m}x{self.pq_bits}"
        if t == "sq8":
            return "SQ8"
        return t  # a raw factory string


    def check(self, n: int, dim: int) -> str:
        """The factory string for ``n`` vectors of ``dim``, or ``ValueError`` (one line) when FAISS could not
        build it: an unknown factory string, more IVF lists or PQ centroids than vectors to train on, or PQ
        sub-quantisers that do not divide ``dim``. Call it before encoding, so a bad choice fails at once."""
        factory = self.factory_string(dim, n)
        if n < 1:
            raise ValueError("cannot build an index of 0 vectors")
        for name in ("hnsw_m", "ef_construction", "ef_search", "nlist", "nprobe", "pq_m", "pq_bits", "train_sample"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        n_train = min(n, self.train_sample)  # what build() trains on
        have = f"the corpus has {n}" if n_train == n else f"--train-sample is {n_train}"
        if self.index_type in ("ivf", "ivfpq") and self.nlist and self.nlist > n_train:  # before FAISS allocates them
            raise ValueError(f"{factory}: {self.nlist} IVF lists need at least {self.nlist} vectors to train, {have} "
                             f"(use --nlist {max(1, n_train // 39)} or fewer, or -t flat)")
        _check_factory_sizes(factory)  # issue 18: sizes FAISS crashes on (SIGABRT/SIGFPE) or builds unusable
        try:
            index = faiss.index_factory(dim, factory, _metric(self.metric))
        except RuntimeError as e:
            raise ValueError(f"index type {factory!r} is not valid for dim {dim} ({_faiss_reason(e)})") from None
        if isinstance(faiss.downcast_index(index), faiss.IndexIDMap):
            raise ValueError(f"index type {factory!r}: IDMap is not needed (retr keeps the ids in docids.json); "
                             "drop the IDMap prefix")
        if index.is_trained:
            return factory
        try:
            nlist = faiss.extract_index_ivf(index).nlist
        except RuntimeError:
            nlist = 0
        if nlist > n_train:
            fewer = (f"--nlist {max(1, n_train // 39)}" if self.index_type in _USES  # a raw factory string: IVFk
                     else f"IVF{max(1, n_train // 39)}")  # issue 18: --nlist is refused with a factory string
            raise ValueError(f"{factory}: {nlist} IVF lists need at least {nlist} vectors to train, {have} "
                             f"(use {fewer} or fewer, or -t flat)")
        base = faiss.downcast_index(faiss.extract_index_ivf(index) if nlist else index)
        pq = getattr(base, "pq", None)
        if pq is not None and pq.ksub > n_train:
            raise ValueError(f"{factory}: {pq.nbits}-bit PQ codes need at least {pq.ksub} vectors to train, {have} "
                             f"(use --pq-bits {max(1, int(np.log2(max(n_train, 2))))} or less, or -t flat)")
        if n_train < 5000:  # other trained types: a trial run on random data is cheap at this size
            try:
                index.train(np.random.default_rng(0).standard_normal((n_train, dim)).astype(np.float32))
            except RuntimeError as e:
                raise ValueError(f"{factory} cannot be trained on {n_train} vectors ({_faiss_reason(e)})") from None
        return factory

    def unused_params(self) -> list[str]:
        """The tuning parameters this index type ignores (``flat`` ignores all; a raw factory string carries its
        own list count, PQ size and HNSW M), so a caller can refuse them instead of silently dropping them."""
        uses = _USES.get(self.index_type)
        if uses is None:  # a factory string
            f = self.index_type.upper()
            uses = {"train_sample"} | ({"ef_construction", "ef_search"} if f.startswith("HNSW") else set()) \
                | ({"nprobe"} if "IVF" in f else set())
        return [p for p in TUNABLE if p not in uses]


TUNABLE = ("hnsw_m", "ef_construction", "ef_search", "nlist", "nprobe", "pq_m", "pq_bits", "train_sample")
_USES = {"flat": set(), "hnsw": {"hnsw_m", "ef_construction", "ef_search"}, "ivf": {"nlist", "nprobe", "train_sample"},
         "pq": {"pq_m", "pq_bits", "train_sample"}, "ivfpq": {"nlist", "nprobe", "pq_m", "pq_bits", "train_sample"},
         "sq8": {"train_sample"}}


def _check_factory_sizes(factory: str) -> None:
    """``ValueError`` (one line) for a size in a factory string that FAISS accepts but then aborts the process on
    (``HNSW0``: SIGABRT; ``PQ8x0``: SIGFPE) or builds an index that cannot be searched (``IVF0``: no lists)."""
    import re

    least = {"HNSW": 2, "IVF": 1, "PQ": 1, "NSG": 2}
    for m in re.finditer(r"(HNSW|IVF|PQ|NSG)(\d+)(?:x(\d+))?", factory):
        kind, size, bits = m.group(1), int(m.group(2)), m.group(3)
        if size < least[kind]:
            raise ValueError(f"index type {factory!r}: {kind}{size} is too small (at least {kind}{least[kind]})")
        if bits is not None and not 1 <= int(bits) <= 16:
            raise ValueError(f"index type {factory!r}: PQ codes of {bits} bits (1 to 16)")


def _faiss_reason(e: Exception) -> str:
    """The one informative part of a FAISS exception (they carry the C++ location and a stack)."""
    import re

    text = str(e).strip()
    for line in text.splitlines():
        m = re.search(r"failed: (.*)", line) or re.search(r"\.(?:cpp|h):\d+: (.*)", line)
        if m:
            return m.group(1).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _default_nlist(n: int) -> int:
    nlist = int(4 * math.sqrt(max(n, 1)))
    return max(1, min(nlist, n // 39 if n >= 39 else 1))


def _default_pq_m(dim: int) -> int:
    m = max(1, dim // 4)
    while dim % m:
        m -= 1
    return m


def _metric(name: str) -> int:
    if name == "ip":
        return faiss.METRIC_INNER_PRODUCT
    if name == "l2":
        return faiss.METRIC_L2
    raise ValueError(f"unknown metric {name!r} (use 'ip' or 'l2')")


def _as_f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


@dataclass
class FaissIndex:
    """A FAISS index plus the string ids of its rows and the metadata that made it."""

    index: Any
    docids: list[str]
    meta: dict[str, Any] = field(default_factory=dict)
    vectors: "np.ndarray | StackedVectors | None" = None  # float32 rows (often memory-mapped), for re-scoring
    parts: list["FaissIndex"] = field(default_factory=list, repr=False)  # sub-indexes of ``combine``

    # ---------- building ----------
    @classmethod
    def build(cls, vectors: "np.ndarray | StackedVectors", docids: Sequence[str], spec: IndexSpec | None = None,
              meta: dict[str, Any] | None = None, use_gpu: bool | None = None, block: int = ADD_BLOCK,
              show_progress: bool = False) -> "FaissIndex":
        """Train (IVF/PQ: on ``spec.train_sample`` rows drawn at random) and add ``vectors`` block by block.

        ``vectors`` may be an array, a memory map or ``StackedVectors`` over shards: only one block of
        ``block`` rows (and the training sample) is copied at a time, so RAM holds the index's own bytes plus
        O(block * dim). ``spec.store_vectors`` keeps a reference to ``vectors`` for exact re-scoring."""
        spec = spec or IndexSpec()
        src = vectors if isinstance(vectors, StackedVectors) else StackedVectors([vectors])
        if len(src) != len(docids):
            raise ValueError(f"vectors {src.shape} and {len(docids)} ids disagree")
        docids = list(docids)
        if len(set(docids)) != len(docids):
            raise ValueError("duplicate document ids given to the index")
        n, dim = src.shape
        factory = spec.check(n, dim)
        t0 = time.perf_counter()
        index = faiss.index_factory(dim, factory, _metric(spec.metric))
        base = faiss.downcast_index(index)
        if hasattr(base, "hnsw"):
            base.hnsw.efConstruction = spec.ef_construction
        gpu = _want_gpu(use_gpu) and not factory.startswith("HNSW")
        work = _to_gpu(index) if gpu else index
        if not work.is_trained:
            rng = np.random.default_rng(spec.seed)
            rows = np.arange(n) if n <= spec.train_sample else np.sort(rng.choice(n, spec.train_sample, replace=False))
            log.info("training %s on %d vectors", factory, len(rows))
            work.train(src.take(rows))
        bar = None
        if show_progress and n > block:
            from tqdm.auto import tqdm

            bar = tqdm(total=n, desc=f"adding to {factory}", unit="vec")
        for _, rows_block in src.blocks(block):
            work.add(rows_block)
            if bar is not None:
                bar.update(len(rows_block))
        if bar is not None:
            bar.close()
        index = faiss.index_gpu_to_cpu(work) if work is not index else work
        build_seconds = time.perf_counter() - t0
        full_meta = {
            "format_version": FORMAT_VERSION,
            "index_type": spec.index_type,
            "factory": factory,
            "metric": spec.metric,
            "dim": dim,
            "count": n,
            "params": asdict(spec),
            "build_seconds": round(build_seconds, 3),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        full_meta.update(meta or {})
        out = cls(index=index, docids=docids, meta=full_meta, vectors=src if spec.store_vectors else None)
        out.set_search_params(ef_search=spec.ef_search, nprobe=spec.nprobe)
        return out

    def add(self, vectors: np.ndarray, docids: Sequence[str]) -> None:
        """Append documents without touching (or re-encoding) the ones already indexed."""
        vectors = _as_f32(vectors)
        known = set(self.docids)
        dup = next((d for d in docids if d in known), None)
        if dup is not None or len(set(docids)) != len(docids):
            raise ValueError(f"document id {dup!r} is already in the index" if dup else "duplicate ids in the added batch")
        if vectors.shape[1] != self.dim:
            raise IndexMismatchError(f"added vectors have dim {vectors.shape[1]}, index has {self.dim}")
        self.index.add(vectors)
        self.docids.extend(docids)
        if self.vectors is not None:
            old = self.vectors.parts if isinstance(self.vectors, StackedVectors) else [self.vectors]
            self.vectors = StackedVectors([*old, vectors])
        self.meta["count"] = len(self.docids)

    # ---------- properties & knobs ----------
    @property
    def dim(self) -> int:
        return int(self.index.d)

    def __len__(self) -> int:
        return len(self.docids)

    def set_search_params(self, ef_search: int | None = None, nprobe: int | None = None) -> set[str]:
        """Search-time knobs that need no rebuild (HNSW efSearch, IVF nprobe). Returns the names of the knobs
        given that this index (or one of its parts) has; the others do nothing here."""
        applied: set[str] = set()
        for part in self.parts:
            applied |= part.set_search_params(ef_search, nprobe)
        base = faiss.downcast_index(self.index)
        if ef_search is not None and hasattr(base, "hnsw"):
            base.hnsw.efSearch = int(ef_search)
            applied.add("ef_search")
        if nprobe is not None:
            try:
                ivf = faiss.extract_index_ivf(self.index)
                ivf.nprobe = int(nprobe)
                applied.add("nprobe")
            except RuntimeError:
                pass
        return applied

    # ---------- searching ----------
    def search(self, queries: np.ndarray, k: int, rescore: int | None = None,
               threads: int | None = None) -> tuple[np.ndarray, list[list[str]]]:
        """Top-``k`` rows for each query: (scores [nq, k'], ids), best first and higher scores better (an ``l2``
        index scores by minus the squared distance). ``rescore=R`` fetches R candidates and re-scores them
        exactly from the stored vectors (needs ``vectors.npy``)."""
        queries = _as_f32(queries)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise IndexMismatchError(f"query vectors have dim {queries.shape[-1]}, index has {self.dim}")
        k_eff = min(k, len(self.docids))
        if k_eff <= 0:
            return np.zeros((len(queries), 0), np.float32), [[] for _ in queries]
        fetch = max(k_eff, min(rescore or 0, len(self.docids)))
        previous = faiss.omp_get_max_threads()
        if threads:
            faiss.omp_set_num_threads(int(threads))
        try:
            scores, rows = self.index.search(queries, fetch)
        finally:
            faiss.omp_set_num_threads(previous)
        if rescore:
            scores, rows = self._rescore(queries, rows, k_eff)
        else:
            scores, rows = scores[:, :k_eff], rows[:, :k_eff]
            if self.meta.get("metric", "ip") == "l2":  # FAISS gives squared distances (nearest first, smallest):
                scores = -scores  # higher-is-better like every other score (runs, fusion, metrics; as _rescore)
        ids = [[self.docids[r] for r in row if r >= 0] for row in rows]
        return scores, ids

    def _rescore(self, queries: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.vectors is None:
            raise ArtifactError("re-scoring needs stored vectors: build the index with store_vectors (--store-vectors)")
        out_s = np.full((len(queries), k), -np.inf, np.float32)
        out_r = np.full((len(queries), k), -1, np.int64)
        for i, (q, cand) in enumerate(zip(queries, rows)):
            cand = cand[cand >= 0]
            vecs = (self.vectors.take(cand) if isinstance(self.vectors, StackedVectors)
                    else np.asarray(self.vectors[cand], dtype=np.float32))
            s = vecs @ q if self.meta.get("metric", "ip") == "ip" else -((vecs - q) ** 2).sum(1)
            order = np.argsort(-s, kind="stable")[:k]
            out_s[i, : len(order)] = s[order]
            out_r[i, : len(order)] = cand[order]
        return out_s, out_r

    # ---------- persistence ----------
    def save(self, directory: str | Path) -> Path:
        """Atomic, locked, with checksums in meta.json that ``load`` verifies (``faiss_io``)."""
        directory = Path(directory)
        self.meta = write_index_dir(directory, self.index, self.docids, self.meta, self.vectors)
        log.info("saved %s index of %d docs to %s", self.meta.get("factory"), len(self), directory)
        return directory

    @classmethod
    def load(cls, directory: str | Path, mmap: bool = False, use_gpu: bool | None = None) -> "FaissIndex":
        """Open an index directory; anything damaged or inconsistent is refused in one line (``faiss_io``)."""
        index, docids, meta, vectors = read_index_dir(Path(directory), mmap=mmap)
        if _want_gpu(use_gpu) and not str(meta.get("factory", "")).startswith("HNSW"):
            index = _to_gpu(index)
        out = cls(index=index, docids=docids, meta=meta, vectors=vectors)
        params = meta.get("params") or {}
        out.set_search_params(ef_search=params.get("ef_search"), nprobe=params.get("nprobe"))
        return out

    @classmethod
    def combine(cls, parts: Sequence["FaissIndex"]) -> "FaissIndex":
        """Search several indexes as one (FAISS ``IndexShards``): hits are merged by score, ids concatenated.

        For collections built in pieces (``retr index --from-embeddings SHARD_DIR`` per shard) or too big for
        one index; every part must agree on dim, metric and encoder. Memory: the parts themselves (memory-map
        them with ``load(mmap=True)``)."""
        if len(parts) == 1:
            return parts[0]
        first = parts[0]
        for i, part in enumerate(parts[1:], 2):
            for key in ("dim", "metric"):
                if part.meta.get(key) != first.meta.get(key):
                    raise IndexMismatchError(f"index {i} has {key}={part.meta.get(key)!r}, index 1 has "
                                             f"{first.meta.get(key)!r}")
            if (part.meta.get("encoder") or {}).get("passage_fingerprint") != \
                    (first.meta.get("encoder") or {}).get("passage_fingerprint"):
                raise IndexMismatchError(f"index {i} was encoded by another model or settings than index 1")
        shards = faiss.IndexShards(first.dim, False, True)  # not threaded, successive ids
        for part in parts:
            shards.add_shard(part.index)
        docids = [d for part in parts for d in part.docids]
        if len(set(docids)) != len(docids):
            raise IndexMismatchError("the indexes share document ids (the same documents indexed twice?)")
        vectors = None
        if all(p.vectors is not None for p in parts):
            vectors = StackedVectors([v for p in parts for v in
                                      (p.vectors.parts if isinstance(p.vectors, StackedVectors) else [p.vectors])])
        meta = {**first.meta, "count": len(docids), "parts": [p.meta.get("count") for p in parts],
                "factory": "+".join(str(p.meta.get("factory")) for p in parts)}
        return cls(index=shards, docids=docids, meta=meta, vectors=vectors, parts=list(parts))  # parts stay alive

    def check_encoder(self, expected: dict[str, Any], keys: Sequence[str]) -> None:
        """Fail with one clear line when the querying encoder disagrees with the one that built the index."""
        built = self.meta.get("encoder") or {}
        for key in keys:
            if key in built and key in expected and built[key] != expected[key]:
                raise IndexMismatchError(
                    f"index was built with {key}={built[key]!r} but the query encoder has {key}={expected[key]!r}")


def _want_gpu(use_gpu: bool | None) -> bool:
    if use_gpu is False:
        return False
    n = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if use_gpu and n == 0:
        log.warning("GPU requested but FAISS sees none; using CPU")
    return n > 0


def _to_gpu(index: Any) -> Any:
    try:
        return faiss.index_cpu_to_all_gpus(index)
    except Exception as e:  # an index type without a GPU implementation
        log.info("keeping index on CPU (%s)", e)
        return index
