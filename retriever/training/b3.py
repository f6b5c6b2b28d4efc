"""B3 batches ("Breaking the Batch Barrier", Thirukovalluru et al. 2025): batches of mutual hard negatives.

1. A teacher embeds every training example's query and positive (the mean of its positives' embeddings when it
   has several, as the collator draws one at random); FAISS ranks all positives for each query.
2. For example i, the examples whose positives rank p+1 .. p+m for query i (its own excluded) become edges
   of a sparse undirected graph (the top p are skipped: likely false negatives).
3. Community detection cuts the graph into clusters of about K examples that are strong negatives for one
   another: METIS (pymetis, balanced parts, as in the paper) or Leiden/Louvain (igraph/leidenalg, networkx)
   whose communities are then split to <= K and small ones merged.
4. Each epoch, clusters are shuffled (and shuffled inside), laid end to end and cut into batches of B, so a
   batch of B holds about B/K clusters and every example appears once per epoch.

The authors' released construction (raghavlite/B3, ``data_processing/spectral_clustering4_ibn.py``) differs in
four ways, each an option here (see ``b3_authors.py``): edges only where the window relation is mutual
(``mutual_edges``), clusters of exactly K (``exact_k``), batches of whole clusters (``clusters_per_batch`` of
``B3BatchSampler``), and B3++'s cluster-level hard negatives (``cluster_negatives``). ``exclude`` (e.g. examples
whose query shares a judged positive, ``retr.retriever.false_negatives.SiblingPositives``) removes rows from
every example's rank window, the analogue of the authors' same-label exclusion for classification data.

No library implements this batch mining (the paper's repository holds evaluation code only), hence this module.
Mined clusters are cached (JSON, atomically) under a key of teacher fingerprint + data fingerprint + settings.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from retr.indexing.atomic import read_json, write_json_atomic

log = logging.getLogger(__name__)


@dataclass
class B3Config:
    p: int = 30  # skip the teacher's top-p for each query
    m: int = 100  # then keep m ranks as edges
    cluster_size: int = 32  # K
    algorithm: str = "metis"  # metis | leiden | louvain
    seed: int = 0
    # issue 21: the authors' construction (see b3_authors.py)
    mutual_edges: bool = False  # keep edge (i, j) only if j is in i's window and i in j's
    exact_k: bool = False  # every cluster exactly K (overflow moved, leftovers cut into K-sized chunks)
    cluster_negatives: int = 0  # B3++: hard negatives per example drawn from its cluster's pooled windows
    sibling_exclusion: bool = False  # rank windows skip examples whose query shares a judged positive

    def __post_init__(self) -> None:
        if self.algorithm not in ("metis", "leiden", "louvain"):
            raise ValueError(f"B3 algorithm must be metis, leiden or louvain, got {self.algorithm!r}")
        if self.p < 0 or self.m < 1 or self.cluster_size < 1:
            raise ValueError("B3 needs p >= 0, m >= 1 and cluster_size >= 1")
        if self.cluster_negatives < 0:
            raise ValueError("B3 cluster_negatives must be >= 0")


def ranked_windows(queries: np.ndarray, positives: np.ndarray, p: int, m: int, batch: int = 4096,
                   groups: np.ndarray | None = None, exclude: Callable[[int], np.ndarray] | None = None,
                   max_entries: int = 1 << 24) -> Iterator[tuple[int, np.ndarray]]:
    """Per batch of rows: (first row, [b, p + m] int32) the other examples whose positives rank 1..p+m for each
    query, best first, -1 where fewer exist.

    ``groups`` (e.g. query ids of (query, positive) pairs): examples of i's own group are not "other" examples
    either: another positive of the same query is no negative (training masks it), so it takes no rank.
    ``exclude(i)``: more example indices that take no rank in i's window (e.g. sibling queries). If the callable
    has a ``key`` attribute (one value per example, e.g. query ids), ``exclude(i)`` must depend on ``key[i]``
    alone; without it every example may have its own exclusion.

    A window depends only on the example's query vector, its group and its exclusion, so examples sharing all
    three (the pairs of one query) share one window: each distinct (query vector, group, exclusion key) is
    searched once and its window copied to its examples (NFCorpus pairs: 2,590 searches instead of 110,575).

    Memory: the flat index of positives (n x dim floats), one search batch of ranks, and, when examples share
    windows, the [distinct, p + m] int32 table of distinct windows (4 (p + m) bytes per distinct query; without
    sharing rows are streamed batch by batch as before). The search depth grows by the largest group and the
    largest exclusion in the batch. With ``exclude`` a batch holds fewer rows when its exclusions are long, so that
    rows x depth (FAISS's result, 12 bytes an entry) and the rows' exclusions stay within ``max_entries`` or the
    plain path's ``batch`` x depth, whichever is more (NFCorpus (query, positive) pairs with sibling exclusion
    exclude up to 100k rows each: 4096 x 100k would be ~5 GiB)."""
    n = len(queries)
    groups = _group_codes(groups, n)
    reps, inverse = _distinct_windows(queries, groups, exclude)
    if inverse is None:  # every example has its own window: stream them
        yield from _search_windows(queries, positives, p, m, batch, groups, exclude, max_entries, reps)
        return
    table = np.full((len(reps), p + m), -1, np.int32)
    for s, out in _search_windows(queries, positives, p, m, batch, groups, exclude, max_entries, reps):
        table[s:s + len(out)] = out
    for s in range(0, n, batch):
        yield s, table[inverse[s:s + batch]]


def _distinct_windows(queries: np.ndarray, groups: np.ndarray, exclude: Callable[[int], np.ndarray] | None
                      ) -> tuple[np.ndarray, np.ndarray | None]:
    """(representatives, inverse): the first example of each distinct (query vector, group, exclusion key), in
    row order, and each example's index among them; inverse is None when all examples are distinct.
    Memory: a few int64 per example; query vectors are compared with their (group, exclusion)'s first example in
    blocks of 4096 rows, and fully sorted (a copy of the queries) only if some group holds different vectors."""
    n = len(queries)
    if exclude is not None and getattr(exclude, "key", None) is None:
        excl = np.arange(n)  # an exclusion of unknown shape: every example may differ
    elif exclude is not None:
        excl = np.unique(np.asarray(exclude.key), return_inverse=True)[1].reshape(-1)
    else:
        excl = np.zeros(n, np.int64)
    if n == 0 or len(np.unique(groups)) == n or len(np.unique(excl)) == n:
        return np.arange(n), None
    rows = np.ascontiguousarray(queries).reshape(n, -1)
    keys = np.stack([groups, excl], axis=1).astype(np.int64)
    _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    same = all(np.array_equal(rows[s:s + 4096], rows[first[inverse[s:s + 4096]]]) for s in range(0, n, 4096))
    if not same:  # one group, several query vectors (e.g. a query id reused with another text): split by vector
        vec = np.unique(rows.view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1]))).reshape(-1),
                        return_inverse=True)[1].reshape(-1)
        keys = np.stack([vec, groups, excl], axis=1).astype(np.int64)
        _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
        inverse = inverse.reshape(-1)
    if len(first) == n:
        return np.arange(n), None
    order = np.argsort(first, kind="stable")  # representatives in row order
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return first[order], rank[inverse]


def _search_windows(queries: np.ndarray, positives: np.ndarray, p: int, m: int, batch: int, groups: np.ndarray,
                    exclude: Callable[[int], np.ndarray] | None, max_entries: int, rows: np.ndarray
                    ) -> Iterator[tuple[int, np.ndarray]]:
    """(first position in ``rows``, [b, p + m] int32) the rank windows of the examples ``rows``, batch by batch."""
    import faiss

    n, todo = len(queries), len(rows)
    largest = int(np.bincount(groups).max()) if n else 1
    base = min(n, p + m + largest)
    budget = max(max_entries, batch * base)  # never fewer rows than the plain path searches at once
    index = faiss.IndexFlatIP(positives.shape[1])
    index.add(np.ascontiguousarray(positives, dtype=np.float32))
    s, pending = 0, None  # pending: the exclusion of the row that did not fit the last batch
    while s < todo:
        stop = min(todo, s + batch)
        excluded, extra = None, 0
        if exclude is not None:
            excluded = []
            for i in rows[s:stop]:
                e, pending = (exclude(int(i)) if pending is None else pending), None
                wider = max(extra, len(e))
                if excluded and (len(excluded) + 1) * min(n, base + wider) > budget:
                    pending = e
                    break
                excluded.append(e)
                extra = wider
            stop = s + len(excluded)
        depth = min(n, p + m + largest + extra)
        _, found = index.search(np.ascontiguousarray(queries[rows[s:stop]], dtype=np.float32), depth)
        out = np.full((stop - s, p + m), -1, np.int32)
        for r, row in enumerate(found):
            i = rows[s + r]
            row = row[row >= 0]
            row = row[groups[row] != groups[i]]  # rank among the *other* examples' positives
            if excluded is not None and len(excluded[r]):
                row = row[~np.isin(row, excluded[r])]
            row = row[:p + m]
            out[r, :len(row)] = row
        del found
        yield s, out
        s = stop


def rank_window_edges(queries: np.ndarray, positives: np.ndarray, p: int, m: int, batch: int = 4096,
                      groups: np.ndarray | None = None, exclude: Callable[[int], np.ndarray] | None = None,
                      keep_ranks: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """[E, 2] int32 edges (i, j): positive j ranks p+1..p+m among the other examples' positives for query i
    (see ``ranked_windows`` for ``groups`` and ``exclude``).

    Memory: the flat index of positives (n x dim floats), one search batch of ranks, and 8 bytes per edge;
    ``keep_ranks`` also returns the [n, p + m] int32 rank table (4 (p + m) bytes per example), which B3++'s
    cluster negatives need."""
    out, tables = [], []  # one int32 [e, 2] array per search batch: 8 bytes per edge
    for s, ranks in ranked_windows(queries, positives, p, m, batch, groups, exclude):
        window = ranks[:, p:]
        rows = np.repeat(np.arange(s, s + len(ranks), dtype=np.int32), window.shape[1])
        flat = window.reshape(-1)
        keep = flat >= 0
        out.append(np.stack([rows[keep], flat[keep]], axis=1))
        if keep_ranks:
            tables.append(ranks)
    edges = np.concatenate(out) if out else np.zeros((0, 2), np.int32)
    if keep_ranks:
        return edges, (np.concatenate(tables) if tables else np.zeros((0, p + m), np.int32))
    return edges


def _group_codes(groups: Sequence | np.ndarray | None, n: int) -> np.ndarray:
    """Integer group per example; without groups every example is its own group."""
    if groups is None:
        return np.arange(n)
    return np.unique(np.asarray(groups), return_inverse=True)[1].reshape(-1)


def _csr(n: int, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric, de-duplicated adjacency in CSR form (xadj, adjncy), without self loops.

    Memory: each undirected edge becomes one int64 key ``i * n + j`` per direction, sorted in place (16 bytes per
    mined edge), instead of unique rows of a [2E, 2] array, which costs several times that."""
    if len(edges) == 0:
        return np.zeros(n + 1, np.int64), np.zeros(0, np.int64)
    i, j = edges[:, 0].astype(np.int64), edges[:, 1].astype(np.int64)
    keep = i != j
    keys = np.concatenate([i[keep] * n + j[keep], j[keep] * n + i[keep]])
    keys.sort()
    keys = keys[np.concatenate([[True], keys[1:] != keys[:-1]])] if len(keys) else keys
    xadj = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(keys // n, minlength=n), out=xadj[1:])
    return xadj, keys % n


def _normalise_sizes(clusters: list[list[int]], k: int, rng: np.random.Generator) -> list[list[int]]:
    """Split clusters larger than K into pieces of K; merge clusters smaller than K/2 into groups of ~K."""
    out, small = [], []
    for c in clusters:
        c = list(c)
        for s in range(0, len(c), k):
            piece = c[s:s + k]
            (out if len(piece) >= max(1, k // 2) else small).append(piece)
    acc: list[int] = []
    for piece in small:
        acc.extend(piece)
        if len(acc) >= k:
            out.append(acc[:k])
            acc = acc[k:]
    if acc:
        out.append(acc)
    return out


def detect_communities(n: int, edges: np.ndarray, cfg: B3Config) -> list[list[int]]:
    rng = np.random.default_rng(cfg.seed)
    xadj, adjncy = _csr(n, edges)
    parts = max(1, n // cfg.cluster_size if cfg.exact_k else round(n / cfg.cluster_size))  # authors: n // K
    pairs = [] if cfg.algorithm == "metis" else [
        (i, int(j)) for i in range(n) for j in adjncy[xadj[i]:xadj[i + 1]] if i < j]
    if cfg.algorithm == "metis":
        import pymetis

        opts = pymetis.Options(seed=cfg.seed)
        graph = pymetis.CSRAdjacency(adj_starts=xadj, adjacent=adjncy)  # numpy arrays, no Python lists
        membership = np.asarray(pymetis.part_graph(parts, graph, options=opts).vertex_part)
        order = np.argsort(membership, kind="stable")
        cuts = np.flatnonzero(np.diff(membership[order])) + 1
        found = [part.tolist() for part in np.split(order, cuts)]
    elif cfg.algorithm == "leiden":
        import igraph as ig
        import leidenalg

        graph = ig.Graph(n=n, edges=pairs)
        found = [list(c) for c in leidenalg.find_partition(graph, leidenalg.ModularityVertexPartition, seed=cfg.seed)]
    else:
        import networkx as nx

        g = nx.Graph()
        g.add_nodes_from(range(n))
        g.add_edges_from(pairs)
        found = [sorted(c) for c in nx.community.louvain_communities(g, seed=cfg.seed)]
    if cfg.exact_k:
        from .b3_authors import exact_k

        return exact_k(found, cfg.cluster_size, cfg.seed)
    return _normalise_sizes(found, cfg.cluster_size, rng) if cfg.algorithm != "metis" else found


def mine_clusters(queries: np.ndarray, positives: np.ndarray, cfg: B3Config,
                  groups: Sequence | np.ndarray | None = None,
                  exclude: Callable[[int], np.ndarray] | None = None) -> tuple[list[list[int]], dict]:
    """Clusters (lists of example ids) and a stats dict; see ``mine_b3`` for the cluster negatives too."""
    clusters, stats, _ = mine_b3(queries, positives, cfg, groups, exclude)
    return clusters, stats


def mine_b3(queries: np.ndarray, positives: np.ndarray, cfg: B3Config, groups: Sequence | np.ndarray | None = None,
            exclude: Callable[[int], np.ndarray] | None = None) -> tuple[list[list[int]], dict, list[list[int]]]:
    """Clusters, stats and (``cfg.cluster_negatives`` > 0) per-example cluster-negative example ids.

    ``queries``/``positives``: [n, dim] float teacher embeddings; ``groups``/``exclude`` as ``ranked_windows``.
    Memory: 8 bytes per mined edge (n m edges, fewer when mutual) plus the CSR graph (16 bytes per edge
    while it is built); cluster negatives add the [n, p + m] int32 rank table."""
    from .b3_authors import cluster_negatives, mutual_edges

    t0 = time.perf_counter()
    codes = _group_codes(groups, len(queries))
    found = rank_window_edges(queries, positives, cfg.p, cfg.m, groups=codes, exclude=exclude,
                              keep_ranks=cfg.cluster_negatives > 0)
    edges, ranks = found if cfg.cluster_negatives > 0 else (found, None)
    mined = len(edges)
    if cfg.mutual_edges:
        edges = mutual_edges(edges, len(queries))
    kept = len(edges)
    t_rank = time.perf_counter() - t0
    clusters = detect_communities(len(queries), edges, cfg)
    del edges, found
    negatives = (cluster_negatives(ranks, clusters, cfg.cluster_negatives, cfg.p, cfg.seed, codes, exclude)
                 if ranks is not None else [])
    stats = {"examples": len(queries), "edges": int(mined), "clusters": len(clusters),
             "rank_seconds": round(t_rank, 2), "cluster_seconds": round(time.perf_counter() - t0 - t_rank, 2)}
    if cfg.mutual_edges:
        stats["mutual_edges"] = int(kept)
    if negatives:
        stats["cluster_negatives_per_example"] = round(float(np.mean([len(x) for x in negatives])), 2)
    return clusters, stats, negatives


def size_histogram(clusters: Sequence[Sequence[int]]) -> dict[str, int]:
    sizes = np.array([len(c) for c in clusters])
    edges = [0, 8, 16, 24, 28, 32, 36, 40, 48, 64, 10**9]
    hist = {}
    for lo, hi in zip(edges, edges[1:]):
        count = int(((sizes > lo) & (sizes <= hi)).sum())
        if count:
            hist[f"{lo + 1}-{hi}" if hi < 10**9 else f">{lo}"] = count
    return hist


def in_batch_negative_similarity(queries: np.ndarray, positives: np.ndarray, batches: Sequence[Sequence[int]],
                                 groups: Sequence | np.ndarray | None = None) -> float:
    """Mean teacher similarity between each query and the in-batch positives of *other* groups (its negatives)."""
    codes = _group_codes(groups, len(queries))
    total, count = 0.0, 0
    for b in batches:
        b = np.asarray(b)
        negative = codes[b][:, None] != codes[b][None, :]
        if negative.any():
            total += float((queries[b] @ positives[b].T)[negative].sum())
            count += int(negative.sum())
    return total / max(count, 1)


class B3BatchSampler:
    """Batches drawn from B3 clusters; reshuffled every epoch (clusters and members), every example once.

    ``clusters_per_batch`` = c (the authors' batches, issue 21): each batch is c whole clusters, so every
    cluster must hold exactly ``batch_size / c`` examples (mine with ``exact_k``); otherwise clusters are laid
    end to end and cut into batches of ``batch_size``, so a batch may hold pieces of B/K + 1 clusters."""

    def __init__(self, clusters: list[list[int]], batch_size: int, seed: int = 0, drop_last: bool = True,
                 clusters_per_batch: int | None = None):
        self.clusters, self.batch_size, self.seed, self.drop_last = clusters, batch_size, seed, drop_last
        self.clusters_per_batch = clusters_per_batch
        self.n = sum(len(c) for c in clusters)
        if clusters_per_batch is not None:
            if clusters_per_batch < 1 or batch_size % clusters_per_batch:
                raise ValueError(f"--b3-clusters-per-batch {clusters_per_batch} does not divide the batch size "
                                 f"{batch_size}")
            k = batch_size // clusters_per_batch
            if any(len(c) != k for c in clusters):
                raise ValueError(f"--b3-clusters-per-batch {clusters_per_batch} needs clusters of exactly "
                                 f"{k} (batch size / clusters per batch): set --b3-exact-k and --b3-cluster-size {k}")
            if len(clusters) < clusters_per_batch:
                raise ValueError(f"{len(clusters)} clusters are fewer than one batch of {clusters_per_batch}")
        elif drop_last and self.n < batch_size:
            raise ValueError(f"{self.n} examples is fewer than one batch of {batch_size}")

    def __len__(self) -> int:
        if self.clusters_per_batch is not None:
            return len(self.clusters) // self.clusters_per_batch
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def batches(self, epoch: int) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, epoch, 7])
        order = []
        for c in rng.permutation(len(self.clusters)):
            order.extend(int(i) for i in rng.permutation(self.clusters[c]))
        out = [order[s:s + self.batch_size] for s in range(0, len(order), self.batch_size)]
        return out[: len(self)]


def data_fingerprint(queries: Sequence[str], positives: Sequence[str]) -> str:
    h = hashlib.sha256()
    for q, p in zip(queries, positives):
        h.update(q.encode() + b"\0" + p.encode() + b"\1")
    return h.hexdigest()[:16]


def cached_clusters(cache_dir: str | Path, key_parts: dict, compute) -> tuple[list[list[int]], dict]:
    """Load clusters cached under a key of ``key_parts``, or ``compute()`` and cache them atomically."""
    clusters, stats, _ = cached_mining(cache_dir, key_parts, lambda: (*compute(), []))
    return clusters, stats


def cached_mining(cache_dir: str | Path, key_parts: dict, compute, n: int | None = None,
                  want_negatives: bool = False) -> tuple[list[list[int]], dict, list[list[int]]]:
    """(clusters, stats, cluster negatives) cached under a key of ``key_parts`` (JSON, written atomically), or
    ``compute()`` -> that triple, then cached. A cached file is checked against ``n`` examples (ids in range;
    ``want_negatives``: one negative list per example): a damaged or foreign file is an ``ArtifactError``
    naming it, never a crash mid-training."""
    key = hashlib.sha256(json.dumps(key_parts, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"b3-{key}.json"
    if path.exists():
        data = read_json(path)
        clusters, stats, negatives = check_cached_mining(path, data, n, want_negatives)
        log.info("B3 clusters loaded from cache %s", path)
        return clusters, {**stats, "cache": str(path), "cached": True}, negatives
    clusters, stats, negatives = compute()
    write_json_atomic(path, {"key": key_parts, "stats": stats, "clusters": clusters, "negatives": negatives})
    return clusters, {**stats, "cache": str(path), "cached": False}, negatives


def check_cached_mining(path: str | Path, data, n: int | None = None, want_negatives: bool = False
                        ) -> tuple[list[list[int]], dict, list[list[int]]]:
    """(clusters, stats, negatives) of a loaded B3 cache file, or an ``ArtifactError`` saying what is wrong."""
    from retr.indexing.errors import ArtifactError

    def bad(why: str):
        raise ArtifactError(f"{path}: {why} (a damaged or foreign B3 cache: delete it to mine again)")

    def ids(values, what: str) -> None:
        if not isinstance(values, list):
            bad(f"{what} is not a list")
        for v in values:
            if not isinstance(v, int) or isinstance(v, bool) or v < 0 or (n is not None and v >= n):
                bad(f"{what} holds {v!r}, not an example id" + (f" in 0..{n - 1}" if n is not None else ""))

    if not isinstance(data, dict) or not isinstance(data.get("clusters"), list) or not data["clusters"]:
        bad("no 'clusters' list")
    stats = data.get("stats", {})
    if not isinstance(stats, dict):
        bad("'stats' is not an object")
    covered = np.zeros(n or 0, bool)
    for c, cluster in enumerate(data["clusters"]):
        ids(cluster, f"cluster {c}")
        if len(set(cluster)) != len(cluster):
            bad(f"cluster {c} holds an example twice")
        if n is not None:
            covered[cluster] = True
    if n is not None and not covered.all():  # mining puts every example in a cluster: a subset would train silently
        bad(f"{int((~covered).sum())} of the {n} training examples are in no cluster "
            f"(first: {int(np.argmin(covered))})")
    negatives = data.get("negatives", [])
    if not isinstance(negatives, list):
        bad("'negatives' is not a list")
    if negatives or want_negatives:
        if n is not None and len(negatives) != n:
            bad(f"{len(negatives)} cluster-negative lists for {n} training examples")
        for i, row in enumerate(negatives):
            ids(row, f"the cluster negatives of example {i}")
    return data["clusters"], stats, negatives


def b3_config_dict(cfg: B3Config) -> dict:
    return asdict(cfg)
