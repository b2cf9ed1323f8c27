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
from pathlib import Path
from typing import Any

import yaml

from memsv_cli.atomic import write_text_atomic
from memsv_cli.errors import InputError, MemsvError

DEFAULTS: dict[str, Any] = {
    "seed": 42,
    "data": {
        "dir": None,  # training dir (feats.scp + utt2spk); set by --data
        "chunk_frames": 200,  # frames per training chunk (10 ms each)
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
        "batch_size": 128,  # per process (per GPU), as in WeSpeaker
        "num_workers": 2,
        "precision": "fp32",  # fp32 | bf16 | fp16
        "device": "auto",  # auto | cpu | cuda
        "grad_clip": None,  # max global L2 norm of the gradients, or null for none
        "num_avg": 10,  # models/avg_model.pt averages the last num_avg epoch checkpoints
        "log_interval": 100,  # steps between train.log / metrics.jsonl step records
        "progress": True,  # rich progress bar on rank 0
        # Start from these weights (a models/avg_model.pt or epoch_N.pt; WeSpeaker's model_init), e.g.
        # for large-margin fine-tuning. The head is taken too when the checkpoint has a matching one.
        "init_model": None,
        "dist_timeout_s": 1800,  # torch.distributed collective timeout: a dead rank fails the others
    },
}

# Sections whose keys are constructor arguments, not part of the schema.
FREE_FORM: tuple[str, ...] = ("model.args", "optimizer.args", "data.spec_aug_args")

# Keys that may differ between an interrupted run and its ``--resume`` without changing the result
# (or only where the user asked for it, such as where the data now lives).
RUNTIME_KEYS: tuple[str, ...] = (
    "data.dir",
    "train.num_workers",
    "train.log_interval",
    "train.progress",
    "train.device",
    "train.dist_timeout_s",
)

# When a config file or override changes ``model.name`` / ``optimizer.name``, the inherited ``args``
# keep only these (valid for every model / optimizer); e.g. SGD's ``momentum`` must not reach Adam.
KEPT_ON_SWITCH: dict[str, tuple[str, ...]] = {
    "model": ("feat_dim", "embed_dim", "base_width"),
    "optimizer": ("weight_decay",),
}

PRECISIONS = ("fp32", "bf16", "fp16")


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
            kept = KEPT_ON_SWITCH[key]
            out[key] = {
                **out[key],
                "args": {k: v for k, v in (out[key].get("args") or {}).items() if k in kept},
            }
        if isinstance(out.get(key), dict) and isinstance(value, dict):
            out[key] = merge(out[key], value, source=source, prefix=f"{dotted}.")
        elif isinstance(out.get(key), dict) and not _is_free_form(dotted) and value is not None:
            raise MemsvError(f"{source}: config key {dotted!r} must be a mapping, got {value!r}")
        else:
            out[key] = copy.deepcopy(value)
    return out


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
    config = copy.deepcopy(base if base is not None else DEFAULTS)
    if path is not None:
        config = merge(config, load_yaml(path), source=str(path))
    for text in overrides:
        config = apply_override(config, text)
    validate(config)
    return config


def validate(config: dict[str, Any]) -> None:
    """Check value types and ranges that would otherwise fail deep inside training."""

    def need(ok: bool, key: str, what: str) -> None:
        if not ok:
            raise MemsvError(f"config key {key!r} {what}")

    train, sched, margin = config["train"], config["scheduler"], config["margin_scheduler"]
    need(isinstance(config["seed"], int), "seed", "must be an integer")
    need(isinstance(config["model"].get("name"), str), "model.name", "must be a model name")
    need(isinstance(config["model"].get("args") or {}, dict), "model.args", "must be a mapping")
    need(isinstance(config["optimizer"].get("name"), str), "optimizer.name", "must be an optimizer name")
    need(isinstance(config["optimizer"].get("args") or {}, dict), "optimizer.args", "must be a mapping")
    for key in ("epochs", "batch_size"):
        need(isinstance(train[key], int) and train[key] >= 1, f"train.{key}", "must be an integer >= 1")
    for key in ("num_workers", "num_avg", "log_interval"):
        need(isinstance(train[key], int) and train[key] >= 0, f"train.{key}", "must be an integer >= 0")
    need(
        train["init_model"] is None or isinstance(train["init_model"], str),
        "train.init_model",
        "must be a checkpoint path or null",
    )
    need(
        _is_number(train["dist_timeout_s"]) and train["dist_timeout_s"] > 0,
        "train.dist_timeout_s",
        "must be > 0",
    )
    need(train["precision"] in PRECISIONS, "train.precision", f"must be one of {', '.join(PRECISIONS)}")
    need(train["device"] in DEVICES, "train.device", f"must be one of {', '.join(DEVICES)}")
    need(
        train["grad_clip"] is None or (_is_number(train["grad_clip"]) and train["grad_clip"] > 0),
        "train.grad_clip",
        "must be a positive number or null",
    )
    chunk = config["data"]["chunk_frames"]
    need(isinstance(chunk, int) and chunk >= 8, "data.chunk_frames", "must be an integer >= 8")
    need(config["head"]["name"] == "aam_softmax", "head.name", "must be 'aam_softmax'")
    need(_is_number(config["head"]["scale"]) and config["head"]["scale"] > 0, "head.scale", "must be > 0")
    need(sched["name"] == "exponential_decrease", "scheduler.name", "must be 'exponential_decrease'")
    for key in ("initial_lr", "final_lr"):
        need(_is_number(sched[key]) and sched[key] > 0, f"scheduler.{key}", "must be a number > 0")
    need(
        _is_number(sched["warm_up_epochs"]) and sched["warm_up_epochs"] >= 0,
        "scheduler.warm_up_epochs",
        "must be >= 0",
    )
    need(margin["increase_type"] in ("exp", "linear"), "margin_scheduler.increase_type", "must be exp|linear")
    need(
        _is_number(margin["increase_start_epoch"])
        and _is_number(margin["fix_start_epoch"])
        and margin["fix_start_epoch"] >= margin["increase_start_epoch"] >= 0,
        "margin_scheduler.fix_start_epoch",
        "must be >= increase_start_epoch >= 0",
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


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
