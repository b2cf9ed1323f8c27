"""Reading feature matrices from Kaldi ark files through their scp entries (``path.ark:offset``).

:class:`ArkReader` keeps each ark open once per process (kaldiio ``fd_dict``) instead of re-opening it
per utterance, and is safe in DataLoader workers: a forked worker never shares a file offset with its
parent, and a pickled (spawned) reader opens its own files.

:meth:`ArkReader.load_rows` reads only a range of frames: a training chunk of 200 frames from an
800-frame utterance costs a quarter of the whole matrix. It parses the Kaldi binary matrix header at the
scp offset (``\0B`` then ``FM `` / ``DM ``, then ``\4 rows \4 cols`` as little-endian int32) and seeks
to the first wanted row; compressed matrices (``CM``...) cannot be cut and are read whole (kaldiio).
``bytes_read`` counts what each reader read, for the read-amplification measurement.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

import kaldiio
import numpy as np

from memsv_cli.errors import MemsvError

_FLOAT_TOKENS = {b"FM ": np.float32, b"DM ": np.float64}
_HEADER_BYTES = 2 + 3 + 10  # "\0B", "FM ", "\4" int32 "\4" int32


class ArkReader:
    """``reader.load(spec, utt)`` -> ``(frames, dim)`` matrix; errors name ``scp`` and the utterance."""

    def __init__(self, scp: str | Path) -> None:
        self.scp = Path(scp)
        self._fds: dict[str, Any] = {}
        self._pid = os.getpid()
        self.bytes_read = 0  # matrix bytes read by this process (headers included)

    def _own_fds(self) -> dict[str, Any]:
        if self._pid != os.getpid():  # forked worker: never share a file offset with the parent
            self._fds, self._pid, self.bytes_read = {}, os.getpid(), 0
        return self._fds

    def load(self, spec: str, utt: str) -> np.ndarray:
        """Read the matrix at ``spec`` (an scp value) for utterance ``utt``."""
        fds = self._own_fds()
        try:
            mat = kaldiio.load_mat(spec, fd_dict=fds)
        except Exception as err:
            raise MemsvError(
                f"{self.scp}: cannot read features of {utt!r} ({type(err).__name__}: {err})"
            ) from None
        self.bytes_read += mat.nbytes + _HEADER_BYTES
        return mat

    def load_rows(self, spec: str, utt: str, start: int, count: int) -> np.ndarray:
        """Rows ``start .. start + count - 1`` (frames) of the matrix at ``spec``: ``(count, dim)``.

        Reads only those rows of an uncompressed float matrix; anything else is read whole and cut."""
        path, sep, offset = spec.rpartition(":")
        fd = self._file(path) if sep and offset.isdigit() else None
        if fd is None:
            return self.load(spec, utt)[start : start + count]
        try:
            fd.seek(int(offset))
            head = fd.read(_HEADER_BYTES)
            dtype = _FLOAT_TOKENS.get(head[2:5]) if head[:2] == b"\0B" else None
            if dtype is None:  # text or compressed: let kaldiio decode all of it
                return self.load(spec, utt)[start : start + count]
            rows, cols = struct.unpack("<xixi", head[5:15])
            if not 0 <= start <= start + count <= rows:
                raise ValueError(f"rows {start}..{start + count} of a {rows}-row matrix")
            item = np.dtype(dtype).itemsize
            fd.seek(int(offset) + _HEADER_BYTES + start * cols * item)
            data = fd.read(count * cols * item)
            self.bytes_read += _HEADER_BYTES + len(data)
            return np.frombuffer(data, dtype=dtype).reshape(count, cols)
        except (OSError, ValueError, struct.error) as err:
            raise MemsvError(
                f"{self.scp}: cannot read features of {utt!r} ({type(err).__name__}: {err})"
            ) from None

    def _file(self, path: str) -> Any:
        """This process's open handle of ``path`` (shared with kaldiio's ``fd_dict``), or None."""
        fds = self._own_fds()
        if path not in fds:
            try:
                fds[path] = open(path, "rb")  # noqa: SIM115 - kept open for the reader's lifetime
            except OSError:
                return None  # kaldiio reports it
        return fds[path]

    def close(self) -> None:
        for fd in self._fds.values():
            fd.close()
        self._fds = {}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_fds"] = {}  # open files do not pickle (spawned workers open their own)
        return state
