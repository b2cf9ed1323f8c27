"""Tar-shard training data (``data.type: shard``): shards read sequentially, a shuffle buffer, the
online chain, and an epoch plan that resumes exactly in the middle of an epoch.

The epoch of rank r is one deterministic *stream* of utterances: the shard list permuted by
``(seed, epoch)``, every ``world_size``-th shard from r, block-shuffled in buffers of
``data.shuffle_buffer`` (WeSpeaker's shuffle: fill, shuffle, emit) by a generator seeded from
``(seed, epoch, rank)``; if a rank's shards hold fewer utterances than its share of the epoch, further
reordered passes follow (WeSpeaker repeats its data too). Sample k
of the stream is processed with a generator seeded from ``(seed, epoch, rank, k)``; micro-batch j is
samples ``jB .. jB + B - 1``. An epoch has ``num_utterances // (world_size * accum_steps * B)``
optimizer steps, one pass over the original utterances.

DataLoader worker w of W computes micro-batches ``j0 + w, j0 + w + W, ...`` (``j0``: where the epoch
resumes), so the DataLoader's round robin returns them in order and a micro-batch's content depends on j
alone, not on which worker made it or how many there are. Each worker walks the whole stream but reads
the audio of its own samples only: the stream is a list of (shard, offset, size) taken from the tar
headers (the member data is skipped by seeking), so replaying it to resume costs header reads, no
decoding.

Why not webdataset: its shuffle and worker split draw from their own random state and cannot skip to a
given micro-batch without decoding what comes before; the standard library's ``tarfile`` gives the
member offsets directly (docs/design.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from memsv_cli.data.kaldi_dir import c_sorted, read_table
from memsv_cli.data.online import crop
from memsv_cli.data.raw import BadItem, ChunkBatch, collate_chunks, speakers_and_labels
from memsv_cli.data.shards import decode_wav, read_shard_list, wav_members
from memsv_cli.data.waveform import WaveformChain
from memsv_cli.errors import InputError, MemsvError

_BUFFER_TAG = 0x5EED  # separates the buffer's generator from the samples' (both start from the seed)


@dataclass(frozen=True)
class Member:
    """One utterance in a shard: its key and where its WAV bytes are (byte offset, size)."""

    shard: int
    key: str
    offset: int
    size: int


@dataclass
class ShardData:
    """A make-shards output dir: the shards, and every key's label (speakers in C order)."""

    path: Path
    shards: list[Path]
    labels: dict[str, int]
    speakers: list[str]

    @property
    def num_items(self) -> int:
        """Training samples per epoch: one per utterance (``utt2spk`` of the shards)."""
        return len(self.labels)


def load_shard_data(data_dir: str | Path) -> ShardData:
    """Read ``shard.list`` and ``utt2spk`` of a ``memsv make-shards`` output dir."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise MemsvError(f"{data_dir}: no such data directory")
    listing, u2s = data_dir / "shard.list", data_dir / "utt2spk"
    for f in (listing, u2s):
        if not f.is_file():
            raise InputError(f, "no such file (data.type shard needs a `memsv make-shards` output dir)")
    shards = read_shard_list(listing)
    utts = c_sorted(read_table(u2s))
    speakers, labels = speakers_and_labels(u2s, utts)
    return ShardData(data_dir, shards, dict(zip(utts, labels, strict=True)), speakers)


def index_shard(shard: int, path: Path) -> list[Member]:
    """The ``.wav`` members of a tar shard in file order, from its headers alone (data is seeked over).
    A damaged shard keeps the members before the damage and gets one unreadable member for it."""
    try:
        found, damage = wav_members(path)
    except MemsvError as err:
        found, damage = [], str(err)
    members = [Member(shard, key, offset, size) for key, offset, size in found]
    if damage is not None:  # counted as one bad sample, like WeSpeaker's per-member warning
        members.append(Member(shard, f"{path.name}: {damage}", -1, 0))
    return members


def block_shuffle(items: Iterator[Member], size: int, rng: np.random.Generator) -> Iterator[Member]:
    """WeSpeaker's shuffle: fill a buffer of ``size``, emit it permuted, repeat."""
    buffer: list[Member] = []
    for item in items:
        buffer.append(item)
        if len(buffer) == size:
            yield from (buffer[i] for i in rng.permutation(size))
            buffer = []
    yield from (buffer[i] for i in rng.permutation(len(buffer)))


class ShardStream(IterableDataset):
    """Yields whole micro-batches (:class:`~memsv_cli.data.raw.ChunkBatch`); use ``batch_size=None``.

    Args:
        data: the shards and labels.
        chain: the online processing of one sample.
        batch_size: samples per micro-batch (B).
        seed: the run's seed.
        rank, world_size, accum_steps: this process's share (as the map-style sampler).
        shuffle_buffer: samples per shuffle block.
    """

    def __init__(
        self,
        data: ShardData,
        chain: WaveformChain,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        accum_steps: int = 1,
        shuffle_buffer: int = 2500,
    ) -> None:
        self.data, self.chain, self.batch_size, self.seed = data, chain, batch_size, seed
        self.rank, self.world_size, self.accum_steps = rank, world_size, accum_steps
        self.shuffle_buffer = shuffle_buffer
        self.epoch, self.start_step = 0, 0
        self._index: dict[int, list[Member]] = {}
        if self.steps_per_epoch == 0:
            raise MemsvError(
                f"{data.num_items} utterances over {world_size} process(es) x {accum_steps} micro-batch(es) "
                f"do not fill one batch of {batch_size}: lower train.batch_size"
            )

    # -- the epoch plan (the same interface as ChunkBatchSampler) ---------------------------------
    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = epoch, start_step

    @property
    def slots(self) -> int:
        return self.world_size * self.accum_steps

    @property
    def steps_per_epoch(self) -> int:
        return self.data.num_items // (self.slots * self.batch_size)

    def __len__(self) -> int:
        """Micro-batches this rank yields from the start step to the end of the epoch."""
        return (self.steps_per_epoch - self.start_step) * self.accum_steps

    # -- the stream ---------------------------------------------------------------------------------
    def _members(self, shard: int) -> list[Member]:
        if shard not in self._index:
            self._index[shard] = index_shard(shard, self.data.shards[shard])
        return self._index[shard]

    def _rank_pass(self, cycle: int) -> Iterator[Member]:
        """One pass over this rank's shards in this epoch's order (``cycle`` > 0: repeats, reordered)."""
        n = len(self.data.shards)
        order = np.random.default_rng([self.seed, self.epoch, cycle]).permutation(n)
        mine = order[self.rank :: self.world_size] if n >= self.world_size else order[[self.rank % n]]
        for shard in mine:
            yield from self._members(int(shard))

    def stream(self) -> Iterator[Member]:
        """This rank's samples of the epoch, in training order (``len = micro-batches x B``): one pass
        over its shards, block-shuffled; further (reordered) passes only if a rank's shards hold fewer
        utterances than its share of the epoch."""
        total = self.steps_per_epoch * self.accum_steps * self.batch_size
        k, cycle = 0, 0
        while k < total:
            rng = np.random.default_rng([self.seed, self.epoch, self.rank, _BUFFER_TAG, cycle])
            for member in block_shuffle(self._rank_pass(cycle), self.shuffle_buffer, rng):
                if k == total:
                    return
                yield member
                k += 1
            cycle += 1

    def __iter__(self) -> Iterator[ChunkBatch]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        first = self.start_step * self.accum_steps
        batch: list[tuple[int, Member]] = []
        for k, member in enumerate(self.stream()):
            j = k // self.batch_size
            if j >= first and (j - first) % workers == worker:
                batch.append((k, member))
                if len(batch) == self.batch_size:
                    yield collate_chunks([self._sample(k, m) for k, m in batch])
                    batch = []

    def _sample(self, k: int, member: Member) -> tuple[torch.Tensor, int] | BadItem:
        label = self.data.labels.get(member.key)
        if label is None or member.offset < 0:
            return BadItem(member.key, "not in utt2spk" if member.offset >= 0 else "unreadable shard")
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, k])
        try:
            with open(self.data.shards[member.shard], "rb") as f:
                f.seek(member.offset)
                wave = decode_wav(f.read(member.size), self.chain.fbank.sample_rate)
            return self.chain(lambda n, r: crop(wave, n, r), label, rng)
        except (MemsvError, OSError, RuntimeError, ValueError) as err:
            return BadItem(member.key, " ".join(str(err).split()) or type(err).__name__)

    def close(self) -> None:
        """Nothing held open between samples."""
