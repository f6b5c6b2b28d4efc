"""One writer per output: an advisory lock file beside each artifact retr writes, and temp directories that
a later run can tell are abandoned.

Two ``retr index -o idx`` started together used to race their renames (the loser died with a traceback and
left an orphaned copy). Now each writer takes ``.idx.lock`` (``filelock``, an ``flock`` on Linux) before it
writes, without waiting: a second writer fails at once with one line. The lock is released by the kernel
when the process dies, however it dies, so a SIGKILL never leaves a stale lock behind. The lock file
itself (empty) stays.

Locks are re-entrant inside one process (a command may claim its output before encoding, and the atomic
write takes it again when it saves), and ``release_all`` drops every lock the process holds (the CLI calls
it when a command ends).

``OwnedTempDir`` is a directory under the system temp dir holding a lock file of its own: a directory left
by a killed run has a free lock, which is how the next run knows it may remove it (a live run's directory
is never touched).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
import weakref
from pathlib import Path

from .errors import OutputBusyError

_held: dict[str, tuple[object, int]] = {}  # lock-file path -> (FileLock, depth) held by this process


def output_key(path: str | os.PathLike) -> Path:
    """The real location an output names: a symlinked output is written where the link points."""
    p = Path(os.path.abspath(os.path.expanduser(os.fspath(path))))
    return p.resolve() if p.is_symlink() else p


def lock_path(path: str | os.PathLike) -> Path:
    target = output_key(path)
    return target.parent / f".{target.name}.lock"


def acquire(path: str | os.PathLike) -> Path:
    """Take the writer lock of ``path`` (no waiting); raises ``OutputBusyError`` when another process holds it."""
    from filelock import FileLock, Timeout

    lp = lock_path(path)
    key = str(lp)
    if key in _held:
        lock, depth = _held[key]
        _held[key] = (lock, depth + 1)
        return lp
    lp.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(key, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise OutputBusyError(f"{output_key(path)} is being written by another retr process (lock {lp}); "
                              "wait for it to finish") from None
    _held[key] = (lock, 1)
    return lp


def release(path: str | os.PathLike) -> None:
    key = str(lock_path(path))
    if key not in _held:
        return
    lock, depth = _held[key]
    if depth > 1:
        _held[key] = (lock, depth - 1)
        return
    del _held[key]
    lock.release(force=True)


def release_all() -> None:
    for key in list(_held):
        lock, _ = _held.pop(key)
        lock.release(force=True)


class output_lock:
    """``with output_lock(path):`` hold the writer lock of ``path`` for the block."""

    def __init__(self, path: str | os.PathLike):
        self.path = path

    def __enter__(self) -> Path:
        return acquire(self.path)

    def __exit__(self, *exc: object) -> None:
        release(self.path)


# ---------- temp directories outside the user's paths ----------
OWNER_LOCK = ".retr-owner.lock"
STALE_AFTER_S = 60.0  # a directory younger than this may be one whose owner has not locked it yet


def _owner_alive(directory: Path) -> bool:
    from filelock import FileLock, Timeout

    lf = directory / OWNER_LOCK
    if not lf.exists():
        return False
    probe = FileLock(str(lf), timeout=0)
    try:
        probe.acquire()
    except Timeout:
        return True
    probe.release(force=True)
    return False


def sweep_stale_temp_dirs(prefix: str, root: str | os.PathLike | None = None, older_than: float = STALE_AFTER_S) -> list[Path]:
    """Remove ``root/prefix*`` directories whose owner process is gone (lock free) and that are older than
    ``older_than`` seconds. Returns what was removed."""
    root = Path(root or tempfile.gettempdir())
    removed = []
    try:
        candidates = [p for p in root.iterdir() if p.name.startswith(prefix) and p.is_dir() and not p.is_symlink()]
    except OSError:
        return removed
    now = time.time()
    for p in candidates:
        try:
            if now - p.stat().st_mtime < older_than or _owner_alive(p):
                continue
        except OSError:
            continue
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed


class OwnedTempDir:
    """A temp directory owned by this process: removed by ``cleanup()``, at interpreter exit, or when the
    object is garbage collected; if the process is killed, the next ``OwnedTempDir`` of the same prefix
    removes it (its owner lock is free)."""

    def __init__(self, prefix: str):
        from filelock import FileLock

        sweep_stale_temp_dirs(prefix)
        self.path = Path(tempfile.mkdtemp(prefix=prefix))
        self._lock = FileLock(str(self.path / OWNER_LOCK), timeout=0)
        self._lock.acquire()
        self._finalizer = weakref.finalize(self, OwnedTempDir._remove, str(self.path), self._lock)

    @staticmethod
    def _remove(path: str, lock: object) -> None:
        shutil.rmtree(path, ignore_errors=True)
        try:
            lock.release(force=True)  # type: ignore[attr-defined]
        except Exception:
            pass

    def cleanup(self) -> None:
        self._finalizer()
