"""Memory and disk sizes as people write them (``11GiB``, ``10.7GB``) and as tables print them."""

from __future__ import annotations

import re

from memsv_cli.errors import MemsvError

_UNITS = {
    "": 1,
    "b": 1,
    "k": 2**10,
    "kib": 2**10,
    "kb": 10**3,
    "m": 2**20,
    "mib": 2**20,
    "mb": 10**6,
    "g": 2**30,
    "gib": 2**30,
    "gb": 10**9,
    "t": 2**40,
    "tib": 2**40,
    "tb": 10**12,
}


def parse_size(text: str) -> int:
    """Bytes in a size such as ``11GiB``, ``11G`` (binary, as nvidia-smi's MiB), ``10.7GB`` (decimal),
    ``24576MiB`` or a plain byte count."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    unit = match and match.group(2).lower()
    if not match or unit not in _UNITS:
        raise MemsvError(f"cannot read memory size {text!r}; write e.g. 11GiB, 10.7GB, 24576MiB or bytes")
    size = int(float(match.group(1)) * _UNITS[unit])
    if size <= 0:
        raise MemsvError(f"memory size must be positive, got {text!r}")
    return size


def format_bytes(nbytes: float) -> str:
    """Human-readable binary size: ``1.50 GiB``, ``512.0 KiB``, ``12 B``."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(nbytes) >= scale:
            return f"{nbytes / scale:.2f} {unit}"
    return f"{int(nbytes)} B"
