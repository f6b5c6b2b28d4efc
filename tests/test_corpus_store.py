"""The memory-mapped corpus store: same validation as a one-pass reader, cached and reused, rebuilt when the file
changes or the cache is damaged, lookups by id, block iteration; BOM accepted in every text input."""
from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

from conftest import DOCS, run_cli, write_beir
from retr.retriever.data import Corpus, DataError, cache_root, load_beir, load_corpus, read_trec_run
from retr.retriever.data.queries import read_queries


def _store_dirs():
    root = cache_root() / "corpora"
    return {p for p in root.iterdir() if not p.name.startswith(".")} if root.exists() else set()


def test_store_matches_file_and_lookups(tiny_beir):
    c = load_corpus(tiny_beir / "corpus.jsonl")
    assert len(c) == len(DOCS)
    assert list(c.ids) == [d for d, _, _ in DOCS] and c.ids == [d for d, _, _ in DOCS]
    assert c.titles[0] == "Aspirin" and c.texts[-1] == DOCS[-1][2]
    assert c.ids[2:4] == ["d3", "d4"] and c.ids[-1] == "d8"
    assert "d5" in c and "nope" not in c and 5 not in c
    assert c.index_of("d7") == 6
    with pytest.raises(KeyError):
        c.index_of("zz")
    np.testing.assert_array_equal(c.rows_of(["d2", "x", "d8"]), [1, -1, 7])
    assert c.line_of(3) == 4
    blocks = list(c.iter_blocks(3, start=1, end=8))
    assert [b.start for b in blocks] == [1, 4, 7] and sum(len(b.ids) for b in blocks) == 7
    assert blocks[0].texts[0] == c.passage("d2") == "Statins Statins lower cholesterol and cardiovascular risk."
    assert c.passages(sep="\n")[5] == DOCS[5][2]  # empty title: the text alone
    assert list(c.iter_ids(6)) == ["d7", "d8"]


def test_store_is_cached_and_rebuilt_when_the_file_changes(tmp_path):
    data = write_beir(tmp_path / "a")
    before = _store_dirs()
    first = load_corpus(data / "corpus.jsonl")
    created = _store_dirs() - before
    assert len(created) == 1
    store = created.pop()
    stamp = (store / "corpus.arrow").stat().st_mtime_ns
    again = load_corpus(data / "corpus.jsonl")
    assert (store / "corpus.arrow").stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert again.fingerprint == first.fingerprint
    time.sleep(0.01)
    with open(data / "corpus.jsonl", "a") as fh:
        fh.write(json.dumps({"_id": "d9", "text": "new"}) + "\n")
    changed = load_corpus(data / "corpus.jsonl")
    assert len(changed) == len(DOCS) + 1 and "d9" in changed and changed.fingerprint != first.fingerprint


def test_damaged_cache_is_rebuilt(tmp_path):
    data = write_beir(tmp_path / "a")
    before = _store_dirs()
    load_corpus(data / "corpus.jsonl")
    store = (_store_dirs() - before).pop()
    (store / "corpus.arrow").write_bytes(b"garbage")
    c = load_corpus(data / "corpus.jsonl")
    assert len(c) == len(DOCS) and c.passage("d1").startswith("Aspirin")


def test_unwritable_cache_root_builds_a_temporary_store(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("RETR_CACHE_DIR", str(blocker))
    c = load_corpus(write_beir(tmp_path / "a") / "corpus.jsonl")
    assert c.passage("d3").startswith("Vitamin D")


def test_duplicate_reported_at_its_first_repeat(tmp_path):
    docs = [("a", "", "x"), ("b", "", "y"), ("c", "", "z"), ("b", "", "again"), ("a", "", "again")]
    data = write_beir(tmp_path / "d", docs=docs, qrels=[])
    with pytest.raises(DataError, match=r"corpus.jsonl:4: duplicate \"_id\" 'b' \(first on line 2\)"):
        load_corpus(data / "corpus.jsonl")


def test_ids_with_whitespace_are_refused(tmp_path):
    data = write_beir(tmp_path / "w", docs=[("a b", "", "x")], qrels=[])
    with pytest.raises(DataError, match=r"corpus.jsonl:1: field \"_id\" 'a b' contains whitespace"):
        load_corpus(data / "corpus.jsonl")


def test_from_lists_and_subset():
    c = Corpus.from_lists(["x", "y", "z"], ["", "T", ""], ["one", "two", "three"])
    assert c.passage("y") == "T two" and c.index_of("z") == 2
    sub = c.subset(["z", "x"])
    assert list(sub.ids) == ["z", "x"] and sub.fingerprint != c.fingerprint
    with pytest.raises(ValueError, match="duplicate"):
        Corpus.from_lists(["x", "x"], ["", ""], ["a", "b"])


def _add_bom(path):
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())


@pytest.mark.parametrize("header", [True, False])
def test_bom_in_every_text_input(tmp_path, tiny_model_dir, capsys, header):
    """Case bom-qrels: a UTF-8 byte-order mark at the start of qrels (with or without header), corpus, queries,
    query TSV and TREC run gives the same result as the file without it."""
    plain = write_beir(tmp_path / "plain")
    bom = write_beir(tmp_path / "bom")
    if not header:
        for d in (plain, bom):
            q = d / "qrels" / "test.tsv"
            q.write_text("".join(q.read_text().splitlines(keepends=True)[1:]))
    for name in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv"):
        _add_bom(bom / name)
    a, b = load_beir(plain, "test"), load_beir(bom, "test")
    assert a.qrels == b.qrels and a.queries == b.queries and list(a.corpus.ids) == list(b.corpus.ids)
    results = []
    for d in (plain, bom):
        code, _, err = run_cli(["eval", "-m", tiny_model_dir, "-d", d, "--k", "5", "-o", tmp_path / f"{d.name}.json"],
                               capsys)
        assert code == 0, err
        results.append(json.loads((tmp_path / f"{d.name}.json").read_text())["metrics"])
    assert results[0] == results[1]
    tsv = tmp_path / "q.tsv"
    tsv.write_bytes(b"\xef\xbb\xbfq1\thello\n")
    assert read_queries(tsv) == {"q1": "hello"}
    run = tmp_path / "r.trec"
    run.write_bytes(b"\xef\xbb\xbfq1 Q0 d1 1 2.5 t\n")
    assert list(read_trec_run(run)) == ["q1"]


def test_eval_on_an_existing_index_reads_no_corpus_text(tmp_path, tiny_model_dir, capsys, monkeypatch):
    """With an index, eval needs the corpus's fingerprint and ids only: no passage is joined or read."""
    data = write_beir(tmp_path / "d")
    code, _, err = run_cli(["index", "-m", tiny_model_dir, "-d", data, "-o", tmp_path / "idx"], capsys)
    assert code == 0, err
    from retr.retriever.data import corpus as corpus_mod

    def no_text(*a, **k):
        raise AssertionError("corpus text was read")

    monkeypatch.setattr(corpus_mod.Corpus, "iter_blocks", no_text)
    monkeypatch.setattr(corpus_mod.Corpus, "passage_at", no_text)
    code, _, err = run_cli(["eval", "-d", data, "-i", tmp_path / "idx", "-o", tmp_path / "m.json"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "m.json").read_text())["metrics"]["nDCG@10"] > 0


def test_processes_building_one_store_at_once_all_get_it(tmp_path):
    """torchrun ranks read the same new corpus at the same moment: every process must get a working store (a
    process must never delete, as stale, the store another one has just published), and one store remains.
    Delays injected into the publish step force the bad interleaving: process 0 publishes at +0.2 s and opens
    its store at +1.2 s; process 1 found no store at +0 s, removes the "stale" one at +0.6 s and publishes its
    own at +1.4 s."""
    import subprocess
    import sys

    corpus = tmp_path / "corpus.jsonl"
    cache = tmp_path / "cache"
    code = """
import os, shutil, sys, time
import retr.retriever.data.corpus as m
path, start, rank = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
class Delayed:  # the module's shutil/os with the publish-step calls slowed down
    def __init__(self, real): self.real = real
    def __getattr__(self, name): return getattr(self.real, name)
    def rmtree(self, p, **kw):
        if not os.path.basename(str(p)).startswith("."): time.sleep([0.2, 0.6][rank])
        return shutil.rmtree(p, **kw)
    def replace(self, a, b):
        time.sleep([0.0, 0.8][rank]); os.replace(a, b); time.sleep([1.0, 0.0][rank])
m.shutil, m.os = Delayed(shutil), Delayed(os)
while time.time() < start: pass
c = m.load_corpus(path)
print(len(c), c.fingerprint, c.passage_at(len(c) - 1))
"""
    for round_ in range(2):
        corpus.write_text("".join(json.dumps({"_id": f"r{round_}d{i}", "text": f"text {i} " * 20}) + "\n"
                                  for i in range(2_000)))
        start = str(time.time() + 1.5)  # both processes start building at the same instant
        env = {**os.environ, "RETR_CACHE_DIR": str(cache)}
        procs = [subprocess.Popen([sys.executable, "-c", code, str(corpus), start, str(rank)], env=env, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE) for rank in range(2)]
        outs = [p.communicate() for p in procs]
        assert all(p.returncode == 0 for p in procs), [err[-300:] for _, err in outs]
        assert len({out for out, _ in outs}) == 1 and outs[0][0].startswith("2000 ")
        stores = sorted(p.name for p in (cache / "corpora").iterdir() if not p.name.startswith("."))
        assert stores == [load_corpus_key(corpus)]  # the store of the earlier version is removed
        assert not list((cache / "corpora").glob(".*.tmp-*"))


def load_corpus_key(path):
    from retr.retriever.data.corpus import _stat_key

    return _stat_key(path)[0]
