"""Stop requests: SIGTERM, SIGINT (Ctrl-C) and SIGUSR1 finish the current step, save, and stop.

Batch schedulers announce preemption with a signal (Slurm: SIGTERM before SIGKILL, or ``--signal=USR1@T``),
and a researcher stops a run with Ctrl-C. Killing the process there would lose everything since the last
checkpoint; so the handler only records the signal, and the training loop finishes the step it is in,
writes a step checkpoint and returns. A second SIGINT or SIGTERM while that happens takes the default
action (Ctrl-C twice: ``KeyboardInterrupt`` at once), which is safe because every checkpoint is written
under a temporary name.

DataLoader workers ignore all three (:func:`ignore_in_worker`): a terminal's Ctrl-C and Slurm's SIGTERM
reach the whole process group, and a worker that died from them would fail the very step the main
process is finishing. The loader shuts its workers down itself; an orphaned worker exits within seconds
of its parent (torch's worker watchdog).
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
#: exit status after a stop: Ctrl-C keeps the shell's 130 so that ``set -e`` recipes stop there;
#: SIGTERM / SIGUSR1 (preemption) are a clean, resumable stop
EXIT_STATUS = {signal.SIGINT: 130, signal.SIGTERM: 0, signal.SIGUSR1: 0}


class StopRequest:
    """Context manager installing the handlers (main thread only; elsewhere it does nothing).

    ``signum`` is the first stop signal received (None until then); ``request(signum)`` does the same
    from code (tests, fault injection).
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.request(signum)
        if signum in (signal.SIGINT, signal.SIGTERM):
            # the next one is not polite: Ctrl-C twice interrupts at once
            signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)

    def request(self, signum: int) -> None:
        """Record a stop request (the first one wins)."""
        if self.signum is None:
            self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def ignore_in_worker() -> None:
    """For DataLoader workers: leave stop signals to the main process."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
