"""The one error type users see: it carries the file and the dotted key it is about; and SIGTERM's
interruption, which the CLI installs at start-up (kept here: this module is light to import)."""
from __future__ import annotations

import signal


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler, ``timeout``, ``kill``), handled as Ctrl-C is: the runs are stopped, their
    folders left incomplete, completed runs kept; exit code 143 instead of 130."""


def raise_terminated(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not break the clean-up
    raise Terminated()


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


class NormbenchErrors(NormbenchError):
    """Several problems found in one pass (a recipe with three mistakes): ``errors`` holds each, and
    the CLI prints one line per problem."""

    def __init__(self, errors: list[NormbenchError]):
        super().__init__(errors[0].message, file=errors[0].file, key=errors[0].key)
        self.errors = errors

    def with_file(self, file: str | None) -> "NormbenchErrors":
        for e in self.errors:
            e.with_file(file)
        return super().with_file(file)

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.errors)


class Problems:
    """Collects NormbenchErrors so that validation reports every problem, not only the first::

        problems = Problems()
        with problems.check():
            ...  # code that may raise NormbenchError
        problems.raise_any()  # one error as itself, several as NormbenchErrors
    """

    def __init__(self):
        self.errors: list[NormbenchError] = []

    def add(self, err: NormbenchError) -> None:
        for e in getattr(err, "errors", None) or [err]:
            if str(e) not in {str(x) for x in self.errors}:
                self.errors.append(e)

    def check(self):
        return _Catch(self)

    def raise_any(self) -> None:
        if len(self.errors) == 1:
            raise self.errors[0]
        if self.errors:
            raise NormbenchErrors(list(self.errors))


class _Catch:
    def __init__(self, problems: Problems):
        self.problems = problems

    def __enter__(self):
        return self

    def __exit__(self, tp, err, tb):
        if isinstance(err, NormbenchError):
            self.problems.add(err)
            return True
        return False
