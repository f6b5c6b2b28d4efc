"""Reading and checking a leaderboard suite file before anything is encoded (issue 23, fresh-user check).

A suite that fails late wastes the minutes spent on the set-ups before it: a malformed YAML/JSON file, a
``baseline`` that is not a set-up name, an unknown ``retriever``, or an option value of the wrong type
(``ef_search: abc``, ``rerank_alpha: 2``) is reported as one ``DataError`` line naming the file, and the
line where the parser can tell, before the first set-up runs. Values may be per-dataset mappings
(``{scifact: 0.6, default: 0.5}``); each value of the mapping is checked.

Memory: the suite file (a few KiB).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from retr.retriever.data.errors import DataError
from retr.retriever.data.structured import read_yaml_or_json

RETRIEVERS = ("dense", "bm25", "hybrid")
# key -> (type, minimum, maximum); ints are ints (a bool is refused), floats accept ints
_NUMBERS: dict[str, tuple[type, float | None, float | None]] = {
    "rerank_top_k": (int, 1, None), "rrf_k": (int, 0, None), "ef_search": (int, 1, None),
    "nprobe": (int, 1, None), "hnsw_m": (int, 1, None), "nlist": (int, 1, None), "pq_m": (int, 1, None),
    "alpha": (float, 0.0, 1.0), "rerank_alpha": (float, 0.0, 1.0), "k1": (float, 0.0, None),
    "b": (float, 0.0, 1.0)}
_CHOICES = {"fusion": ("rrf", "weighted"), "precision": ("auto", "fp32", "fp16", "bf16")}
_ANN_TUNING = ("ef_search", "nprobe", "hnsw_m", "nlist", "pq_m")  # need index_type


def read_suite_file(path: str | Path) -> Any:
    """The parsed YAML (``.yaml``/``.yml``) or JSON suite; ``DataError`` (file:line) when it does not parse."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, None, "suite file not found")
    return read_yaml_or_json(path, "suite file")[0]


def _check_value(path: Path, where: str, key: str, value: Any) -> None:
    if isinstance(value, dict):  # a per-dataset mapping
        for name, v in value.items():
            if v is not None:
                _check_value(path, where, f"{key}.{name}", v)
        return
    base = key.split(".")[0]
    if base in _NUMBERS:
        kind, lo, hi = _NUMBERS[base]
        ok = isinstance(value, (int, float) if kind is float else int) and not isinstance(value, bool)
        if not ok:
            raise DataError(path, None, f"{where}: {key} must be {'an integer' if kind is int else 'a number'}, "
                            f"got {value!r}")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            rng = f"in [{lo}, {hi}]" if hi is not None else f"at least {lo}"
            raise DataError(path, None, f"{where}: {key} must be {rng}, got {value!r}")
    elif base in _CHOICES and value not in _CHOICES[base]:
        raise DataError(path, None, f"{where}: {key} must be one of {', '.join(_CHOICES[base])}, got {value!r}")
    elif base in ("index_type", "model", "rerank") and not isinstance(value, str):
        raise DataError(path, None, f"{where}: {key} must be a string, got {value!r}")


def check_setup(path: str | Path, i: int, item: dict[str, Any]) -> None:
    """``DataError`` for a set-up whose retriever or option values are wrong (see the module docstring)."""
    path = Path(path)
    where = f"setups[{i}] ({item.get('name')})"
    kind = item.get("retriever", "dense")
    if kind not in RETRIEVERS:
        raise DataError(path, None, f"{where}: retriever must be one of {', '.join(RETRIEVERS)}, got {kind!r}")
    for key, value in item.items():
        if key not in ("name", "retriever"):
            _check_value(path, where, key, value)
    tuning = [k for k in _ANN_TUNING if k in item]
    if tuning and "index_type" not in item:
        raise DataError(path, None, f"{where}: {tuning[0]} needs index_type (an approximate index)")


def check_baseline(path: str | Path, baseline: Any, names: set[str]) -> str | None:
    """The suite's ``baseline`` when it names a set-up (None when absent); ``DataError`` otherwise."""
    if baseline is None:
        return None
    if not isinstance(baseline, str) or baseline not in names:
        raise DataError(path, None, f"baseline {baseline!r} is not the name of a set-up "
                        f"({', '.join(sorted(names))})")
    return baseline
