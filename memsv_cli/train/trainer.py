"""The ``train`` stage: speaker-embedding training with AAM-softmax, single process or DDP via torchrun.

:func:`train` is the library entry point (the CLI only resolves the config and calls it). One epoch is
:func:`run_epoch`; everything a resumed run needs is in the epoch checkpoint (:func:`save_state` /
:func:`load_state`). Only rank 0 writes: ``config.yaml``, ``train.log``, ``metrics.jsonl``,
``models/epoch_N.pt``, ``models/avg_model.pt`` and ``train_curve.png``.
"""

from __future__ import annotations

import json
import random
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from memsv_cli.atomic import write_lines_atomic
from memsv_cli.data.dataset import ChunkBatchSampler, ChunkDataset, SpecAugment, load_training_data
from memsv_cli.errors import MemsvError
from memsv_cli.train.averaging import average_checkpoints, epoch_checkpoints
from memsv_cli.train.checkpoint import build_model, load_checkpoint, save_checkpoint
from memsv_cli.train.config import RUNTIME_KEYS, diff_keys, save_config
from memsv_cli.train.distributed import (
    DistInfo,
    all_reduce_sum,
    barrier,
    cleanup_distributed,
    init_distributed,
)
from memsv_cli.train.heads import AAMSoftmax
from memsv_cli.train.progress import TrainProgress
from memsv_cli.train.schedulers import ExponentialDecrease, MarginScheduler, lr_scale

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class TrainingNet(nn.Module):
    """Embedding model + AAM-softmax head as one module (so DDP syncs both in one pass).

    ``forward(feats (B, T, F), labels (B,)) -> (margin logits (B, C), plain cosines (B, C))``.
    """

    def __init__(self, model: nn.Module, head: AAMSoftmax) -> None:
        super().__init__()
        self.model, self.head = model, head

    def forward(self, feats: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.model(feats), labels, return_cosine=True)


@dataclass
class TrainResult:
    """What a :func:`train` call did."""

    exp_dir: Path
    epochs_done: int
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per epoch run now
    avg_model: Path | None = None
    curve: Path | None = None
    net: TrainingNet | None = None  # the trained model + head (this rank's copy)


class TrainLog:
    """``train.log`` (timestamped lines) and ``metrics.jsonl`` (one JSON record per line), rank 0 only."""

    def __init__(self, exp_dir: Path, enabled: bool) -> None:
        self.log_path, self.metrics_path = exp_dir / "train.log", exp_dir / "metrics.jsonl"
        self.enabled = enabled

    def info(self, message: str) -> None:
        if self.enabled:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            with open(self.log_path, "a", encoding="utf-8") as f:
                f.write(f"{stamp} {message}\n")

    def record(self, rec: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.metrics_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(rec, sort_keys=True) + "\n")

    def truncate_after(self, epoch: int) -> None:
        """Drop metric records of epochs after ``epoch`` (1-based; a resumed run redoes them)."""
        if not self.enabled or not self.metrics_path.is_file():
            return
        keep = []
        for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("epoch", 0) <= epoch:
                    keep.append(line)
            except json.JSONDecodeError:  # a line cut by the interruption
                continue
        write_lines_atomic(self.metrics_path, keep)


# ----------------------------------------------------------------------------------------------------
# building blocks


def embed_dim_of(config: dict[str, Any]) -> int:
    """Embedding size E from ``model.args.embed_dim`` (get_model's default 256)."""
    return int((config["model"].get("args") or {}).get("embed_dim", 256))


def build_optimizer_for(config: dict[str, Any], params: Any) -> torch.optim.Optimizer:
    """``build_optimizer(optimizer.name, params, lr=scheduler.initial_lr, **optimizer.args)``."""
    from memsv_cli.optim import build_optimizer

    args = dict(config["optimizer"].get("args") or {})
    args.setdefault("lr", config["scheduler"]["initial_lr"])
    try:
        return build_optimizer(config["optimizer"]["name"], params, **args)
    except (TypeError, ValueError, KeyError) as err:
        raise MemsvError(f"optimizer {config['optimizer']['name']!r}: {err}") from None


def build_model_checked(config: dict[str, Any]) -> nn.Module:
    """:func:`build_model` with model-zoo errors (unknown name, bad kwargs) as one-line errors."""
    try:
        return build_model(config)
    except (TypeError, ValueError, KeyError) as err:
        raise MemsvError(f"model {config['model'].get('name')!r}: {err}") from None


def make_loader(
    dataset: ChunkDataset, sampler: ChunkBatchSampler, num_workers: int, pin: bool, seed: int, rank: int
) -> DataLoader:
    """A DataLoader over ``sampler``'s current epoch; worker seeds depend only on (seed, epoch, rank)."""
    worker_seed = np.random.SeedSequence([seed, sampler.epoch, rank]).generate_state(1, dtype=np.uint64)[0]
    gen = torch.Generator().manual_seed(int(worker_seed % 2**63))
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin,
        generator=gen,
        worker_init_fn=_seed_worker,
        persistent_workers=False,
    )


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker from the loader's generator; extend that to numpy and random so that
    # any augmentation using the global generators is reproducible too.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def rng_state() -> dict[str, Any]:
    """This process's RNG states (torch CPU, CUDA, numpy, random)."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def gather_rng_states(info: DistInfo) -> list[dict[str, Any]]:
    """Every rank's RNG states, indexed by rank (collective: call on all ranks)."""
    mine = rng_state()
    if not info.enabled:
        return [mine]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, mine)
    return out


def peak_memory(device: torch.device) -> tuple[int, str]:
    """(bytes, kind): CUDA allocator peak since the last reset, or this process's peak RSS on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_allocated"
    # Linux reports ru_maxrss in KiB
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "cpu_peak_rss"


# ----------------------------------------------------------------------------------------------------
# state


@dataclass
class TrainState:
    """Everything mutable during training, grouped so that save/load and run_epoch share one view."""

    net: TrainingNet
    optimizer: torch.optim.Optimizer
    lr_sched: ExponentialDecrease
    margin_sched: MarginScheduler
    scaler: torch.amp.GradScaler | None
    sampler: ChunkBatchSampler
    epoch: int = 0  # completed epochs
    step: int = 0  # completed optimiser steps


def save_state(
    path: Path, state: TrainState, config: dict[str, Any], rng: list[dict[str, Any]], speakers: list[str]
) -> None:
    """Write ``epoch_N.pt`` (model, head, optimizer, schedulers, scaler, sampler, RNG, epoch, step)."""
    save_checkpoint(
        path,
        {
            "model": state.net.model.state_dict(),
            "head": state.net.head.state_dict(),
            "optimizer": state.optimizer.state_dict(),
            "schedulers": {
                "lr": state.lr_sched.state_dict(),
                "margin": state.margin_sched.state_dict(),
                "grad_scaler": state.scaler.state_dict() if state.scaler is not None else None,
                "sampler": state.sampler.state_dict(),
            },
            "rng": rng,
            "epoch": state.epoch,
            "step": state.step,
            "config": config,
            "speakers": speakers,
        },
    )


def load_state(payload: dict[str, Any], state: TrainState, info: DistInfo) -> None:
    """Restore a :class:`TrainState` (and this rank's RNG) from an ``epoch_N.pt`` payload."""
    state.net.model.load_state_dict(payload["model"])
    state.net.head.load_state_dict(payload["head"])
    state.optimizer.load_state_dict(payload["optimizer"])
    sch = payload["schedulers"]
    state.lr_sched.load_state_dict(sch["lr"])
    state.margin_sched.load_state_dict(sch["margin"])
    if state.scaler is not None and sch.get("grad_scaler"):
        state.scaler.load_state_dict(sch["grad_scaler"])
    state.sampler.load_state_dict(sch["sampler"])
    state.epoch, state.step = int(payload["epoch"]), int(payload["step"])
    rngs = payload["rng"]
    set_rng_state(rngs[info.rank] if info.rank < len(rngs) else rngs[0])


# ----------------------------------------------------------------------------------------------------
# one epoch


class NonFiniteLoss(MemsvError):
    """The loss became NaN/inf; training stops and the last good checkpoint stays."""


def run_epoch(
    state: TrainState,
    loader: DataLoader,
    ddp_net: nn.Module,
    config: dict[str, Any],
    info: DistInfo,
    progress: TrainProgress,
    log: TrainLog,
) -> dict[str, Any]:
    """Train one epoch; returns its metrics (means over all ranks' samples).

    Raises:
        NonFiniteLoss: on any rank's non-finite loss, on every rank, before the bad update is applied.
    """
    train_cfg = config["train"]
    device, precision = info.device, train_cfg["precision"]
    autocast_dtype = AUTOCAST_DTYPES.get(precision)
    grad_clip = train_cfg["grad_clip"]
    steps = len(state.sampler)
    epoch = state.epoch  # 0-based index of the epoch being run
    ddp_net.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    # sums over this rank's steps: loss * n, correct, n
    totals = torch.zeros(3, dtype=torch.float64)
    window = torch.zeros(3, dtype=torch.float64)
    start = time.perf_counter()
    lr = margin = 0.0
    progress.start_epoch(epoch + 1, steps)
    for i, (feats, labels) in enumerate(loader):
        global_step = epoch * steps + i
        lr = state.lr_sched.step(global_step)
        margin = state.margin_sched.step(global_step)
        feats = feats.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        with torch.autocast(
            device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None
        ):
            logits, cosine = ddp_net(feats, labels)
        loss = F.cross_entropy(logits.float(), labels)
        stats = torch.stack(
            [
                loss.detach().double() * labels.numel(),
                # accuracy of the plain cosine classifier: unlike WeSpeaker's (argmax of the margin
                # logits) it does not drop when the margin ramps up
                (cosine.argmax(dim=1) == labels).sum().double(),
                torch.tensor(float(labels.numel()), dtype=torch.float64, device=device),
                (~torch.isfinite(loss.detach())).double(),
            ]
        )
        # reduced on the device (nccl needs CUDA tensors); every rank learns of a bad loss anywhere, so
        # none is left waiting in backward's gradient all-reduce
        stats = all_reduce_sum(stats, info).cpu()
        if stats[3] > 0:
            raise NonFiniteLoss(
                f"loss became non-finite at epoch {epoch + 1}, step {i + 1} (lr {lr:.3g}, precision "
                f"{precision}); stopped before applying it. Lower scheduler.initial_lr, set train.grad_clip "
                f"or use fp32/bf16; the last good checkpoint is kept and --resume continues from it"
            )
        state.optimizer.zero_grad(set_to_none=True)
        if state.scaler is not None:
            state.scaler.scale(loss).backward()
            if grad_clip is not None:
                state.scaler.unscale_(state.optimizer)
                torch.nn.utils.clip_grad_norm_(state.net.parameters(), grad_clip)
            state.scaler.step(state.optimizer)
            state.scaler.update()
        else:
            loss.backward()
            if grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(state.net.parameters(), grad_clip)
            state.optimizer.step()
        state.step += 1
        totals += stats[:3]
        window += stats[:3]
        elapsed = time.perf_counter() - start
        progress.update(
            loss=float(stats[0] / stats[2]),
            acc=float(stats[1] / stats[2]),
            lr=lr,
            margin=margin,
            samples_per_s=float(totals[2]) / max(elapsed, 1e-9),
        )
        interval = train_cfg["log_interval"]
        if interval and ((i + 1) % interval == 0 or i + 1 == steps):
            rec = {
                "type": "step",
                "epoch": epoch + 1,
                "step": state.step,
                "loss": float(window[0] / window[2]),
                "acc": float(window[1] / window[2]),
                "lr": lr,
                "margin": margin,
            }
            log.record(rec)
            log.info(
                f"epoch {epoch + 1} batch {i + 1}/{steps} loss {rec['loss']:.4f} acc {100 * rec['acc']:.2f}% "
                f"lr {lr:.3g} margin {margin:.3f}"
            )
            window.zero_()
    seconds = time.perf_counter() - start
    mem, mem_kind = peak_memory(device)
    mem_t = torch.tensor([float(mem)], dtype=torch.float64, device=device)
    if info.enabled:
        dist.all_reduce(mem_t, op=dist.ReduceOp.MAX)
    state.epoch += 1
    return {
        "type": "epoch",
        "epoch": state.epoch,
        "step": state.step,
        "loss": float(totals[0] / totals[2]),
        "acc": float(totals[1] / totals[2]),
        "lr": lr,
        "margin": margin,
        "samples_per_s": float(totals[2]) / max(seconds, 1e-9),
        "seconds": seconds,
        "peak_mem_bytes": int(mem_t.item()),
        "peak_mem_kind": mem_kind,
    }


# ----------------------------------------------------------------------------------------------------
# the stage


def _check_resume_config(ckpt_path: Path, saved: dict[str, Any], config: dict[str, Any]) -> None:
    changed = [k for k in diff_keys(saved, config) if k not in RUNTIME_KEYS]
    if changed:
        raise MemsvError(
            f"--resume: config differs from {ckpt_path} in {', '.join(changed[:5])}"
            f"{' ...' if len(changed) > 5 else ''}; resume with the saved config (omit --config/--set) "
            "or train into a new --exp-dir"
        )


def build_state(config: dict[str, Any], num_classes: int, num_items: int, info: DistInfo) -> TrainState:
    """Model, head, optimizer, schedulers, grad scaler and sampler for a fresh run (seeded)."""
    seed = config["seed"]
    torch.manual_seed(seed)  # same initial weights on every rank (DDP also broadcasts rank 0's)
    model = build_model_checked(config)
    hc, mc, sc, tc = config["head"], config["margin_scheduler"], config["scheduler"], config["train"]
    head = AAMSoftmax(
        embed_dim_of(config),
        num_classes,
        scale=hc["scale"],
        margin=mc["initial_margin"],
        easy_margin=hc["easy_margin"],
    )
    net = TrainingNet(model, head).to(info.device)
    optimizer = build_optimizer_for(config, net.parameters())
    sampler = ChunkBatchSampler(num_items, tc["batch_size"], seed, info.rank, info.world_size)
    steps = len(sampler)
    scale = lr_scale(info.world_size, tc["batch_size"]) if sc["scale_by_batch"] else 1.0
    lr_sched = ExponentialDecrease(
        optimizer,
        epochs=tc["epochs"],
        steps_per_epoch=steps,
        initial_lr=sc["initial_lr"],
        final_lr=sc["final_lr"],
        warm_up_epochs=sc["warm_up_epochs"],
        warm_from_zero=sc["warm_from_zero"],
        scale=scale,
    )
    margin_sched = MarginScheduler(
        head,
        steps_per_epoch=steps,
        initial_margin=mc["initial_margin"],
        final_margin=mc["final_margin"],
        increase_start_epoch=mc["increase_start_epoch"],
        fix_start_epoch=mc["fix_start_epoch"],
        increase_type=mc["increase_type"],
    )
    scaler = None
    if tc["precision"] == "fp16":
        scaler = torch.amp.GradScaler(info.device.type)
    # per-rank stream for anything random in the model itself (e.g. dropout)
    torch.manual_seed(seed + 1000003 * (info.rank + 1))
    return TrainState(net, optimizer, lr_sched, margin_sched, scaler, sampler)


def init_from_checkpoint(net: TrainingNet, path: str, log: TrainLog) -> None:
    """Load ``train.init_model`` weights into the model (all keys must match) and, when the checkpoint
    holds a head of the same shape, into the head (otherwise the head stays freshly initialised)."""
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
    head = payload.get("head")
    if head is not None and all(
        k in head and head[k].shape == v.shape for k, v in net.head.state_dict().items()
    ):
        net.head.load_state_dict(head)
        log.info(f"initialised model and head from {path}")
    else:
        log.info(f"initialised model from {path} (head: new, the checkpoint has no matching one)")


def finish(exp_dir: Path, config: dict[str, Any], log: TrainLog) -> tuple[Path | None, Path | None]:
    """Average the last ``train.num_avg`` checkpoints and draw the training curve (rank 0)."""
    avg = None
    if config["train"]["num_avg"] > 0 and epoch_checkpoints(exp_dir / "models"):
        avg, epochs = average_checkpoints(exp_dir / "models", num=config["train"]["num_avg"])
        log.info(f"averaged epochs {epochs[0]}-{epochs[-1]} into {avg}")
    from memsv_cli.train.curve import plot_training_curve

    curve = plot_training_curve(exp_dir / "metrics.jsonl", exp_dir / "train_curve.png")
    return avg, curve


def train(
    config: dict[str, Any],
    exp_dir: str | Path,
    *,
    resume: bool = False,
    stop_after_epoch: int | None = None,
) -> TrainResult:
    """Train ``config["model"]`` on ``config["data"]["dir"]`` into ``exp_dir``.

    Args:
        config: resolved config (:func:`memsv_cli.train.config.resolve_config`), ``data.dir`` set.
        exp_dir: experiment folder (created).
        resume: continue from the newest ``models/epoch_N.pt`` (exactly: same batches, RNG, optimizer
            state); without checkpoints it starts from scratch.
        stop_after_epoch: stop once this many epochs are done (a planned interruption: the schedules
            still follow ``train.epochs``, so a later ``resume`` gives the uninterrupted result).
    Returns:
        :class:`TrainResult`.
    """
    info = init_distributed(config["train"]["device"], timeout_s=config["train"]["dist_timeout_s"])
    try:
        return _train(config, Path(exp_dir), info, resume, stop_after_epoch)
    finally:
        cleanup_distributed(info)


def _train(
    config: dict[str, Any], exp_dir: Path, info: DistInfo, resume: bool, stop_after_epoch: int | None
) -> TrainResult:
    if not config["data"].get("dir"):
        raise MemsvError("no training data: pass --data DIR (with feats.scp and utt2spk)")
    tc = config["train"]
    if tc["precision"] == "fp16" and info.device.type != "cuda":
        raise MemsvError("--precision fp16 needs CUDA; on CPU use bf16 or fp32")
    models_dir = exp_dir / "models"
    existing = epoch_checkpoints(models_dir)
    if existing and not resume:
        raise MemsvError(
            f"{exp_dir} already holds checkpoints (epoch {max(existing)}); pass --resume to "
            "continue or choose a new --exp-dir"
        )
    payload = None
    if resume and existing:
        last = existing[max(existing)]
        payload = load_checkpoint(last)  # on CPU: RNG states must stay CPU tensors; weights are copied
        _check_resume_config(last, payload["config"], config)
    log = TrainLog(exp_dir, info.is_main)
    if info.is_main:
        models_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, exp_dir / "config.yaml")
    data = load_training_data(config["data"]["dir"])
    feat_dim = (config["model"].get("args") or {}).get("feat_dim", 80)
    if data.feat_dim != feat_dim:
        raise MemsvError(
            f"{data.path}/feats.scp has {data.feat_dim}-dim features but model.args.feat_dim is "
            f"{feat_dim} (--set model.args.feat_dim={data.feat_dim})"
        )
    if payload is not None and payload.get("speakers") not in (None, data.speakers):
        raise MemsvError(
            f"--resume: the speakers of {data.path} differ from those the checkpoint was trained on"
        )

    state = build_state(config, len(data.speakers), len(data.utts), info)
    if payload is not None:
        load_state(payload, state, info)
        del payload
        log.truncate_after(state.epoch)
        log.info(f"resumed from {models_dir}/epoch_{state.epoch}.pt (step {state.step})")
    else:
        if tc["init_model"]:
            init_from_checkpoint(state.net, tc["init_model"], log)
        if info.is_main:
            log.metrics_path.unlink(missing_ok=True)
        n_params = sum(p.numel() for p in state.net.model.parameters())
        log.info(
            f"training {config['model']['name']} ({n_params / 1e6:.2f}M params) on {len(data.utts)} utts "
            f"of {len(data.speakers)} speakers, {info.world_size} process(es) on {info.device}, "
            f"optimizer {config['optimizer']['name']}, {len(state.sampler)} steps/epoch"
        )
    ddp_net: nn.Module = state.net
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ddp_net = DDP(state.net, device_ids=[info.device.index] if info.device.type == "cuda" else None)
    spec_aug = SpecAugment(**config["data"]["spec_aug_args"]) if config["data"]["spec_aug"] else None
    dataset = ChunkDataset(data, config["data"]["chunk_frames"], spec_aug)
    result = TrainResult(exp_dir, state.epoch, net=state.net)
    last_epoch = tc["epochs"] if stop_after_epoch is None else min(tc["epochs"], stop_after_epoch)
    progress = TrainProgress(enabled=info.is_main and tc["progress"], total_epochs=tc["epochs"])
    try:
        with progress:
            while state.epoch < last_epoch:
                state.sampler.set_epoch(state.epoch)
                loader = make_loader(
                    dataset,
                    state.sampler,
                    tc["num_workers"],
                    info.device.type == "cuda",
                    config["seed"],
                    info.rank,
                )
                try:
                    metrics = run_epoch(state, loader, ddp_net, config, info, progress, log)
                except NonFiniteLoss as err:
                    log.info(f"stopped: {err}")
                    raise
                rngs = gather_rng_states(info)
                if info.is_main:
                    save_state(models_dir / f"epoch_{state.epoch}.pt", state, config, rngs, data.speakers)
                    log.record(metrics)
                    log.info(
                        f"epoch {metrics['epoch']}/{tc['epochs']} loss {metrics['loss']:.4f} "
                        f"acc {100 * metrics['acc']:.2f}% lr {metrics['lr']:.3g} "
                        f"margin {metrics['margin']:.3f} "
                        f"{metrics['samples_per_s']:.1f} samples/s peak memory "
                        f"{metrics['peak_mem_bytes'] / 2**20:.1f} MiB ({metrics['peak_mem_kind']})"
                    )
                progress.end_epoch(metrics)
                result.history.append(metrics)
                barrier(info)  # nobody starts the next epoch (or exits) before the checkpoint exists
    finally:
        dataset.close()
    result.epochs_done = state.epoch
    if state.epoch >= tc["epochs"] and info.is_main:
        result.avg_model, result.curve = finish(exp_dir, config, log)
    barrier(info)
    return result
