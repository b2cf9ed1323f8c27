"""``profile-memory`` as a library call: profile a named model and setup, compare with its vanilla 32-bit
baseline, find the largest batch for a card, and present the result as a rich table or one JSON object."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from memsv_cli.errors import MemsvError
from memsv_cli.models import vanilla_name
from memsv_cli.profile.fit import format_bytes, max_batch_size
from memsv_cli.profile.memory import MemoryBreakdown, measure_step
from memsv_cli.profile.step import StepSetup, full_precision_optimizer

DEVICES = ("auto", "cpu", "cuda", "meta")
SAVING_KEYS = ("activations", "optimizer_states", "total")


def resolve_method(device: str) -> str:
    """``auto`` measures on CUDA when there is a GPU and estimates (meta) otherwise: a real CPU step of the
    paper's setup would need tens of GB of RAM and minutes."""
    if device not in DEVICES:
        raise MemsvError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "meta"
    return device


def default_baseline(model: str, optimizer: str) -> tuple[str, str] | None:
    """The vanilla model with the 32-bit version of ``optimizer``; None when that is the setup itself."""
    baseline = (vanilla_name(model), full_precision_optimizer(optimizer))
    return None if baseline == (model, optimizer) else baseline


def model_builder(  # noqa: ANN201
    name: str,
    feat_dim: int,
    embed_dim: int,
    base_width: int,
    recompute_chunks: int = 1,
    checkpoint_blocks: bool = False,
):
    """A zero-argument callable building ``memsv_cli.models.get_model(name, ...)``; checks the name (and
    that ``recompute_chunks`` / ``checkpoint_blocks`` apply to it) now."""
    from memsv_cli import models

    known = models.list_models()
    if name not in known:
        raise MemsvError(f"unknown model {name!r}; choose one of {', '.join(known)}")
    kwargs: dict[str, object] = {} if recompute_chunks == 1 else {"recompute_chunks": recompute_chunks}
    if checkpoint_blocks:
        kwargs["checkpoint_blocks"] = True
    if kwargs:
        with torch.device("meta"):
            models.get_model(name, feat_dim=feat_dim, embed_dim=embed_dim, base_width=1, **kwargs)
    return lambda: models.get_model(
        name, feat_dim=feat_dim, embed_dim=embed_dim, base_width=base_width, **kwargs
    )


def available_ram() -> int | None:
    """Bytes of RAM available to a new allocation (Linux ``MemAvailable``); None where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _measure(build, setup: StepSetup, method: str) -> MemoryBreakdown:  # noqa: ANN001
    """measure_step, but a real CPU step is first estimated on meta and refused if it cannot fit in RAM
    (a CPU step of the paper's ResNet293 setup needs ~110 GiB)."""
    if method == "cpu":
        need, ram = measure_step(build, setup, "meta").total, available_ram()
        if ram is not None and need > 0.9 * ram:
            raise MemsvError(
                f"--device cpu: this step needs about {format_bytes(need)} of RAM, {format_bytes(ram)} is "
                "available; use --device meta for an estimate, or a smaller --batch-size"
            )
    return measure_step(build, setup, method)


@dataclass
class ProfileReport:
    """Everything ``profile-memory`` reports; bytes are allocator bytes at the peak of one step."""

    model: str
    method: str
    setup: StepSetup
    base_width: int
    bytes: MemoryBreakdown
    baseline_model: str | None = None
    baseline_optimizer: str | None = None
    baseline: MemoryBreakdown | None = None
    baseline_checkpointed: bool = False  # the baseline runs each block under torch.utils.checkpoint
    gpu_memory: int | None = None
    max_batch_size: int | None = None
    recompute_chunks: int = 1
    checkpoint_blocks: bool = False

    def saving(self) -> dict[str, float | None] | None:
        """baseline / this setup for activations, optimizer states and the total (None where this is 0)."""
        if self.baseline is None:
            return None
        base, this = self.baseline.as_dict(), self.bytes.as_dict()
        return {k: (base[k] / this[k] if this[k] else None) for k in SAVING_KEYS}

    def to_json(self) -> dict[str, Any]:
        """The issue's schema: model, method, setup, bytes, baseline, saving (+ gpu_memory when asked)."""
        out: dict[str, Any] = {
            "model": self.model,
            "method": self.method,
            "setup": {
                **dataclasses.asdict(self.setup),
                "base_width": self.base_width,
                "recompute_chunks": self.recompute_chunks,
                "checkpoint_blocks": self.checkpoint_blocks,
            },
            "bytes": self.bytes.as_dict(),
            "baseline": None,
            "saving": self.saving(),
        }
        if self.baseline is not None:
            out["baseline"] = {
                "model": self.baseline_model,
                "optimizer": self.baseline_optimizer,
                "checkpoint_blocks": self.baseline_checkpointed,
                "bytes": self.baseline.as_dict(),
            }
        if self.gpu_memory is not None:
            out["gpu_memory"] = {"bytes": self.gpu_memory, "max_batch_size": self.max_batch_size}
        return out


def _baseline(model: str, optimizer: str, compare: str | None) -> tuple[str, str] | None:
    """(model, optimizer) of the baseline ``compare`` names (see :func:`profile_memory`), or None."""
    if compare == "auto":
        return default_baseline(model, optimizer)
    if compare is None or compare == "none":
        return None
    name = vanilla_name(model) if compare == "checkpoint" else compare
    return name, full_precision_optimizer(optimizer)


def profile_memory(
    model: str,
    setup: StepSetup,
    device: str = "auto",
    compare: str | None = "auto",
    gpu_memory: int | None = None,
    base_width: int = 32,
    recompute_chunks: int = 1,
    checkpoint_blocks: bool = False,
) -> ProfileReport:
    """Profile one training step of ``model`` under ``setup``.

    Args:
        model: a ``memsv_cli.models`` name, e.g. ``fullrev_resnet293``.
        setup: batch/frames/features/speakers/optimizer/precision.
        device: ``auto`` (cuda if present, else meta), ``cpu``, ``cuda`` or ``meta``.
        compare: ``auto`` (vanilla model with the 32-bit optimizer, if that differs from the setup),
            ``checkpoint`` (the vanilla model with activation checkpointing around each residual block,
            32-bit optimizer: what users do without reversible models), a model name (trained with the
            32-bit optimizer), or None / ``none`` for no baseline.
        gpu_memory: card size in bytes; when given, the largest batch whose meta-estimated peak fits.
        base_width: channels of the first stage (32 in the paper's models).
        recompute_chunks: ``get_model(..., recompute_chunks=K)`` for the profiled model (rev_/fullrev_
            only); the baseline stays the plain vanilla model.
        checkpoint_blocks: the profiled (vanilla) model checkpoints each residual unit.
    """
    method = resolve_method(device)
    build = model_builder(
        model, setup.feat_dim, setup.embed_dim, base_width, recompute_chunks, checkpoint_blocks
    )
    report = ProfileReport(model, method, setup, base_width, _measure(build, setup, method))
    report.recompute_chunks, report.checkpoint_blocks = recompute_chunks, checkpoint_blocks
    baseline = _baseline(model, setup.optimizer, compare)
    report.baseline_checkpointed = compare == "checkpoint"
    if baseline is not None:
        report.baseline_model, report.baseline_optimizer = baseline
        base_build = model_builder(
            baseline[0],
            setup.feat_dim,
            setup.embed_dim,
            base_width,
            checkpoint_blocks=report.baseline_checkpointed,
        )
        base_setup = dataclasses.replace(setup, optimizer=baseline[1])
        report.baseline = _measure(base_build, base_setup, method)
    if gpu_memory is not None:
        report.gpu_memory = gpu_memory
        known = {setup.batch_size: report.bytes.total} if method == "meta" else {}
        report.max_batch_size = max_batch_size(
            lambda b: measure_step(build, dataclasses.replace(setup, batch_size=b), "meta").total,
            gpu_memory,
            known,
        )
    return report


_ROWS = (
    ("parameters", "parameters"),
    ("gradients", "gradients"),
    ("optimizer_states", "optimizer states"),
    ("activations", "activations"),
    ("other", "other"),
    ("total", "total (peak)"),
)


def render(report: ProfileReport, console: Console) -> None:
    """Print the side-by-side table (component, baseline, this setup, saving) and the batch that fits."""
    s = report.setup
    title = (
        f"{report.model} + {s.optimizer} ({s.precision}), batch {s.batch_size} x {s.frames} frames x "
        f"{s.feat_dim} fbank, {s.num_speakers} speakers; method: {report.method}"
    )
    if report.recompute_chunks != 1:
        title += f"; recompute chunks: {report.recompute_chunks}"
    if report.checkpoint_blocks:
        title += "; checkpointed blocks"
    if s.accum_steps != 1:
        title += f"; accumulation: {s.accum_steps} micro-batches"
    # the title is a line of its own: a table title is folded to the table's width
    console.print(title, soft_wrap=True, highlight=False)
    table = Table()
    table.add_column("component")
    if report.baseline is not None:
        checkpointed = " (checkpointed blocks)" if report.baseline_checkpointed else ""
        table.add_column(
            f"{report.baseline_model}{checkpointed} + {report.baseline_optimizer}", justify="right"
        )
    table.add_column(f"{report.model} + {s.optimizer}", justify="right")
    if report.baseline is not None:
        table.add_column("saving", justify="right")
    this = report.bytes.as_dict()
    base = report.baseline.as_dict() if report.baseline is not None else None
    for key, label in _ROWS:
        row = [label]
        if base is not None:
            row.append(format_bytes(base[key]))
        row.append(format_bytes(this[key]))
        if base is not None:
            row.append(f"{base[key] / this[key]:.2f}x" if this[key] and base[key] else "-")
        table.add_row(*row, end_section=key == "other")
    console.print(table)
    if report.gpu_memory is not None:
        card = format_bytes(report.gpu_memory)
        if report.max_batch_size:
            console.print(
                f"largest batch that fits {card}: {report.max_batch_size} (meta-estimated peak of allocated "
                "bytes; keep ~0.5 GiB of the card free for the CUDA context and fragmentation)"
            )
        else:
            console.print(f"not even batch 1 fits {card} with this setup")
