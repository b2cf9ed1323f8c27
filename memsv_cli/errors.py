"""User-facing errors: one line, naming the file, line or key and the problem.

Library code raises :class:`MemsvError` (or a subclass) for anything a user can fix; the CLI prints
``memsv <command>: error: <message>`` to stderr and exits with status 1, without a traceback.
Programming errors stay ordinary exceptions so that they keep their traceback. Two exceptions are
reported by the CLI as one line too, whatever raised them: ``OSError`` (disk full, permission denied, a
file where a directory is expected, ...; see :func:`os_error_message`) and Ctrl-C
(``memsv <command>: interrupted``, exit status 130).
"""

from __future__ import annotations

import os
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


def _filename(name: object) -> str:
    return os.fsdecode(name) if isinstance(name, (str, bytes, os.PathLike)) else str(name)


def os_error_message(err: OSError) -> str:
    """One line for an ``OSError``: ``<path>: <problem>`` (``<src> -> <dst>: <problem>`` for renames).

    Uses ``err.filename`` / ``err.filename2`` / ``err.strerror`` where the raiser set them, else the
    exception's text (an ``OSError("message")``, ``shutil.Error``), else its type name.
    """
    problem = err.strerror or (str(err.args[0]) if len(err.args) == 1 else str(err)) or type(err).__name__
    where = ""
    if err.filename is not None:
        where = _filename(err.filename)
        if err.filename2 is not None:
            where += f" -> {_filename(err.filename2)}"
    return " ".join(f"{where}: {problem}".split()) if where else " ".join(problem.split())
