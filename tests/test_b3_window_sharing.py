"""B3 rank windows are searched once per distinct (query vector, group, exclusion) and copied to the examples
that share them ((query, positive) pairs of one query): every window must equal the one searched row by row."""
from __future__ import annotations

import numpy as np
import pytest

from retr.retriever.training.b3 import B3Config, _search_windows, mine_b3, ranked_windows


def reference(queries, positives, p, m, groups, exclude):
    """Each row on its own, brute force: other groups' positives best first, excluded rows skipped."""
    out = np.full((len(queries), p + m), -1, np.int32)
    for i, q in enumerate(queries):
        order = np.argsort(-(positives @ q), kind="stable")
        order = [j for j in order if groups[j] != groups[i] and j not in set(exclude(i).tolist())][:p + m]
        out[i, :len(order)] = order
    return out


def pairs_case(seed: int = 0, n_queries: int = 23, dim: int = 16):
    """(query, positive) pairs: 1-6 pairs per query (same query vector), queries sharing positives' documents
    are siblings; the pairs of a query are not all consecutive (rows shuffled)."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 7, n_queries)
    qids = np.repeat(np.arange(n_queries), sizes)
    perm = rng.permutation(len(qids))
    qids = qids[perm]
    qvec = rng.normal(size=(n_queries, dim)).astype(np.float32)
    queries = qvec[qids]
    positives = rng.normal(size=(len(qids), dim)).astype(np.float32)
    sib = {q: set() for q in range(n_queries)}
    for _ in range(n_queries):  # symmetric sibling links
        a, b = rng.choice(n_queries, 2, replace=False)
        sib[a].add(b)
        sib[b].add(a)
    rows_of = {q: np.flatnonzero(qids == q) for q in range(n_queries)}
    calls = []

    def exclude(i: int) -> np.ndarray:
        calls.append(i)
        got = [rows_of[s] for s in sorted(sib[int(qids[i])])]
        return np.concatenate(got) if got else np.zeros(0, np.int64)
    exclude.key = [f"q{q}" for q in qids]
    return queries, positives, [f"q{q}" for q in qids], exclude, calls, n_queries


def windows(**kw):
    return np.concatenate([w for _, w in ranked_windows(**kw)])


@pytest.mark.parametrize("p,m,batch,max_entries", [(0, 5, 4096, 1 << 24), (3, 10, 7, 50), (2, 200, 5, 1 << 24)])
def test_shared_windows_equal_row_by_row_search(p, m, batch, max_entries):
    q, pos, groups, exclude, calls, n_queries = pairs_case()
    codes = np.unique(groups, return_inverse=True)[1]
    kw = dict(queries=q, positives=pos, p=p, m=m, batch=batch, groups=groups, max_entries=max_entries)
    for excl in (None, exclude):
        calls.clear()
        got = windows(**kw, exclude=excl)
        if excl is not None:  # one exclusion set per query, not per example
            assert len(calls) == len(set(np.asarray(groups)[calls])) == n_queries
        none = (lambda i: np.zeros(0, np.int64))
        ref = reference(q, pos, p, m, codes, excl or none)
        rows = np.concatenate([w for _, w in _search_windows(q, pos, p, m, batch, codes, excl, max_entries,
                                                               np.arange(len(q)))])  # the code before sharing
        assert got.shape == (len(q), p + m)
        np.testing.assert_array_equal(got, ref)
        np.testing.assert_array_equal(got, rows)


def test_exclusion_without_key_is_per_example():
    """An ``exclude`` without ``key`` may differ between the pairs of one query: each row keeps its own."""
    q, pos, groups, exclude, calls, _ = pairs_case(1)
    codes = np.unique(groups, return_inverse=True)[1]
    own = lambda i: np.asarray([(i * 7) % len(q), (i * 3 + 1) % len(q)], np.int64)  # noqa: E731
    got = windows(queries=q, positives=pos, p=2, m=8, groups=groups, exclude=own)
    np.testing.assert_array_equal(got, reference(q, pos, 2, 8, codes, own))


def test_group_with_two_query_vectors_is_split():
    """A group whose rows hold different query vectors (a query id reused with another text) is not merged."""
    q, pos, groups, exclude, _, _ = pairs_case(2)
    q = q.copy()
    q[0] += 1.0  # row 0 now differs from the other pairs of its query
    codes = np.unique(groups, return_inverse=True)[1]
    for excl in (None, exclude):
        got = windows(queries=q, positives=pos, p=1, m=9, groups=groups, exclude=excl)
        np.testing.assert_array_equal(got, reference(q, pos, 1, 9, codes, excl or (lambda i: np.zeros(0, int))))


@pytest.mark.parametrize("options", [{}, dict(mutual_edges=True, exact_k=True, cluster_negatives=2,
                                                sibling_exclusion=True)])
def test_mining_unchanged_by_window_sharing(monkeypatch, options):
    """Clusters and cluster negatives are those of row-by-row windows."""
    import retr.retriever.training.b3 as b3

    q, pos, groups, exclude, _, _ = pairs_case(3, n_queries=40)
    cfg = B3Config(p=2, m=10, cluster_size=8, algorithm="metis", **options)
    excl = exclude if options else None
    shared = mine_b3(q, pos, cfg, groups=groups, exclude=excl)
    monkeypatch.setattr(b3, "_distinct_windows", lambda queries, groups, exclude: (np.arange(len(queries)), None))
    alone = mine_b3(q, pos, cfg, groups=groups, exclude=excl)
    assert shared[0] == alone[0] and shared[2] == alone[2]


def test_groups_with_one_query_vector_stay_apart():
    """Two query ids with the same text (vector) keep their own windows: each skips its own group's rows."""
    q, pos, groups, exclude, _, _ = pairs_case(4)
    q = q.copy()
    g = np.asarray(groups)
    q[g == "q1"] = q[g == "q0"][0]
    codes = np.unique(groups, return_inverse=True)[1]
    for excl in (None, exclude):
        got = windows(queries=q, positives=pos, p=0, m=len(q), groups=groups, exclude=excl)
        np.testing.assert_array_equal(got, reference(q, pos, 0, len(q), codes,
                                                     excl or (lambda i: np.zeros(0, int))))
