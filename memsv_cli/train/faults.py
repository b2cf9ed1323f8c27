"""Fault injection for the tests of long-run survival: a real signal at a known optimizer step.

``MEMSV_FAULT_INJECT="<SIGNAL>@<step>[:<rank>]"`` (e.g. ``KILL@6:1``, ``TERM@5``) makes the process of
``<rank>`` (default 0) send itself ``SIG<SIGNAL>`` right after global optimizer step ``<step>`` (and
after any checkpoint written at that step). Only in a run's first attempt: a torchrun worker group
restarted by ``--max-restarts`` (``TORCHELASTIC_RESTART_COUNT > 0``) runs clean, so a test can show
that the restarted group finishes on its own. Unset (always, outside tests), this does nothing.
"""

from __future__ import annotations

import os
import signal

ENV = "MEMSV_FAULT_INJECT"


def _parse(spec: str) -> tuple[int, int, int]:
    """``"KILL@6:1"`` -> (SIGKILL, 6, 1)."""
    name, _, where = spec.partition("@")
    step, _, rank = where.partition(":")
    return int(signal.Signals[f"SIG{name.upper()}"]), int(step), int(rank or 0)


def inject(step: int, rank: int) -> None:
    """Send the configured signal to this process if this is its step and rank (see module doc)."""
    spec = os.environ.get(ENV)
    if not spec or int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0:
        return
    signum, at_step, at_rank = _parse(spec)
    if step == at_step and rank == at_rank:
        os.kill(os.getpid(), signum)
