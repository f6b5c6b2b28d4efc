"""The B3 authors' construction (issue 21), as options of ``b3.py``.

A review of the authors' later-released mining code (raghavlite/B3,
``data_processing/spectral_clustering4_ibn.py``; Thirukovalluru et al. 2025, "Breaking the Batch Barrier")
found four differences to retr's first B3, each reproduced here:

- ``mutual_edges``: keep edge (i, j) only if j is in i's rank window *and* i in j's (retr took the union).
- ``exact_k``: every cluster holds exactly K examples: overflow of big parts is moved into small ones,
  leftovers are cut into K-sized chunks, and a last short chunk is topped up with examples drawn from other
  clusters (those examples appear twice per epoch; at most K - 1 of them).
- whole-cluster batches: ``B3BatchSampler(clusters_per_batch=c)`` (in ``b3.py``).
- ``cluster_negatives`` (B3++): for each cluster, the members' pooled top p + m windows are counted; a candidate
  scores its count minus 2 per appearance in any member's top p (the false-negative guard); members score 0;
  each member gets N negatives drawn, without replacement over the cluster while candidates last, with
  probability proportional to the positive scores.

No library does this (the authors' scripts are one-off pandas/METIS code), hence this module; nothing is
copied from it. Memory is stated per function; nothing grows with n².
"""
from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

if TYPE_CHECKING:  # not imported at run time: mining stays free of the data stack's imports
    from ..data.training import TrainExample


def mutual_edges(edges: np.ndarray, n: int, block: int = 1 << 20) -> np.ndarray:
    """The rows (i, j) of ``edges`` [E, 2] whose reverse (j, i) is also an edge; order kept.

    Memory: one sorted int64 key per edge (8 bytes per edge) plus a boolean mask; reverse keys are looked up
    in blocks of ``block`` edges, so no O(n²) or [E, E] structure is built."""
    if len(edges) == 0:
        return edges
    keys = edges[:, 0].astype(np.int64) * n + edges[:, 1]
    keys.sort()
    keep = np.zeros(len(edges), bool)
    for s in range(0, len(edges), block):
        part = edges[s:s + block]
        rev = part[:, 1].astype(np.int64) * n + part[:, 0]
        pos = np.minimum(np.searchsorted(keys, rev), len(keys) - 1)
        keep[s:s + block] = keys[pos] == rev
    return edges[keep]


def exact_k(clusters: list[list[int]], k: int, seed: int = 0) -> list[list[int]]:
    """Clusters of exactly ``k`` examples: the authors' overflow / fill procedure, generalised to any sizes.

    Largest first, each cluster keeps its first k members and puts the rest in a pool; a smaller cluster is
    filled from the pool (most recent overflow first). Clusters still short, and the pool, are laid end to end
    and cut into chunks of k; a last short chunk is topped up with distinct examples from other clusters, so
    every example is in at least one cluster and ``k - (n mod k)`` examples (if any) are in two.
    Memory: one list of example ids (O(n))."""
    if k < 1:
        raise ValueError("exact_k needs k >= 1")
    ordered = sorted((list(c) for c in clusters if len(c)), key=len, reverse=True)
    pool: list[int] = []
    full, short = [], []
    for c in ordered:
        if len(c) > k:
            pool.extend(c[k:])
            c = c[:k]
        while len(c) < k and pool:
            c.append(pool.pop())
        (full if len(c) == k else short).append(c)
    rest = [i for c in short for i in c] + pool
    for s in range(0, len(rest), k):
        chunk = rest[s:s + k]
        if len(chunk) < k:
            rng = np.random.default_rng([seed, 21])
            taken = set(chunk)
            donors = [i for c in full for i in c if i not in taken]
            if len(donors) < k - len(chunk):
                raise ValueError(f"{len(rest)} examples are fewer than one cluster of {k} (--b3-cluster-size)")
            chunk += [int(i) for i in rng.choice(donors, k - len(chunk), replace=False)]
        full.append(chunk)
    return full


def cluster_negatives(ranks: np.ndarray, clusters: Sequence[Sequence[int]], n_negatives: int, p: int,
                      seed: int = 0, groups: np.ndarray | None = None,
                      exclude: Callable[[int], np.ndarray] | None = None) -> list[list[int]]:
    """B3++ cluster-level hard negatives: per example, ``n_negatives`` example ids whose positives serve as its
    hard negatives (fewer only if the cluster's pool is smaller).

    ``ranks``: [n, p + m] int32 from ``rank_window_edges(keep_ranks=True)`` (-1 = none; excluded rows, e.g.
    siblings, are already absent). A candidate's score is its count over the members' windows minus 2 per
    appearance in a member's top ``p``; members and candidates scoring <= 0 are never drawn, nor an example of
    the member's own group (``groups``) or in ``exclude(member)`` (e.g. its siblings). Candidates are ordered by weighted sampling without replacement and
    dealt round-robin to the members; when the pool runs short it is dealt again (a candidate then serves two
    members, as the authors' repeat).

    Memory: the rank table (4 (p + m) bytes per example, the caller's) and, per cluster, its K (p + m) pooled
    ranks; output n x N ints."""
    n = len(ranks)
    codes = np.arange(n) if groups is None else np.asarray(groups)
    rng = np.random.default_rng([seed, 2125])
    out: list[list[int]] = [[] for _ in range(n)]
    if n_negatives < 1:
        return out
    for cluster in clusters:
        members = np.asarray(sorted(set(int(i) for i in cluster)), dtype=np.int64)
        pooled = ranks[members].reshape(-1)
        values, counts = np.unique(pooled[pooled >= 0], return_counts=True)
        top = ranks[members, :p].reshape(-1)
        top_values, top_counts = np.unique(top[top >= 0], return_counts=True)
        scores = counts.astype(np.float64)
        scores[np.searchsorted(values, top_values)] -= 2 * top_counts  # every top-p entry is also in pooled
        scores[np.isin(values, members)] = 0
        valid = scores > 0
        cand, weight = values[valid], scores[valid]
        if not len(cand):
            continue
        # weighted sampling without replacement (Efraimidis-Spirakis keys): order the whole pool once
        order = cand[np.argsort(-np.log(rng.random(len(cand))) / weight, kind="stable")]
        cursor = 0
        for member in rng.permutation(members):
            got: list[int] = []
            banned = np.isin(order, exclude(int(member))) if exclude is not None else np.zeros(len(order), bool)
            for step in range(len(order)):
                at = (cursor + step) % len(order)
                j = int(order[at])
                if codes[j] != codes[member] and j not in got and not banned[at]:
                    got.append(j)
                    if len(got) == n_negatives:
                        break
            cursor = (cursor + step + 1) % len(order)
            out[int(member)] = got
    return out


class ClusterNegativeExamples(Sequence):
    """``examples`` with each example's hard negatives replaced by a positive of each of its cluster-negative
    examples (one drawn per (seed, example, negative), so a multi-positive negative is not always the same).
    Lazy: memory holds only the negative ids."""

    def __init__(self, examples: Sequence["TrainExample"], negatives: list[list[int]], seed: int = 0):
        if len(negatives) != len(examples):
            raise ValueError(f"{len(negatives)} negative lists for {len(examples)} examples")
        self.examples, self.negatives, self.seed = examples, negatives, seed

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> "TrainExample":
        ex = self.examples[i]
        chosen = []
        for j in self.negatives[i]:
            pos = self.examples[j].positives
            pick = pos[int(np.random.default_rng([self.seed, i, j]).integers(len(pos)))] if len(pos) > 1 else pos[0]
            if pick.docid not in ex.known_positives:
                chosen.append(pick)
        return replace(ex, negatives=chosen)
