"""Checkpoint averaging (WeSpeaker ``average_model.py``): mean of the last N epochs' model weights.

Reads the per-epoch weights-only ``model_N.pt`` (or memsv 0.1's full ``epoch_N.pt``). Floating-point
tensors (weights and BatchNorm running statistics) are averaged in float64 and cast back; integer
buffers (``num_batches_tracked``) take the newest checkpoint's value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from memsv_cli.errors import MemsvError
from memsv_cli.train.checkpoint import epoch_models, load_checkpoint, save_checkpoint


def average_state_dicts(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Element-wise mean of model state dicts with identical keys and shapes."""
    if not states:
        raise ValueError("nothing to average")
    keys = list(states[-1])
    out: dict[str, torch.Tensor] = {}
    for key in keys:
        tensors = [s[key] for s in states]
        if any(t.shape != tensors[-1].shape for t in tensors):
            raise MemsvError(f"cannot average: {key!r} has different shapes across checkpoints")
        if tensors[-1].is_floating_point():
            total = torch.zeros_like(tensors[-1], dtype=torch.float64)
            for t in tensors:
                total += t.to(torch.float64)
            out[key] = (total / len(tensors)).to(tensors[-1].dtype)
        else:
            out[key] = tensors[-1].clone()
    return out


def average_checkpoints(
    models_dir: str | Path,
    dst: str | Path | None = None,
    num: int = 10,
    min_epoch: int | None = None,
    max_epoch: int | None = None,
) -> tuple[Path, list[int]]:
    """Average the last ``num`` epoch checkpoints in ``min_epoch..max_epoch`` into ``dst``.

    Args:
        models_dir: folder with ``model_N.pt`` (or ``epoch_N.pt``).
        dst: output file (default ``models_dir/avg_model.pt``), written atomically with ``model``,
            ``config`` (of the newest checkpoint), ``averaged_epochs`` and (when every checkpoint has
            one) the averaged AAM-softmax ``head``.
        num: how many of the newest checkpoints to average (fewer if fewer exist).
        min_epoch, max_epoch: optional inclusive epoch range.
    Returns:
        (dst path, averaged epochs).
    """
    if num < 1:
        raise MemsvError(f"--num must be >= 1, got {num}")
    found = {
        e: p
        for e, p in epoch_models(models_dir).items()
        if (min_epoch is None or e >= min_epoch) and (max_epoch is None or e <= max_epoch)
    }
    if not found:
        raise MemsvError(f"{models_dir}: no model_N.pt (or epoch_N.pt) checkpoints to average")
    epochs = list(found)[-num:]
    # One checkpoint in memory at a time: training checkpoints also hold optimizer states.
    states, heads, config, names, step = [], [], None, set(), None
    for e in epochs:
        payload = load_checkpoint(found[e])
        states.append(payload["model"])
        if payload.get("head") is not None:
            heads.append(payload["head"])
        config, step = payload["config"], payload.get("step")
        names.add(config["model"]["name"])
        del payload
    if len(names) > 1:
        raise MemsvError(f"{models_dir}: checkpoints of different models {sorted(names)} cannot be averaged")
    model = average_state_dicts(states)
    dst = Path(dst) if dst is not None else Path(models_dir) / "avg_model.pt"
    payload: dict[str, Any] = {
        "model": model,
        "config": config,
        "epoch": epochs[-1],
        "step": step,
        "averaged_epochs": epochs,
    }
    if len(heads) == len(states):  # the classifier too, so that fine-tuning can start from it
        payload["head"] = average_state_dicts(heads)
    save_checkpoint(dst, payload)
    return dst, epochs
