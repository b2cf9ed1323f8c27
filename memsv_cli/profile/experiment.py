"""The training setup of an experiment dir, as ``profile-memory --exp`` profiles it (issue 14 item 2).

What sets a training step's memory is read from ``EXP/config.yaml`` (the resolved config ``memsv train``
wrote) and, for the number of classes, from the head the run trained (``models/final_model.pt``, else the
newest ``model_N.pt``); before any weights exist the classes are counted from the training dir's
``spk2utt`` (x3 with online speed perturbation, as the trainer does). Accumulation, recomputation chunks,
activation checkpointing and precision are read as trained; the data type changes nothing on the device
(every type hands the step the same fbank batch).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memsv_cli.errors import InputError, MemsvError
from memsv_cli.profile.plan import Recipe
from memsv_cli.profile.step import PRECISIONS
from memsv_cli.train.config import load_yaml

SPEEDS = 3  # online speed perturbation 0.9 / 1.0 / 1.1: a class per speaker and speed


@dataclass(frozen=True)
class ExperimentSetup:
    """The memory-relevant choices of one experiment (per-process micro-batch, as training runs it)."""

    model: str
    batch_size: int
    accum_steps: int
    frames: int
    feat_dim: int
    embed_dim: int
    num_speakers: int
    optimizer: str
    precision: str
    base_width: int
    recompute_chunks: int
    checkpoint_blocks: bool


def _get(config: dict[str, Any], dotted: str, default: Any = None) -> Any:
    node: Any = config
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return default
        node = node[key]
    return default if node is None else node


def _classes_from_weights(models: Path) -> int | None:
    """Rows of the trained AAM head in final_model.pt or the newest model_N.pt; None if none exists."""
    import torch

    numbered = sorted(models.glob("model_*.pt"), key=lambda p: int(re.sub(r"\D", "", p.stem) or 0))
    candidates = [models / "final_model.pt", *reversed(numbered)]
    for path in candidates:
        if path.is_file():
            payload = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
            return int(payload["head"]["weight"].shape[0])
    return None


def _classes_from_data(config: dict[str, Any], exp_dir: Path) -> int:
    data_dir = _get(config, "data.dir")
    if data_dir is None:
        raise MemsvError(
            f"{exp_dir}/config.yaml has no data.dir and the experiment no weights to count classes"
        )
    spk2utt = Path(data_dir) / "spk2utt"
    if not spk2utt.is_file():
        raise InputError(spk2utt, "missing: cannot count the training classes (no trained weights either)")
    speakers = sum(1 for line in spk2utt.read_text(encoding="utf-8").splitlines() if line.strip())
    return speakers * (SPEEDS if _get(config, "data.speed_perturb", False) else 1)


def recipe_from_config(config: dict[str, Any], num_classes: int) -> Recipe:
    """The :class:`~memsv_cli.profile.plan.Recipe` a resolved training config trains (per process)."""
    args = dict(_get(config, "model.args", {}))
    chunks = int(args.pop("recompute_chunks", 1))
    checkpoint_blocks = bool(args.pop("checkpoint_blocks", False))
    return Recipe(
        model=_get(config, "model.name"),
        model_args=args,
        batch_size=int(_get(config, "train.batch_size")),
        accum_steps=int(_get(config, "train.accum_steps", 1)),
        frames=int(_get(config, "data.chunk_frames")),
        num_classes=num_classes,
        optimizer=_get(config, "optimizer.name"),
        optimizer_args=dict(_get(config, "optimizer.args", {})),
        precision=_get(config, "train.precision", "fp32"),
        recompute_chunks=chunks,
        checkpoint_blocks=checkpoint_blocks,
    )


def read_recipe(exp_dir: str | Path) -> Recipe:
    """The recipe ``memsv train`` ran in ``exp_dir`` (see the module docstring)."""
    exp_dir = Path(exp_dir)
    config = load_yaml(exp_dir / "config.yaml")
    precision = _get(config, "train.precision", "fp32")
    if precision not in PRECISIONS:
        raise MemsvError(f"{exp_dir}/config.yaml: unknown precision {precision!r}")
    classes = _classes_from_weights(exp_dir / "models") or _classes_from_data(config, exp_dir)
    return recipe_from_config(config, classes)


def read_experiment(exp_dir: str | Path) -> ExperimentSetup:
    """The setup ``memsv train`` ran in ``exp_dir``, as ``profile-memory`` options."""
    return experiment_setup(read_recipe(exp_dir))


def experiment_setup(r: Recipe) -> ExperimentSetup:
    """A recipe as ``profile-memory`` options."""
    return ExperimentSetup(
        model=r.model,
        batch_size=r.batch_size,
        accum_steps=r.accum_steps,
        frames=r.frames,
        feat_dim=int(r.model_args.get("feat_dim", 80)),
        embed_dim=int(r.model_args.get("embed_dim", 256)),
        num_speakers=r.num_classes,
        optimizer=r.optimizer,
        precision=r.precision,
        base_width=int(r.model_args.get("base_width", 32)),
        recompute_chunks=r.recompute_chunks,
        checkpoint_blocks=r.checkpoint_blocks,
    )
