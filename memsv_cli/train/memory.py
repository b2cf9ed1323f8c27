"""Training memory: the plan for the card (``train.gpu_memory``), the predicted peak of the step, and the
measured peak beside it every epoch (issue 14 items 1 and 3).

- :func:`choose_memory_plan` runs :func:`memsv_cli.profile.plan.choose_plan` on the config's recipe and
  returns the config with the chosen plan applied and recorded under ``memory_plan`` (``recipe``: what the
  config asked for, ``chosen``, ``candidates``); :func:`adopt_saved_plan` carries that choice over to a
  ``--resume`` that passes the original config again.
- :func:`predict_step_peak`: the profiler's meta estimate of exactly the configured step (allocated bytes),
  plus, with DDP, its gradient buckets (one fp32 copy of the gradients, outside the single-process step).
- :func:`measured_step_peak`: on CPU the storage tracker follows one real step per process (the second
  it runs: the first builds the optimizer states; the same accounting as the estimate), reported with
  every epoch; on CUDA the allocator's peaks over each epoch are read instead.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
from collections.abc import Callable, Sequence
from typing import Any

import torch

from memsv_cli.errors import MemsvError
from memsv_cli.profile.plan import CUDA_RESERVE_BYTES, Plan, PlanResult, choose_plan, half_precision
from memsv_cli.sizes import format_bytes, parse_size

#: measured above predicted by more than this fraction is worth a warning
TOLERANCE = 0.05
#: the config keys a plan sets
PLAN_KEYS = (
    "train.batch_size",
    "train.accum_steps",
    "train.precision",
    "model.args.recompute_chunks",
    "model.args.checkpoint_blocks",
)


def _recipe(config: dict[str, Any], num_classes: int):  # noqa: ANN202 - profile.plan.Recipe
    from memsv_cli.profile.experiment import recipe_from_config

    return recipe_from_config(config, num_classes)


def apply_plan(config: dict[str, Any], plan: Plan, record: dict[str, Any]) -> dict[str, Any]:
    """``config`` with ``plan``'s micro-batch, accumulation, precision, chunks and checkpointing, and
    ``record`` under ``memory_plan``."""
    out = copy.deepcopy(config)
    out["train"].update(batch_size=plan.micro_batch, accum_steps=plan.accum_steps, precision=plan.precision)
    args = dict(out["model"].get("args") or {})
    args.pop("recompute_chunks", None)
    args.pop("checkpoint_blocks", None)
    if plan.recompute_chunks > 1:
        args["recompute_chunks"] = plan.recompute_chunks
    if plan.checkpoint_blocks:
        args["checkpoint_blocks"] = True
    out["model"]["args"] = args
    out["memory_plan"] = record
    return out


def choose_memory_plan(
    config: dict[str, Any], num_classes: int, device: torch.device
) -> tuple[dict[str, Any], PlanResult]:
    """Plan ``config`` (``train.gpu_memory`` set) for its card; MemsvError (one line) when nothing fits."""
    tc = config["train"]
    budget = parse_size(str(tc["gpu_memory"]))
    recipe = _recipe(config, num_classes)
    result = choose_plan(
        recipe,
        budget,
        reserve=CUDA_RESERVE_BYTES if device.type == "cuda" else 0,
        allow_micro_batch=tc["plan_micro_batch"],
        half=half_precision(device) if tc["plan_half_precision"] else None,
    )
    if result.chosen is None:
        raise MemsvError(f"train.gpu_memory {tc['gpu_memory']}: {result.message}")
    record = {
        "recipe": dataclasses.asdict(recipe.plan),
        "gpu_memory": str(tc["gpu_memory"]),
        **result.to_json(),
    }
    return apply_plan(config, result.chosen.plan, record), result


def adopt_saved_plan(saved: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """``config`` as planned in ``saved`` (a checkpoint's config), when ``config`` is the same recipe for
    the same card not yet planned (a ``--resume`` given the original config); else ``config``."""
    record = saved.get("memory_plan")
    if not record or config.get("memory_plan") or config["train"]["gpu_memory"] is None:
        return config
    if str(config["train"]["gpu_memory"]) != record.get("gpu_memory"):
        return config
    asked = dataclasses.asdict(_recipe(config, 1).plan)
    if asked != record.get("recipe"):
        return config
    chosen = {f.name: record["chosen"][f.name] for f in dataclasses.fields(Plan)}
    return apply_plan(config, Plan(**chosen), record)


def predict_step_peak(
    config: dict[str, Any], num_classes: int, world_size: int, peak: int | None = None
) -> int:
    """Allocated bytes at the peak of the configured step (meta estimate, or ``peak`` when the plan
    search already predicted it; + DDP's gradient buckets)."""
    from memsv_cli.profile.plan import plan_setup, predict_peak

    recipe = _recipe(config, num_classes)
    peak = predict_peak(recipe, recipe.plan) if peak is None else peak
    if world_size > 1:
        build, setup = plan_setup(recipe, recipe.plan)
        with torch.device("meta"):
            params = sum(p.numel() for p in build().parameters()) + setup.embed_dim * num_classes
        peak += 4 * params
    return peak


def measured_step_peak(
    net: torch.nn.Module, optimizer: torch.optim.Optimizer, micro: Sequence[Any], run: Callable[[], Any]
) -> int:
    """Run ``run()`` (one training step on ``micro``) under the storage tracker; its peak in bytes."""
    from memsv_cli.profile.memory import tensors_in
    from memsv_cli.profile.tracker import StorageTracker

    tracker = StorageTracker()
    with tracker:
        grads = (p.grad for p in net.parameters() if p.grad is not None)
        state = tensors_in(list(optimizer.state.values()))
        tables = getattr(optimizer, "constant_tensors", list)()  # 8-bit quantiser tables
        held = itertools.chain(net.parameters(), net.buffers(), grads, state, tables, tensors_in(list(micro)))
        tracker.track(held)
        run()
    return tracker.peak_bytes


def epoch_memory(device: torch.device, tracked: int | None, predicted: int | None) -> dict[str, Any]:
    """The epoch record's memory fields: predicted, measured allocated (CUDA peak or the tracked step),
    CUDA reserved (None on CPU)."""
    if device.type == "cuda":
        measured = int(torch.cuda.max_memory_allocated(device))
        reserved: int | None = int(torch.cuda.max_memory_reserved(device))
    else:
        measured, reserved = tracked, None
    return {
        "predicted_peak_bytes": predicted,
        "measured_peak_bytes": measured,
        "reserved_peak_bytes": reserved,
    }


def memory_report(record: dict[str, Any]) -> tuple[str | None, str | None]:
    """(train.log line, warning), each None when there is nothing to say (``train.memory_check: false``
    on CPU: neither a prediction nor a tracked step)."""
    predicted, measured = record.get("predicted_peak_bytes"), record.get("measured_peak_bytes")
    reserved = record.get("reserved_peak_bytes")
    if predicted is None and measured is None:
        return None, None
    kind = "CUDA max allocated" if reserved is not None else "tracked step"
    line = (
        f"memory: predicted peak {'-' if predicted is None else format_bytes(predicted)}, measured "
        f"{'-' if measured is None else format_bytes(measured)} ({kind})"
    )
    if reserved is not None:
        line += f", {format_bytes(reserved)} reserved"
    warning = None
    if predicted and measured and measured > (1 + TOLERANCE) * predicted:
        warning = (
            f"measured peak {format_bytes(measured)} exceeds the predicted {format_bytes(predicted)} by "
            f"{100 * (measured / predicted - 1):.1f}% (more than {100 * TOLERANCE:.0f}%): the plan's margin "
            "may not hold; please report it with config.yaml"
        )
    return line, warning
