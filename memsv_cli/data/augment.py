"""Kaldi-style data augmentation: augmented copies of a data directory, and speed perturbation.

Two kinds, both producing an ordinary Kaldi data directory that the later stages read like any other:

- **Augmented copies** (``augment_data_dir``), as Kaldi's ``egs/voxceleb/v2`` and WeSpeaker's
  augmentation do: every utterance (or a random subset) gets one copy with reverberation (a room impulse
  response from an RIR set) or with additive MUSAN-style noise, music or babble at a random SNR drawn
  uniformly from WeSpeaker's ranges (noise 0-15 dB, music 5-15 dB, babble 13-20 dB with 3-7 speakers).
  The copy keeps its speaker; its utterance id gets a suffix (``<utt>-reverb``), as Kaldi's
  ``--utt-suffix``. Audio is written as 16-bit wav files under ``<out>/wav/``.
- **Speed perturbation** (``speed_perturb_data_dir``): factors 0.9 / 1.1 make *new speakers*
  (``sp0.9-<spk>``), as Kaldi's ``perturb_data_dir_speed.sh``. The default backend writes no audio: each
  ``wav.scp`` entry becomes a ``sox ... speed F |`` pipe; the ``resample`` backend writes files instead
  (polyphase resampling, the same operation as sox ``speed``: pitch and tempo both change by F).

Randomness is drawn per utterance from ``(seed, crc32(utt))``, so results do not depend on ``nj``, on
the order of the work, or on which other utterances are present.
"""

from __future__ import annotations

import shutil
import zlib
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf

from memsv_cli.atomic import atomic_path
from memsv_cli.data.audio import INT16_SCALE, AudioError, raise_if_interrupted, read_audio
from memsv_cli.data.kaldi_dir import c_sorted, load_data_dir, read_wav_scp, write_data_dir, write_table
from memsv_cli.errors import InputError, MemsvError

AUG_TYPES = ("reverb", "noise", "music", "babble")

#: WeSpeaker's SNR ranges in dB (``wespeaker/dataset/processor.py``), inclusive bounds.
DEFAULT_SNR_DB: dict[str, tuple[float, float]] = {
    "noise": (0.0, 15.0),
    "music": (5.0, 15.0),
    "babble": (13.0, 20.0),
}
#: Number of overlapping babble speakers (Kaldi ``egs/voxceleb/v2``: 3-7).
DEFAULT_BABBLE_SPEAKERS = (3, 7)

_EPS = 1e-10


# --------------------------------------------------------------------------------------------------
# Audio I/O
# --------------------------------------------------------------------------------------------------
def read_wav_entry(entry: str, *, sample_rate: int = 16000, where: str = "wav.scp") -> np.ndarray:
    """Read one ``wav.scp`` value (a path or a pipe ending in ``|``) with ``audio.read_audio``.

    Returns:
        float32 mono samples scaled to [-1, 1), shape ``(num_samples,)``.

    Raises:
        InputError: missing/unreadable/empty audio, a failing pipe or another sample rate, naming ``where``.
    """
    try:
        return read_audio(entry, sample_rate=sample_rate) / np.float32(INT16_SCALE)
    except AudioError as err:
        raise_if_interrupted(err)
        raise InputError(where, str(err)) from None


def write_wav(path: str | Path, samples: np.ndarray, sample_rate: int) -> None:
    """Write float samples (clipped to [-1, 1)) as 16-bit PCM wav, atomically."""
    with atomic_path(path) as tmp:
        sf.write(tmp, np.clip(samples, -1.0, 32767 / 32768), sample_rate, subtype="PCM_16", format="WAV")


# --------------------------------------------------------------------------------------------------
# Signal operations (pure functions on float arrays)
# --------------------------------------------------------------------------------------------------
def power(x: np.ndarray) -> float:
    """Mean power of a signal (mean square), with a floor so that silence does not divide by zero."""
    return float(np.mean(np.square(x, dtype=np.float64))) + _EPS


def fit_length(noise: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    """Cut or loop ``noise`` to ``length`` samples: a random window when longer, tiled from a random
    offset when shorter (background noise must cover the whole utterance, as in Kaldi)."""
    if len(noise) >= length:
        start = int(rng.integers(0, len(noise) - length + 1))
        return noise[start : start + length]
    start = int(rng.integers(0, len(noise)))
    reps = -(-(length + start) // len(noise))
    return np.tile(noise, reps)[start : start + length]


def add_noise(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """Add ``noise`` (same length as ``speech``) scaled so that ``10 log10(P_speech / P_noise) = snr_db``.

    Args:
        speech, noise: float arrays of shape ``(num_samples,)``.
        snr_db: signal-to-noise ratio in dB.
    """
    if noise.shape != speech.shape:
        raise ValueError(f"noise shape {noise.shape} != speech shape {speech.shape}")
    scale = np.sqrt(power(speech) / (power(noise) * 10.0 ** (snr_db / 10.0)))
    return (speech + scale * noise).astype(np.float32)


def reverberate(speech: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """Convolve ``speech`` with a room impulse response, Kaldi ``wav-reverberate`` style.

    The RIR is shifted so that its direct path (largest absolute tap) lands on sample 0, so the
    reverberant copy stays time-aligned with the original; the output is cut to the input length and
    rescaled to the input's power (``--normalize-output``), so only the room colouring changes.

    Args:
        speech: ``(num_samples,)`` float.
        rir: ``(rir_samples,)`` float impulse response at the same sample rate.
    """
    if rir.ndim != 1 or len(rir) == 0:
        raise ValueError("rir must be a non-empty 1-D array")
    rir = rir.astype(np.float64)
    rir = rir / np.sqrt(np.sum(rir**2) + _EPS)
    delay = int(np.argmax(np.abs(rir)))
    # FFT convolution: RIRs are ~0.5 s, direct convolution would be O(N * 8000).
    n = len(speech) + len(rir) - 1
    size = 1 << (n - 1).bit_length()
    wet = np.fft.irfft(np.fft.rfft(speech, size) * np.fft.rfft(rir, size), size)
    wet = wet[delay : delay + len(speech)]
    wet *= np.sqrt(power(speech) / power(wet))
    return wet.astype(np.float32)


def speed_resample(samples: np.ndarray, factor: float) -> np.ndarray:
    """Speed perturbation by resampling (sox ``speed``): duration / factor, pitch * factor.

    ``factor`` is rounded to a ratio p/q with q <= 100; output length is ``ceil(len * q / p)``.
    """
    from scipy.signal import resample_poly  # scipy comes with scikit-learn

    ratio = Fraction(factor).limit_denominator(100)
    if ratio <= 0:
        raise ValueError(f"speed factor must be positive, got {factor}")
    return resample_poly(samples, ratio.denominator, ratio.numerator).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# Augmented copies of a data directory
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AugmentOptions:
    """What one augmented copy does.

    Attributes:
        aug_type: ``reverb``, ``noise``, ``music`` or ``babble``.
        snr_db: (low, high) SNR range in dB, drawn uniformly per utterance (per babble speaker);
            ignored for reverb.
        babble_speakers: (low, high) number of overlapping babble utterances, inclusive.
        seed: base seed; each utterance draws from ``(seed, crc32(utt))``.
        suffix: utterance-id suffix of the copies (default ``-<aug_type>``).
        sample_rate: Hz that speech and every source recording must have (VoxCeleb, MUSAN and
            RIRS_NOISES are all 16 kHz).
    """

    aug_type: str
    snr_db: tuple[float, float] | None = None
    babble_speakers: tuple[int, int] = DEFAULT_BABBLE_SPEAKERS
    seed: int = 0
    suffix: str | None = None
    sample_rate: int = 16000

    def __post_init__(self) -> None:
        if self.aug_type not in AUG_TYPES:
            raise MemsvError(
                f"unknown augmentation type {self.aug_type!r}; choose one of {', '.join(AUG_TYPES)}"
            )
        lo, hi = self.snr_range
        if lo > hi:
            raise MemsvError(f"SNR range {lo}:{hi} has low > high")
        blo, bhi = self.babble_speakers
        if not 1 <= blo <= bhi:
            raise MemsvError(f"babble speaker range {blo}:{bhi} must satisfy 1 <= low <= high")

    @property
    def snr_range(self) -> tuple[float, float]:
        return self.snr_db or DEFAULT_SNR_DB.get(self.aug_type, (0.0, 0.0))

    @property
    def utt_suffix(self) -> str:
        return self.suffix if self.suffix is not None else f"-{self.aug_type}"


def utt_rng(seed: int, utt: str) -> np.random.Generator:
    """The random generator of one utterance: independent of processing order and of ``nj``."""
    return np.random.default_rng([seed & 0xFFFFFFFF, zlib.crc32(utt.encode("utf-8"))])


def augment_samples(
    speech: np.ndarray,
    sample_rate: int,
    options: AugmentOptions,
    rng: np.random.Generator,
    source: Mapping[str, str],
    source_keys: list[str],
    where: str = "source wav.scp",
) -> tuple[np.ndarray, str]:
    """Augment one utterance.

    Args:
        speech: ``(num_samples,)`` float32.
        sample_rate: Hz; every source recording must have this rate.
        options: the augmentation.
        rng: this utterance's generator.
        source: the RIR / noise / music / speech ``wav.scp`` (key -> entry), ``source_keys`` its keys.

    Returns:
        ``(augmented samples, description)``, the description naming the sources and SNRs used (it goes
        to ``<out>/utt2aug`` so that every copy can be traced).
    """

    def load(key: str) -> np.ndarray:
        return read_wav_entry(source[key], sample_rate=sample_rate, where=f"{where} ({key})")

    lo, hi = options.snr_range
    if options.aug_type == "reverb":
        key = source_keys[int(rng.integers(len(source_keys)))]
        return reverberate(speech, load(key)), f"reverb {key}"
    if options.aug_type in ("noise", "music"):
        key = source_keys[int(rng.integers(len(source_keys)))]
        snr = float(rng.uniform(lo, hi))
        noise = fit_length(load(key), len(speech), rng)
        return add_noise(speech, noise, snr), f"{options.aug_type} {key} {snr:.2f}"
    # babble: several speech utterances, each at its own SNR against the target speech (Kaldi's
    # --bg-snrs applies one SNR per background utterance)
    blo, bhi = options.babble_speakers
    count = min(int(rng.integers(blo, bhi + 1)), len(source_keys))
    keys = [source_keys[i] for i in rng.choice(len(source_keys), size=count, replace=False)]
    out = speech.astype(np.float32)
    desc = ["babble"]
    for key in keys:
        snr = float(rng.uniform(lo, hi))
        noise = fit_length(load(key), len(speech), rng)
        scale = np.sqrt(power(speech) / (power(noise) * 10.0 ** (snr / 10.0)))
        out = out + (scale * noise).astype(np.float32)
        desc.append(f"{key} {snr:.2f}")
    return out, " ".join(desc)


def _safe_relpath(key: str) -> str:
    """A relative file path for an utterance key: VoxCeleb keys keep their ``spk/video/num`` folders;
    anything unusual becomes ``_`` so that a key can never escape the output directory."""
    parts = ["".join(c if c.isalnum() or c in "._-" else "_" for c in p) for p in key.split("/")]
    parts = [p if p not in ("", ".", "..") else "_" for p in parts]
    return "/".join(parts) + ".wav"


@dataclass(frozen=True)
class _Job:
    utt: str
    new_utt: str
    entry: str
    out_path: str


def _augment_one(
    job: _Job,
    options: AugmentOptions,
    source: dict[str, str],
    source_keys: list[str],
    source_where: str,
    where: str,
) -> tuple[str, str]:
    rate = options.sample_rate
    speech = read_wav_entry(job.entry, sample_rate=rate, where=f"{where} ({job.utt})")
    rng = utt_rng(options.seed, job.utt)
    samples, desc = augment_samples(speech, rate, options, rng, source, source_keys, source_where)
    write_wav(job.out_path, samples, rate)
    return job.new_utt, desc


def _augment_chunk(
    jobs: list[_Job],
    options: AugmentOptions,
    source: dict[str, str],
    source_keys: list[str],
    source_where: str,
    where: str,
) -> list[tuple[str, str]]:
    return [_augment_one(j, options, source, source_keys, source_where, where) for j in jobs]


def select_utts(utts: Iterable[str], num_utts: int | None, seed: int) -> list[str]:
    """A deterministic random subset of ``num_utts`` utterances (all when None or larger), C-sorted."""
    utts = c_sorted(utts)
    if num_utts is None or num_utts >= len(utts):
        return utts
    if num_utts <= 0:
        raise MemsvError(f"--num-utts must be positive, got {num_utts}")
    rng = np.random.default_rng(seed)
    return c_sorted(utts[i] for i in rng.choice(len(utts), size=num_utts, replace=False))


def augment_data_dir(
    src: str | Path,
    out: str | Path,
    source_dir: str | Path,
    options: AugmentOptions,
    *,
    num_utts: int | None = None,
    nj: int = 1,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Write an augmented copy of data directory ``src`` to ``out``.

    Args:
        src: a Kaldi data directory (``wav.scp``, ``utt2spk``).
        out: the new data directory; ``wav/`` under it receives the audio, then ``wav.scp``, ``utt2spk``,
            ``spk2utt`` and ``utt2aug`` (``<new utt> <type> <source keys and SNRs>``) are written.
        source_dir: a directory whose ``wav.scp`` lists the RIRs (reverb), MUSAN noise / music, or
            speech for babble (``local/prepare_musan.sh``, ``local/prepare_rirs.sh`` make them).
        options: the augmentation.
        num_utts: augment only a random subset of this many utterances (Kaldi recipes subsample the
            augmented set); None: all.
        nj: parallel worker processes.
        progress: called with the number of utterances finished after each chunk.

    Returns:
        the number of utterances written.
    """
    src, out, source_dir = Path(src), Path(out), Path(source_dir)
    data = load_data_dir(src)
    source_scp = source_dir / "wav.scp"
    source = read_wav_scp(source_scp)
    if not source:
        raise InputError(source_scp, "empty: no recordings to augment with")
    source_keys = c_sorted(source)
    if out.resolve() == src.resolve():
        raise MemsvError(f"{out}: output directory must differ from the input directory")

    utts = select_utts(data.wav_scp, num_utts, options.seed)
    suffix = options.utt_suffix
    wav_root = (out / "wav").resolve()
    jobs = [_Job(u, u + suffix, data.wav_scp[u], str(wav_root / _safe_relpath(u + suffix))) for u in utts]
    where = str(src / "wav.scp")
    results: list[tuple[str, str]] = []
    chunk = max(1, min(64, len(jobs) // max(1, nj * 4)))
    chunks = [jobs[i : i + chunk] for i in range(0, len(jobs), chunk)]
    args = (options, source, source_keys, str(source_scp), where)
    if nj <= 1:
        for part in chunks:
            results.extend(_augment_chunk(part, *args))
            if progress:
                progress(len(part))
    else:
        with ProcessPoolExecutor(max_workers=nj) as pool:
            futures = [pool.submit(_augment_chunk, part, *args) for part in chunks]
            for part, future in zip(chunks, futures, strict=True):
                results.extend(future.result())
                if progress:
                    progress(len(part))

    desc = dict(results)
    wav_scp = {j.new_utt: j.out_path for j in jobs}
    utt2spk = {j.new_utt: data.utt2spk[j.utt] for j in jobs}
    # utt2aug first, wav.scp last: wav.scp is the completion marker of the data directory
    write_table(out / "utt2aug", desc)
    write_data_dir(out, wav_scp, utt2spk)
    return len(jobs)


# --------------------------------------------------------------------------------------------------
# Speed perturbation
# --------------------------------------------------------------------------------------------------
SPEED_BACKENDS = ("sox", "resample")


def speed_prefix(factor: float) -> str:
    """Kaldi's prefix for a perturbed copy: ``sp0.9-``; empty for factor 1.0 (the original)."""
    return "" if factor == 1.0 else f"sp{factor:g}-"


def sox_speed_entry(entry: str, factor: float) -> str:
    """The ``wav.scp`` entry of ``entry`` played at ``factor``: a sox pipe (as Kaldi writes them)."""
    entry = entry.strip()
    if entry.endswith("|"):
        return f"{entry[:-1].rstrip()} | sox -t wav - -t wav - speed {factor:g} |"
    return f"sox -t wav {entry} -t wav - speed {factor:g} |"


def parse_factors(text: str) -> list[float]:
    """``"0.9,1.0,1.1"`` -> ``[0.9, 1.0, 1.1]``; each factor in (0, 4], no duplicates."""
    try:
        factors = [float(f) for f in text.replace(" ", "").split(",") if f]
    except ValueError:
        raise MemsvError(f"speed factors must be comma-separated numbers, got {text!r}") from None
    if not factors or any(not 0 < f <= 4 for f in factors):
        raise MemsvError(f"speed factors must be in (0, 4], got {text!r}")
    if len(set(factors)) != len(factors):
        raise MemsvError(f"duplicate speed factor in {text!r}")
    return factors


def _resample_one(entry: str, factor: float, out_path: str, where: str, rate: int) -> None:
    samples = read_wav_entry(entry, sample_rate=rate, where=where)
    write_wav(out_path, speed_resample(samples, factor), rate)


def speed_perturb_data_dir(
    src: str | Path,
    out: str | Path,
    factors: Iterable[float] = (0.9, 1.0, 1.1),
    *,
    backend: str = "sox",
    nj: int = 1,
    sample_rate: int = 16000,
) -> int:
    """Write ``out`` holding one copy of ``src`` per speed factor, each factor != 1 as new speakers.

    Utterance and speaker ids of a perturbed copy get the prefix ``sp<F>-`` (a prefix on both keeps
    ``utt2spk`` and ``spk2utt`` sorted consistently, as in Kaldi). Factor 1.0 keeps the original entries.

    Args:
        backend: ``sox`` writes ``sox ... speed F |`` pipes into ``wav.scp`` (no audio written; needs sox
            when the features are extracted); ``resample`` writes wav files under ``<out>/wav/``.

    Returns:
        the number of utterances in ``out``.
    """
    src, out = Path(src), Path(out)
    factors = list(factors)
    if backend not in SPEED_BACKENDS:
        raise MemsvError(f"unknown speed-perturbation backend {backend!r}; choose sox or resample")
    if backend == "sox" and shutil.which("sox") is None and any(f != 1.0 for f in factors):
        raise MemsvError(
            "sox is not installed (apt-get install sox, or `make system-deps`); or use --backend resample"
        )
    if out.resolve() == src.resolve():
        raise MemsvError(f"{out}: output directory must differ from the input directory")
    data = load_data_dir(src)
    wav_scp: dict[str, str] = {}
    utt2spk: dict[str, str] = {}
    todo: list[tuple[str, float, str, str]] = []
    for factor in factors:
        prefix = speed_prefix(factor)
        for utt, entry in data.wav_scp.items():
            new = prefix + utt
            utt2spk[new] = prefix + data.utt2spk[utt]
            if factor == 1.0:
                wav_scp[new] = entry
            elif backend == "sox":
                wav_scp[new] = sox_speed_entry(entry, factor)
            else:
                path = str((out / "wav" / _safe_relpath(new)).resolve())
                wav_scp[new] = path
                todo.append((entry, factor, path, f"{src / 'wav.scp'} ({utt})", sample_rate))
    if todo:
        if nj <= 1:
            for job in todo:
                _resample_one(*job)
        else:
            with ProcessPoolExecutor(max_workers=nj) as pool:
                for future in [pool.submit(_resample_one, *job) for job in todo]:
                    future.result()
    write_data_dir(out, wav_scp, utt2spk)
    return len(wav_scp)


# --------------------------------------------------------------------------------------------------
# Synthetic augmentation sources (tests and the mini demo; real recipes use MUSAN and RIRS_NOISES)
# --------------------------------------------------------------------------------------------------
def make_synthetic_sources(
    out: str | Path,
    *,
    sample_rate: int = 16000,
    num_noises: int = 4,
    num_rirs: int = 4,
    noise_seconds: float = 2.0,
    seed: int = 0,
) -> dict[str, Path]:
    """Write tiny stand-ins for MUSAN and RIRS_NOISES as data directories under ``out``.

    - ``noise/``: coloured noise (white noise through a random one-pole low-pass filter);
    - ``music/``: sums of 2-4 sinusoidal tones with a slow amplitude envelope;
    - ``rirs/``: exponentially decaying noise tails (RT60 0.2-0.8 s, direct-to-reverberant ratio about
      -2 dB) after a unit direct path with a random 0-5 ms pre-delay, the usual synthetic RIR model.

    Each directory gets ``wav.scp`` (absolute paths) and ``utt2spk`` (key -> key). Babble needs speech:
    use any speech data directory as its source.

    Returns:
        ``{"noise": path, "music": path, "rirs": path}``.
    """
    out = Path(out)
    rng = np.random.default_rng(seed)
    n = int(noise_seconds * sample_rate)
    t = np.arange(n) / sample_rate
    dirs: dict[str, Path] = {}

    def emit(kind: str, signals: list[np.ndarray]) -> None:
        wav_scp = {}
        for i, sig in enumerate(signals):
            key = f"{kind}-{i:04d}"
            path = (out / kind / "wav" / f"{key}.wav").resolve()
            write_wav(path, 0.5 * sig / (np.max(np.abs(sig)) + _EPS), sample_rate)
            wav_scp[key] = str(path)
        write_data_dir(out / kind, wav_scp, {k: k for k in wav_scp})
        dirs[kind] = out / kind

    noises = []
    for _ in range(num_noises):
        white = rng.standard_normal(n)
        pole = float(rng.uniform(0.0, 0.95))
        col = np.empty(n)
        acc = 0.0
        for i, w in enumerate(white):  # one-pole IIR: tiny signals, a Python loop is fine
            acc = pole * acc + w
            col[i] = acc
        noises.append(col)
    emit("noise", noises)

    music = []
    for _ in range(num_noises):
        tones = sum(
            np.sin(2 * np.pi * float(rng.uniform(110, 2000)) * t + float(rng.uniform(0, 6.3)))
            for _ in range(int(rng.integers(2, 5)))
        )
        music.append(tones * (0.6 + 0.4 * np.sin(2 * np.pi * float(rng.uniform(0.5, 3)) * t)))
    emit("music", music)

    rirs = []
    for _ in range(num_rirs):
        rt60 = float(rng.uniform(0.2, 0.8))
        length = int(rt60 * sample_rate)
        pre = int(rng.uniform(0, 0.005) * sample_rate)
        decay = np.exp(-6.9 * np.arange(length) / length)  # -60 dB at rt60
        rir = np.zeros(pre + length)
        # direct-to-reverberant ratio about -2 dB; the tail stays below the direct path so that
        # the direct path (the largest tap) is where reverberate() aligns
        rir[pre:] = np.clip(0.05 * rng.standard_normal(length) * decay, -0.5, 0.5)
        rir[pre] = 1.0
        rirs.append(rir)
    emit("rirs", rirs)
    return dirs
