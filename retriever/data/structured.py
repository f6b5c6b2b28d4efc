"""Reading a small YAML or JSON file (a ``retr train --config`` file, a leaderboard suite) into Python values.

One reader for both, so a malformed file gets the same one-line ``DataError`` everywhere: the file, the line
where PyYAML or ``json`` can tell, and what is wrong (``t.yaml:3: malformed YAML (expected ',' or ']', ...)``).
A UTF-8 byte-order mark is accepted. The parse is PyYAML's ``safe_load`` (no Python objects) or ``json``'s,
with two refusals both leave out: a key given twice in one mapping (both keep the last value silently, so a
typo'd override would pass unseen) and an empty file (JSON's own message, "Expecting value", says neither).

Memory: the whole file at once (these are a few KiB of options).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import DataError


def read_yaml_or_json(path: str | Path, what: str = "file") -> tuple[Any, str]:
    """``(value, text)`` of a YAML (``.yaml``/``.yml``, any case) or JSON (any other suffix) file.

    ``what`` names the file in errors (``"suite file not found"``). Raises ``DataError`` (file, line when
    known) if the file is missing, a directory, unreadable, not UTF-8, empty (or only comments), does not
    parse, or repeats a key within one mapping."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(path, None, f"{what} not found") from None
    except IsADirectoryError:
        raise DataError(path, None, f"is a directory, not a {what}") from None
    except UnicodeDecodeError as e:
        raise DataError(path, None, f"not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise DataError(path, None, f"cannot read ({e.strerror})") from None
    is_yaml = path.suffix.lower() in (".yaml", ".yml")
    if not text.strip():
        raise DataError(path, None, f"empty {what}")
    if is_yaml:
        import yaml

        try:
            value = yaml.load(text, Loader=_unique_key_loader())
        except _DuplicateKey as e:
            raise DataError(path, e.line, f"key {e.key!r} given twice") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line, problem = (mark.line + 1 if mark else None), getattr(e, "problem", None)
            if isinstance(e, yaml.reader.ReaderError):  # a character YAML refuses: a position, no mark
                line, problem = text.count("\n", 0, e.position) + 1, str(e).splitlines()[0]
            problem = " ".join(str(problem or "not valid YAML").split())
            raise DataError(path, line, f"malformed YAML ({problem})") from None
        if value is None:  # only comments or "---"
            raise DataError(path, None, f"empty {what}")
        return value, text
    try:
        return json.loads(text, object_pairs_hook=_unique_key_object), text
    except json.JSONDecodeError as e:
        raise DataError(path, e.lineno, f"malformed JSON ({e.msg})") from None
    except _DuplicateKey as e:  # json gives no position to a hook: find the key's second occurrence
        needle = json.dumps(e.key)
        first = text.find(needle)
        second = text.find(needle, first + 1) if first >= 0 else -1
        line = text.count("\n", 0, second) + 1 if second >= 0 else None
        raise DataError(path, line, f"key {e.key!r} given twice") from None


class _DuplicateKey(Exception):
    def __init__(self, key: Any, line: int | None = None):
        super().__init__(key)
        self.key, self.line = key, line


def _unique_key_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _unique_key_loader():
    """PyYAML's SafeLoader, refusing a key given twice in one mapping (with the second key's line)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                except TypeError:  # an unhashable key: SafeLoader's own error follows
                    break
                if duplicate:
                    raise _DuplicateKey(key, key_node.start_mark.line + 1)
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader
