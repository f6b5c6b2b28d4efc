"""What retr may replace, and whether an output can be written at all, checked before any work starts.

retr replaces a directory only when it is absent, empty, or an artifact retr wrote (an index, a checkpoint,
a model it saved, embedding shards, a training run). Anything else (``retr index -o ~/thesis``) is refused
in one line: retr never deletes or moves what it did not write. Writability (parent creatable, not a
file, not read-only, permission) is probed by creating and removing a temp file, so ``retr index`` fails
before encoding a corpus rather than after.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from .errors import OutputError, describe_errno

KINDS = ("index", "checkpoint", "model", "shard", "run", "export")
_NAMES = {"index": "a retr index", "checkpoint": "a retr checkpoint", "model": "a model directory written by retr",
          "shard": "a retr embedding shard", "run": "a retr training run",
          "export": "a retr export", None: "a retr artifact"}
MODEL_MARKERS = ("retr_encoder.json", "retr_cross_encoder.json", "retr_dual_encoder.json")


def _meta(path: Path) -> dict:
    try:
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def is_artifact(path: str | os.PathLike, kind: str | None = None) -> bool:
    """True when ``path`` is a directory retr wrote, of ``kind`` (any kind when None). Recognised by file
    names, so a damaged artifact (bad meta.json, missing index.faiss) can still be rebuilt in place."""
    p = Path(path)
    if not p.is_dir():
        return False
    has = lambda name: (p / name).exists()  # noqa: E731
    checks = {
        "index": lambda: has("index.faiss") or ((has("lucene") or has("docids.json")) and has("meta.json")),
        "checkpoint": lambda: any(has(n) for n in ("trainer_state.json", "task.safetensors", "optimizer.safetensors",
                                                    "rng.safetensors")),
        "model": lambda: any(has(n) for n in MODEL_MARKERS),
        "shard": lambda: has("embeddings.npy") or (has("docids.json") and has("meta.json")),
        "run": lambda: has("train_config.json") or has("checkpoints") or has("train_log.jsonl")
                       or _meta(p).get("made_by") == "retr train",
        "export": lambda: _meta(p).get("made_by") == "retr export",  # issue 22: retr export
    }
    kinds = [kind] if kind else list(KINDS)
    return any(checks[k]() for k in kinds)


def _listing(path: Path, n: int = 3) -> str:
    try:
        names = sorted(e.name + ("/" if e.is_dir() else "") for e in os.scandir(path))
    except OSError:
        return "?"
    more = f", ... ({len(names)} entries)" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def check_replaceable(path: str | os.PathLike, kind: str | None = None, flag: str = "output") -> None:
    """Refuse (``OutputError``) to replace ``path`` unless it is absent, an empty directory, or retr's own
    artifact of ``kind``. ``flag`` names the option in the message (e.g. ``--output``)."""
    p = Path(path)
    if not os.path.lexists(p):
        return
    if p.is_symlink() and not p.exists():
        raise OutputError(f"{p} is a broken symbolic link; remove it or choose another {flag}")
    if not p.is_dir():
        raise OutputError(f"{p} exists and is a file, not {_NAMES[kind]}; retr does not replace it: "
                          f"choose another {flag} or move the file away yourself")
    try:
        empty = next(os.scandir(p), None) is None
    except OSError as e:
        raise OutputError(f"{p}: cannot read the directory ({describe_errno(e.errno or 0)})") from None
    if empty or is_artifact(p, kind):
        return
    raise OutputError(f"{p} exists and is not {_NAMES[kind]} (it holds {_listing(p)}); retr only replaces what "
                      f"it wrote: choose another {flag} or move the directory away yourself")


def _nearest_existing(p: Path) -> Path:
    while not os.path.lexists(p) and p != p.parent:
        p = p.parent
    return p


def check_writable(path: str | os.PathLike, is_dir: bool, flag: str = "output") -> None:
    """Fail (``OutputError``) unless ``path`` can be created or replaced: its parent is (or can be made) a
    writable directory, and ``path`` is not a directory when a file is wanted (or a file when a directory
    is). Probes by creating and deleting a temp file in the nearest existing ancestor."""
    p = Path(os.path.abspath(os.path.expanduser(os.fspath(path))))
    if p.is_symlink() and p.exists():
        p = p.resolve()
    if p.exists():
        if is_dir and not p.is_dir():
            raise OutputError(f"{p} is a file, not a directory; choose another {flag}")
        if not is_dir and p.is_dir():
            raise OutputError(f"{p} is a directory; {flag} names a file: give a file path")
        if not is_dir and not p.is_file():  # issue 23: the atomic rename would replace a device (/dev/null) or pipe
            raise OutputError(f"{p} is not a regular file (a device or pipe); {flag} is written by replacing the "
                              "file: give a file path")
    anc = _nearest_existing(p.parent)
    if not anc.is_dir():
        raise OutputError(f"cannot create {p}: {anc} is a file, not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".retr-write-probe-", dir=anc)
    except OSError as e:
        raise OutputError(f"cannot write {p}: {anc}: {describe_errno(e.errno or 0)}") from None
    os.close(fd)
    try:
        os.unlink(probe)
    except OSError:
        pass
