"""One epoch of training: micro-batches from the loader, the step, the statistics every rank agrees on,
progress and step records, and the moments to save (a due step checkpoint, a stop signal).

Per optimizer step, ranks exchange one small vector (``all_reduce``, after backward and before the
update, inside :class:`~memsv_cli.train.step.TrainStep`): the loss / accuracy sums, a non-finite flag,
and two requests, "save now" (rank 0's clock) and "stop" (a signal on any rank). So every rank decides
the same thing at the same step, and a non-finite loss anywhere stops every rank before it is applied.
"""

from __future__ import annotations

import functools
import resource
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from memsv_cli.data.raw import ChunkBatch
from memsv_cli.errors import MemsvError
from memsv_cli.train import faults
from memsv_cli.train.distributed import DistInfo, all_reduce_sum
from memsv_cli.train.log import TrainLog
from memsv_cli.train.memory import epoch_memory, measured_step_peak
from memsv_cli.train.progress import TrainProgress
from memsv_cli.train.signals import StopRequest
from memsv_cli.train.state import TrainState
from memsv_cli.train.step import STAT_COUNT, STAT_NONFINITE, Batch

_SAVE, _STOP, _BAD = 4, 5, 6  # after the step statistics: the two requests, unreadable samples


class NonFiniteLoss(MemsvError):
    """The loss became NaN/inf; training stops and the last good checkpoint stays."""


@dataclass
class SaveClock:
    """When a step checkpoint is due: every ``minutes`` (wall clock) and/or every ``steps`` steps."""

    minutes: float | None
    steps: int | None
    last: float = field(default_factory=time.monotonic)

    def due(self, step: int) -> bool:
        """Whether the step that ends at global step ``step`` (1-based count) should be saved."""
        if self.steps is not None and step % self.steps == 0:
            return True
        return self.minutes is not None and time.monotonic() - self.last >= 60.0 * self.minutes

    def saved(self) -> None:
        self.last = time.monotonic()


@dataclass
class EpochRun:
    """What :func:`run_epoch` needs besides the state; ``save(reason)`` writes a step checkpoint."""

    loader: DataLoader
    info: DistInfo
    progress: TrainProgress
    log: TrainLog
    stop: StopRequest
    clock: SaveClock
    save: Callable[[str], None]
    log_interval: int
    precision: str
    max_bad_fraction: float = 0.01
    batch_size: int = 1  # per micro-batch, for the bad-sample fraction
    predicted_peak: int | None = None  # bytes, the profiler's estimate of one step (train.memory)
    # CPU: follow one step with the storage tracker, once per process (the step's shapes do not change
    # between epochs; the tracker slows a step several times); CUDA reads its allocator's peaks instead
    track_memory: bool = False
    process_start_step: int = 0  # the global step this process started (or resumed) at
    tracked_peak: int | None = None  # bytes, the tracked step's peak once measured (kept across epochs)


@dataclass
class EpochResult:
    """An epoch's metrics (``type: epoch`` record), or where it stopped early."""

    metrics: dict[str, Any] | None
    stopped: bool = False


def grouped(
    loader: Iterable[ChunkBatch], size: int, device: torch.device
) -> Iterator[tuple[list[Batch], list]]:
    """Consecutive groups of ``size`` micro-batches (one optimizer step), moved to ``device``, with the
    samples left out of them because they could not be read."""
    group: list[Batch] = []
    bad: list = []
    for feats, labels, dropped in loader:
        group.append((feats.to(device, non_blocking=True), labels.to(device, non_blocking=True)))
        bad += dropped
        if len(group) == size:
            yield group, bad
            group, bad = [], []


def peak_memory(device: torch.device) -> tuple[int, str]:
    """(bytes, kind): CUDA allocator peak since the last reset, or this process's peak RSS on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_allocated"
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "cpu_peak_rss"  # KiB on Linux


class _Agreement:
    """``before_update`` hook: all-reduce the step statistics with the save/stop requests."""

    def __init__(self, state: TrainState, run: EpochRun, lr: float, bad: int) -> None:
        self.state, self.run, self.lr, self.bad = state, run, lr, bad
        self.reduced = torch.zeros(7, dtype=torch.float64)

    def __call__(self, stats: torch.Tensor) -> None:
        info, step = self.run.info, self.state.step + 1
        wants = [float(info.is_main and self.run.clock.due(step)), float(self.run.stop.requested), self.bad]
        vec = torch.cat([stats, torch.tensor(wants, dtype=torch.float64, device=stats.device)])
        # reduced on the device (nccl needs CUDA tensors); every rank learns of a bad loss anywhere
        self.reduced = all_reduce_sum(vec, info).cpu()
        if self.reduced[STAT_NONFINITE] > 0:
            raise NonFiniteLoss(
                f"loss became non-finite at epoch {self.state.epoch + 1}, step "
                f"{self.state.step_in_epoch + 1} (lr {self.lr:.3g}, precision {self.run.precision}); "
                "stopped before applying it. Lower scheduler.initial_lr, set train.grad_clip or use "
                "fp32/bf16; the last good checkpoint is kept and --resume continues from it"
            )


def run_epoch(state: TrainState, run: EpochRun) -> EpochResult:
    """Train from ``state``'s position to the end of its epoch, or until a stop request (then a step
    checkpoint is written before returning). Metrics are means over all ranks' samples.

    Raises:
        NonFiniteLoss: on any rank's non-finite loss, on every rank, before the bad update is applied.
    """
    info, steps, accum = run.info, state.steps_per_epoch, state.sampler.accum_steps
    if info.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(info.device)
    start, seen, lr, margin = time.perf_counter(), 0.0, 0.0, 0.0
    run.progress.start_epoch(state.epoch + 1, steps, done=state.step_in_epoch)
    for micro, bad in grouped(run.loader, accum, info.device):
        lr, margin = state.lr_sched.step(state.step), state.margin_sched.step(state.step)
        agree = _Agreement(state, run, lr, len(bad))
        # not this process's first step: it creates the optimizer states and the 8-bit quantiser tables
        # (a one-off, as the profile's warm-up), so the step the estimate describes is every later one
        if run.track_memory and run.tracked_peak is None and state.step > run.process_start_step:
            step = functools.partial(state.step_fn, micro, before_update=agree)
            run.tracked_peak = measured_step_peak(state.net, state.optimizer, micro, step)
        else:
            state.step_fn(micro, before_update=agree)
        state.step += 1
        stats = agree.reduced
        state.epoch_stats[:6] += stats[:3].repeat(2)  # epoch totals, then the log window
        _count_bad(state, run, bad, float(stats[_BAD]))
        seen += float(stats[STAT_COUNT])
        rate = seen / max(time.perf_counter() - start, 1e-9)
        run.progress.update(
            loss=float(stats[0] / stats[2]),
            acc=float(stats[1] / stats[2]),
            lr=lr,
            margin=margin,
            samples_per_s=rate,
        )
        end_of_epoch = state.step_in_epoch == steps
        if run.log_interval and (state.step_in_epoch % run.log_interval == 0 or end_of_epoch):
            _log_window(state, run, lr, margin, rate)
        stop = bool(stats[_STOP] > 0)
        if stop or (stats[_SAVE] > 0 and not end_of_epoch):  # the epoch end saves anyway
            run.save("stop signal" if stop else "periodic")
        faults.inject(state.step, info.rank)
        if stop:
            return EpochResult(None, stopped=True)
    totals, skipped = state.epoch_stats[:3].clone(), int(state.epoch_stats[6])
    state.epoch_stats.zero_()
    metrics = _epoch_metrics(state, totals, time.perf_counter() - start, lr, margin, info)
    memory = epoch_memory(info.device, run.tracked_peak, run.predicted_peak)
    return EpochResult({**metrics, "bad_samples": skipped, **memory})


def _count_bad(state: TrainState, run: EpochRun, bad: list, all_ranks: float) -> None:
    """Log this rank's unreadable samples (rank 0 writes), count every rank's, and stop every rank
    alike once an epoch's count passes ``data.max_bad_fraction`` of its samples."""
    for item in bad:
        run.log.info(f"warning: skipped {item.key}: {item.reason}")
    state.epoch_stats[6] += all_ranks
    epoch_samples = state.steps_per_epoch * state.sampler.slots * run.batch_size
    if state.epoch_stats[6] > run.max_bad_fraction * epoch_samples:
        first = f"; this rank's first: {bad[0].key} ({bad[0].reason})" if bad else ""
        count = int(state.epoch_stats[6])
        raise MemsvError(
            f"{count} training samples of epoch {state.epoch + 1} could not be read, more than "
            f"data.max_bad_fraction {run.max_bad_fraction:g} of its {epoch_samples}{first}; fix or remove "
            "them (train.log lists them) and --resume"
        )


def _log_window(state: TrainState, run: EpochRun, lr: float, margin: float, rate: float) -> None:
    """A step record of the steps since the last one (the window), to metrics.jsonl and train.log."""
    window = state.epoch_stats[3:6]
    rec = {
        "type": "step",
        "epoch": state.epoch + 1,
        "step": state.step,
        "loss": float(window[0] / window[STAT_COUNT]),
        "acc": float(window[1] / window[STAT_COUNT]),
        "lr": lr,
        "margin": margin,
        "samples_per_s": rate,
    }
    run.log.record(rec)
    run.log.info(
        f"epoch {rec['epoch']} batch {state.step_in_epoch}/{state.steps_per_epoch} loss {rec['loss']:.4f} "
        f"acc {100 * rec['acc']:.2f}% lr {lr:.3g} margin {margin:.3f}"
    )
    window.zero_()


def _epoch_metrics(
    state: TrainState, totals: torch.Tensor, seconds: float, lr: float, margin: float, info: DistInfo
) -> dict[str, Any]:
    mem, mem_kind = peak_memory(info.device)
    mem_t = torch.tensor([float(mem)], dtype=torch.float64, device=info.device)
    if info.enabled:
        dist.all_reduce(mem_t, op=dist.ReduceOp.MAX)
    state.epoch += 1
    return {
        "type": "epoch",
        "epoch": state.epoch,
        "step": state.step,
        "loss": float(totals[0] / totals[STAT_COUNT]),
        "acc": float(totals[1] / totals[STAT_COUNT]),
        "lr": lr,
        "margin": margin,
        "samples_per_s": float(totals[STAT_COUNT]) / max(seconds, 1e-9),
        "seconds": seconds,
        "peak_mem_bytes": int(mem_t.item()),
        "peak_mem_kind": mem_kind,
    }
