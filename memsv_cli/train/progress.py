"""Rich progress display for training: one bar per epoch with loss, accuracy, LR, margin and speed."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from memsv_cli.console import console as make_console


class TrainProgress:
    """Context manager; a no-op when ``enabled`` is False (ranks > 0, ``train.progress: false``).

    On a terminal it draws a live bar; otherwise (output redirected to a log file) it prints one summary
    line per epoch instead, so that logs are not flooded with bar redraws, and never wraps it.
    """

    def __init__(self, enabled: bool, total_epochs: int, console: Console | None = None) -> None:
        self.enabled, self.total_epochs = enabled, total_epochs
        self.console = console or make_console(stderr=True)
        self._progress: Progress | None = None
        self._task: Any = None
        if enabled and self.console.is_terminal:
            self._progress = Progress(
                TextColumn("[bold]epoch {task.fields[epoch]}/{task.fields[epochs]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self.console,
            )

    def __enter__(self) -> TrainProgress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def start_epoch(self, epoch: int, steps: int, done: int = 0) -> None:
        """Begin a bar for ``epoch`` (1-based) of ``steps`` optimizer steps, ``done`` of them already
        (a run resumed inside the epoch)."""
        if self._progress is not None:
            self._task = self._progress.add_task(
                "train", total=steps, completed=done, epoch=epoch, epochs=self.total_epochs, stats=""
            )

    def update(self, *, loss: float, acc: float, lr: float, margin: float, samples_per_s: float) -> None:
        """Advance one batch and show its loss, accuracy (fraction), LR, margin and throughput."""
        if self._progress is not None and self._task is not None:
            stats = (
                f"loss {loss:.3f} acc {100 * acc:5.1f}% lr {lr:.2e} margin {margin:.3f} {samples_per_s:.0f}/s"
            )
            self._progress.update(self._task, advance=1, stats=stats)

    def end_epoch(self, metrics: dict[str, Any]) -> None:
        """Replace the live stats with the epoch's means (the bar stays on screen as a record)."""
        stats = (
            f"loss {metrics['loss']:.3f} acc {100 * metrics['acc']:5.1f}% lr {metrics['lr']:.2e} "
            f"margin {metrics['margin']:.3f} {metrics['samples_per_s']:.0f} samples/s "
            f"peak {metrics['peak_mem_bytes'] / 2**20:.0f} MiB"
        )
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, stats=stats)
            self._task = None
        elif self.enabled:
            # soft_wrap: a log file gets one line per epoch, never cut at the console's 80 columns
            self.console.print(
                f"epoch {metrics['epoch']}/{self.total_epochs} {stats}", highlight=False, soft_wrap=True
            )
