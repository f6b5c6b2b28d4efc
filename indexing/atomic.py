"""Atomic artifact writes: an artifact is complete under its name, or absent, or the previous version,
at every instant, whatever kills the process.

A directory is built in a sibling temp dir (``.NAME.tmp-XXXX``, same filesystem), every file is fsynced,
and then it takes the final name in one step:

* ``NAME`` absent: ``renameat2(RENAME_NOREPLACE)`` (plain ``rename`` where that is missing);
* ``NAME`` present: ``renameat2(RENAME_EXCHANGE)`` swaps the two directories in one system call, so
  ``NAME`` is the old artifact before it and the new one after it; the temp name then holds the old
  artifact, which is removed. Old plain-directory artifacts need no conversion.

Where the filesystem cannot exchange (not Linux, some network filesystems), the fallback is two renames
(``NAME`` -> ``.NAME.old-PID``, temp -> ``NAME``); a kill between them leaves the old artifact in
``.NAME.old-PID``, which the next write of ``NAME`` puts back before doing anything else.

Each write holds the writer lock of ``NAME`` (``locks.py``), refuses to replace what retr did not write
(``outputs.py``), removes temp dirs of killed runs (``.NAME.tmp-*``, ``.NAME.old-*``: safe, the lock says
no live writer owns them) and turns a failed write (disk full, read-only, permission) into one line that
names the path. ``RETR_TEST_FAULT_AT=N`` makes the process SIGKILL itself at the N-th write step (tests).
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import ArtifactError, OutputError, describe_errno, write_errno
from .outputs import check_replaceable

__all__ = ["ArtifactError", "OutputError", "atomic_dir", "atomic_file", "write_json_atomic", "read_json",
           "check_built_from", "fault_point"]


def check_built_from(meta: dict, corpus_fingerprint: str, index_dir: str | os.PathLike) -> None:
    """Fail with one line when an index's ``meta.json`` says it was built from another corpus."""
    built_on = (meta.get("corpus") or {}).get("fingerprint") if isinstance(meta.get("corpus"), dict) else None
    if built_on != corpus_fingerprint:
        raise ArtifactError(f"{index_dir}: index was built from another corpus (fingerprint {built_on}, "
                            f"this corpus {corpus_fingerprint}); choose another index directory")


# ---------- fault injection (tests) ----------
_fault_steps = 0
_fault_hit: set[str] = set()


def fault_point(label: str) -> None:
    """A step of a write sequence. With ``RETR_TEST_FAULT_AT=N`` the N-th step (or the first step whose label is
    N, e.g. ``before swap``) kills the process (SIGKILL, or SIGSTOP with ``RETR_TEST_FAULT_ACTION=stop``);
    ``RETR_TEST_FAULT_TRACE=1`` prints each step. A no-op unless the variable is set."""
    at = os.environ.get("RETR_TEST_FAULT_AT")
    if not at:
        return
    global _fault_steps
    _fault_steps += 1
    if os.environ.get("RETR_TEST_FAULT_TRACE"):
        print(f"retr-fault-step {_fault_steps} {label}", file=sys.stderr, flush=True)
    if (str(_fault_steps) == at) if at.isdigit() else (label == at and at not in _fault_hit):
        _fault_hit.add(at)
        stop = os.environ.get("RETR_TEST_FAULT_ACTION") == "stop"
        os.kill(os.getpid(), signal.SIGSTOP if stop else signal.SIGKILL)


# ---------- renames ----------
_AT_FDCWD = -100
_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2
_renameat2 = None


def _libc_renameat2():
    global _renameat2
    if _renameat2 is None:
        try:
            fn = ctypes.CDLL(None, use_errno=True).renameat2
            fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
            fn.restype = ctypes.c_int
            _renameat2 = fn
        except (AttributeError, OSError):
            _renameat2 = False
    return _renameat2


def _rename2(src: Path, dst: Path, flags: int) -> bool:
    """renameat2 with ``flags``; False when this system or filesystem does not support the flag."""
    fn = _libc_renameat2()
    if not fn:
        return False
    if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(dst))


def exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (both must exist); False when unsupported here."""
    return _rename2(a, b, _RENAME_EXCHANGE)


def rename_noreplace(src: Path, dst: Path) -> None:
    """Rename that fails (FileExistsError) rather than replace something that appeared at ``dst``."""
    if not _rename2(src, dst, _RENAME_NOREPLACE):
        if os.path.lexists(dst):
            raise FileExistsError(errno.EEXIST, "exists", str(dst))
        os.rename(src, dst)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            fault_point(f"fsync {name}")
        _fsync_dir(Path(dirpath))


# ---------- leftovers of killed runs ----------
def _leftovers(final: Path, tag: str) -> list[Path]:
    prefix = f".{final.name}.{tag}-"
    try:
        return sorted((p for p in final.parent.iterdir() if p.name.startswith(prefix) and p.is_dir()
                       and not p.is_symlink()), key=lambda p: p.stat().st_mtime)
    except OSError:
        return []


def recover(final: Path) -> None:
    """Put back an old artifact a killed two-rename replacement left in ``.NAME.old-*`` (when ``NAME`` is
    missing), then remove temp dirs of killed writers. Call with the writer lock of ``final`` held."""
    import logging

    log = logging.getLogger(__name__)
    olds = _leftovers(final, "old")
    if olds and not os.path.lexists(final):
        rename_noreplace(olds[-1], final)
        log.warning("restored %s from %s (left by a run killed while replacing it)", final, olds[-1].name)
        olds = olds[:-1]
    for p in olds + _leftovers(final, "tmp"):
        shutil.rmtree(p, ignore_errors=True)
        log.info("removed %s (left by a killed run)", p)
        fault_point(f"sweep {p.name}")


def _write_error(exc: BaseException, final: Path, what: str = "the previous version is unchanged") -> BaseException:
    """One-line ``OutputError`` for a write that failed for lack of space, permission, read-only media."""
    if isinstance(exc, (ArtifactError, KeyboardInterrupt, SystemExit)) or not isinstance(exc, Exception):
        return exc
    code = write_errno(exc)
    if code is None:
        return exc
    return OutputError(f"cannot write {final}: {describe_errno(code)} ({what})")


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike, kind: str | None = None, lock: bool = True) -> Iterator[Path]:
    """Yield a temp directory; when the block ends it replaces ``final`` atomically (see the module doc).

    ``kind`` (index, checkpoint, model, shard, run; None = any) is what ``final`` may already be: anything
    else there is refused. ``lock=False`` when the caller already holds a lock covering ``final``."""
    from . import locks

    final = locks.output_key(final)
    with (locks.output_lock(final) if lock else contextlib.nullcontext()):
        check_replaceable(final, kind)
        final.parent.mkdir(parents=True, exist_ok=True)
        recover(final)
        try:
            tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
        except OSError as e:
            raise _write_error(e, final) from None
        fault_point("mkdtemp")
        swapped, existed, moved_old = False, os.path.lexists(final), None
        try:
            yield tmp
            _fsync_tree(tmp)
            fault_point("before swap")
            if os.path.lexists(final):
                check_replaceable(final, kind)  # the body may have run long: look again
                if exchange(tmp, final):
                    swapped = True
                    fault_point("exchanged")
                    _fsync_dir(final.parent)
                    shutil.rmtree(tmp, ignore_errors=True)
                    fault_point("removed old")
                else:
                    moved_old = final.parent / f".{final.name}.old-{os.getpid()}"
                    os.rename(final, moved_old)
                    fault_point("renamed old away")
                    os.rename(tmp, final)
                    swapped = True
                    fault_point("renamed new in")
                    _fsync_dir(final.parent)
                    shutil.rmtree(moved_old, ignore_errors=True)
            else:
                rename_noreplace(tmp, final)
                swapped = True
                fault_point("renamed new in")
                _fsync_dir(final.parent)
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if moved_old is not None and not swapped and not os.path.lexists(final):
                with contextlib.suppress(OSError):
                    os.rename(moved_old, final)  # interrupted between the two renames: the old one goes back
            err = _write_error(e, final, "the new version is in place" if swapped else
                               "the previous version is unchanged" if existed else "nothing was written")
            if err is e:
                raise
            raise err from None


@contextlib.contextmanager
def atomic_file(final: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[Any]:
    """Open a temp file next to ``final``; rename it into place when the block ends without error."""
    final = Path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.tmp-", dir=final.parent)
    except OSError as e:
        raise _write_error(e, final) from None
    os.close(fd)
    try:
        kwargs = {} if "b" in mode else {"encoding": encoding}
        with open(tmp, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        err = _write_error(e, final)
        if err is e:
            raise
        raise err from None


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    with atomic_file(path) as fh:
        json.dump(obj, fh, indent=2, sort_keys=False)
        fh.write("\n")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path}: file not found")
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    except UnicodeDecodeError:
        raise ArtifactError(f"{path}: not UTF-8 text (damaged?)") from None
