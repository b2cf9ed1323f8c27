"""Checkpoint files: the one contract between ``train``, ``average-model``, ``extract-embeddings`` and
``profile-memory``. Every checkpoint is a ``dict`` saved with :func:`torch.save`, written atomically
(temporary name, fsync, rename), so a file under a final name is always complete.

Files in ``EXP/models/``:

- ``checkpoint_<step>.pt`` (full, resumable; ``<step>`` = optimizer steps done, 8 digits): written at
  every epoch end and every ``train.save_every_minutes`` / ``train.save_every_steps``, or when a stop
  signal arrives; the newest ``train.keep_checkpoints`` are kept. ``last.pt`` is a symbolic link to
  the newest.
- ``model_<N>.pt`` (weights only, for averaging and embeddings; N = 1-based epoch), WeSpeaker's name;
  ``final_model.pt`` links to the last epoch's once the run is complete.
- ``avg_model.pt`` (weights only): the mean of the last ``train.num_avg`` ``model_<N>.pt``.
- ``epoch_<N>.pt``: full checkpoints of memsv 0.1 (format 1), still read for resuming and averaging.

Keys of a full checkpoint (``FULL_KEYS``, format 2):

- ``format_version``: int, :data:`FORMAT_VERSION`
- ``kind``: ``"full"``
- ``model``: embedding model ``state_dict``
- ``head``: AAM-softmax head ``state_dict``
- ``optimizer``: optimizer ``state_dict`` (8-bit codes and absmax included)
- ``grad_scaler``: ``GradScaler.state_dict()`` (``{}`` when fp16 is off)
- ``schedulers``: ``{"lr": ..., "margin": ...}`` scheduler states
- ``sampler``: ``{"seed", "epoch", "step_in_epoch"}``, where the next batch comes from
- ``epoch_stats``: float64 ``(7,)``, the epoch's ``(loss * n, correct, n)`` sums so far, those since
  the last step record, and the unreadable samples skipped (a resumed epoch reports as an uninterrupted
  one)
- ``rng``: one dict per rank, index = rank: ``torch``, ``numpy``, ``python`` (and ``cuda``) states
- ``epoch``: completed epochs (the epoch in progress is this one, 0-based)
- ``step``: completed optimizer steps (global)
- ``steps_per_epoch``: optimizer steps of one epoch when written
- ``micro_batches``: ``world_size * accum_steps``, the micro-batches of one step when written
- ``config``: the resolved training config (``dict``)
- ``speakers``: training speaker ids, index = class label

DataLoader workers need no saved state: every random choice in a worker comes from the sample's own
seed, drawn from ``(seed, epoch)`` by the sampler (``memsv_cli.data.dataset``).

Keys of a weights-only file (``WEIGHTS_KEYS``; ``avg_model.pt`` adds ``averaged_epochs``):

- ``format_version``: int
- ``kind``: ``"weights"``
- ``model``: embedding model ``state_dict``
- ``head``: AAM-softmax head ``state_dict``
- ``config``: the resolved training config
- ``epoch``: completed epochs
- ``step``: completed optimizer steps

``config["model"]`` is ``{"name": <get_model name>, "args": {<get_model kwargs>}}``; building the model
from it is :func:`build_model`. Loading never needs the training code or the data.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from memsv_cli.atomic import atomic_path
from memsv_cli.errors import MemsvError

FORMAT_VERSION = 2
FULL_KEYS = (
    "format_version",
    "kind",
    "model",
    "head",
    "optimizer",
    "grad_scaler",
    "schedulers",
    "sampler",
    "epoch_stats",
    "rng",
    "epoch",
    "step",
    "steps_per_epoch",
    "micro_batches",
    "config",
    "speakers",
)
WEIGHTS_KEYS = ("format_version", "kind", "model", "head", "config", "epoch", "step")

LAST = "last.pt"
FINAL = "final_model.pt"
_FULL_RE = re.compile(r"^checkpoint_(\d+)\.pt$")
_LEGACY_RE = re.compile(r"^epoch_(\d+)\.pt$")
_MODEL_RE = re.compile(r"^model_(\d+)\.pt$")


class CheckpointWriteError(MemsvError):
    """A checkpoint could not be written (disk full, permissions); the previous one is intact."""


# ---------------------------------------------------------------------------------------------------
# writing


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system can sync a directory
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_checkpoint(path: str | Path, payload: dict[str, Any], previous: Path | None = None) -> Path:
    """Save ``payload`` to ``path`` atomically and durably (data synced before the rename).

    Raises:
        CheckpointWriteError: on an OS error (e.g. disk full); no partial file is left, and the
            message names ``previous``, which stays usable.
    """
    path = Path(path)
    try:
        # through a Python file object: a failed write (disk full) then raises OSError with its errno,
        # where torch's own file writer raises an opaque RuntimeError
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(path.parent)
    except OSError as err:
        kept = f"{previous} is still usable (--resume continues from it)" if previous else "nothing was kept"
        raise CheckpointWriteError(f"could not write {path}: {err.strerror or err}; {kept}") from None
    return path


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Save a weights-only payload (``model``, ``config``, ...) with ``format_version``, atomically."""
    write_checkpoint(path, {"format_version": FORMAT_VERSION, "kind": "weights", **payload})


def point_link(link: Path, target: Path) -> None:
    """Make ``link`` a relative symbolic link to ``target`` (same folder), replaced atomically."""
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(target.name, tmp)
    os.replace(tmp, link)


# ---------------------------------------------------------------------------------------------------
# finding and reading


def full_checkpoints(models_dir: str | Path) -> dict[int, Path]:
    """``{step: path}`` of the resumable checkpoints, oldest first; memsv 0.1's ``epoch_N.pt`` are
    listed under ``-N`` (their step is inside), after which any ``checkpoint_<step>.pt`` is newer."""
    return _scan(models_dir, {_FULL_RE: 1, _LEGACY_RE: -1})


def epoch_models(models_dir: str | Path) -> dict[int, Path]:
    """``{epoch: path}`` of the per-epoch weights, ``model_N.pt`` or (memsv 0.1) ``epoch_N.pt``."""
    legacy = _scan(models_dir, {_LEGACY_RE: 1})
    return dict(sorted({**legacy, **_scan(models_dir, {_MODEL_RE: 1})}.items()))


def _scan(models_dir: str | Path, patterns: dict[re.Pattern, int]) -> dict[int, Path]:
    models_dir = Path(models_dir)
    found: dict[int, Path] = {}
    if models_dir.is_dir():
        for p in models_dir.iterdir():
            for pattern, sign in patterns.items():
                m = pattern.match(p.name)
                if m:
                    found[sign * int(m.group(1))] = p
    # legacy (negative) keys first, so that any format-2 checkpoint counts as newer
    return dict(sorted(found.items(), key=lambda kv: (kv[0] >= 0, abs(kv[0]))))


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
    return _upgrade(payload)


def _upgrade(payload: dict[str, Any]) -> dict[str, Any]:
    """A format-1 ``epoch_N.pt`` in format-2 terms (it was written at an epoch end)."""
    if payload.get("format_version", 0) >= 2 or "optimizer" not in payload:
        return payload
    sch = dict(payload.get("schedulers") or {})
    sampler = sch.pop("sampler", {"seed": payload["config"]["seed"], "epoch": payload["epoch"]})
    return {
        **payload,
        "kind": "full",
        "grad_scaler": sch.pop("grad_scaler", None) or {},
        "schedulers": sch,
        "sampler": {**sampler, "epoch": payload["epoch"], "step_in_epoch": 0},
        "epoch_stats": None,
        "steps_per_epoch": None,
        "micro_batches": None,
    }


def newest_loadable(models_dir: str | Path, warn: Any = print) -> tuple[Path, dict[str, Any]] | None:
    """The newest full checkpoint that loads, and its payload; an unreadable one (a disk that lied
    about a completed write) is reported through ``warn`` and the next older one is tried."""
    for path in reversed(list(full_checkpoints(models_dir).values())):
        try:
            return path, load_checkpoint(path)
        except MemsvError as err:
            warn(f"skipping {path}: {err}")
    return None


# ---------------------------------------------------------------------------------------------------
# retention


def prune(models_dir: str | Path, keep_full: int, keep_models: int | None) -> list[Path]:
    """Delete all but the newest ``keep_full`` full checkpoints (and, when ``keep_models`` is set, all
    but the newest ``keep_models`` ``model_N.pt``); returns the deleted paths. memsv 0.1's
    ``epoch_N.pt`` are never deleted (they also serve as that run's per-epoch weights)."""
    full = [p for k, p in full_checkpoints(models_dir).items() if k >= 0]
    doomed = full[: max(0, len(full) - keep_full)]
    if keep_models is not None:
        models = list(_scan(models_dir, {_MODEL_RE: 1}).values())
        doomed += models[: max(0, len(models) - keep_models)]
    for p in doomed:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    return doomed


def disk_use(path: str | Path) -> int:
    """Bytes of the regular files under ``path`` (links not followed)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(root, name))
                if not os.path.islink(os.path.join(root, name)):
                    total += st.st_size
    return total


# ---------------------------------------------------------------------------------------------------
# RNG


def capture_rng() -> dict[str, Any]:
    """This process's RNG states: torch CPU, numpy and python (and every CUDA device's)."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(states: list[dict[str, Any]], rank: int) -> None:
    """Set this process's RNG to rank ``rank``'s saved states (rank 0's if the run had fewer ranks)."""
    state = states[rank] if rank < len(states) else states[0]
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------------
# models


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
