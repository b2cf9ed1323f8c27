"""Audio training data (``data.type: raw``): ``wav.scp`` + ``utt2spk``, each sample read from its file.

Map-style like the feat type: the same :class:`~memsv_cli.data.sampler.ChunkBatchSampler` plans the
epoch (one sample per utterance, each with its own seed), so resuming mid-epoch is as exact. A wav file
is read only where the crop falls (soundfile seeking); a pipe entry is read whole. An utterance that
cannot be read is not fatal: the worker returns a :class:`BadItem`, :func:`collate_chunks` drops it
from the batch and counts it, and the trainer stops only when an epoch's count passes
``data.max_bad_fraction``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from memsv_cli.data import online
from memsv_cli.data.kaldi_dir import c_sorted, read_utt2spk, read_wav_scp
from memsv_cli.data.waveform import WaveformChain
from memsv_cli.errors import InputError, MemsvError


@dataclass(frozen=True)
class BadItem:
    """A sample that could not be read (the key and a one-line reason)."""

    key: str
    reason: str


class ChunkBatch(NamedTuple):
    """One micro-batch: feats ``(b, T, F)`` float32, labels ``(b,)`` int64, and the keys dropped from it
    because they could not be read (``b`` = batch size - len(bad))."""

    feats: torch.Tensor
    labels: torch.Tensor
    bad: list[BadItem]


def collate_chunks(items: list[tuple[torch.Tensor, int] | BadItem]) -> ChunkBatch:
    """Stack the good samples of a micro-batch; keep the bad ones aside (counted by the trainer)."""
    good = [x for x in items if not isinstance(x, BadItem)]
    bad = [x for x in items if isinstance(x, BadItem)]
    if not good:
        keys = ", ".join(b.key for b in bad[:3])
        raise MemsvError(f"a whole batch of training audio could not be read ({keys} ...): {bad[0].reason}")
    feats = torch.stack([f for f, _ in good])
    return ChunkBatch(feats, torch.tensor([lab for _, lab in good], dtype=torch.int64), bad)


@dataclass
class AudioData:
    """Utterances of a raw training dir: keys (C order), wav.scp entries, labels, speakers (C order)."""

    path: Path
    utts: list[str]
    entries: list[str]
    labels: list[int]
    speakers: list[str]

    @property
    def num_items(self) -> int:
        """Training samples per epoch: one per utterance."""
        return len(self.utts)


def speakers_and_labels(u2s_path: Path, utts: list[str]) -> tuple[list[str], list[int]]:
    """C-sorted speakers of ``utts`` (from ``utt2spk``) and each utterance's label; one-line errors."""
    utt2spk = read_utt2spk(u2s_path)
    missing = [u for u in utts if u not in utt2spk]
    if missing:
        raise InputError(u2s_path, f"{len(missing)} utterance(s) missing, first {missing[0]!r}")
    speakers = c_sorted({utt2spk[u] for u in utts})
    if len(speakers) < 2:
        raise InputError(u2s_path, f"only {len(speakers)} speaker(s); speaker training needs at least 2")
    index = {s: i for i, s in enumerate(speakers)}
    return speakers, [index[utt2spk[u]] for u in utts]


def load_audio_data(data_dir: str | Path) -> AudioData:
    """Read and check ``wav.scp`` and ``utt2spk`` of a raw training dir."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise MemsvError(f"{data_dir}: no such data directory")
    scp, u2s = data_dir / "wav.scp", data_dir / "utt2spk"
    for f in (scp, u2s):
        if not f.is_file():
            raise InputError(f, "no such file (data.type raw needs wav.scp and utt2spk: a prepare-data dir)")
    wavs = read_wav_scp(scp)
    if not wavs:
        raise InputError(scp, "empty: no utterances to train on")
    utts = c_sorted(wavs)
    speakers, labels = speakers_and_labels(u2s, utts)
    return AudioData(data_dir, utts, [wavs[u] for u in utts], labels, speakers)


class RawChunks(Dataset):
    """Map-style dataset indexed by ``(utterance_index, sample_seed)``; returns ``(chunk, label)`` from
    :class:`~memsv_cli.data.waveform.WaveformChain`, or a :class:`BadItem`."""

    def __init__(self, data: AudioData, chain: WaveformChain) -> None:
        self.data, self.chain = data, chain

    def __len__(self) -> int:
        return self.data.num_items

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, int] | BadItem:
        index, sample_seed = item
        rng = np.random.default_rng(sample_seed)
        entry = self.data.entries[index]
        rate = self.chain.fbank.sample_rate
        try:
            return self.chain(lambda n, r: online.read_crop(entry, n, r, rate), self.data.labels[index], rng)
        except (MemsvError, OSError, RuntimeError, ValueError) as err:  # soundfile raises RuntimeError
            return BadItem(self.data.utts[index], " ".join(str(err).split()) or type(err).__name__)

    def close(self) -> None:
        """Nothing held open (files are opened per sample)."""
