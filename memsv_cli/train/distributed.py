"""torch.distributed set-up for ``torchrun`` (one process per GPU, any number of nodes).

``torchrun`` exports ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; when
``WORLD_SIZE`` > 1 :func:`init_distributed` joins the process group (nccl on CUDA, gloo on CPU) and pins
the process to ``cuda:LOCAL_RANK``. Without them everything runs single-process with the same code.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from memsv_cli.errors import MemsvError


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: global rank, world size, local rank, device, whether DDP is on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    enabled: bool = False

    @property
    def is_main(self) -> bool:
        """Only rank 0 logs, draws progress bars and writes files."""
        return self.rank == 0


def resolve_device(choice: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda:LOCAL_RANK`` when CUDA is available, else CPU; ``cuda`` without CUDA is an error."""
    if choice == "cpu" or (choice == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise MemsvError("--device cuda: CUDA is not available here (use --device cpu or auto)")
    return torch.device("cuda", local_rank)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise MemsvError(f"environment variable {name}={value!r} is not an integer") from None


def init_distributed(device_choice: str = "auto", timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group described by torchrun's environment (no-op when WORLD_SIZE <= 1).

    Args:
        device_choice: ``auto | cpu | cuda``.
        timeout_s: collective timeout (seconds); a rank that dies then fails the others instead of
            leaving them waiting forever.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    device = resolve_device(device_choice, local_rank)
    if world_size <= 1:
        return DistInfo(device=device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend,
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
    return DistInfo(rank, world_size, local_rank, device, True)


def cleanup_distributed(info: DistInfo) -> None:
    """Leave the process group (if this module joined one)."""
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (identity single-process); returns it."""
    if info.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op single-process)."""
    if info.enabled:
        if info.device.type == "cuda":
            dist.barrier(device_ids=[info.device.index])
        else:
            dist.barrier()


def broadcast_object(obj: object, info: DistInfo) -> object:
    """Rank 0's ``obj`` on every rank (for decisions only rank 0 can make, such as a read error)."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: object, info: DistInfo) -> list[object]:
    """Every rank's ``obj``, indexed by rank (collective: call on all ranks)."""
    if not info.enabled:
        return [obj]
    out: list[object] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out
