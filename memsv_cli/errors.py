"""User-facing errors: one line, naming the file, line or key and the problem.

Library code raises :class:`MemsvError` (or a subclass) for anything a user can fix; the CLI prints
``memsv <command>: error: <message>`` to stderr and exits with status 1, without a traceback.
Programming errors stay ordinary exceptions so that they keep their traceback.
"""

from __future__ import annotations

from pathlib import Path


class MemsvError(Exception):
    """An error caused by the user's input or environment, reported as one line."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        # Keep the message on one line whatever the caller passed: the CLI promises one-line errors.
        super().__init__(" ".join(str(message).split()))


class InputError(MemsvError):
    """A problem located in an input file: ``<file>:<line>: <problem>``."""

    def __init__(self, path: str | Path, problem: str, line: int | None = None) -> None:
        where = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {problem}")
        self.path = str(path)
        self.line = line
        self.problem = problem
