"""Atomic outputs: nothing half-written is ever mistaken for finished.

Every stage writes to a temporary name in the destination directory and renames it into place when
complete (``os.replace`` is atomic on POSIX within one file system). For Kaldi ark/scp pairs the scp is
the completion marker: the ark is written first, under its final name, and the scp appears only once
every entry it points to is on disk.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` only if the block succeeds.

    The temporary file is removed when the block raises (including KeyboardInterrupt).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates 0600 files; give outputs the usual umask-derived mode so collaborators can read them.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_lines_atomic(path: str | Path, lines: list[str]) -> None:
    """Write one line per item (newline-terminated) to ``path`` atomically."""
    write_text_atomic(path, "".join(line + "\n" for line in lines))
