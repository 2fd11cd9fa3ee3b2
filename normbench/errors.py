"""The one error type users see: it carries the file and the dotted key it is about."""
from __future__ import annotations


class NormbenchError(Exception):
    """Bad input. The CLI prints ``str(err)`` as one line on stderr and exits with code 2."""

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None):
        super().__init__(message)
        self.message = message
        self.file = file
        self.key = key

    def with_file(self, file: str | None) -> "NormbenchError":
        if self.file is None and file is not None:
            self.file = str(file)
        return self

    def __str__(self) -> str:
        parts = [p for p in (self.file, self.key) if p]
        return ": ".join(parts + [self.message])
