"""The epoch plan of map-style training data (feat, raw): which items each rank trains on, in which
micro-batches, each with its own random seed.

Reproducibility: everything random about an epoch (the order and, for every item, the seed that drives
its crop, speed, augmentation, dither and SpecAugment) is drawn up front by :class:`ChunkBatchSampler`
from ``(seed, epoch)`` alone, and each sample carries its own seed into the worker. The batches a rank
sees therefore depend on nothing but ``(seed, epoch, rank, world_size, accum_steps)`` - not on the number
of DataLoader workers, their scheduling, or what ran before - which is what makes ``--resume`` exact.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Protocol

import numpy as np
from torch.utils.data import Sampler

from memsv_cli.errors import MemsvError


class EpochPlan(Protocol):
    """What the trainer needs of an epoch's plan (:class:`ChunkBatchSampler`, or the shard stream)."""

    seed: int
    epoch: int
    start_step: int
    rank: int
    accum_steps: int

    @property
    def steps_per_epoch(self) -> int: ...

    @property
    def slots(self) -> int: ...

    def set_epoch(self, epoch: int, start_step: int = 0) -> None: ...


class ChunkBatchSampler(Sampler[list[tuple[int, int]]]):
    """Per-epoch shuffled, rank-sharded micro-batches of ``(utterance_index, sample_seed)``.

    The epoch's permutation and per-utterance seeds come from ``numpy.random.default_rng([seed, epoch])``
    and are identical on every rank. With W ranks and A micro-batches per optimizer step
    (``accum_steps``) there are ``W * A`` *slots*: slot ``s`` takes positions ``s, s + W*A, ...`` of the
    permutation (padded by wrapping so every slot gets the same count), rank r owns slots
    ``r*A .. r*A + A - 1`` and yields, for each step, one micro-batch of each of its slots in order. So
    one process with ``accum_steps=2`` sees exactly the micro-batches two DDP processes see. Only full
    batches are used: all ranks run the same number of steps (DDP needs that) and BatchNorm never sees
    a batch of 1.

    Args:
        num_items: utterances in the dataset (N).
        batch_size: per micro-batch.
        seed: base seed of the run.
        rank, world_size: this process's shard.
        accum_steps: micro-batches per optimizer step (A).
    """

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        accum_steps: int = 1,
    ) -> None:
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.rank, self.world_size, self.accum_steps = rank, world_size, accum_steps
        self.epoch, self.start_step = 0, 0
        if self.steps_per_epoch == 0:
            raise MemsvError(
                f"{num_items} utterances over {world_size} process(es) x {accum_steps} micro-batch(es) "
                f"do not fill one batch of {batch_size}: lower train.batch_size"
            )

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Select the epoch (0-based) and the optimizer step within it (0-based) to start from."""
        self.epoch, self.start_step = epoch, start_step

    @property
    def slots(self) -> int:
        """Micro-batches of one optimizer step over all ranks (``world_size * accum_steps``)."""
        return self.world_size * self.accum_steps

    @property
    def per_slot(self) -> int:
        return math.ceil(self.num_items / self.slots)

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps in one epoch."""
        return self.per_slot // self.batch_size

    def __len__(self) -> int:
        """Micro-batches this rank yields from the start step to the end of the epoch."""
        return (self.steps_per_epoch - self.start_step) * self.accum_steps

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(self.num_items)
        seeds = rng.integers(0, 2**63 - 1, size=self.num_items, dtype=np.int64)
        padded = np.resize(order, self.per_slot * self.slots)  # wraps: the first few appear twice
        mine = [
            padded[s :: self.slots]
            for s in range(self.rank * self.accum_steps, (self.rank + 1) * self.accum_steps)
        ]
        for b in range(self.start_step, self.steps_per_epoch):
            for slot in mine:
                idx = slot[b * self.batch_size : (b + 1) * self.batch_size]
                yield [(int(i), int(seeds[i])) for i in idx]

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "epoch": self.epoch, "step_in_epoch": self.start_step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seed, self.epoch = int(state["seed"]), int(state["epoch"])
        self.start_step = int(state.get("step_in_epoch", 0))
