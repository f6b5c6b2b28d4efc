"""One error type for bad input: its message is a single ``file:line: what`` line the CLI prints as is."""
from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """Malformed user data. ``str(err)`` is one line naming the file, the line and the field."""

    def __init__(self, path: str | Path, line: int | None, message: str):
        self.path, self.line, self.detail = str(path), line, message
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")
