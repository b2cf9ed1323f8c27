"""The rich consoles every command prints through (tables, progress, summaries).

On a terminal rich uses its width. In a log (``run.sh ... | tee log``, a batch scheduler's output file)
rich would assume 80 columns and fold table titles and long lines; there nothing needs folding, so a
console that is not a terminal gets at least :data:`LOG_WIDTH` columns (``COLUMNS`` still wins).
"""

from __future__ import annotations

import os

from rich.console import Console

LOG_WIDTH = 160


def console(stderr: bool = False) -> Console:
    """A rich console on stdout (or stderr) that does not fold lines in logs."""
    out = Console(stderr=stderr)
    if out.is_terminal or "COLUMNS" in os.environ:
        return out
    return Console(stderr=stderr, width=max(out.width, LOG_WIDTH))
