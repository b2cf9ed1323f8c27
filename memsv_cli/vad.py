"""Optional voice activity detection for ``memsv embed --vad`` / ``memsv similarity --vad``: Silero VAD.

The model is the TorchScript file that the ``silero-vad`` PyPI package ships inside itself
(``silero_vad/data/silero_vad.jit``, loaded by its ``load_silero_vad()``): nothing is downloaded at
run time. The package's base install needs only torch and packaging; torchaudio (its audio I/O
helpers) is neither needed nor imported: we pass it samples we decoded ourselves. Install with
``pip install 'memsv[vad]'`` (or ``pip install silero-vad``).

Speech segments come from the package's ``get_speech_timestamps`` with its defaults (speech
probability threshold 0.5, 250 ms minimum speech, 100 ms minimum silence, 30 ms padding each side);
the kept audio is the segments concatenated (its ``collect_chunks``).
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from memsv_cli.data.audio import INT16_SCALE
from memsv_cli.errors import MemsvError

INSTALL_HINT = "pip install 'memsv[vad]' (or: pip install silero-vad)"
RATES = (8000, 16000)  # the rates Silero VAD models


def vad_available() -> bool:
    """True when the ``silero_vad`` package is installed (checked without importing it)."""
    return importlib.util.find_spec("silero_vad") is not None


class SileroVad:
    """The packaged Silero VAD model; :meth:`speech` keeps the speech of a recording."""

    def __init__(self) -> None:
        if not vad_available():
            raise MemsvError(f"--vad needs the silero-vad package: {INSTALL_HINT}")
        threads = torch.get_num_threads()
        import silero_vad  # its import sets torch's thread count to 1 for the whole process: put it back

        torch.set_num_threads(threads)
        self._package: Any = silero_vad
        with warnings.catch_warnings():  # importlib.resources / torch.jit deprecation notices
            warnings.simplefilter("ignore", DeprecationWarning)
            self.model = silero_vad.load_silero_vad()  # the bundled .jit file, never a download

    def speech(self, samples: np.ndarray, sample_rate: int, name: str | Path = "input") -> np.ndarray:
        """Speech-only samples: ``(N,)`` float32 (int16 range) -> ``(M,)``, ``M <= N``.

        Raises:
            MemsvError: an unsupported rate (Silero models 8 and 16 kHz), or no speech found.
        """
        if sample_rate not in RATES:
            raise MemsvError(f"{name}: --vad works at 8000 or 16000 Hz, the model's rate is {sample_rate} Hz")
        wave = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32) / np.float32(INT16_SCALE))
        with torch.inference_mode():
            spans = self._package.get_speech_timestamps(wave, self.model, sampling_rate=sample_rate)
        if not spans:
            raise MemsvError(f"{name}: --vad found no speech ({len(samples) / sample_rate:.2f} s of audio)")
        return np.concatenate([samples[s["start"] : s["end"]] for s in spans])


__all__ = ["INSTALL_HINT", "SileroVad", "vad_available"]
