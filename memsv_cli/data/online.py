"""On-the-fly training-sample processing, WeSpeaker VoxCeleb v2 style (issue 13).

Each training sample: a random crop of raw audio -> speed perturbation (sox ``speed``: pitch and tempo)
-> with probability ``aug_prob`` reverberation by a random RIR or additive MUSAN noise / music / babble
-> Kaldi fbank with dither -> per-chunk mean normalisation (SpecAugment, if any, is the caller's:
:class:`memsv_cli.data.dataset.SpecAugment`). :func:`chunk_features` runs the whole chain.

Cropping comes first (WeSpeaker resamples the whole utterance, then crops): :func:`crop_length` gives
the input length whose speed-perturbed version has exactly the chunk length, and :func:`read_crop`
reads only those samples from a wav file.

Numpy in, numpy out; samples are float32 in the int16 range (:func:`memsv_cli.data.audio.read_audio`).
Every random choice comes from the ``np.random.Generator`` passed in, so one generator per sample makes a
sample a pure function of (data, generator); the order of the draws is part of that contract.
Design notes and measurements: docs/design.md, "Online augmentation and fbank (issue 13)".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import scipy.signal
import soundfile as sf
import soxr

from memsv_cli.data.audio import INT16_SCALE, AudioError, is_pipe, read_audio
from memsv_cli.data.augment import add_noise, power
from memsv_cli.data.fbank import FbankConfig
from memsv_cli.data.kaldi_dir import c_sorted, read_wav_scp
from memsv_cli.data.online_fbank import fbank_numpy
from memsv_cli.errors import InputError

__all__ = [
    "NOISE_KINDS",
    "ONLINE_SNR_DB",
    "SPEED_FACTORS",
    "AugmentSources",
    "add_noise",
    "augment",
    "choose_speed",
    "chunk_features",
    "cmn",
    "crop",
    "crop_length",
    "fbank",
    "read_crop",
    "reverberate",
    "samples_for_frames",
    "speed_perturb",
]

#: WeSpeaker's speed factors, in its order: index 0 is the original, so ``label + num_speakers * index``
#: leaves unperturbed labels unchanged.
SPEED_FACTORS: tuple[float, ...] = (1.0, 0.9, 1.1)
#: Additive kinds; their sources are separate data dirs (local/prepare_musan.sh: musan_noise,
#: musan_music, musan_speech), the kind of a sample is the dir its file came from.
NOISE_KINDS: tuple[str, ...] = ("noise", "music", "babble")
#: WeSpeaker's on-the-fly SNR ranges in dB (``processor.add_reverb_noise``: noise 0-15, music 5-15,
#: speech 10-30), drawn uniformly. The offline copies (augment.DEFAULT_SNR_DB) use Kaldi's babble 13-20 dB
#: over 3-7 talkers; on the fly, as in WeSpeaker, babble is one MUSAN speech recording.
ONLINE_SNR_DB: dict[str, tuple[float, float]] = {
    "noise": (0.0, 15.0),
    "music": (5.0, 15.0),
    "babble": (10.0, 30.0),
}


# --------------------------------------------------------------------------------------------------
# Crops
# --------------------------------------------------------------------------------------------------
def samples_for_frames(frames: int, cfg: FbankConfig | None = None) -> int:
    """Samples that give exactly ``frames`` fbank frames (snip_edges), e.g. 200 frames -> 32240."""
    cfg = cfg or FbankConfig()
    shift = int(cfg.sample_rate * 0.001 * cfg.frame_shift_ms)
    return (frames - 1) * shift + cfg.window_samples


def crop_length(chunk_samples: int, factor: float) -> int:
    """Input samples whose speed perturbation by ``factor`` has at least ``chunk_samples`` samples.

    sox ``speed F`` turns ``n`` samples into ``round(n / F)`` (:func:`speed_perturb`), so ``ceil(chunk * F)``
    input samples suffice: 32000 -> 28800 for F = 0.9, 35200 for F = 1.1. Cropping before resampling
    avoids resampling a whole utterance to keep 2 s of it.
    """
    if chunk_samples <= 0 or factor <= 0:
        raise ValueError(f"need chunk_samples > 0 and factor > 0, got {chunk_samples}, {factor}")
    # round() first: 32000 * 1.1 is 35200.000000000004 in binary floating point
    return math.ceil(round(chunk_samples * factor, 6))


def _crop_start(length: int, num: int, rng: np.random.Generator) -> int:
    """One draw: the start of a ``num``-sample crop of ``length`` samples (0 when tiling)."""
    return int(rng.integers(0, max(length - num, 0) + 1))


def _tile(samples: np.ndarray, num: int) -> np.ndarray:
    """``samples`` repeated from its start to ``num`` samples (WeSpeaker's ``get_random_chunk``)."""
    return np.tile(samples, -(-num // len(samples)))[:num]


def crop(samples: np.ndarray, num: int, rng: np.random.Generator) -> np.ndarray:
    """A random ``num``-sample crop of ``samples`` ``(N,)``; shorter input is tiled (wrapped) from its start.

    Draws one integer from ``rng`` in either case (as :func:`memsv_cli.data.dataset.crop_chunk`).
    Returns a new float32 array ``(num,)``.
    """
    if len(samples) == 0:
        raise ValueError("cannot crop an empty signal")
    start = _crop_start(len(samples), num, rng)
    if len(samples) < num:
        return _tile(np.asarray(samples, dtype=np.float32), num)
    return np.array(samples[start : start + num], dtype=np.float32)


def read_crop(spec: str, num: int, rng: np.random.Generator, sample_rate: int = 16000) -> np.ndarray:
    """A random ``num``-sample crop of one ``wav.scp`` entry, reading only those samples where possible.

    Same result as ``crop(read_audio(spec), num, rng)``: for a seekable file (WAV, FLAC) the length comes
    from the header and only the crop is decoded; pipes, unseekable formats and anything unusual (other
    rate or channel count: read_audio's errors) go through :func:`memsv_cli.data.audio.read_audio`.

    Args:
        spec: a path or a Kaldi pipe entry (``... |``).
        num: crop length in samples.
        rng: one integer is drawn (the crop start).
        sample_rate: required rate in Hz.

    Returns:
        float32 ``(num,)`` in the int16 range.

    Raises:
        AudioError: unreadable audio, wrong rate, more than one channel, empty, truncated file.
    """
    if not is_pipe(spec):
        try:
            handle = sf.SoundFile(spec)
        except (sf.LibsndfileError, RuntimeError, OSError, TypeError):
            handle = None  # read_audio reports it with its own message
        if handle is not None:
            with handle:
                right_kind = handle.samplerate == sample_rate and handle.channels == 1
                if right_kind and handle.seekable() and handle.frames > 0:
                    return _read_crop_seekable(handle, spec, num, rng)
    return crop(read_audio(spec, sample_rate=sample_rate), num, rng)


def _read_crop_seekable(handle: sf.SoundFile, spec: str, num: int, rng: np.random.Generator) -> np.ndarray:
    """:func:`read_crop` on an open, seekable, mono file of the right rate."""
    frames = handle.frames
    start = _crop_start(frames, num, rng)
    want = min(num, frames)
    try:
        handle.seek(start)
        data = handle.read(want, dtype="float32", always_2d=True)[:, 0]
    except (sf.LibsndfileError, RuntimeError) as err:
        raise AudioError(f"cannot decode audio {spec}: {err}") from None
    if len(data) != want:
        raise AudioError(f"{spec}: header says {frames} samples, but reading stopped at {start + len(data)}")
    data *= np.float32(INT16_SCALE)  # read_audio's scale: the same float32 product
    return data if frames >= num else _tile(data, num)


# --------------------------------------------------------------------------------------------------
# Speed perturbation
# --------------------------------------------------------------------------------------------------
def choose_speed(rng: np.random.Generator, factors: tuple[float, ...] = SPEED_FACTORS) -> tuple[int, float]:
    """One uniform draw of a speed factor: ``(index, factor)``; the index makes the new speaker class."""
    index = int(rng.integers(len(factors)))
    return index, factors[index]


def speed_perturb(samples: np.ndarray, factor: float, sample_rate: int = 16000) -> np.ndarray:
    """sox ``speed factor``: pitch and tempo times ``factor``, duration divided by it.

    The signal is taken as sampled at ``sample_rate * factor`` Hz and resampled to ``sample_rate`` with
    soxr (the resampler sox itself uses; quality HQ), so ``n`` samples become ``round(n / factor)``:
    1.1 shortens, 0.9 lengthens. Factor 1.0 returns the input unchanged (as float32).

    Args:
        samples: ``(N,)`` float samples at ``sample_rate`` Hz.

    Returns:
        float32 ``(round(N / factor),)``.
    """
    if factor <= 0:
        raise ValueError(f"speed factor must be positive, got {factor}")
    samples = np.ascontiguousarray(samples, dtype=np.float32)
    if factor == 1.0:
        return samples
    return soxr.resample(samples, sample_rate * factor, sample_rate, quality="HQ")


# --------------------------------------------------------------------------------------------------
# Reverberation and noise
# --------------------------------------------------------------------------------------------------
def reverberate(samples: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """Convolve with a room impulse response: Kaldi ``wav-reverberate`` semantics, as the offline copies.

    The same definition as :func:`memsv_cli.data.augment.reverberate` (tested equal), computed in float32
    with ``scipy.signal.fftconvolve`` (1.3-3x faster than its float64 power-of-two FFT): the RIR's largest
    tap (direct path) becomes sample 0, the result is cut to the input length and scaled to the input's
    power. The RIR's own scale therefore does not matter (unit energy or not), and a delta at any delay
    returns the input.

    Args:
        samples: ``(N,)`` float.
        rir: ``(L,)`` float impulse response at the same rate.

    Returns:
        float32 ``(N,)``.
    """
    rir = np.asarray(rir, dtype=np.float32)
    if rir.ndim != 1 or len(rir) == 0:
        raise ValueError("rir must be a non-empty 1-D array")
    samples = np.asarray(samples, dtype=np.float32)
    delay = int(np.argmax(np.abs(rir)))
    wet = scipy.signal.fftconvolve(samples, rir)[delay : delay + len(samples)]
    wet *= np.float32(math.sqrt(power(samples) / power(wet)))
    return wet


class AugmentSources:
    """The RIR and noise pools: Kaldi data dirs (``wav.scp``) per kind, loaded lazily per process.

    Args:
        rirs: data dir of room impulse responses (``local/prepare_rirs.sh``: ``data/rirs``).
        noise, music, babble: data dirs of MUSAN noise, music and speech (``data/musan_{noise,music,
            speech}``); babble may be any speech data dir (the mini demo uses its training set).
        sample_rate: Hz that every source must have.
        category_weights: probability weights of the additive kinds. None (default, WeSpeaker): one file
            drawn uniformly from all of them, so kinds weigh by their file counts (MUSAN: 930 noise, 660
            music, 426 speech). Set them when one dir dwarfs the others (the mini demo's babble).
        rir_cache_mb: per-process budget for RIRs kept in memory (unit-energy float32); RIRs beyond it
            are read from disk each time (RIRS_NOISES has tens of thousands: too many to hold whole in
            every worker).

    Only paths and options are pickled (DataLoader workers); tables and RIRs load on first use.
    """

    def __init__(
        self,
        *,
        rirs: str | Path | None = None,
        noise: str | Path | None = None,
        music: str | Path | None = None,
        babble: str | Path | None = None,
        sample_rate: int = 16000,
        category_weights: Mapping[str, float] | None = None,
        rir_cache_mb: float = 64.0,
    ) -> None:
        given = {"reverb": rirs, "noise": noise, "music": music, "babble": babble}
        self.dirs: dict[str, str] = {k: str(v) for k, v in given.items() if v is not None}
        self.sample_rate = sample_rate
        self.category_weights = dict(category_weights) if category_weights is not None else None
        if (
            self.category_weights is not None
            and sum(self.category_weights.get(k, 0.0) for k in self.noise_kinds) <= 0
        ):
            raise ValueError("category_weights give no weight to any additive source that is present")
        self.rir_cache_bytes = int(rir_cache_mb * 2**20)
        self._reset_cache()

    def _reset_cache(self) -> None:
        self._tables: dict[str, tuple[list[str], list[str]]] = {}
        self._rirs: dict[str, np.ndarray] = {}
        self._rir_bytes = 0

    def __getstate__(self) -> dict[str, object]:
        state = dict(self.__dict__)
        state.update(_tables={}, _rirs={}, _rir_bytes=0)  # a worker loads its own
        return state

    @classmethod
    def from_data_root(
        cls, data_dir: str | Path, *, babble: str | Path | None = None, **kwargs: Any
    ) -> AugmentSources:
        """The recipe's layout under ``data_dir``: ``rirs``, ``musan_noise``, ``musan_music``,
        ``musan_speech`` (babble, unless ``babble`` names another dir); missing dirs are left out."""
        root = Path(data_dir)
        found = {
            k: root / d for k, d in (("rirs", "rirs"), ("noise", "musan_noise"), ("music", "musan_music"))
        }
        found["babble"] = Path(babble) if babble is not None else root / "musan_speech"
        return cls(**{k: p for k, p in found.items() if (p / "wav.scp").is_file()}, **kwargs)

    @property
    def has_reverb(self) -> bool:
        return "reverb" in self.dirs

    @property
    def noise_kinds(self) -> list[str]:
        """The additive kinds present, in :data:`NOISE_KINDS` order."""
        return [k for k in NOISE_KINDS if k in self.dirs]

    def table(self, kind: str) -> tuple[list[str], list[str]]:
        """``(keys, entries)`` of one kind's ``wav.scp``, keys C-sorted (read once per process)."""
        if kind not in self._tables:
            scp = Path(self.dirs[kind]) / "wav.scp"
            table = read_wav_scp(scp)
            if not table:
                raise InputError(scp, f"empty: no {kind} recordings")
            keys = c_sorted(table)
            self._tables[kind] = (keys, [table[k] for k in keys])
        return self._tables[kind]

    def _where(self, kind: str, key: str) -> str:
        return f"{Path(self.dirs[kind]) / 'wav.scp'} ({key})"

    def random_rir(self, rng: np.random.Generator) -> tuple[str, np.ndarray]:
        """One draw: ``(key, unit-energy float32 RIR (L,))``, from the cache when it is there."""
        keys, entries = self.table("reverb")
        i = int(rng.integers(len(keys)))
        rir = self._rirs.get(keys[i])
        if rir is None:
            try:
                rir = read_audio(entries[i], sample_rate=self.sample_rate)
            except AudioError as err:
                raise InputError(self._where("reverb", keys[i]), str(err)) from None
            energy = float(np.sum(np.square(rir, dtype=np.float64)))
            if energy == 0.0:
                raise InputError(self._where("reverb", keys[i]), "impulse response is all zeros")
            rir = rir / np.float32(math.sqrt(energy))  # unit energy (reverberate() does not need it)
            if self._rir_bytes + rir.nbytes <= self.rir_cache_bytes:
                self._rirs[keys[i]] = rir
                self._rir_bytes += rir.nbytes
        return keys[i], rir

    def _pick_noise(self, rng: np.random.Generator) -> tuple[str, int]:
        """One or two draws: an additive kind and a file index within it."""
        kinds = self.noise_kinds
        if self.category_weights is None:
            counts = [len(self.table(k)[0]) for k in kinds]
            i = int(rng.integers(sum(counts)))
            for kind, count in zip(kinds, counts, strict=True):
                if i < count:
                    return kind, i
                i -= count
        weights = np.array([self.category_weights.get(k, 0.0) for k in kinds], dtype=np.float64)
        kind = kinds[int(rng.choice(len(kinds), p=weights / weights.sum()))]
        return kind, int(rng.integers(len(self.table(kind)[0])))

    def random_noise(self, num: int, rng: np.random.Generator) -> tuple[str, str, np.ndarray]:
        """A random additive source cropped to ``num`` samples: ``(kind, key, float32 (num,))``.

        Only the crop is read from long recordings (:func:`read_crop`); short ones are tiled.
        """
        kind, i = self._pick_noise(rng)
        keys, entries = self.table(kind)
        try:
            return kind, keys[i], read_crop(entries[i], num, rng, self.sample_rate)
        except AudioError as err:
            raise InputError(self._where(kind, keys[i]), str(err)) from None


def augment(
    samples: np.ndarray,
    sources: AugmentSources,
    rng: np.random.Generator,
    aug_prob: float = 0.6,
    snr_db: Mapping[str, tuple[float, float]] | None = None,
) -> tuple[np.ndarray, str | None]:
    """WeSpeaker's ``add_reverb_noise``: with probability ``aug_prob`` reverb or additive noise (1:1).

    The additive kind is that of the drawn file (:class:`AugmentSources`); its SNR is uniform in
    ``snr_db[kind]`` (default :data:`ONLINE_SNR_DB`), defined by mean powers (:func:`add_noise`). With only
    RIRs or only noise present, every augmentation is of that type. No peak normalisation afterwards
    (WeSpeaker's ``/ max|x|``): the level stays in the int16 range the fbank expects.

    Args:
        samples: ``(N,)`` float32 in the int16 range.

    Returns:
        ``(float32 (N,), kind)``, kind None (untouched input), ``reverb``, ``noise``, ``music``, ``babble``.
    """
    if rng.random() >= aug_prob or not (sources.has_reverb or sources.noise_kinds):
        return samples, None
    use_reverb = sources.has_reverb and (not sources.noise_kinds or rng.random() < 0.5)
    if use_reverb:
        return reverberate(samples, sources.random_rir(rng)[1]), "reverb"
    kind, _, noise = sources.random_noise(len(samples), rng)
    low, high = (snr_db or ONLINE_SNR_DB)[kind]
    return add_noise(samples, noise, float(rng.uniform(low, high))), kind


# --------------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------------
def fbank(
    samples: np.ndarray,
    cfg: FbankConfig | None = None,
    dither: float = 1.0,
    rng: np.random.Generator | None = None,
    *,
    per_frame_dither: bool = False,
) -> np.ndarray:
    """Kaldi log-Mel fbank with seeded dither: a pure function of ``(samples, rng)``.

    A vectorised transcription of kaldi-native-fbank (:func:`memsv_cli.data.online_fbank.fbank_numpy`):
    within 1e-3 of :func:`memsv_cli.data.fbank.compute_fbank` at dither 0, about 4x faster. The dither is
    Gaussian noise of std ``dither`` (int16 units) added to the waveform from ``rng`` (Kaldi adds it to
    each frame's copy; the per-frame distribution is the same, see ``per_frame_dither``).

    Args:
        samples: ``(N,)`` float in the int16 range, at ``cfg.sample_rate`` Hz.
        cfg: options (``cfg.dither`` is ignored in favour of ``dither``).

    Returns:
        float32 ``(T, num_mel_bins)``, ``T = cfg.num_frames(N)``.
    """
    return fbank_numpy(samples, cfg, dither, rng, per_frame_dither=per_frame_dither)


def cmn(feats: np.ndarray) -> np.ndarray:
    """Per-chunk cepstral mean normalisation: ``feats (T, F)`` minus its mean over time, float32."""
    feats = np.asarray(feats, dtype=np.float32)
    return feats - feats.mean(axis=0, keepdims=True)


def chunk_features(
    spec: str,
    chunk_samples: int,
    rng: np.random.Generator,
    *,
    factor: float = 1.0,
    sources: AugmentSources | None = None,
    aug_prob: float = 0.6,
    snr_db: Mapping[str, tuple[float, float]] | None = None,
    cfg: FbankConfig | None = None,
    dither: float = 1.0,
    spec_aug: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None,
) -> tuple[np.ndarray, str | None]:
    """The whole chain for one training sample: crop, speed, augment, fbank, CMN, SpecAugment.

    Args:
        spec: ``wav.scp`` entry of the utterance.
        chunk_samples: samples after speed perturbation (:func:`samples_for_frames`: 200 frames = 32240).
        rng: the sample's generator; draws in order: crop start, augmentation, dither, SpecAugment.
        factor: speed factor (:func:`choose_speed`; the caller maps it to the speaker class).
        sources: augmentation pools; None: no augmentation.

    Returns:
        ``(float32 (T, F) features, augmentation kind or None)``.
    """
    cfg = cfg or FbankConfig()
    raw = read_crop(spec, crop_length(chunk_samples, factor), rng, cfg.sample_rate)
    wave = speed_perturb(raw, factor, cfg.sample_rate)[:chunk_samples]
    kind = None
    if sources is not None:
        wave, kind = augment(wave, sources, rng, aug_prob, snr_db)
    feats = cmn(fbank(wave, cfg, dither, rng))
    if spec_aug is not None:
        feats = spec_aug(feats, rng)
    return feats, kind
