"""Load Hugging Face models and tokenizers without running code from the model directory, and turn a damaged
model directory into one line that names the file.

A directory with custom code (``auto_map`` in ``config.json``) makes transformers ask on stdin whether to run
it when ``trust_remote_code`` is left unset, and ``yes | retr ...`` (or a user answering "y") then executes the
directory's Python. retr passes ``trust_remote_code=False`` to every loader, so that code never runs: such a
model loads only if transformers has a built-in class for it, and is refused in one line otherwise.

Before loading, a local directory is checked: ``config.json`` a JSON object, weights present, every
safetensors file complete (a truncated file fails with its path and sizes, not a Rust traceback).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from retr.indexing.atomic import read_json
from retr.indexing.errors import ArtifactError
from retr.indexing.validate import check_fields, check_safetensors

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "tf_model.h5", "flax_model.msgpack")


class ModelLoadError(ArtifactError):
    """A model or tokenizer cannot be loaded from where it was named (one-line message)."""


def check_model_dir(path: str | Path) -> None:
    """Refuse a local model directory that cannot be complete; hub ids (not directories) pass unchecked."""
    path = Path(path)
    if not path.is_dir():
        return
    from .lora import adapter_base, is_adapter_dir

    if is_adapter_dir(path):  # a LoRA adapter (PEFT format): its files, then the base model it names
        check_model_dir(adapter_base(path))
        return
    config = path / "config.json"
    if not config.exists():
        raise ModelLoadError(f"{path}: not a model directory (missing config.json)")
    check_fields(read_json(config), {}, str(config))
    index = path / "model.safetensors.index.json"
    if index.exists():
        weight_map = read_json(index).get("weight_map") if isinstance(read_json(index), dict) else None
        if not isinstance(weight_map, dict):
            raise ModelLoadError(f"{index}: no \"weight_map\" object")
        for shard in sorted(set(weight_map.values())):
            check_safetensors(path / str(shard))
    elif (path / "model.safetensors").exists():
        check_safetensors(path / "model.safetensors")
    elif not any((path / name).exists() for name in WEIGHT_FILES) and not list(path.glob("pytorch_model-*.bin")):
        raise ModelLoadError(f"{path}: no model weights (model.safetensors is missing)")


def has_custom_code(path: str | Path) -> bool:
    path = Path(path)
    for name in ("config.json", "tokenizer_config.json"):
        try:
            cfg = read_json(path / name) if (path / name).exists() else {}
        except ArtifactError:
            continue
        if isinstance(cfg, dict) and cfg.get("auto_map"):
            return True
    return False


def hf_load(loader: Callable[..., Any], path: str | Path, what: str = "model", **kwargs: Any) -> Any:
    """``loader(path, trust_remote_code=False, **kwargs)``; failures become one ``ModelLoadError`` line. A LoRA
    adapter directory (``lora.is_adapter_dir``) loads as its base model plus the adapter; its tokenizer from the
    adapter directory when saved there, else from the base model."""
    from .lora import adapter_base, is_adapter_dir, load_with_adapter

    if is_adapter_dir(path):
        if what != "tokenizer":
            return load_with_adapter(loader, path, what, **kwargs)
        if not (Path(path) / "tokenizer_config.json").exists():
            path = adapter_base(path)
    try:
        return loader(str(path), trust_remote_code=False, **kwargs)
    except (ArtifactError, KeyboardInterrupt):
        raise
    except Exception as e:  # OSError, ValueError, SafetensorError, RuntimeError (shape mismatch), ImportError
        text = str(e)
        if "trust_remote_code" in text or (Path(str(path)).is_dir() and has_custom_code(path)
                                             and isinstance(e, (ValueError, KeyError))):
            raise ModelLoadError(f"{path}: this {what} needs Python code shipped in its directory (auto_map in "
                                 "config.json); retr never runs code from model directories") from None
        first = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(e).__name__)
        raise ModelLoadError(f"{path}: cannot load the {what} ({first[:200]})") from None
