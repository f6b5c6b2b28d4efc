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


@pytest.mark.parametrize("name, text, expected", [
    ("c.yaml", "epochs: 2\nlr: 1e-5\nepochs: 3\n", "c.yaml:3: key 'epochs' given twice"),
    ("c.yaml", "model:\n  pooling: mean\n  pooling: cls\n", "c.yaml:3: key 'pooling' given twice"),
    ("c.json", '{"epochs": 2,\n "lr": 1e-5,\n "epochs": 3}', "c.json:3: key 'epochs' given twice"),
    ("c.json", "", "c.json: empty config file"),
    ("c.json", "  \n\n", "c.json: empty config file"),
    ("c.yaml", "# only a comment\n", "c.yaml: empty config file"),
])
def test_a_key_given_twice_or_an_empty_file_is_refused(tmp_path, name, text, expected):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(DataError) as err:
        read_yaml_or_json(path, "config file")
    assert str(err.value).replace(str(tmp_path) + "/", "") == expected


def test_an_upper_case_yaml_suffix_is_read_as_yaml(tmp_path):
    path = tmp_path / "C.YAML"
    path.write_text("epochs: 2\n")
    assert read_yaml_or_json(path)[0] == {"epochs": 2}
    same_keys_in_two_mappings = tmp_path / "s.yml"
    same_keys_in_two_mappings.write_text("a: {k: 1}\nb: {k: 2}\n")
    assert read_yaml_or_json(same_keys_in_two_mappings)[0] == {"a": {"k": 1}, "b": {"k": 2}}
