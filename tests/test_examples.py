"""Lazy training examples (Tevatron JSONL by byte offset, BEIR queries with negatives as corpus rows, pairs,
concatenation) equal the eager lists they replace, and validate with file:line errors."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import write_beir
from retr.retriever.data import DataError, load_beir
from retr.retriever.data.examples import BeirExamples, ConcatExamples, PairExamples, TevatronFile
from retr.retriever.data.training import examples_from_beir, write_tevatron


def _tevatron(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


ROWS = [{"query_id": "a", "query": "first", "positive_passages": [{"docid": "p1", "title": "T", "text": "one"},
                                                                   {"docid": "p2", "text": "two"}],
         "negative_passages": [{"docid": "n1", "text": "neg"}]},
        {"query": "second, no id", "positive_passages": ["plain string passage"]}]


def test_tevatron_file_is_lazy_and_equal_to_the_lines(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text("\n" + json.dumps(ROWS[0]) + "\n\n" + json.dumps(ROWS[1]) + "\n")
    ex = TevatronFile(path)
    assert len(ex) == 2 and ex.lines.tolist() == [2, 4] and ex.positive_counts().tolist() == [2, 1]
    assert ex[0].query_id == "a" and [p.docid for p in ex[0].positives] == ["p1", "p2"]
    assert ex[0].positives[0].joined() == "T one" and ex[0].negatives[0].text == "neg"
    assert ex[1].query_id == "4" and ex[1].positives[0].text == "plain string passage"  # id defaults to the line
    assert ex[-1].query == "second, no id" and [e.query for e in ex] == ["first", "second, no id"]
    with pytest.raises(IndexError):
        ex[2]
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + path.read_bytes().lstrip(b"\n"))
    assert TevatronFile(bom)[1].query == "second, no id"


@pytest.mark.parametrize("line,message", [
    ('{"query": "q"}', 'field "positive_passages" is empty'),
    ('{"positive_passages": ["x"]}', 'missing field "query"'),
    ('{"query": "q", "positive_passages": [{"docid": "x"}]}', 'field "positive_passages[0].text" missing'),
    ('{"query": "q", "positive_passages": [', "malformed JSON"),
])
def test_tevatron_errors_name_the_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n" + line + "\n")
    with pytest.raises(DataError, match=f"bad.jsonl:2: .*{message}".replace("[", r"\[")):
        TevatronFile(path)


def test_beir_examples_with_mined_negatives_equal_the_eager_examples(tmp_path):
    ds = load_beir(write_beir(tmp_path / "d"), "test")
    mined = {"q1": ["d5", "d1", "d7"], "q2": ["d4", "d6"], "q4": ["nope", "d2"]}  # d1/d4 are judged: dropped
    neg_file = tmp_path / "mined.jsonl"
    neg_file.write_text("".join(json.dumps({"query_id": q, "query": ds.queries[q], "positive_passages": ["x"],
                                            "negative_passages": [{"docid": d, "text": "t"} for d in ds_negs]}) + "\n"
                                for q, ds_negs in mined.items()))
    lazy = BeirExamples(ds, neg_file)
    eager = examples_from_beir(ds, mined)
    assert [e.to_tevatron() for e in lazy] == [e.to_tevatron() for e in eager]
    assert lazy[0].known_positives == eager[0].known_positives
    assert lazy.positive_counts().tolist() == [len(e.positives) for e in eager]
    assert lazy.neg_rows.dtype == np.int32


def test_pairs_and_concat(tmp_path):
    a = TevatronFile(_tevatron(tmp_path / "a.jsonl", ROWS))
    b = TevatronFile(_tevatron(tmp_path / "b.jsonl", ROWS[:1]))
    both = ConcatExamples([a, b])
    assert len(both) == 3 and both[2].query == "first" and both[1].query == "second, no id"
    pairs = PairExamples(both)
    assert len(pairs) == 5
    assert [(p.query_id, p.positives[0].text) for p in pairs] == [("a", "one"), ("a", "two"), ("2", "plain string passage"),
                                                                   ("a", "one"), ("a", "two")]
    assert pairs[1].known_positives == ["p1", "p2"] and pairs[1].negatives[0].docid == "n1"


def test_write_then_read_round_trip(tmp_path):
    ds = load_beir(write_beir(tmp_path / "d"), "test")
    eager = examples_from_beir(ds, {"q1": ["d3"]})
    assert write_tevatron(iter(eager), tmp_path / "out.jsonl") == len(eager)
    assert [e.to_tevatron() for e in TevatronFile(tmp_path / "out.jsonl")] == [e.to_tevatron() for e in eager]


def _scored(qid, negatives):
    return {"query_id": qid, "query": f"q {qid}", "positive_passages": [{"docid": f"p{qid}", "text": "pos",
                                                                         "score": 2.0}],
            "negative_passages": [{"docid": f"n{qid}{j}", "text": "neg", "score": 1.0} for j in range(negatives)]}


def test_a_distillation_file_skips_queries_mining_left_without_negatives(tmp_path, caplog):
    # `retr mine`'s filters can leave a query no negatives; `retr score` keeps the line; training skips it
    path = _tevatron(tmp_path / "s.jsonl", [_scored("a", 2), _scored("b", 0), _scored("c", 1)])
    with caplog.at_level("WARNING"):
        ex = TevatronFile(path, require_scores=True)
    assert [e.query_id for e in ex] == ["a", "c"] and ex.skipped_without_negatives == 1
    assert "1 examples without negatives skipped" in caplog.text
    assert len(TevatronFile(path)) == 3  # not a distillation file: the line is an example as before
    none = _tevatron(tmp_path / "none.jsonl", [_scored("b", 0)])
    with pytest.raises(DataError, match="none.jsonl: no training examples with scored negatives"):
        TevatronFile(none, require_scores=True)
    unscored = _tevatron(tmp_path / "u.jsonl", [{**_scored("a", 1), "negative_passages": [{"text": "x"}]}])
    with pytest.raises(DataError, match=r'u.jsonl:1: field "negative_passages\[0\].score" missing'):
        TevatronFile(unscored, require_scores=True)


def test_pairs_in_order_parse_each_query_once(tmp_path):
    class Counting(list):
        reads = 0

        def __getitem__(self, i):
            Counting.reads += 1
            return list.__getitem__(self, i)

        def positive_counts(self):
            return np.asarray([len(e.positives) for e in self], np.int32)

    base = Counting(examples_from_beir(load_beir(write_beir(tmp_path / "d"), "test")))
    eager = [(e.query_id, p.docid) for e in list.__iter__(base) for p in e.positives]
    pairs = PairExamples(base)
    Counting.reads = 0
    assert [(e.query_id, e.positives[0].docid) for e in pairs] == eager
    assert Counting.reads == len(base) < len(eager)  # one read per query, not per pair
    assert pairs[len(pairs) - 1].positives[0].docid == eager[-1][1]  # random access still right


def test_a_tevatron_file_reads_right_from_threads_and_forked_dataloader_workers(tmp_path):
    """examples[i] reads its line from the one file handle: seek + readline from two threads, or from DataLoader
    workers forked after the parent had read (they share the file offset), read each other's lines."""
    import random
    import sys
    import threading

    pytest.importorskip("torch")
    # bigger than the read buffer, so seeks reach the OS file offset
    path = _tevatron(tmp_path / "t.jsonl", [{**_scored(f"q{i}", i % 3), "query": "x" * 400} for i in range(200)])
    ex = TevatronFile(path)
    expected = [e.query_id for e in PairExamples(ex)]  # the parent opens the file before the workers fork
    pairs = PairExamples(ex)
    errors = []

    def read(seed):
        r = random.Random(seed)
        for _ in range(300):
            i = r.randrange(len(pairs))
            try:
                got = pairs[i].query_id
            except DataError as e:
                got = str(e)
            if got != expected[i]:
                errors.append((i, got))

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=read, args=(s,)) for s in range(4)]
        [t.start() for t in threads]
        [t.join() for t in threads]
    finally:
        sys.setswitchinterval(old)
    assert not errors, errors[:3]
    if "fork" not in __import__("multiprocessing").get_all_start_methods():
        return
    # Forked workers in a fresh interpreter: forking this pytest process (a JVM from the BM25 tests, torch and
    # OpenMP thread pools) is itself unsafe and crashed a full-suite run with SIGSEGV.
    code = f"""
import torch
from retr.retriever.data.examples import PairExamples, TevatronFile
pairs = PairExamples(TevatronFile({str(path)!r}))
expected = [e.query_id for e in pairs]  # the parent reads (opens the file) before the workers fork
loader = torch.utils.data.DataLoader(pairs, batch_size=4, num_workers=2, multiprocessing_context="fork",
                                     collate_fn=lambda batch: [e.query_id for e in batch])
got = [q for batch in loader for q in batch]
assert got == expected, (got[:5], expected[:5])
print("same lines", len(got))
"""
    import subprocess

    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and f"same lines {len(expected)}" in run.stdout, run.stderr[-2000:]
