"""Live tensor-storage tracking: CUDA's "allocated bytes" measured on any device, CPU and meta included.

:class:`StorageTracker` is a ``TorchDispatchMode``: every ATen op, in forward, in the autograd engine's
backward and in ``optimizer.step()``, passes through it, and each new storage an op returns is recorded
with its size and watched through a weak reference, so the moment its last user drops it the bytes leave
the live total. The live total is what ``torch.cuda.memory_allocated()`` reports: the sum of the sizes of
all live storages, each rounded up to the CUDA caching allocator's 512-byte granularity. The same code
runs on real CPU tensors (a measurement) and on fake tensors without data (an estimate from shapes), so the
two can only differ where a CPU kernel and its shape function disagree about what they allocate.

Memory a kernel allocates privately and frees before returning (cuDNN workspaces, oneDNN scratch) is
invisible here, as it is to the saved-tensor view of a model; the CUDA path reports it through the
allocator's own peak.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

# CUDA's caching allocator hands out blocks in multiples of 512 bytes; counting the same way keeps the
# CPU/meta figures comparable with torch.cuda.max_memory_allocated().
CUDA_BLOCK_BYTES = 512


def allocated_bytes(nbytes: int) -> int:
    """Bytes the CUDA caching allocator reserves for a storage of ``nbytes`` (0 stays 0)."""
    return -(-nbytes // CUDA_BLOCK_BYTES) * CUDA_BLOCK_BYTES


@dataclass
class StorageRecord:
    """One storage's life: ``nbytes`` (allocator-rounded) from event ``born`` until event ``died``."""

    nbytes: int
    born: int
    died: int | None = None
    tags: set[str] = field(default_factory=set)

    def alive_at(self, event: int) -> bool:
        return self.born <= event and (self.died is None or self.died > event)


class StorageTracker(TorchDispatchMode):
    """Tracks every live storage created by ATen ops while active, and the peak of their total size.

    Use as a context manager around the work to measure; tensors that existed before (parameters, buffers)
    are added with :meth:`track`. Storages are tagged (:meth:`tag`) with a category so that the live set
    at the peak can be split by category afterwards (:meth:`bytes_at_peak`).
    """

    def __init__(self) -> None:
        super().__init__()
        self._records: dict[int, StorageRecord] = {}  # keyed by id() of the live storage object
        self._refs: dict[int, weakref.ref] = {}
        self._history: list[StorageRecord] = []  # every record since the last reset, freed ones too
        self._event = 0
        self.live_bytes = 0
        self.peak_bytes = 0
        self.peak_event = 0

    # -- recording -------------------------------------------------------------------------------------
    def _record(self, tensor: torch.Tensor) -> StorageRecord:
        storage = tensor.untyped_storage()
        key = id(storage)
        record = self._records.get(key)
        if record is not None:
            return record
        self._event += 1
        record = StorageRecord(allocated_bytes(storage.nbytes()), self._event)
        self._records[key] = record
        self._history.append(record)
        # The storage's Python object lives exactly as long as the C++ storage (PyObject preservation),
        # so this callback fires when the memory would be returned to the allocator.
        self._refs[key] = weakref.ref(storage, lambda _ref, key=key: self._release(key))
        self.live_bytes += record.nbytes
        if self.live_bytes > self.peak_bytes:
            self.peak_bytes = self.live_bytes
            self.peak_event = self._event
        return record

    def _release(self, key: int) -> None:
        record = self._records.pop(key, None)
        self._refs.pop(key, None)
        if record is None:
            return
        self._event += 1
        record.died = self._event
        self.live_bytes -= record.nbytes

    def track(self, tensors: Iterable[torch.Tensor], tag: str | None = None) -> None:
        """Count tensors created outside the tracker (e.g. parameters) as live, optionally tagged."""
        for tensor in tensors:
            record = self._record(tensor)
            if tag is not None:
                record.tags.add(tag)

    def tag(self, tensor: torch.Tensor, tag: str) -> None:
        """Tag the storage behind ``tensor`` (tracking it if it is not tracked yet)."""
        self._record(tensor).tags.add(tag)

    def reset_peak(self) -> None:
        """Start a new measurement window: peak = current live bytes; forget storages already freed."""
        self._history = [r for r in self._history if r.died is None]
        self.peak_bytes = self.live_bytes
        self.peak_event = self._event

    # -- results ---------------------------------------------------------------------------------------
    def bytes_at_peak(self, priority: tuple[str, ...]) -> dict[str, int]:
        """Split the live bytes at the peak by tag; a storage with several tags goes to the first one in
        ``priority``; untagged (or unlisted) storages go to ``"other"``. The values sum to the peak."""
        out = dict.fromkeys((*priority, "other"), 0)
        for record in self._history:
            if record.alive_at(self.peak_event):
                category = next((t for t in priority if t in record.tags), "other")
                out[category] += record.nbytes
        return out

    # -- dispatch --------------------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch protocol
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self._record(leaf)
        return out
