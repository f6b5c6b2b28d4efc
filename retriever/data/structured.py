"""Reading a small YAML or JSON file (a ``retr train --config`` file, a leaderboard suite) into Python values.

One reader for both, so a malformed file gets the same one-line ``DataError`` everywhere: the file, the line
where PyYAML or ``json`` can tell, and what is wrong (``t.yaml:3: malformed YAML (expected ',' or ']', ...)``).
A UTF-8 byte-order mark is accepted. The parse is PyYAML's ``safe_load`` (no Python objects) or ``json``'s.

Memory: the whole file at once (these are a few KiB of options).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import DataError


def read_yaml_or_json(path: str | Path, what: str = "file") -> tuple[Any, str]:
    """``(value, text)`` of a YAML (``.yaml``/``.yml``) or JSON (any other suffix) file.

    ``what`` names the file in errors (``"suite file not found"``). Raises ``DataError`` (file, line when
    known) if the file is missing, a directory, unreadable, not UTF-8, or does not parse. An empty YAML file
    is ``None``."""
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
    if path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            return yaml.safe_load(text), text
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line, problem = (mark.line + 1 if mark else None), getattr(e, "problem", None)
            if isinstance(e, yaml.reader.ReaderError):  # a character YAML refuses: a position, no mark
                line, problem = text.count("\n", 0, e.position) + 1, str(e).splitlines()[0]
            problem = " ".join(str(problem or "not valid YAML").split())
            raise DataError(path, line, f"malformed YAML ({problem})") from None
    try:
        return json.loads(text), text
    except json.JSONDecodeError as e:
        raise DataError(path, e.lineno, f"malformed JSON ({e.msg})") from None
