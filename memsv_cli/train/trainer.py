"""The ``train`` stage: orchestration only. Single process, or DDP through ``torchrun``.

:func:`train` is the library entry point (the CLI only resolves the config and calls it). The pieces:
:mod:`~memsv_cli.train.step` (the one training step), :mod:`~memsv_cli.train.epoch` (one epoch),
:mod:`~memsv_cli.train.state` (what a run holds), :mod:`~memsv_cli.train.checkpoint` (the files),
:mod:`~memsv_cli.train.signals` (stop requests). Only rank 0 writes: ``config.yaml``, ``train.log``,
``metrics.jsonl``, ``tensorboard/``, ``models/*`` and ``train_curve.png``; rank 0 also holds the
experiment directory's lock, so a second run into it stops at once.

Surviving failures: a full checkpoint is written at every epoch end, every ``train.save_every_minutes``
/ ``save_every_steps``, and when SIGTERM / SIGINT / SIGUSR1 arrive (after the step in progress).
``--resume`` - and, implicitly, a worker group that ``torchrun --max-restarts`` restarted - continues
from the newest complete one, inside the epoch, with the same batches, RNG and optimizer state, so the
result equals that of a run never interrupted.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from torch import nn
from torch.utils.data import DataLoader

from memsv_cli.data.dataset import SpecAugment
from memsv_cli.data.sampler import EpochPlan
from memsv_cli.data.training import (
    LoaderOptions,
    TrainingSource,
    aug_source_dirs,
    load_training_source,
    make_loader,
)
from memsv_cli.errors import MemsvError
from memsv_cli.profile.plan import plan_table
from memsv_cli.sizes import format_bytes
from memsv_cli.train import checkpoint as ckpt
from memsv_cli.train.config import RUNTIME_KEYS, diff_keys, save_config, with_defaults
from memsv_cli.train.distributed import (
    DistInfo,
    barrier,
    broadcast_object,
    cleanup_distributed,
    gather_objects,
    init_distributed,
)
from memsv_cli.train.epoch import EpochRun, NonFiniteLoss, SaveClock, run_epoch
from memsv_cli.train.log import TrainLog
from memsv_cli.train.memory import adopt_saved_plan, choose_memory_plan, memory_report, predict_step_peak
from memsv_cli.train.precision import check_precision, resolve_precision
from memsv_cli.train.progress import TrainProgress
from memsv_cli.train.settings import Settings
from memsv_cli.train.signals import StopRequest, ignore_in_worker, signal_name
from memsv_cli.train.state import (
    TrainState,
    build_state,
    full_payload,
    init_from_checkpoint,
    restore_state,
    weights_payload,
)

__all__ = ["NonFiniteLoss", "TrainResult", "train"]


@dataclass
class TrainResult:
    """What a :func:`train` call did."""

    exp_dir: Path
    epochs_done: int
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per epoch run now
    avg_model: Path | None = None
    curve: Path | None = None
    net: nn.Module | None = None  # the trained model + head (this rank's copy)
    step: int = 0  # optimizer steps done
    stopped_by: str | None = None  # e.g. "SIGTERM" when a stop signal ended the run early
    exit_status: int = 0  # what the CLI should exit with (130 after Ctrl-C)
    checkpoint: Path | None = None  # the newest full checkpoint
    disk_bytes: int = 0  # the experiment directory's size at the end
    is_main: bool = True  # rank 0 (the one that reports)


def epoch_loader(plan: EpochPlan, dataset: Any, num_workers: int, pin: bool) -> DataLoader:
    """A DataLoader over ``plan``'s current epoch; worker seeds depend only on (seed, epoch, rank)."""
    seq = np.random.SeedSequence([plan.seed, plan.epoch, plan.rank]).generate_state(1, dtype=np.uint64)
    return make_loader(plan, dataset, num_workers, pin, int(seq[0] % 2**63), _init_worker)


def _init_worker(worker_id: int) -> None:
    # torch seeds each worker from the loader's generator; extend that to numpy and random so that any
    # augmentation using the global generators is reproducible too. Stop signals are the main process's.
    import random

    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    ignore_in_worker()
    # Workers take what the training process leaves: on a CPU box every core also runs the model's
    # threads, and an equal-priority worker pre-empting one of them stalls the whole parallel region
    # (2 cores, online augmentation: 45 s -> 33 s for 3 demo epochs; docs/results.md).
    os.nice(WORKER_NICE)
    # torch gives each worker one intra-op thread, but numpy's OpenBLAS (the fbank's mel matmul) keeps
    # one spinning thread per core: a worker then burns two cores and starves the training threads
    # (demo chain: 4.7 -> 3.2 ms of CPU per 1-s chunk; docs/results.md)
    threadpool_limits(1)


WORKER_NICE = 19  # the lowest priority: DataLoader workers run when the training process waits


def restart_count() -> int:
    """How often torchrun has restarted this worker group (0 outside torchrun)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def train(
    config: dict[str, Any], exp_dir: str | Path, *, resume: bool = False, stop_after_epoch: int | None = None
) -> TrainResult:
    """Train ``config["model"]`` on ``config["data"]["dir"]`` into ``exp_dir``.

    Args:
        config: resolved config (:func:`memsv_cli.train.config.resolve_config`), ``data.dir`` set.
        exp_dir: experiment folder (created).
        resume: continue from the newest complete full checkpoint (exactly: same batches, RNG,
            optimizer state); without checkpoints it starts from scratch. Implied in a worker group
            restarted by torchrun.
        stop_after_epoch: stop once this many epochs are done (a planned interruption: the schedules
            still follow ``train.epochs``, so a later ``resume`` gives the uninterrupted result).
    Returns:
        :class:`TrainResult`; ``stopped_by`` is set when a stop signal ended it early.
    """
    settings = Settings.from_config(config)
    info = init_distributed(settings.train.device, timeout_s=settings.train.dist_timeout_s)
    try:
        with StopRequest() as stop:
            return Trainer(settings, Path(exp_dir), info, stop).run(
                resume or restart_count() > 0, stop_after_epoch
            )
    finally:
        cleanup_distributed(info)


class Trainer:
    """One ``train`` call: set-up, the epoch loop, saving, the end of the run."""

    def __init__(self, settings: Settings, exp_dir: Path, info: DistInfo, stop: StopRequest) -> None:
        self.s, self.exp_dir, self.info, self.stop = settings, exp_dir, info, stop
        self.models_dir = exp_dir / "models"
        self.log = TrainLog(exp_dir, enabled=False)
        self.lock: Any = None
        self.newest: Path | None = None  # newest full checkpoint written or loaded
        self.source: TrainingSource | None = None
        self.dataset: Any = None  # what the DataLoader reads (the shard stream is also the plan)
        self.warnings: list[str] = []  # said before train.log was open
        self.predicted_peak: int | None = None  # bytes, the profiler's estimate of one step
        self.start_step = 0  # global step this process starts (or resumes) at
        self.tracked_peak: int | None = None  # CPU: the tracked step's peak, measured once per process
        self.precision_note: str | None = None  # how train.precision auto was resolved

    # -- set-up ----------------------------------------------------------------------------------
    def _warn(self, message: str) -> None:
        """One warning line on stderr (rank 0), also kept for train.log once it is open."""
        print(f"memsv train: warning: {message}", file=sys.stderr)
        self.warnings.append(message)

    def _on_all_ranks(self, error: str | None) -> None:
        """Raise rank 0's error (a decision only rank 0 could make) on every rank."""
        error = broadcast_object(error, self.info)
        if error:
            raise MemsvError(str(error))

    def _acquire_lock(self) -> None:
        error = None
        if self.info.is_main:
            from memsv_cli.lock import DirectoryLock

            self.lock = DirectoryLock(self.exp_dir, what="experiment directory")
            try:
                self.lock.acquire()
            except MemsvError as err:
                error = str(err)
            except OSError as err:  # e.g. the experiment path is a regular file
                error = f"{err.filename or self.exp_dir}: {err.strerror or err}"
        self._on_all_ranks(error)

    def _find_checkpoint(self, resume: bool) -> dict[str, Any] | None:
        """The newest complete checkpoint's payload when resuming (rank 0 chooses, every rank loads)."""
        choice, error = None, None
        if self.info.is_main:
            found = ckpt.full_checkpoints(self.models_dir)
            if found and not resume:
                error = (
                    f"{self.exp_dir} already holds checkpoints ({list(found.values())[-1].name}); pass "
                    "--resume to continue or choose a new --exp-dir"
                )
            elif found:
                loaded = ckpt.newest_loadable(self.models_dir, warn=self._warn)
                choice = str(loaded[0]) if loaded else None
        self._on_all_ranks(error)
        choice = broadcast_object(choice, self.info)
        if choice is None:
            return None
        self.newest = Path(str(choice))
        payload = ckpt.load_checkpoint(self.newest)
        adopted = adopt_saved_plan(payload["config"], self.s.raw)
        if adopted is not self.s.raw:  # the original config again: continue with the plan it got
            self.s = Settings.from_config(adopted)
        check_resume_config(self.newest, payload["config"], self.s.raw)
        return payload

    def _load_data(self, payload: dict[str, Any] | None) -> TrainingSource:
        d = self.s.data
        if not d.dir:
            raise MemsvError(
                "no training data: pass --data DIR (make-shards, extract-fbank or prepare-data dir)"
            )
        source = load_training_source(d.type, d.dir, d.fbank())
        if source.kind == "feat" and d.speed_perturb:
            raise MemsvError(
                f"{source.path} holds features: data.speed_perturb needs audio (data.type raw or shard); "
                "set data.speed_perturb=false (speed-perturb features offline: memsv speed-perturb)"
            )
        if source.kind != "feat" and d.aug_prob > 0 and not aug_source_dirs(d.aug_sources, d.aug_root):
            raise MemsvError(
                f"{source.path} holds audio and data.aug_prob is {d.aug_prob:g}: set data.aug_sources "
                "(rirs, noise, music, babble data dirs; run.sh stage 1 prepares them) or data.aug_prob=0"
            )
        if source.feat_dim != self.s.model.feat_dim:
            raise MemsvError(
                f"{source.path} gives {source.feat_dim}-dim features but model.args.feat_dim is "
                f"{self.s.model.feat_dim} (--set model.args.feat_dim={source.feat_dim})"
            )
        if payload is not None and payload.get("speakers") not in (None, source.speakers):
            raise MemsvError(
                f"--resume: the speakers of {source.path} differ from those the checkpoint was trained on"
            )
        return source

    def _plan(self, source: TrainingSource) -> EpochPlan:
        """This rank's epoch plan; keeps the dataset for the DataLoader."""
        d, tc = self.s.data, self.s.train
        opts = LoaderOptions(
            d.chunk_frames, tc.batch_size, self.s.seed, self.info.rank, self.info.world_size, tc.accum_steps,
            spec_aug=SpecAugment(**d.spec_aug_args) if d.spec_aug else None, aug_prob=d.aug_prob,
            speed_perturb=d.speed_perturb, dither=d.dither, aug_sources=d.aug_sources, aug_root=d.aug_root,
            aug_weights=d.aug_weights, shuffle_buffer=d.shuffle_buffer,
        )  # fmt: skip
        plan, self.dataset = source.plan_and_dataset(opts)
        return plan

    def _start(self, resume: bool) -> TrainState:
        """Lock, find the checkpoint, write config.yaml, build (and restore) the state."""
        self._resolve_precision()
        self._acquire_lock()
        payload = self._find_checkpoint(resume)
        self.source = source = self._load_data(payload)
        self._record_features(source, payload)
        classes = source.num_classes(self.s.data.speed_perturb)
        plan_lines = self._memory_plan(classes)
        state = build_state(self.s, classes, self._plan(source), self.info)
        if payload is not None:
            check_resume_shape(self.newest, payload, state)
        start_step = self.start_step = int(payload["step"]) if payload is not None else 0
        self.log = TrainLog(self.exp_dir, self.info.is_main, self.s.train.tensorboard, start_step)
        for message in self.warnings:
            self.log.info(f"warning: {message}")
        for line in plan_lines:
            self.log.info(line)
        if self.info.is_main:
            self.models_dir.mkdir(parents=True, exist_ok=True)
            save_config(self.s.raw, self.exp_dir / "config.yaml")
        if payload is not None:
            restore_state(state, payload, self.info.rank)
            self.log.truncate_after(state.step)
            again = f", torchrun restart {restart_count()}" if restart_count() else ""
            self.log.info(f"resumed from {self.newest} (epoch {state.epoch + 1}, step {state.step}{again})")
        else:
            self._fresh_start(state)
        return state

    def _resolve_precision(self) -> None:
        """``train.precision: auto`` -> the concrete precision (train.precision), before a resume
        compares configs and before config.yaml is written, so both hold what was trained."""
        precision, self.precision_note = resolve_precision(self.s.train.precision, self.info.device)
        check_precision(precision, self.info.device)
        if precision != self.s.train.precision:
            raw = self.s.raw
            self.s = Settings.from_config({**raw, "train": {**raw["train"], "precision": precision}})

    def _record_features(self, source: TrainingSource, payload: dict[str, Any] | None) -> None:
        """Put the fbank options of ``source`` into the config (``features``); a resumed run must see the
        features its checkpoint was trained on."""
        record = source.feature_record()
        saved = payload["config"].get("features") if payload is not None else None
        if saved and record and saved != record:
            changed = ", ".join(k for k in sorted(record) if record.get(k) != saved.get(k))
            raise MemsvError(
                f"--resume: the features of {source.path} differ from those {self.newest} was trained on "
                f"({changed}); train into a new --exp-dir"
            )
        if record != self.s.raw.get("features"):
            self.s = Settings.from_config({**self.s.raw, "features": record})

    def _memory_plan(self, classes: int) -> list[str]:
        """Plan for ``train.gpu_memory`` (once: a planned config keeps its plan) and predict the step's
        peak (``train.memory_check``); rank 0 decides, every rank adopts. Returns train.log lines."""
        tc, config, known = self.s.train, None, None
        lines: list[str] = []
        error, predicted = None, None
        if self.info.is_main:
            try:
                if tc.gpu_memory is not None and not self.s.raw.get("memory_plan"):
                    config, result = choose_memory_plan(self.s.raw, classes, self.info.device)
                    print(f"memsv train: {result.message}", file=sys.stderr)
                    lines = [result.message, "memory plans (cheapest first):", *plan_table(result)]
                    known = result.chosen.peak if result.chosen is not None else None
                if tc.memory_check:
                    world = self.info.world_size
                    predicted = predict_step_peak(config or self.s.raw, classes, world, known)
            except MemsvError as err:
                error = str(err)
        self._on_all_ranks(error)
        config, self.predicted_peak = broadcast_object((config, predicted), self.info)
        if config is not None:
            self.s = Settings.from_config(config)
        return lines

    def _fresh_start(self, state: TrainState) -> None:
        if self.s.train.init_model:
            self.log.info(init_from_checkpoint(state.net, self.s.train.init_model))
        if self.info.is_main:
            self.log.metrics_path.unlink(missing_ok=True)
        assert self.source is not None
        n_params = sum(p.numel() for p in state.net.model.parameters())
        tc, src = self.s.train, self.source
        self.log.info(
            f"training {self.s.model.name} ({n_params / 1e6:.2f}M params) on {src.num_items} {src.kind} "
            f"utts of {len(src.speakers)} speakers ({state.net.head.num_classes} classes), "
            f"{self.info.world_size} process(es) x {tc.accum_steps} "
            f"micro-batch(es) of {tc.batch_size} on {self.info.device}, optimizer "
            f"{self.s.optimizer.name}, {state.steps_per_epoch} steps/epoch, precision {tc.precision}"
            + (f" ({self.precision_note})" if self.precision_note else "")
        )

    # -- saving ----------------------------------------------------------------------------------
    def save_full(self, state: TrainState, reason: str) -> None:
        """Write ``checkpoint_<step>.pt`` (collective: every rank's RNG), point ``last.pt`` at it and
        prune; a failed write stops every rank with one line naming the checkpoint still usable."""
        rngs = gather_objects(ckpt.capture_rng(), self.info)
        error = None
        if self.info.is_main:
            assert self.source is not None
            path = self.models_dir / f"checkpoint_{state.step:08d}.pt"
            try:
                ckpt.write_checkpoint(
                    path, full_payload(state, self.s.raw, self.source.speakers, rngs), self.newest
                )
                ckpt.point_link(self.models_dir / ckpt.LAST, path)
                self.newest = path
                ckpt.prune(self.models_dir, self.s.train.keep_checkpoints, self.s.train.keep_epoch_models)
                self.log.info(
                    f"saved {path.name} ({reason} at step {state.step}: {state.epoch} epoch(s) + "
                    f"{state.step_in_epoch} step(s))"
                )
            except ckpt.CheckpointWriteError as err:
                self.log.info(f"stopped: {err}")
                error = str(err)
        self._on_all_ranks(error)
        self.newest = Path(str(broadcast_object(str(self.newest), self.info)))

    def _save_epoch(self, state: TrainState, metrics: dict[str, Any]) -> None:
        """Epoch end: the epoch's records, weights-only ``model_<N>.pt``, a full checkpoint. Records
        first: a run killed before the checkpoint resumes from an older one, which drops them again."""
        if self.info.is_main:
            self.log.record(metrics)
            self.log.info(
                f"epoch {metrics['epoch']}/{self.s.train.epochs} loss {metrics['loss']:.4f} "
                f"acc {100 * metrics['acc']:.2f}% lr {metrics['lr']:.3g} margin {metrics['margin']:.3f} "
                f"{metrics['samples_per_s']:.1f} samples/s peak memory "
                f"{metrics['peak_mem_bytes'] / 2**20:.1f} MiB ({metrics['peak_mem_kind']})"
            )
            line, warning = memory_report(metrics)
            if line:
                self.log.info(line)
            if warning:
                self.log.info(f"warning: {warning}")
                print(f"memsv train: warning: {warning}", file=sys.stderr)
        error = None
        if self.info.is_main:
            path = self.models_dir / f"model_{state.epoch}.pt"
            try:
                ckpt.write_checkpoint(path, weights_payload(state, self.s.raw), self.newest)
            except ckpt.CheckpointWriteError as err:
                self.log.info(f"stopped: {err}")
                error = str(err)
        self._on_all_ranks(error)
        self.save_full(state, "epoch end")

    # -- the run -----------------------------------------------------------------------------------
    def run(self, resume: bool, stop_after_epoch: int | None) -> TrainResult:
        try:
            state = self._start(resume)
            result = TrainResult(self.exp_dir, state.epoch, net=state.net, is_main=self.info.is_main)
            self._epochs(state, result, stop_after_epoch)
            result.epochs_done, result.step, result.checkpoint = state.epoch, state.step, self.newest
            if state.epoch >= self.s.train.epochs and self.info.is_main:
                self._finish(result)
            if self.info.is_main:
                result.disk_bytes = ckpt.disk_use(self.exp_dir)
                self.log.info(f"experiment disk use: {format_bytes(result.disk_bytes)} in {self.exp_dir}")
            barrier(self.info)
            return result
        finally:
            self.log.close()
            if self.lock is not None:
                self.lock.release()

    def _epochs(self, state: TrainState, result: TrainResult, stop_after_epoch: int | None) -> None:
        tc = self.s.train
        forward: nn.Module = state.net
        if self.info.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            forward = DDP(
                state.net, device_ids=[self.info.device.index] if self.info.device.type == "cuda" else None
            )
        state.step_fn.forward = forward
        dataset = self.dataset
        last_epoch = tc.epochs if stop_after_epoch is None else min(tc.epochs, stop_after_epoch)
        clock = SaveClock(tc.save_every_minutes, tc.save_every_steps)
        progress = TrainProgress(enabled=self.info.is_main and tc.progress, total_epochs=tc.epochs)
        try:
            with progress:
                while state.epoch < last_epoch:
                    state.sampler.set_epoch(state.epoch, state.step_in_epoch)
                    pin = self.info.device.type == "cuda"
                    loader = epoch_loader(state.sampler, dataset, tc.num_workers, pin)
                    run = EpochRun(
                        loader, self.info, progress, self.log, self.stop, clock,
                        lambda reason: (self.save_full(state, reason), clock.saved()),
                        tc.log_interval, tc.precision, self.s.data.max_bad_fraction, tc.batch_size,
                        self.predicted_peak, tc.memory_check and self.info.device.type == "cpu",
                        self.start_step, self.tracked_peak,
                    )  # fmt: skip
                    try:
                        outcome = run_epoch(state, run)
                        self.tracked_peak = run.tracked_peak
                    except NonFiniteLoss as err:
                        self.log.info(f"stopped: {err}")
                        raise
                    if outcome.stopped:
                        self._stopped(state, result)
                        return
                    assert outcome.metrics is not None
                    self._save_epoch(state, outcome.metrics)
                    clock.saved()
                    progress.end_epoch(outcome.metrics)
                    result.history.append(outcome.metrics)
        finally:
            dataset.close()

    def _stopped(self, state: TrainState, result: TrainResult) -> None:
        assert self.stop.signum is not None
        from memsv_cli.train.signals import EXIT_STATUS

        result.stopped_by = signal_name(self.stop.signum)
        result.exit_status = EXIT_STATUS.get(self.stop.signum, 0)
        self.log.info(f"stopped by {result.stopped_by} at epoch {state.epoch + 1}, step {state.step}")

    def _finish(self, result: TrainResult) -> None:
        """Average the last ``train.num_avg`` epochs, link ``final_model.pt``, draw the curve (rank 0)."""
        from memsv_cli.train.averaging import average_checkpoints
        from memsv_cli.train.curve import plot_training_curve

        models = ckpt.epoch_models(self.models_dir)
        if models:
            ckpt.point_link(self.models_dir / ckpt.FINAL, list(models.values())[-1])
        if self.s.train.num_avg > 0 and models:
            result.avg_model, epochs = average_checkpoints(self.models_dir, num=self.s.train.num_avg)
            self.log.info(f"averaged epochs {epochs[0]}-{epochs[-1]} into {result.avg_model}")
        result.curve = plot_training_curve(self.exp_dir / "metrics.jsonl", self.exp_dir / "train_curve.png")


def check_resume_config(ckpt_path: Path, saved: dict[str, Any], config: dict[str, Any]) -> None:
    """Refuse to resume under a config that would not continue the same run (one line)."""
    # ``features`` is derived from the training dir; the trainer checks it against the data it loads
    diffs = diff_keys(with_defaults(saved), config)  # saved by an older memsv: new keys at their defaults
    changed = [k for k in diffs if k not in RUNTIME_KEYS and k.split(".")[0] != "features"]
    if "train.epochs" in changed:
        raise MemsvError(
            f"--resume: train.epochs is {config['train']['epochs']} but {ckpt_path} was trained for "
            f"{saved['train']['epochs']}: the LR and margin schedules are functions of the total steps, so "
            "a longer run is another run. To train further, start a new --exp-dir from its weights: "
            f"--set train.init_model={ckpt_path.parent}/avg_model.pt"
        )
    if changed:
        raise MemsvError(
            f"--resume: config differs from {ckpt_path} in {', '.join(changed[:5])}"
            f"{' ...' if len(changed) > 5 else ''}; resume with the saved config (omit --config/--set) "
            "or train into a new --exp-dir"
        )


def check_resume_shape(path: Path | None, payload: dict[str, Any], state: TrainState) -> None:
    """Refuse a checkpoint whose step layout differs (data, GPUs x accum_steps) from this run's."""
    slots = payload.get("micro_batches")
    if slots is not None and slots != state.sampler.slots:
        raise MemsvError(
            f"--resume: {path} was written with {slots} micro-batches per step (GPUs x train.accum_steps), "
            f"this run has {state.sampler.slots}: choose train.accum_steps so that GPUs x accum_steps = "
            f"{slots}"
        )
    steps = payload.get("steps_per_epoch")
    if steps is not None and steps != state.steps_per_epoch:
        raise MemsvError(
            f"--resume: {path} has {steps} steps per epoch, this data and batch give {state.steps_per_epoch} "
            "(did the training data change?)"
        )
