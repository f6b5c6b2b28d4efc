"""Reading a ``retr train --config`` file: YAML or JSON, each value checked against its ``TrainConfig`` field.

A wrong value is one ``DataError`` line naming the file, the line of the key and the field
(``t.yaml:2: field "batch_size": expected an integer, got 'abc'``), never a ``TypeError`` deep in training.
A UTF-8 byte-order mark and CRLF line endings are accepted (as in every text input of retr).

YAML 1.1 (PyYAML) reads ``2e-5`` as a *string* (a float needs a dot: ``2.0e-5``); for a float field a string
that ``float()`` parses is taken as that number, so ``lr: 2e-5`` means what it says on the command line.

Own code, not a library: the parse is PyYAML's / ``json``'s; the type check is the short walk over the
dataclass's type hints below (pydantic would do it, but is not a dependency of retr). Memory: the whole file
(a few KB of options) is read at once.
"""
from __future__ import annotations

import math
import re
import types
import typing
from pathlib import Path
from typing import Any

from ..data.errors import DataError
from ..data.structured import read_yaml_or_json

_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def read_config_mapping(path: Path) -> tuple[dict[str, Any], str]:
    """Parse a YAML (``.yaml``/``.yml``) or JSON config -> (mapping, text). ``DataError`` (file, line) if the
    file cannot be read, is not UTF-8, is empty, is malformed or repeats a key (``data/structured.py``), or
    is not a mapping."""
    raw, text = read_yaml_or_json(path, "config file")
    if not isinstance(raw, dict):
        raise DataError(path, None, "config must be a mapping of option names to values")
    return raw, text


def key_line(text: str, key: str) -> int | None:
    """1-based line of the first ``key:`` / ``"key":`` in ``text`` (``None`` if not found)."""
    m = re.search(rf'^[ \t{{,]*["\']?{re.escape(str(key))}["\']?[ \t]*:', text, re.MULTILINE)
    return text.count("\n", 0, m.start()) + 1 if m else None


def check_values(cls: type, raw: dict[str, Any], path: Path, text: str,
                 lenient_str: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Check every value of ``raw`` against the type hint of the field of dataclass ``cls`` it names.

    Returns a copy with YAML's string floats converted; ``DataError`` (file, line, field) for an unknown key or
    a value of the wrong type. Fields in ``lenient_str`` also accept a string (e.g. ``"q_proj,v_proj"``)."""
    hints = typing.get_type_hints(cls)
    out = {}
    for key, value in raw.items():
        if key not in hints:
            raise DataError(path, key_line(text, key), f"unknown option {key!r}")
        tp = hints[key]
        if key in lenient_str and isinstance(value, str):
            out[key] = value
            continue
        ok, value = _coerce(tp, value)
        if not ok:
            raise DataError(path, key_line(text, key), f'field "{key}": expected {_describe(tp)}, got {value!r}')
        out[key] = value
    return out


def _coerce(tp: Any, v: Any) -> tuple[bool, Any]:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        for a in args:
            ok, got = _coerce(a, v)
            if ok:
                return True, got
        return False, v
    if tp is type(None):
        return v is None, v
    if tp is Any:
        return True, v
    if tp is bool:
        return isinstance(v, bool), v
    if tp is int:
        return isinstance(v, int) and not isinstance(v, bool), v
    if tp is float:
        if isinstance(v, str):  # YAML 1.1: "2e-5" is a string
            try:
                v = float(v)
            except ValueError:
                return False, v
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        return ok, float(v) if ok else v
    if tp is str:
        return isinstance(v, str), v
    if origin is list:
        if not isinstance(v, list):
            return False, v
        got = [_coerce(args[0], x) if args else (True, x) for x in v]
        return all(ok for ok, _ in got), [x for _, x in got] if all(ok for ok, _ in got) else v
    return True, v


def _describe(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        parts = [_describe(a) for a in args if a is not type(None)]
        return " or ".join(parts) + (" or null" if type(None) in args else "")
    if origin is list:
        inner = _describe(args[0]) if args else "anything"
        return "a list of " + inner.replace("an integer", "integers").replace("a number", "numbers") \
            .replace("a string", "strings").replace("true or false", "booleans")
    return _NAMES.get(tp, getattr(tp, "__name__", str(tp)))
