"""Training chunks from ``feats.scp`` + ``utt2spk``: random fixed-length crops, one per utterance per epoch.

Reproducibility: everything random about an epoch (the utterance order and, for every utterance, its
crop start and SpecAugment masks) is drawn up front by :class:`ChunkBatchSampler` from
``(seed, epoch)`` alone, and each sample carries its own seed into the worker. The batches a rank sees
therefore depend on nothing but ``(seed, epoch, rank, world_size)`` - not on the number of DataLoader
workers, their scheduling, or what ran before - which is what makes ``--resume`` exact.

Ark files are opened once per worker process (kaldiio ``fd_dict``) and kept open, not per sample.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import kaldiio
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from memsv_cli.data.ark import ArkReader
from memsv_cli.data.kaldi_dir import c_sorted, read_table, read_utt2spk
from memsv_cli.errors import InputError, MemsvError


def read_feats_scp(path: str | Path) -> dict[str, str]:
    """``feats.scp``: utterance -> ``ark_path:offset``. Relative ark paths that do not exist from the
    current directory are taken relative to the scp's directory (so a moved fbank dir still works)."""
    path = Path(path)
    table = read_table(path)
    out: dict[str, str] = {}
    for utt, spec in table.items():
        ark, sep, offset = spec.rpartition(":")
        if not sep or not offset.isdigit():
            raise InputError(path, f"entry of {utt!r} is not 'ark_path:offset': {spec!r}")
        if not os.path.isabs(ark) and not os.path.exists(ark) and (path.parent / ark).exists():
            ark = str(path.parent / ark)
        out[utt] = f"{ark}:{offset}"
    return out


@dataclass
class TrainingData:
    """The utterances, their ark locations and integer speaker labels of one training data dir.

    Attributes:
        utts: utterance ids in C-locale order.
        arks: ``ark:offset`` per utterance (same order).
        labels: speaker index per utterance; speakers are numbered in C-locale order.
        speakers: speaker ids, index = label.
        feat_dim: feature dimension F (from the first utterance).
    """

    path: Path
    utts: list[str]
    arks: list[str]
    labels: list[int]
    speakers: list[str]
    feat_dim: int = field(default=0)


def load_training_data(data_dir: str | Path) -> TrainingData:
    """Read and check ``feats.scp`` and ``utt2spk`` of a training dir.

    Raises:
        MemsvError / InputError: missing or empty dir/files, feats.scp keys missing from utt2spk,
            fewer than 2 speakers, unreadable first feature matrix.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise MemsvError(f"{data_dir}: no such data directory")
    scp, u2s = data_dir / "feats.scp", data_dir / "utt2spk"
    for f in (scp, u2s):
        if not f.is_file():
            raise InputError(
                f, "no such file (a training dir needs feats.scp and utt2spk: run extract-fbank)"
            )
    feats = read_feats_scp(scp)
    if not feats:
        raise InputError(scp, "empty: no utterances to train on")
    utt2spk = read_utt2spk(u2s)
    missing = [u for u in feats if u not in utt2spk]
    if missing:
        raise InputError(scp, f"{len(missing)} utterance(s) missing from {u2s}, first {missing[0]!r}")
    utts = c_sorted(feats)
    speakers = c_sorted({utt2spk[u] for u in utts})
    if len(speakers) < 2:
        raise InputError(u2s, f"only {len(speakers)} speaker(s); speaker training needs at least 2")
    index = {s: i for i, s in enumerate(speakers)}
    data = TrainingData(data_dir, utts, [feats[u] for u in utts], [index[utt2spk[u]] for u in utts], speakers)
    try:
        first = kaldiio.load_mat(data.arks[0])
    except Exception as err:
        raise InputError(scp, f"cannot read features of {utts[0]!r} ({type(err).__name__}: {err})") from None
    if first.ndim != 2 or first.shape[0] == 0:
        raise InputError(scp, f"features of {utts[0]!r} have shape {first.shape}, expected (frames, dims)")
    data.feat_dim = int(first.shape[1])
    return data


@dataclass(frozen=True)
class SpecAugment:
    """Time and frequency masking (Park et al. 2019) with WeSpeaker's parameters; masks set to 0."""

    prob: float = 0.6
    num_t_mask: int = 1
    num_f_mask: int = 1
    max_t: int = 10
    max_f: int = 8

    def __call__(self, feats: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Mask ``feats`` (T, F) in place with probability ``prob``; returns it."""
        if rng.random() >= self.prob:
            return feats
        frames, dims = feats.shape
        for _ in range(self.num_t_mask):
            width = int(rng.integers(1, self.max_t + 1))
            start = int(rng.integers(0, max(1, frames - width)))
            feats[start : start + width, :] = 0.0
        for _ in range(self.num_f_mask):
            width = int(rng.integers(1, self.max_f + 1))
            start = int(rng.integers(0, max(1, dims - width)))
            feats[:, start : start + width] = 0.0
        return feats


def crop_chunk(feats: np.ndarray, chunk_frames: int, rng: np.random.Generator) -> np.ndarray:
    """A random ``chunk_frames``-long crop of ``feats`` (T, F); shorter utterances are tiled (wrapped)
    first, as WeSpeaker pads them. Returns a new (chunk_frames, F) float32 array."""
    frames = feats.shape[0]
    if frames < chunk_frames:
        feats = np.pad(feats, ((0, chunk_frames - frames), (0, 0)), mode="wrap")
        frames = chunk_frames
    start = int(rng.integers(0, frames - chunk_frames + 1))
    return np.array(feats[start : start + chunk_frames], dtype=np.float32)


class ChunkDataset(Dataset):
    """Map-style dataset indexed by ``(utterance_index, sample_seed)`` pairs (see :class:`ChunkBatchSampler`).

    Returns ``(chunk, label)``: chunk (chunk_frames, F) float32, mean-normalised over time per chunk,
    optionally SpecAugmented; label a Python int.
    """

    def __init__(
        self, data: TrainingData, chunk_frames: int = 200, spec_aug: SpecAugment | None = None
    ) -> None:
        self.data, self.chunk_frames, self.spec_aug = data, chunk_frames, spec_aug
        self._reader = ArkReader(data.path / "feats.scp")

    def __len__(self) -> int:
        return len(self.data.utts)

    def _load(self, index: int) -> np.ndarray:
        return self._reader.load(self.data.arks[index], self.data.utts[index])

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, sample_seed = item
        rng = np.random.default_rng(sample_seed)
        chunk = crop_chunk(self._load(index), self.chunk_frames, rng)
        chunk -= chunk.mean(axis=0, keepdims=True)  # per-chunk cepstral mean normalisation
        if self.spec_aug is not None:
            chunk = self.spec_aug(chunk, rng)
        return torch.from_numpy(chunk), self.data.labels[index]

    def close(self) -> None:
        self._reader.close()


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
