"""What a training run holds while it runs (:class:`TrainState`), how a fresh one is built, and how a
checkpoint's payload is made from it and put back (the keys are those of
:mod:`memsv_cli.train.checkpoint`, which documents them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from memsv_cli.data.sampler import EpochPlan
from memsv_cli.errors import MemsvError
from memsv_cli.train.checkpoint import FORMAT_VERSION, build_model, load_checkpoint, restore_rng
from memsv_cli.train.distributed import DistInfo
from memsv_cli.train.heads import AAMSoftmax
from memsv_cli.train.schedulers import ExponentialDecrease, MarginScheduler, lr_scale
from memsv_cli.train.settings import Settings
from memsv_cli.train.step import TrainingNet, TrainStep


@dataclass
class TrainState:
    """Everything mutable during training; a full checkpoint is exactly this plus RNG and config."""

    net: TrainingNet
    optimizer: torch.optim.Optimizer
    step_fn: TrainStep  # holds the grad scaler
    lr_sched: ExponentialDecrease
    margin_sched: MarginScheduler
    sampler: EpochPlan  # which samples this rank trains on (a ChunkBatchSampler or a ShardStream)
    epoch: int = 0  # completed epochs
    step: int = 0  # completed optimizer steps
    # sums over all ranks in the epoch in progress: (loss * n, correct, n) of the epoch, then of the
    # steps since the last step record, then the unreadable samples skipped; saved, so a resumed epoch
    # reports (and stops) as an uninterrupted one does
    epoch_stats: torch.Tensor = field(default_factory=lambda: torch.zeros(7, dtype=torch.float64))

    @property
    def steps_per_epoch(self) -> int:
        return self.sampler.steps_per_epoch

    @property
    def step_in_epoch(self) -> int:
        """Optimizer steps done in the epoch in progress."""
        return self.step - self.epoch * self.steps_per_epoch


def build_optimizer_for(settings: Settings, params: Any) -> torch.optim.Optimizer:
    """``build_optimizer(optimizer.name, params, lr=scheduler.initial_lr, **optimizer.args)``."""
    from memsv_cli.optim import build_optimizer

    args = dict(settings.optimizer.args)
    args.setdefault("lr", settings.scheduler.initial_lr)
    try:
        return build_optimizer(settings.optimizer.name, params, **args)
    except (TypeError, ValueError, KeyError) as err:
        raise MemsvError(f"optimizer {settings.optimizer.name!r}: {err}") from None


def build_model_checked(config: dict[str, Any]) -> nn.Module:
    """:func:`build_model` with model-zoo errors (unknown name, bad kwargs) as one-line errors."""
    try:
        return build_model(config)
    except (TypeError, ValueError, KeyError) as err:
        raise MemsvError(f"model {config['model'].get('name')!r}: {err}") from None


def _schedulers(
    s: Settings, optimizer: torch.optim.Optimizer, head: AAMSoftmax, steps: int, world: int
) -> tuple[ExponentialDecrease, MarginScheduler]:
    sc, mc = s.scheduler, s.margin
    global_batch = s.train.batch_size * s.train.accum_steps
    lr_sched = ExponentialDecrease(
        optimizer,
        epochs=s.train.epochs,
        steps_per_epoch=steps,
        initial_lr=sc.initial_lr,
        final_lr=sc.final_lr,
        warm_up_epochs=sc.warm_up_epochs,
        warm_from_zero=sc.warm_from_zero,
        scale=lr_scale(world, global_batch) if sc.scale_by_batch else 1.0,
    )
    margin_sched = MarginScheduler(
        head,
        steps_per_epoch=steps,
        initial_margin=mc.initial_margin,
        final_margin=mc.final_margin,
        increase_start_epoch=mc.increase_start_epoch,
        fix_start_epoch=mc.fix_start_epoch,
        increase_type=mc.increase_type,
    )
    return lr_sched, margin_sched


def build_state(settings: Settings, num_classes: int, plan: EpochPlan, info: DistInfo) -> TrainState:
    """Model, head, optimizer, step and schedulers for a fresh run (seeded), around the epoch plan."""
    s, tc = settings, settings.train
    torch.manual_seed(s.seed)  # same initial weights on every rank (DDP also broadcasts rank 0's)
    model = build_model_checked(s.raw)
    head = AAMSoftmax(
        s.model.embed_dim,
        num_classes,
        scale=s.head.scale,
        margin=s.margin.initial_margin,
        easy_margin=s.head.easy_margin,
    )
    net = TrainingNet(model, head).to(info.device)
    optimizer = build_optimizer_for(s, net.parameters())
    step_fn = TrainStep(net, optimizer, tc.precision, info.device.type, tc.grad_clip)
    lr_sched, margin_sched = _schedulers(s, optimizer, head, plan.steps_per_epoch, info.world_size)
    # per-rank stream for anything random in the model itself (e.g. dropout)
    torch.manual_seed(s.seed + 1000003 * (info.rank + 1))
    return TrainState(net, optimizer, step_fn, lr_sched, margin_sched, plan)


def full_payload(
    state: TrainState, config: dict[str, Any], speakers: list[str], rngs: list[dict[str, Any]]
) -> dict[str, Any]:
    """A full checkpoint of ``state`` (keys: ``checkpoint.FULL_KEYS``); ``rngs`` from every rank."""
    return {
        "format_version": FORMAT_VERSION,
        "kind": "full",
        "model": state.net.model.state_dict(),
        "head": state.net.head.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "grad_scaler": state.step_fn.scaler.state_dict(),
        "schedulers": {"lr": state.lr_sched.state_dict(), "margin": state.margin_sched.state_dict()},
        "sampler": {"seed": state.sampler.seed, "epoch": state.epoch, "step_in_epoch": state.step_in_epoch},
        "epoch_stats": state.epoch_stats.clone(),
        "rng": rngs,
        "epoch": state.epoch,
        "step": state.step,
        "steps_per_epoch": state.steps_per_epoch,
        "micro_batches": state.sampler.slots,
        "config": config,
        "speakers": speakers,
    }


def weights_payload(state: TrainState, config: dict[str, Any]) -> dict[str, Any]:
    """A weights-only file of ``state`` (keys: ``checkpoint.WEIGHTS_KEYS``)."""
    return {
        "format_version": FORMAT_VERSION,
        "kind": "weights",
        "model": state.net.model.state_dict(),
        "head": state.net.head.state_dict(),
        "config": config,
        "epoch": state.epoch,
        "step": state.step,
    }


def restore_state(state: TrainState, payload: dict[str, Any], rank: int) -> None:
    """Put a full checkpoint back into ``state`` (and this rank's RNG)."""
    state.net.model.load_state_dict(payload["model"])
    state.net.head.load_state_dict(payload["head"])
    state.optimizer.load_state_dict(payload["optimizer"])
    if payload["grad_scaler"]:
        state.step_fn.scaler.load_state_dict(payload["grad_scaler"])
    state.lr_sched.load_state_dict(payload["schedulers"]["lr"])
    state.margin_sched.load_state_dict(payload["schedulers"]["margin"])
    state.epoch, state.step = int(payload["epoch"]), int(payload["step"])
    state.sampler.seed = int(payload["sampler"]["seed"])
    saved = payload.get("epoch_stats")
    if saved is not None:
        state.epoch_stats[: len(saved)] = saved
    state.sampler.set_epoch(state.epoch, state.step_in_epoch)
    restore_rng(payload["rng"], rank)


def init_from_checkpoint(net: TrainingNet, path: str) -> str:
    """Load ``train.init_model`` weights into the model (all keys must match) and, when the checkpoint
    holds a head of the same shape, into the head (otherwise it stays new). Returns a log line."""
    payload = load_checkpoint(path)
    source = payload["config"]["model"]["name"]
    try:
        missing, unexpected = net.model.load_state_dict(payload["model"], strict=False)
    except RuntimeError as err:  # shape mismatches
        raise MemsvError(
            f"train.init_model {path}: {source!r} weights do not fit this model ({err})"
        ) from None
    if missing or unexpected:
        raise MemsvError(
            f"train.init_model {path}: {source!r} weights do not fit this model "
            f"({len(missing)} missing, {len(unexpected)} unexpected keys)"
        )
    head, mine = payload.get("head"), net.head.weight
    saved = head.get("weight") if head is not None else None
    if saved is not None and saved.shape == mine.shape:
        net.head.load_state_dict(head)
        return f"initialised model and head from {path}"
    if saved is not None and saved.shape[1:] == mine.shape[1:] and saved.shape[0] % mine.shape[0] == 0:
        # trained with speed perturbation (k x C classes, the unperturbed speakers first), fine-tuned
        # without it (WeSpeaker's large-margin stage): the head is sliced back to the original speakers
        with torch.no_grad():
            mine.copy_(saved[: mine.shape[0]])
        return (
            f"initialised model from {path}, head from its first {mine.shape[0]} of {saved.shape[0]} "
            "classes (the speakers without speed perturbation)"
        )
    return f"initialised model from {path} (head: new, the checkpoint has no matching one)"
