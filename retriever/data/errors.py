"""One error type for bad input: its message is a single ``file:line: what`` line the CLI prints as is."""
from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """Malformed user data. ``str(err)`` is one line naming the file, the line and the field."""

    def __init__(self, path: str | Path, line: int | None, message: str):
        self.path, self.line, self.detail = str(path), line, message
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")


def malformed_json(e: ValueError) -> str:
    """``malformed JSON at column C (what)`` for a ``json.JSONDecodeError`` or ``UnicodeDecodeError``.

    The decoder's own message (``Invalid control character at``, ``Unterminated string starting at``) ends
    in "at" because the position follows it in ``str(e)``; the column is given instead."""
    msg = getattr(e, "msg", None)
    if msg is None:  # UnicodeDecodeError
        return f"malformed JSON: not UTF-8 at byte {getattr(e, 'start', '?')} ({getattr(e, 'reason', e)})"
    for tail in (" starting at", " at"):
        msg = msg.removesuffix(tail)
    return f"malformed JSON at column {getattr(e, 'colno', '?')} ({msg})"
