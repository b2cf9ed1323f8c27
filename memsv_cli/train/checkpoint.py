"""Checkpoint files: the contract between ``train``, ``extract-embeddings`` and ``profile-memory``.

Every checkpoint is a ``dict`` saved with :func:`torch.save`, written atomically:

- ``models/epoch_N.pt`` (training state, resumable): ``format_version``, ``model`` (embedding model
  state_dict), ``head`` (classifier state_dict), ``optimizer`` (incl. 8-bit states), ``schedulers``,
  ``rng`` (torch / numpy / python / cuda RNG states), ``epoch``, ``step``, ``config`` (resolved dict);
- ``models/avg_model.pt`` (inference): ``format_version``, ``model``, ``config``, ``averaged_epochs``.

``config["model"]`` is ``{"name": <get_model name>, "args": {<get_model kwargs>}}``; building the model
from it is :func:`build_model`. Loading never needs the training code or the data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from memsv_cli.atomic import atomic_path
from memsv_cli.errors import MemsvError

FORMAT_VERSION = 1


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Save ``payload`` (plus ``format_version``) to ``path`` atomically."""
    payload = {"format_version": FORMAT_VERSION, **payload}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a memsv checkpoint dict, with a one-line error for a missing or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise MemsvError(f"{path}: no such checkpoint")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # corrupt / truncated / not a torch file
        raise MemsvError(f"{path}: not a readable checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(payload, dict) or "model" not in payload or "config" not in payload:
        raise MemsvError(f"{path}: not a memsv checkpoint (needs 'model' and 'config' entries)")
    version = payload.get("format_version", 0)
    if version > FORMAT_VERSION:
        raise MemsvError(
            f"{path}: checkpoint format {version} is newer than this memsv ({FORMAT_VERSION}); upgrade memsv"
        )
    return payload


def build_model(config: dict[str, Any]) -> torch.nn.Module:
    """Build the embedding model described by ``config["model"]`` (``name`` and ``args``)."""
    from memsv_cli.models import get_model

    model_cfg = config.get("model") or {}
    if "name" not in model_cfg:
        raise MemsvError("config has no model.name")
    return get_model(model_cfg["name"], **(model_cfg.get("args") or {}))


def load_model_from_checkpoint(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Build the model from the checkpoint's config, load its weights, return ``(model.eval(), config)``."""
    payload = load_checkpoint(path)
    model = build_model(payload["config"])
    missing, unexpected = model.load_state_dict(payload["model"], strict=False)
    if missing or unexpected:
        raise MemsvError(
            f"{path}: weights do not match model {payload['config']['model']['name']!r} "
            f"({len(missing)} missing, {len(unexpected)} unexpected keys)"
        )
    return model.to(device).eval(), payload["config"]
