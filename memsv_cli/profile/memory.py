"""Where the memory of one training step goes: measured on CUDA or CPU, or estimated from shapes (meta).

All three methods run the same :class:`~memsv_cli.profile.step.TrainingStep` after a warm-up that creates
the optimizer states, as they exist during training (a whole step on CUDA; an optimizer step on zero
gradients on cpu/meta, which leaves the same memory behind in half the time). The figure is CUDA's
"allocated bytes" (sum of live storage sizes, 512-byte blocks), peak over the measured step from just before
``zero_grad`` to the end of ``optimizer.step()``.

- ``cpu``: real tensors; :class:`~memsv_cli.profile.tracker.StorageTracker` follows every storage.
- ``meta``: the same step on fake tensors (``FakeTensorMode``: shapes, dtypes and strides, no data), so a
  ResNet293 at batch 128 is profiled in seconds; identical accounting, so it matches ``cpu`` up to kernels
  whose shape functions allocate differently from the CPU kernels.
- ``cuda``: the total is ``torch.cuda.max_memory_allocated()`` over the measured step (allocator truth,
  including kernel workspaces); the split into components comes from the tracker running alongside.

The breakdown is a snapshot of the live storages at the peak, so the components sum to the total:
``parameters`` (model and head weights plus BatchNorm buffers), ``gradients`` (``.grad`` tensors),
``optimizer_states`` (everything in ``optimizer.state``), ``activations`` (tensors autograd saved for the
backward pass, including those a reversible block re-creates while recomputing), ``other`` (the input
batch, logits, gradients flowing between layers, temporaries).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass

import torch
from torch import nn

from memsv_cli.errors import MemsvError
from memsv_cli.profile.fake import fake_cpu, real_tensors
from memsv_cli.profile.step import StepSetup, TrainingStep, build_optimizer
from memsv_cli.profile.tracker import StorageTracker

METHODS = ("cuda", "cpu", "meta")
COMPONENTS = ("parameters", "gradients", "optimizer_states", "activations")


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes live at the peak of one training step, by component; ``total`` is the peak itself."""

    parameters: int
    gradients: int
    optimizer_states: int
    activations: int
    other: int
    total: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def tensors_in(obj: object) -> Iterator[torch.Tensor]:
    """Every tensor inside nested dicts / lists / tuples (optimizer state)."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from tensors_in(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from tensors_in(value)


def _tag_all(tracker: StorageTracker, tensors: Iterable[torch.Tensor], tag: str) -> None:
    for tensor in tensors:
        tracker.tag(tensor, tag)


@contextlib.contextmanager
def _tag_saved_activations(tracker: StorageTracker) -> Iterator[None]:
    """Tag every tensor autograd saves for backward (forward and recomputation alike) as an activation."""

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        tracker.tag(tensor, "activations")
        # A detached alias (same storage), not the tensor itself: a node saving its own output (ReLU)
        # would otherwise form a reference cycle that keeps a graph the backward never traverses (the
        # chunked recomputation's partial passes) alive until the garbage collector runs.
        return tensor.detach()

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        yield


def _prime_quantiser_tables(optimizer: torch.optim.Optimizer) -> None:
    """Build an 8-bit optimizer's quantiser tables (constants) as real tensors.

    The tables are verified with a data-dependent check when built, which fake tensors cannot answer; as
    real constants they feed the fake step like any weight would. On CPU this only builds them one step
    early (they are tracked either way, as "other")."""
    tables = getattr(optimizer, "tables", None)
    if tables is None:
        return
    with real_tensors():
        for signed in set(optimizer.STATE_NAMES.values()):  # only the maps its states use
            tables(signed, torch.device("cpu"))


def _tracked_step(
    step: TrainingStep, tracker: StorageTracker, before_measure: Callable[[], None], full_warm_up: bool
) -> None:
    """Warm-up, then the measured step, with every storage and saved tensor tracked.

    The warm-up creates the optimizer states; ``full_warm_up`` runs a whole step for it (CUDA: also warms
    cuDNN and the allocator), otherwise only an optimizer step on zero gradients (half the time on meta,
    same memory afterwards)."""
    _prime_quantiser_tables(step.optimizer)
    with _tag_saved_activations(tracker):
        if full_warm_up:
            step.run()
        else:
            step.warm_up_optimizer()
        _tag_all(tracker, step.parameters(), "parameters")
        _tag_all(tracker, step.buffers(), "parameters")
        # 8-bit optimizers may replace state tensors in step(): tag the states alive before and after.
        _tag_all(tracker, tensors_in(list(step.optimizer.state.values())), "optimizer_states")
        before_measure()
        tracker.reset_peak()
        step.run()
    _tag_all(tracker, (p.grad for p in step.parameters() if p.grad is not None), "gradients")
    _tag_all(tracker, tensors_in(list(step.optimizer.state.values())), "optimizer_states")


def _step_without_inf_check(scaler: torch.amp.GradScaler) -> None:
    """fp16 on fake tensors: the scaler's "any gradient not finite?" is an ``.item()`` on data fake
    tensors do not have. There is nothing to overflow, so step as a finite step would; the scaler still
    allocates, unscales and updates its tensors as it does in training (a no-op when not enabled)."""
    if scaler.is_enabled():
        scaler._maybe_opt_step = lambda optimizer, state, *args, **kwargs: optimizer.step(*args, **kwargs)


def _breakdown(tracker: StorageTracker, total: int | None = None) -> MemoryBreakdown:
    parts = tracker.bytes_at_peak(COMPONENTS)
    known = sum(parts[c] for c in COMPONENTS)
    total = tracker.peak_bytes if total is None else total
    # On CUDA the allocator's peak also holds kernel workspaces the tracker cannot see: they are "other".
    return MemoryBreakdown(**{c: parts[c] for c in COMPONENTS}, other=max(total - known, 0), total=total)


def measure_step(
    build_model: Callable[[], nn.Module],
    setup: StepSetup,
    method: str = "meta",
    optimizer_factory: Callable[[str, list[nn.Parameter]], torch.optim.Optimizer] = build_optimizer,
) -> MemoryBreakdown:
    """Peak memory of one training step of ``build_model()`` under ``setup``, by ``method``
    (``cuda``, ``cpu`` or ``meta``; see the module docstring). Returns bytes."""
    if method not in METHODS:
        raise MemsvError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if method == "cuda":
        return _measure_cuda(build_model, setup, optimizer_factory)
    with fake_cpu() if method == "meta" else contextlib.nullcontext():
        step = TrainingStep.build(build_model, setup, "cpu", optimizer_factory)
        if method == "meta":
            _step_without_inf_check(step.step.scaler)
        tracker = StorageTracker()
        with tracker:
            tracker.track(step.parameters())
            tracker.track(step.buffers())
            _tracked_step(step, tracker, before_measure=lambda: None, full_warm_up=False)
        return _breakdown(tracker)


def _measure_cuda(
    build_model: Callable[[], nn.Module],
    setup: StepSetup,
    optimizer_factory: Callable[[str, list[nn.Parameter]], torch.optim.Optimizer],
) -> MemoryBreakdown:  # pragma: no cover - needs a GPU; kept small and separate on purpose
    if not torch.cuda.is_available():
        raise MemsvError("--device cuda: no CUDA device is available; use --device meta for an estimate")
    step = TrainingStep.build(build_model, setup, "cuda", optimizer_factory)
    tracker = StorageTracker()

    def start() -> None:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()

    with tracker:
        tracker.track(step.parameters())
        tracker.track(step.buffers())
        _tracked_step(step, tracker, before_measure=start, full_warm_up=True)
    torch.cuda.synchronize()
    return _breakdown(tracker, total=torch.cuda.max_memory_allocated())
