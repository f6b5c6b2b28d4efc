"""One reader for YAML/JSON option files: a train config and a leaderboard suite fail the same way."""
from __future__ import annotations

import pytest

from retr.evaluation.suite_schema import read_suite_file
from retr.retriever.data.errors import DataError
from retr.retriever.data.structured import read_yaml_or_json
from retr.retriever.training.config_file import read_config_mapping


@pytest.mark.parametrize("name, text, expected", [
    ("a.yaml", "x: 1\ny: [2\n", "a.yaml:3: malformed YAML (expected ',' or ']', but got '<stream end>')"),
    ("a.json", '{"x": 1,\n "y": }', "a.json:2: malformed JSON (Expecting value)"),
    # a character YAML refuses (PyYAML's ReaderError: a position, no mark and no "problem")
    ("a.yaml", "x: 1\ny: \x07\n", "a.yaml:2: malformed YAML (unacceptable character #x0007: special characters "
                                    "are not allowed)"),
])
def test_config_and_suite_report_a_malformed_file_alike(tmp_path, name, text, expected):
    path = tmp_path / name
    path.write_text(text)
    messages = []
    for read in (read_config_mapping, read_suite_file, read_yaml_or_json):
        with pytest.raises(DataError) as err:
            read(path)
        messages.append(str(err.value).replace(str(tmp_path) + "/", ""))
    assert messages == [expected] * 3


def test_bom_and_crlf_are_read_and_the_text_is_returned(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes("\ufeffepochs: 2\r\nlr: 2.0e-5\r\n".encode())
    value, text = read_yaml_or_json(path)
    assert value == {"epochs": 2, "lr": 2e-5}
    assert text.startswith("epochs")  # the BOM is gone, so line numbers of keys stay right


def test_missing_directory_and_non_utf8_are_one_line_errors(tmp_path):
    with pytest.raises(DataError, match="c.json: config file not found"):
        read_yaml_or_json(tmp_path / "c.json", "config file")
    with pytest.raises(DataError, match="is a directory, not a config file"):
        read_yaml_or_json(tmp_path, "config file")
    bad = tmp_path / "s.json"
    bad.write_bytes(b'{"a": "\xff"}')
    with pytest.raises(DataError, match=r"s.json: not UTF-8 text \(byte 7\)"):
        read_suite_file(bad)
