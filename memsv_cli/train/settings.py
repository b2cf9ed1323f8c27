"""Typed views of a validated training config, built once: ``Settings.from_config(config)``.

The config itself stays a nested ``dict`` (it is what ``config.yaml`` and every checkpoint hold, and
what ``--set a.b=c`` edits); :func:`memsv_cli.train.config.validate` checks it. Code that *uses* it reads
these frozen dataclasses instead of string keys, so a misspelt key is an ``AttributeError`` at the one
place it is read, and every field's meaning and unit is written here once. Each dataclass has exactly
the keys of its config section (``DEFAULTS``), so a schema change that forgets this module fails at
construction (tested).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from memsv_cli.data.fbank import FbankConfig


@dataclass(frozen=True)
class DataSettings:
    """``data``: where the training set is, how chunks are cut and augmented."""

    type: str  # feat | raw | shard
    dir: str | None  # training data dir
    chunk_frames: int  # frames per training chunk (10 ms each)
    speed_perturb: bool  # raw/shard: 0.9 / 1.0 / 1.1 as new speaker classes
    aug_prob: float  # probability of reverb or additive noise (feat: of an offline copy)
    aug_sources: dict[str, str | None]  # data dirs: rirs, noise, music, babble (speech)
    aug_root: str | None  # a dir with rirs, musan_noise, musan_music, musan_speech
    aug_weights: dict[str, float] | None  # relative weights of the additive kinds
    dither: float  # fbank dither in training (raw/shard), in int16 sample units
    shuffle_buffer: int  # shard: samples per worker's shuffle buffer
    max_bad_fraction: float  # unreadable samples tolerated per epoch before stopping
    spec_aug: bool
    spec_aug_args: dict[str, Any]  # SpecAugment(**spec_aug_args)
    fbank_args: dict[str, Any]  # raw/shard: num_mel_bins, frame_length / frame_shift (ms)

    def fbank(self) -> FbankConfig:
        """The online chain's fbank options (training dither is ``dither``, applied by the chain)."""
        args = self.fbank_args
        return FbankConfig(
            num_mel_bins=int(args["num_mel_bins"]),
            frame_length_ms=float(args["frame_length"]),
            frame_shift_ms=float(args["frame_shift"]),
        )


@dataclass(frozen=True)
class ModelSettings:
    """``model``: a ``memsv_cli.models`` name and its ``get_model`` keyword arguments."""

    name: str
    args: dict[str, Any]

    @property
    def embed_dim(self) -> int:
        """Embedding size E (``get_model``'s default 256)."""
        return int(self.args.get("embed_dim", 256))

    @property
    def feat_dim(self) -> int:
        """Input feature dimension F (``get_model``'s default 80)."""
        return int(self.args.get("feat_dim", 80))


@dataclass(frozen=True)
class HeadSettings:
    """``head``: the AAM-softmax classifier."""

    name: str
    scale: float  # logit scale s
    easy_margin: bool


@dataclass(frozen=True)
class MarginSettings:
    """``margin_scheduler``: AAM margin (radians) ramp between two 0-based epochs."""

    initial_margin: float
    final_margin: float
    increase_start_epoch: float
    fix_start_epoch: float
    increase_type: str  # exp | linear


@dataclass(frozen=True)
class OptimizerSettings:
    """``optimizer``: a ``memsv_cli.optim.build_optimizer`` name and its arguments (LR excluded)."""

    name: str
    args: dict[str, Any]


@dataclass(frozen=True)
class SchedulerSettings:
    """``scheduler``: WeSpeaker's exponential LR decay with linear warm-up (per global step)."""

    name: str
    initial_lr: float
    final_lr: float
    warm_up_epochs: float
    warm_from_zero: bool
    scale_by_batch: bool  # multiply both LRs by the global batch / 64


@dataclass(frozen=True)
class TrainSettings:
    """``train``: the loop, its precision, checkpoints and logging."""

    epochs: int
    batch_size: int  # per process and micro-batch
    accum_steps: int  # micro-batches per optimizer step
    num_workers: int
    precision: str  # fp32 | bf16 | fp16; auto until the trainer resolves it (train.precision)
    device: str  # auto | cpu | cuda
    grad_clip: float | None  # max global L2 norm of the gradients
    num_avg: int
    log_interval: int  # optimizer steps between step records (0: none)
    progress: bool
    init_model: str | None
    dist_timeout_s: float  # seconds
    save_every_minutes: float | None
    save_every_steps: int | None
    keep_checkpoints: int
    keep_epoch_models: int | None
    tensorboard: bool
    gpu_memory: str | int | None  # card size for the memory plan (memsv_cli.profile.plan), e.g. 11GiB
    plan_micro_batch: bool  # the plan may change the micro-batch (BatchNorm sees fewer samples)
    plan_half_precision: bool  # the plan may switch an fp32 recipe to bf16 / fp16
    memory_check: bool  # predict the step's peak and log it beside the measured one each epoch


@dataclass(frozen=True)
class Settings:
    """All sections of one resolved, validated config; ``raw`` is the dict they were built from."""

    seed: int
    data: DataSettings
    model: ModelSettings
    head: HeadSettings
    margin: MarginSettings
    optimizer: OptimizerSettings
    scheduler: SchedulerSettings
    train: TrainSettings
    raw: dict[str, Any]

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Settings:
        """Build from a config that :func:`~memsv_cli.train.config.validate` accepted."""
        return cls(
            seed=int(config["seed"]),
            data=_section(DataSettings, config["data"]),
            model=_section(
                ModelSettings, {**config["model"], "args": dict(config["model"].get("args") or {})}
            ),
            head=_section(HeadSettings, config["head"]),
            margin=_section(MarginSettings, config["margin_scheduler"]),
            optimizer=_section(
                OptimizerSettings,
                {**config["optimizer"], "args": dict(config["optimizer"].get("args") or {})},
            ),
            scheduler=_section(SchedulerSettings, config["scheduler"]),
            train=_section(TrainSettings, config["train"]),
            raw=config,
        )


def _section(cls: type, values: dict[str, Any]) -> Any:
    """``cls(**values)`` with exactly the dataclass's fields; any other or missing key is a bug here."""
    names = {f.name for f in fields(cls)}
    if set(values) != names:
        raise TypeError(f"{cls.__name__}: config keys {sorted(set(values) ^ names)} do not match the fields")
    return cls(**values)
