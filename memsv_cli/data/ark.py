"""Reading feature matrices from Kaldi ark files through their scp entries (``path.ark:offset``).

:class:`ArkReader` keeps each ark open once per process (kaldiio ``fd_dict``) instead of re-opening it
per utterance, and is safe in DataLoader workers: a forked worker never shares a file offset with its
parent, and a pickled (spawned) reader opens its own files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import kaldiio
import numpy as np

from memsv_cli.errors import MemsvError


class ArkReader:
    """``reader.load(spec, utt)`` -> ``(frames, dim)`` matrix; errors name ``scp`` and the utterance."""

    def __init__(self, scp: str | Path) -> None:
        self.scp = Path(scp)
        self._fds: dict[str, Any] = {}
        self._pid = os.getpid()

    def load(self, spec: str, utt: str) -> np.ndarray:
        """Read the matrix at ``spec`` (an scp value) for utterance ``utt``."""
        if self._pid != os.getpid():  # forked worker: never share a file offset with the parent
            self._fds, self._pid = {}, os.getpid()
        try:
            return kaldiio.load_mat(spec, fd_dict=self._fds)
        except Exception as err:
            raise MemsvError(
                f"{self.scp}: cannot read features of {utt!r} ({type(err).__name__}: {err})"
            ) from None

    def close(self) -> None:
        for fd in self._fds.values():
            fd.close()
        self._fds = {}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_fds"] = {}  # open files do not pickle (spawned workers open their own)
        return state
