"""Feature-file training data (``data.type: feat``): ``feats.scp`` + ``utt2spk``, one random fixed-length
crop per original utterance per epoch.

A crop reads only its rows from the ark when ``utt2num_frames`` gives the length (``ArkReader.load_rows``):
a 200-frame chunk of an 800-frame utterance reads a quarter of it. Offline Kaldi-style copies (speed
perturbed ``sp<F>-`` speakers, ``-reverb``/``-noise``/... utterances) are grouped under their original
(:mod:`memsv_cli.data.variants`): an epoch is one pass over the originals, each contributing its clean
form or, with ``data.aug_prob``, one of its copies. Every random choice (copy, crop start, SpecAugment)
comes from the sample's own seed (:mod:`memsv_cli.data.sampler`).

Ark files are opened once per worker process and kept open, not per sample.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import kaldiio
import numpy as np
import torch
from torch.utils.data import Dataset

from memsv_cli.data.ark import ArkReader
from memsv_cli.data.kaldi_dir import c_sorted, read_table, read_utt2num_frames, read_utt2spk
from memsv_cli.data.variants import VariantGroup, group_variants
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
        num_frames: frames per utterance from ``utt2num_frames`` (None: not there; crops read whole).
        groups: the original utterances and their copies (one item each per epoch).
    """

    path: Path
    utts: list[str]
    arks: list[str]
    labels: list[int]
    speakers: list[str]
    feat_dim: int = field(default=0)
    num_frames: list[int] | None = None
    groups: list[VariantGroup] = field(default_factory=list)

    @property
    def num_items(self) -> int:
        """Training samples per epoch: one per original utterance."""
        return len(self.groups)


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
    data.num_frames = _num_frames(data_dir / "utt2num_frames", utts)
    data.groups = group_variants(utts)
    return data


def _num_frames(path: Path, utts: list[str]) -> list[int] | None:
    """Frames per utterance from ``utt2num_frames`` when it covers every utterance, else None."""
    if not path.is_file():
        return None
    table = read_utt2num_frames(path)
    return [table[u] for u in utts] if all(u in table for u in utts) else None


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


def crop_start(frames: int, chunk_frames: int, rng: np.random.Generator) -> int:
    """The first frame of a random ``chunk_frames`` crop of ``frames`` (0 when it has to be tiled);
    the same draw as :func:`crop_chunk` makes."""
    return int(rng.integers(0, max(frames, chunk_frames) - chunk_frames + 1))


def crop_chunk(feats: np.ndarray, chunk_frames: int, rng: np.random.Generator) -> np.ndarray:
    """A random ``chunk_frames``-long crop of ``feats`` (T, F); shorter utterances are tiled (wrapped)
    first, as WeSpeaker pads them. Returns a new (chunk_frames, F) float32 array."""
    frames = feats.shape[0]
    if frames < chunk_frames:
        feats = np.pad(feats, ((0, chunk_frames - frames), (0, 0)), mode="wrap")
    start = crop_start(frames, chunk_frames, rng)
    return np.array(feats[start : start + chunk_frames], dtype=np.float32)


class ChunkDataset(Dataset):
    """Map-style dataset indexed by ``(original_index, sample_seed)`` pairs (see
    :class:`~memsv_cli.data.sampler.ChunkBatchSampler`).

    Returns ``(chunk, label)``: chunk (chunk_frames, F) float32, mean-normalised over time per chunk,
    optionally SpecAugmented; label a Python int (the chosen copy's speaker).

    Args:
        data: the feature data.
        chunk_frames: frames per chunk (10 ms each).
        spec_aug: SpecAugment after mean normalisation, or None.
        aug_prob: probability of training on an augmented offline copy instead of the clean one.
    """

    def __init__(
        self,
        data: TrainingData,
        chunk_frames: int = 200,
        spec_aug: SpecAugment | None = None,
        aug_prob: float = 0.0,
    ) -> None:
        self.data, self.chunk_frames, self.spec_aug, self.aug_prob = data, chunk_frames, spec_aug, aug_prob
        self._reader = ArkReader(data.path / "feats.scp")

    def __len__(self) -> int:
        return self.data.num_items

    def _crop(self, index: int, rng: np.random.Generator) -> np.ndarray:
        """A (chunk_frames, F) float32 crop of utterance ``index``, reading only its rows if it can."""
        spec, utt = self.data.arks[index], self.data.utts[index]
        frames = self.data.num_frames[index] if self.data.num_frames is not None else None
        if frames is None or frames < self.chunk_frames:
            return crop_chunk(self._reader.load(spec, utt), self.chunk_frames, rng)
        start = crop_start(frames, self.chunk_frames, rng)
        return np.array(self._reader.load_rows(spec, utt, start, self.chunk_frames), dtype=np.float32)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, int]:
        group, sample_seed = item
        rng = np.random.default_rng(sample_seed)
        index = self.data.groups[group].pick(rng, self.aug_prob)
        chunk = self._crop(index, rng)
        chunk -= chunk.mean(axis=0, keepdims=True)  # per-chunk cepstral mean normalisation
        if self.spec_aug is not None:
            chunk = self.spec_aug(chunk, rng)
        return torch.from_numpy(chunk), self.data.labels[index]

    @property
    def bytes_read(self) -> int:
        """Feature bytes this process has read (the read-amplification measurement)."""
        return self._reader.bytes_read

    def close(self) -> None:
        self._reader.close()
