"""Training configuration: defaults, YAML loading, ``--set a.b=c`` overrides and validation.

A config is a nested ``dict`` (it is saved as YAML and inside every checkpoint). :data:`DEFAULTS` is the
schema: a key that is not in it is an error naming the key, except below the free-form sections listed
in :data:`FREE_FORM` (``model.args``, ``optimizer.args``, ...) whose keys are passed to the model or
optimizer constructor, which then reject what they do not know.

Defaults are the WeSpeaker VoxCeleb v2 ResNet34 recipe (see docs/PAPER.md): 200-frame chunks, AAM-softmax
scale 32 with the margin going 0 -> 0.2 between epochs 20 and 40, SGD (momentum 0.9, Nesterov, weight
decay 1e-4), LR 0.1 -> 5e-5 exponentially with 6 warm-up epochs, 150 epochs of batch 128, average the
last 10 checkpoints.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from memsv_cli.atomic import write_text_atomic
from memsv_cli.errors import InputError, MemsvError

DEFAULTS: dict[str, Any] = {
    "seed": 42,
    "data": {
        # WeSpeaker's data types: feat (feats.scp of extract-fbank), raw (wav.scp, audio read per
        # utterance), shard (shard.list of make-shards: tar shards read sequentially); auto: what the
        # data dir holds (shard.list, else feats.scp, else wav.scp)
        "type": "auto",
        "dir": None,  # training dir (feats.scp / wav.scp / shard.list, + utt2spk); set by --data
        "chunk_frames": 200,  # frames per training chunk (10 ms each)
        # Online augmentation (raw, shard), in the DataLoader workers, WeSpeaker's chain: speed
        # perturbation 0.9/1.0/1.1 as new speakers (x3 classes), then with probability aug_prob either
        # reverberation by a random RIR or MUSAN-style noise / music / babble (one speech recording)
        # from the data dirs in aug_sources (wav.scp; stage 1 prepares them), then fbank with dither,
        # CMN, SpecAugment. For feat, aug_prob picks an offline augmented copy instead of the clean one.
        "speed_perturb": False,
        "aug_prob": 0.0,
        "aug_sources": {"rirs": None, "noise": None, "music": None, "babble": None},
        # or a dir holding them as run.sh stage 1 lays them out: rirs, musan_noise, musan_music,
        # musan_speech (babble); a kind set in aug_sources wins
        "aug_root": None,
        # relative weights of the additive kinds; null: every file equally likely (WeSpeaker), so the
        # kinds weigh by their file counts
        "aug_weights": None,
        "dither": 1.0,  # fbank dither in training (raw, shard); extraction for scoring uses 0
        # the online fbank of raw and shard (WeSpeaker's dataset_args.fbank_args; lengths in ms); the
        # recipe extracts the evaluation features with the same (extract-fbank --train-config). feat
        # trains on the arks as extract-fbank made them (their fbank.conf)
        "fbank_args": {"num_mel_bins": 80, "frame_length": 25.0, "frame_shift": 10.0},
        "shuffle_buffer": 2500,  # shard: samples in the shuffle buffer of each worker
        # unreadable audio / shard members are skipped with a counted warning; more than this fraction
        # of an epoch's samples stops training with a one-line error
        "max_bad_fraction": 0.01,
        "spec_aug": False,
        # SpecAugment as in WeSpeaker: with probability ``prob`` mask up to ``max_t`` frames
        # ``num_t_mask`` times and up to ``max_f`` bins ``num_f_mask`` times (masked values set to 0
        # after mean normalisation, i.e. to the chunk mean).
        "spec_aug_args": {"prob": 0.6, "num_t_mask": 1, "num_f_mask": 1, "max_t": 10, "max_f": 8},
    },
    "model": {"name": "resnet34", "args": {"feat_dim": 80, "embed_dim": 256}},
    "head": {"name": "aam_softmax", "scale": 32.0, "easy_margin": False},
    "margin_scheduler": {
        "initial_margin": 0.0,
        "final_margin": 0.2,
        "increase_start_epoch": 20,
        "fix_start_epoch": 40,
        "increase_type": "exp",  # exp | linear
    },
    "optimizer": {"name": "sgd", "args": {"momentum": 0.9, "nesterov": True, "weight_decay": 1.0e-4}},
    "scheduler": {
        "name": "exponential_decrease",
        "initial_lr": 0.1,
        "final_lr": 5.0e-5,
        "warm_up_epochs": 6,
        "warm_from_zero": True,
        # WeSpeaker's linear scaling rule: both LRs are multiplied by world_size * batch_size / 64.
        "scale_by_batch": True,
    },
    "train": {
        "epochs": 150,
        "batch_size": 128,  # per process (per GPU) and micro-batch, as in WeSpeaker
        # Gradient accumulation: micro-batches of batch_size per optimizer step, so the global batch is
        # world_size * batch_size * accum_steps (one GPU with 2 reproduces the 2-GPU recipe exactly).
        "accum_steps": 1,
        "num_workers": 2,
        # fp32 | bf16 | fp16 (autocast, fp32 master weights) | auto: bf16 where the device computes it
        # natively (AMX / AVX512-BF16 CPUs, Ampere+ GPUs), else fp32 (memsv_cli.train.precision)
        "precision": "fp32",
        "device": "auto",  # auto | cpu | cuda
        "grad_clip": None,  # max global L2 norm of the gradients, or null for none
        "num_avg": 10,  # models/avg_model.pt averages the last num_avg epoch checkpoints
        "log_interval": 100,  # steps between train.log / metrics.jsonl step records
        "progress": True,  # rich progress bar on rank 0
        # Start from these weights (a models/avg_model.pt or epoch_N.pt; WeSpeaker's model_init), e.g.
        # for large-margin fine-tuning. The head is taken too when the checkpoint has a matching one.
        "init_model": None,
        "dist_timeout_s": 1800,  # torch.distributed collective timeout: a dead rank fails the others
        # Step checkpoints (models/checkpoint_<step>.pt, models/last.pt -> the newest): every this many
        # minutes and/or optimizer steps (null: off), besides the one at every epoch end.
        "save_every_minutes": 30,
        "save_every_steps": None,
        "keep_checkpoints": 2,  # full (resumable) checkpoints kept; weights-only model_N.pt are separate
        "keep_epoch_models": None,  # weights-only models/model_N.pt kept (null: all, as WeSpeaker)
        "tensorboard": False,  # also write TensorBoard scalars to EXP/tensorboard (rank 0)
        # Fit the card (memsv_cli.profile.plan): with a size such as 11GiB, training first predicts the
        # exact plans of this recipe (recompute chunks / activation checkpointing, micro-batch x
        # accumulation, precision) and trains with the cheapest that fits; the choice and the candidates
        # go to config.yaml (memory_plan) and train.log.
        "gpu_memory": None,
        # plans may use micro-batches other than batch_size (same gradient, but BatchNorm normalises over
        # the micro-batch) ...
        "plan_micro_batch": False,
        # ... and bf16 (fp16 on cards without bf16) when the recipe is fp32
        "plan_half_precision": False,
        # predict this setup's peak memory at the start (profiler, meta tensors) and log it beside the
        # measured peak every epoch, warning when measured exceeds predicted by more than 5%
        "memory_check": True,
    },
    # written by memsv train --gpu-memory: the recipe's plan, the chosen one and every candidate
    "memory_plan": None,
    # written by memsv train: the fbank options the model was trained on (num_mel_bins, frame_length_ms,
    # ...; memsv embed / similarity / extract-embeddings from audio compute the same features)
    "features": None,
}

# Sections whose keys are constructor arguments, not part of the schema.
FREE_FORM: tuple[str, ...] = ("model.args", "optimizer.args", "data.spec_aug_args", "memory_plan", "features")

# Keys that may differ between an interrupted run and its ``--resume`` without changing the result
# (or only where the user asked for it, such as where the data now lives).
# ``train.accum_steps`` may change as long as world_size * accum_steps (the micro-batches of one step)
# does not: the trainer checks that, so 2 GPUs can continue on 1 GPU with accum_steps 2 and vice versa.
RUNTIME_KEYS: tuple[str, ...] = (
    "data.dir",
    "data.aug_sources.rirs",
    "data.aug_sources.noise",
    "data.aug_sources.music",
    "data.aug_sources.babble",
    "data.aug_root",
    "train.num_workers",
    "train.log_interval",
    "train.progress",
    "train.device",
    "train.dist_timeout_s",
    "train.accum_steps",
    "train.save_every_minutes",
    "train.save_every_steps",
    "train.keep_checkpoints",
    "train.keep_epoch_models",
    "train.tensorboard",
    "train.memory_check",
)

# When a config file or override changes ``model.name`` / ``optimizer.name``, the inherited ``args``
# keep only these (valid for every model / optimizer); e.g. SGD's ``momentum`` must not reach Adam.
# Within one optimizer family (sgd <-> sgd8bit, adam <-> adam8bit <-> adamw...) every argument but the
# 8-bit-only ones stays: ``--optimizer sgd8bit`` on an SGD config keeps its momentum and Nesterov.
KEPT_ON_SWITCH: dict[str, tuple[str, ...]] = {
    "model": ("feat_dim", "embed_dim", "base_width"),
    "optimizer": ("weight_decay",),
}
EIGHT_BIT_ONLY_ARGS = ("block_size", "min_8bit_size", "optim_bits")

PRECISIONS = ("fp32", "bf16", "fp16")  # what a step runs in (the profiler's choices too)
PRECISION_CHOICES = (*PRECISIONS, "auto")  # train.precision: auto is resolved by the trainer
DATA_TYPES = ("auto", "feat", "raw", "shard")


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` as a float (YAML 1.1 wants ``1.0e-3``; researchers don't)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def yaml_load(text: str) -> Any:
    """Parse YAML with :class:`_Loader` (safe, plus ``1e-3`` floats)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader


DEVICES = ("auto", "cpu", "cuda")


def _is_free_form(dotted: str) -> bool:
    return any(dotted == f or dotted.startswith(f + ".") for f in FREE_FORM)


def merge(base: dict[str, Any], update: dict[str, Any], *, source: str, prefix: str = "") -> dict[str, Any]:
    """Return ``base`` deep-updated with ``update``; keys unknown to ``base`` raise naming the key.

    Below free-form sections (``model.args`` ...) the update replaces nothing it does not name and
    may add new keys.
    """
    out = copy.deepcopy(base)
    for key, value in update.items():
        dotted = f"{prefix}{key}"
        if not isinstance(key, str):
            raise MemsvError(f"{source}: config key {dotted!r} is not a string")
        if key not in out and not _is_free_form(prefix.rstrip(".")):
            known = ", ".join(sorted(out)) if out else "none"
            raise MemsvError(f"{source}: unknown config key {dotted!r} (known here: {known})")
        if (
            not prefix
            and key in KEPT_ON_SWITCH
            and isinstance(value, dict)
            and value.get("name") not in (None, out[key].get("name"))
        ):
            args = _args_kept_on_switch(key, out[key].get("name"), value["name"], out[key].get("args") or {})
            out[key] = {**out[key], "args": args}
        if isinstance(out.get(key), dict) and isinstance(value, dict):
            out[key] = merge(out[key], value, source=source, prefix=f"{dotted}.")
        elif isinstance(out.get(key), dict) and not _is_free_form(dotted) and value is not None:
            raise MemsvError(f"{source}: config key {dotted!r} must be a mapping, got {value!r}")
        else:
            out[key] = copy.deepcopy(value)
    return out


def _args_kept_on_switch(section: str, old: Any, new: Any, args: dict[str, Any]) -> dict[str, Any]:
    """The inherited ``args`` that stay valid when ``section.name`` changes from ``old`` to ``new``."""
    if section == "optimizer":
        from memsv_cli.optim import optimizer_family

        try:
            same_family = optimizer_family(str(old)) == optimizer_family(str(new))
        except MemsvError:  # an unknown name is reported when the optimizer is built
            same_family = False
        if same_family:
            eight_bit = str(new).lower().endswith("8bit")
            return {k: v for k, v in args.items() if eight_bit or k not in EIGHT_BIT_ONLY_ARGS}
    return {k: v for k, v in args.items() if k in KEPT_ON_SWITCH[section]}


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``a.b.c=value`` into (``["a", "b", "c"]``, value parsed as YAML)."""
    if "=" not in text:
        raise MemsvError(f"--set {text!r}: expected key.sub=value")
    key, raw = text.split("=", 1)
    path = key.strip().split(".")
    if not all(path):
        raise MemsvError(f"--set {text!r}: empty key component")
    try:
        value = yaml_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise MemsvError(f"--set {text!r}: value is not valid YAML ({err})") from None
    return path, value


def apply_override(config: dict[str, Any], text: str) -> dict[str, Any]:
    """Apply one ``--set a.b=c`` override (value parsed as YAML); unknown keys raise naming the key."""
    path, value = parse_override(text)
    update: dict[str, Any] = value
    for key in reversed(path):
        update = {key: update}
    return merge(config, update, source=f"--set {text}")


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping (an empty file is an empty mapping)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such config file")
    try:
        data = yaml_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise InputError(path, f"not valid YAML ({getattr(err, 'problem', err)})", line) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(path, f"expected a YAML mapping at the top level, got {type(data).__name__}")
    return data


def resolve_config(
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    base: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Defaults (or ``base``) <- YAML file <- ``--set`` overrides, validated.

    Args:
        path: YAML config file or None for the defaults only.
        overrides: ``key.sub=value`` strings, applied in order.
        base: start from this config instead of :data:`DEFAULTS` (resume uses the saved one).
    """
    config = with_defaults(base) if base is not None else copy.deepcopy(DEFAULTS)
    if path is not None:
        config = merge(config, load_yaml(path), source=str(path))
    for text in overrides:
        config = apply_override(config, text)
    validate(config)
    return config


def _validate_online(data: dict[str, Any]) -> None:
    """Combinations of the data keys that cannot work."""
    if data["type"] == "feat" and data["speed_perturb"]:
        raise MemsvError(
            "config key 'data.speed_perturb' needs data.type raw or shard (online audio); for feat, make "
            "offline copies with `memsv speed-perturb` before extract-fbank"
        )
    fbank = data["fbank_args"]
    if fbank["frame_shift"] > fbank["frame_length"]:
        raise MemsvError("config key 'data.fbank_args.frame_shift' must be <= data.fbank_args.frame_length")
    online = data["type"] in ("raw", "shard")  # auto: checked again once the dir tells
    if online and data["aug_prob"] > 0 and not (any(data["aug_sources"].values()) or data["aug_root"]):
        raise MemsvError(
            "config key 'data.aug_prob' > 0 needs data.aug_sources (rirs, noise, music, babble: the RIR "
            "and MUSAN data dirs that stage 1 prepares)"
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _aug_weights_ok(value: Any) -> bool:
    if value is None:
        return True
    return (
        isinstance(value, dict)
        and set(value) <= {"noise", "music", "babble"}
        and all(_is_number(w) and w >= 0 for w in value.values())
        and sum(value.values()) > 0
    )


def _int_at_least(low: int, allow_none: bool = False) -> Callable[[Any], bool]:
    return lambda v: (allow_none and v is None) or (_is_int(v) and v >= low)


def _positive(allow_none: bool = False) -> Callable[[Any], bool]:
    return lambda v: (allow_none and v is None) or (_is_number(v) and v > 0)


def _one_of(choices: tuple[str, ...]) -> Callable[[Any], bool]:
    return lambda v: v in choices


# (dotted key, check, what the value must be): one line each, checked in order by :func:`validate`.
_RULES: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("seed", _is_int, "must be an integer"),
    ("model.name", lambda v: isinstance(v, str), "must be a model name"),
    ("model.args", lambda v: isinstance(v or {}, dict), "must be a mapping"),
    ("optimizer.name", lambda v: isinstance(v, str), "must be an optimizer name"),
    ("optimizer.args", lambda v: isinstance(v or {}, dict), "must be a mapping"),
    ("data.type", _one_of(DATA_TYPES), f"must be one of {', '.join(DATA_TYPES)}"),
    ("data.chunk_frames", _int_at_least(8), "must be an integer >= 8"),
    ("data.speed_perturb", lambda v: isinstance(v, bool), "must be true or false"),
    ("data.aug_prob", lambda v: _is_number(v) and 0 <= v <= 1, "must be a probability in [0, 1]"),
    *(
        (f"data.aug_sources.{k}", lambda v: v is None or isinstance(v, str), "must be a data dir or null")
        for k in ("rirs", "noise", "music", "babble")
    ),
    ("data.aug_root", lambda v: v is None or isinstance(v, str), "must be a data dir or null"),
    (
        "data.aug_weights",
        _aug_weights_ok,
        "must be null or a mapping of noise / music / babble to weights >= 0",
    ),
    ("data.dither", lambda v: _is_number(v) and v >= 0, "must be a number >= 0"),
    ("data.fbank_args.num_mel_bins", _int_at_least(3), "must be an integer >= 3"),
    ("data.fbank_args.frame_length", _positive(), "must be a number of milliseconds > 0"),
    ("data.fbank_args.frame_shift", _positive(), "must be a number of milliseconds > 0"),
    ("data.shuffle_buffer", _int_at_least(1), "must be an integer >= 1"),
    ("data.max_bad_fraction", lambda v: _is_number(v) and 0 <= v <= 1, "must be a fraction in [0, 1]"),
    ("data.spec_aug", lambda v: isinstance(v, bool), "must be true or false"),
    ("head.name", _one_of(("aam_softmax",)), "must be 'aam_softmax'"),
    ("head.scale", _positive(), "must be > 0"),
    ("scheduler.name", _one_of(("exponential_decrease",)), "must be 'exponential_decrease'"),
    ("scheduler.initial_lr", _positive(), "must be a number > 0"),
    ("scheduler.final_lr", _positive(), "must be a number > 0"),
    ("scheduler.warm_up_epochs", lambda v: _is_number(v) and v >= 0, "must be >= 0"),
    ("margin_scheduler.increase_type", _one_of(("exp", "linear")), "must be exp|linear"),
    ("train.epochs", _int_at_least(1), "must be an integer >= 1"),
    ("train.batch_size", _int_at_least(1), "must be an integer >= 1"),
    ("train.accum_steps", _int_at_least(1), "must be an integer >= 1"),
    ("train.num_workers", _int_at_least(0), "must be an integer >= 0"),
    ("train.num_avg", _int_at_least(0), "must be an integer >= 0"),
    ("train.log_interval", _int_at_least(0), "must be an integer >= 0"),
    ("train.precision", _one_of(PRECISION_CHOICES), f"must be one of {', '.join(PRECISION_CHOICES)}"),
    ("train.device", _one_of(DEVICES), f"must be one of {', '.join(DEVICES)}"),
    ("train.grad_clip", _positive(allow_none=True), "must be a positive number or null"),
    ("train.init_model", lambda v: v is None or isinstance(v, str), "must be a checkpoint path or null"),
    ("train.dist_timeout_s", _positive(), "must be > 0"),
    ("train.save_every_minutes", _positive(allow_none=True), "must be a number of minutes > 0 or null"),
    ("train.save_every_steps", _int_at_least(1, allow_none=True), "must be an integer >= 1 or null"),
    ("train.keep_checkpoints", _int_at_least(1), "must be an integer >= 1"),
    ("train.tensorboard", lambda v: isinstance(v, bool), "must be true or false"),
    ("train.progress", lambda v: isinstance(v, bool), "must be true or false"),
    (
        "train.gpu_memory",
        lambda v: v is None or isinstance(v, (str, int)),
        "must be a size such as 11GiB or null",
    ),
    ("train.plan_micro_batch", lambda v: isinstance(v, bool), "must be true or false"),
    ("train.plan_half_precision", lambda v: isinstance(v, bool), "must be true or false"),
    ("train.memory_check", lambda v: isinstance(v, bool), "must be true or false"),
    ("memory_plan", lambda v: v is None or isinstance(v, dict), "must be a mapping or null"),
    ("features", lambda v: v is None or isinstance(v, dict), "must be a mapping or null"),
)


def validate(config: dict[str, Any]) -> None:
    """Check value types and ranges that would otherwise fail deep inside training (one-line errors)."""
    for key, ok, what in _RULES:
        if not ok(get_key(config, key)):
            raise MemsvError(f"config key {key!r} {what}")
    margin, train = config["margin_scheduler"], config["train"]
    start, fix = margin["increase_start_epoch"], margin["fix_start_epoch"]
    if not (_is_number(start) and _is_number(fix) and fix >= start >= 0):
        raise MemsvError("config key 'margin_scheduler.fix_start_epoch' must be >= increase_start_epoch >= 0")
    _validate_online(config["data"])
    keep = train["keep_epoch_models"]
    if keep is not None and not (_is_int(keep) and keep >= max(1, train["num_avg"])):
        raise MemsvError(
            "config key 'train.keep_epoch_models' must be null (keep all) or an integer >= train.num_avg "
            "(averaging reads those files)"
        )


def with_defaults(
    config: dict[str, Any], defaults: dict[str, Any] = DEFAULTS, prefix: str = ""
) -> dict[str, Any]:
    """A copy of ``config`` (a saved one) with the keys added to :data:`DEFAULTS` since it was written,
    at their defaults: an experiment of an older memsv resumes and compares as it was trained."""
    out = copy.deepcopy(config)
    for key, value in defaults.items():
        dotted = f"{prefix}{key}"
        if key not in out:
            out[key] = copy.deepcopy(value)
        elif isinstance(value, dict) and isinstance(out[key], dict) and not _is_free_form(dotted):
            out[key] = with_defaults(out[key], value, f"{dotted}.")
    return out


def get_key(config: dict[str, Any], dotted: str) -> Any:
    """``get_key(cfg, "train.epochs")``; a missing key returns None."""
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def diff_keys(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested configs (sorted)."""
    out: list[str] = []
    for key in sorted(set(a) | set(b), key=str):
        dotted = f"{prefix}{key}"
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out.extend(diff_keys(va, vb, f"{dotted}."))
        elif va != vb:
            out.append(dotted)
    return out


def save_config(config: dict[str, Any], path: str | Path) -> None:
    """Write the resolved config as YAML (block style, key order kept), atomically."""
    write_text_atomic(path, yaml.safe_dump(config, sort_keys=False, default_flow_style=False))


def family_switch_warning(
    config_file: dict[str, Any], resolved: dict[str, Any], overrides: list[str]
) -> str | None:
    """A one-line warning when a flag or ``--set`` moved the optimizer to another family (SGD <-> Adam)
    but the learning rates still come from the config file, tuned for the other family (an Adam
    recipe's 1e-3 would crawl under SGD; SGD's 0.1 makes Adam diverge or train badly)."""
    from memsv_cli.optim import optimizer_family

    before, after = config_file["optimizer"]["name"], resolved["optimizer"]["name"]
    try:
        if optimizer_family(before) == optimizer_family(after):
            return None
    except MemsvError:  # an unknown name is reported when the optimizer is built
        return None
    if any(o.split("=", 1)[0].strip().startswith("scheduler.") for o in overrides):
        return None
    sched = resolved["scheduler"]
    return (
        f"optimizer {after} is not of the {optimizer_family(before)} family the config was written for, but "
        f"the learning rates still are (scheduler.initial_lr {sched['initial_lr']:g}, final_lr "
        f"{sched['final_lr']:g}); set them for {after} with --set scheduler.initial_lr=... "
        "--set scheduler.final_lr=... (the recipe's Adam configs use 1e-3 -> 1e-5, SGD 0.1 -> 5e-5)"
    )
