"""Errors about artifacts that the CLI prints as one line with exit code 2 (no traceback)."""
from __future__ import annotations

import errno as _errno
import os
import re


class ArtifactError(ValueError):
    """A file or directory that retr reads is missing or malformed (message is one line)."""


class OutputError(ArtifactError):
    """An output cannot be written here: exists and is not retr's, unwritable, disk full (one line)."""


class OutputBusyError(OutputError):
    """Another process is writing this output (one-line message)."""


# errno names as libraries word them inside their own exceptions (faiss RuntimeError, SafetensorError,
# a Java IOException): matched when the exception is not an OSError carrying an errno.
_ERRNO_TEXT = [
    (_errno.ENOSPC, re.compile(r"no space left on device|StorageFull|\(os error 28\)|errno 28\b", re.I)),
    (_errno.EDQUOT, re.compile(r"disk quota exceeded|\(os error 122\)", re.I)),
    (_errno.EROFS, re.compile(r"read-only file system|\(os error 30\)", re.I)),
    (_errno.EACCES, re.compile(r"permission denied|\(os error 13\)", re.I)),
    (_errno.EIO, re.compile(r"input/output error|\(os error 5\)", re.I)),
]


def write_errno(exc: BaseException) -> int | None:
    """The errno behind a failed write, whether the exception is an ``OSError`` or a library's wrapper of one."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno:
            return exc.errno
        text = str(exc)
        for code, pattern in _ERRNO_TEXT:
            if pattern.search(text):
                return code
        exc = exc.__cause__ or exc.__context__
    return None


def describe_errno(code: int) -> str:
    return os.strerror(code)[:1].lower() + os.strerror(code)[1:]
