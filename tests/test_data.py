"""BEIR reading: CRLF, validation errors as one file:line line, and exit code 2 from the CLI."""
from __future__ import annotations

import json

import pytest

from conftest import QRELS, run_cli, write_beir
from retr.retriever.data import DataError, load_beir, load_corpus, read_trec_run, write_trec_run
from retr.retriever.data.queries import read_queries
from retr.retriever.hits import Hit


def test_loads_crlf_qrels_and_joins_title(tiny_beir):
    ds = load_beir(tiny_beir, "test")
    assert len(ds.corpus) == 8 and len(ds.queries) == 5
    assert ds.qrels["q2"] == {"d2": 2, "d4": 1}
    assert set(ds.eval_queries) == {"q1", "q2", "q3", "q4", "d6"}
    assert ds.corpus.passage("d1") == "Aspirin Aspirin reduces the risk of heart attack in adults."
    assert ds.corpus.passage("d6") == "Smoking causes lung cancer and heart disease."  # empty title: no leading space
    assert len(ds.corpus.fingerprint) == 16


def test_fingerprint_changes_with_content(tmp_path):
    a = load_corpus(write_beir(tmp_path / "a") / "corpus.jsonl")
    docs = [("d1", "Aspirin", "changed")]
    b = load_corpus(write_beir(tmp_path / "b", docs=docs, qrels=[]) / "corpus.jsonl")
    assert a.fingerprint != b.fingerprint


def _corrupt(path, line_no, new_line):
    lines = path.read_text().splitlines(keepends=True)
    lines[line_no - 1] = new_line
    path.write_text("".join(lines))


@pytest.mark.parametrize("line,expected", [
    ('{"_id": "d3", "title": "x", "text": "ok"\n', "corpus.jsonl:3: malformed JSON"),
    ('{"title": "x", "text": "no id"}\n', 'corpus.jsonl:3: missing field "_id"'),
    ('{"_id": "d3", "title": "x"}\n', 'corpus.jsonl:3: missing field "text"'),
    ('{"_id": "d1", "text": "dup"}\n', 'corpus.jsonl:3: duplicate "_id" \'d1\' (first on line 1)'),
    ('["not", "an", "object"]\n', "corpus.jsonl:3: expected a JSON object"),
    ('{"_id": "d3", "text": 42}\n', 'corpus.jsonl:3: field "text" must be a string'),
])
def test_corpus_errors_name_file_and_line(tiny_beir, line, expected):
    _corrupt(tiny_beir / "corpus.jsonl", 3, line)
    with pytest.raises(DataError) as err:
        load_beir(tiny_beir, "test")
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_query_errors(tiny_beir):
    _corrupt(tiny_beir / "queries.jsonl", 2, '{"_id": "q2"}\n')
    with pytest.raises(DataError, match=r'queries.jsonl:2: missing field "text"'):
        load_beir(tiny_beir, "test")


@pytest.mark.parametrize("row,expected", [
    ("q1\td1\r\n", "test.tsv:3: expected 3 tab-separated fields"),
    ("q1\td1\thigh\r\n", 'test.tsv:3: field "score" must be an integer'),
    ("qX\td1\t1\r\n", "test.tsv:3: query-id 'qX' is not in queries.jsonl"),
    ("q1\tdX\t1\r\n", "test.tsv:3: corpus-id 'dX' is not in corpus.jsonl"),
])
def test_qrels_errors(tiny_beir, row, expected):
    _corrupt(tiny_beir / "qrels" / "test.tsv", 3, row)
    with pytest.raises(DataError) as err:
        load_beir(tiny_beir, "test")
    assert expected in str(err.value)


def test_missing_docs_can_be_kept_as_beir_does(tiny_beir):
    _corrupt(tiny_beir / "qrels" / "test.tsv", 3, "q1\tdX\t1\r\n")
    ds = load_beir(tiny_beir, "test", allow_missing_docs=True)
    assert ds.qrels["q1"]["dX"] == 1


def test_unknown_split_lists_available(tiny_beir):
    with pytest.raises(DataError, match=r"no qrels for split 'dev' \(have: test\)"):
        load_beir(tiny_beir, "dev")


@pytest.mark.parametrize("file,line_no,bad,expected", [
    ("corpus.jsonl", 4, "{broken\n", "corpus.jsonl:4: malformed JSON"),
    ("queries.jsonl", 3, '{"text": "no id"}\n', 'queries.jsonl:3: missing field "_id"'),
    ("qrels/test.tsv", 2, "q1 d1 1\r\n", "test.tsv:2: expected 3 tab-separated fields"),
])
def test_cli_bad_input_exit_2_one_line(tiny_beir, tiny_model_dir, capsys, file, line_no, bad, expected):
    _corrupt(tiny_beir / file, line_no, bad)
    code, out, err = run_cli(["eval", "--model", tiny_model_dir, "--data", tiny_beir], capsys)
    assert code == 2
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert len(lines) == 1, err
    assert expected in lines[0] and "Traceback" not in err


def test_trec_roundtrip(tmp_path):
    run = {"q1": [Hit("d1", 0.123456789, 1), Hit("d2", 0.1, 2)], "q2": [Hit("d3", -1.5, 1)]}
    write_trec_run(run, tmp_path / "run.trec")
    back = read_trec_run(tmp_path / "run.trec")
    assert [h.docid for h in back["q1"]] == ["d1", "d2"]
    assert back["q1"][0].score == pytest.approx(0.123456789, abs=1e-9)


def test_tsv_queries(tmp_path):
    (tmp_path / "q.tsv").write_text("a\tfirst query\r\nb\tsecond\n")
    assert read_queries(tmp_path / "q.tsv") == {"a": "first query", "b": "second"}
    (tmp_path / "bad.tsv").write_text("a\tx\nb\n")
    with pytest.raises(DataError, match="bad.tsv:2"):
        read_queries(tmp_path / "bad.tsv")
