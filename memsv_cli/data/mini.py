"""The built-in ``mini`` corpus: synthetic speech-like audio in the VoxCeleb layout.

A source-filter synthesiser (numpy, vectorised per utterance):
- source: a glottal pulse train following a pitch contour, low-pass tilted, plus aspiration noise;
  fricatives are noise;
- filter: a cascade of four formant resonators per frame, interpolated across a random phone sequence
  (vowels, nasals, fricatives, pauses), applied by short-time Fourier filtering (overlap-add);
- per speaker (fixed for all their utterances): mean pitch and pitch range, vocal-tract length (formant
  scaling) plus per-formant idiosyncrasies, bandwidths, spectral tilt, breathiness, speaking rate;
- per utterance: phone sequence, intonation, duration, level; per video (recording session) a channel
  colouring, refined per utterance; additive white/pink noise at a random SNR.
So identity is learnable (the same vocal tract and voice across utterances) while the long-term
spectrum varies with content, channel and noise, which is what keeps a mean-fbank baseline imperfect.

Layout written under ROOT (``prepare_mini``)::

    ROOT/train/wav/<spk>/<video>/<utt>.wav     ROOT/mini_train/{wav.scp,utt2spk,spk2utt}
    ROOT/test/wav/<spk>/<video>/<utt>.wav      ROOT/mini_test/{wav.scp,utt2spk,spk2utt,trials/mini.kaldi}
    ROOT/test/mini.txt                         (the trial list in VoxCeleb ``1|0 enroll test`` format)

Train and test speakers are disjoint. Everything is a deterministic function of the seed.
"""

from __future__ import annotations

import multiprocessing as mp
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from numpy.lib.stride_tricks import sliding_window_view
from scipy.signal import lfilter

from memsv_cli.atomic import atomic_path, write_lines_atomic
from memsv_cli.data.prepare import prepare_voxceleb
from memsv_cli.errors import MemsvError

SAMPLE_RATE = 16000
SNR_RANGE_DB = (15.0, 35.0)
CHANNEL_EQ_DB = 2.0
SPEAKER_COLOUR_DB = 4.0
LEVEL_RANGE_DB = (-22.0, -8.0)
MARKER = ".memsv_mini"  # marks a directory as ours to regenerate
N_FFT = 512
HOP = 128  # 8 ms frames for the synthesis filter
_FREQS = np.fft.rfftfreq(N_FFT, 1.0 / SAMPLE_RATE)  # (257,) Hz
_WINDOW = np.sqrt(np.hanning(N_FFT + 1)[:-1])  # periodic sqrt-Hann: analysis x synthesis = Hann

# Adult-male reference formants F1..F4 (Hz; Peterson & Barney style) and the phone classes.
_VOWELS = np.array(
    [
        [270, 2290, 3010, 3500],  # i
        [390, 1990, 2550, 3500],  # I
        [530, 1840, 2480, 3500],  # E
        [660, 1720, 2410, 3500],  # ae
        [730, 1090, 2440, 3500],  # a
        [570, 840, 2410, 3500],  # o
        [440, 1020, 2240, 3500],  # U
        [300, 870, 2240, 3500],  # u
        [640, 1190, 2390, 3500],  # V
        [490, 1350, 1690, 3500],  # er
    ],
    dtype=np.float64,
)
_NASALS = np.array([[250, 1000, 2200, 3300], [250, 1400, 2300, 3400]], dtype=np.float64)  # m, n
_FRICATIVES = np.array([6000.0, 3200.0, 4500.0])  # s, sh, f-like noise centre (Hz)
_VOWEL, _NASAL, _FRIC, _PAUSE = 0, 1, 2, 3


@dataclass(frozen=True)
class Speaker:
    """Voice parameters fixed for all of one speaker's utterances."""

    f0_hz: float  # mean pitch
    f0_range: float  # intonation extent, natural-log units
    formant_scale: np.ndarray  # (4,) vocal-tract scaling x per-formant idiosyncrasy
    bandwidth_scale: float
    tilt_pole: float  # one-pole glottal low-pass coefficient (larger: steeper spectral tilt)
    breathiness: float  # aspiration-noise amplitude relative to the pulses
    rate: float  # speaking-rate factor (>1 faster)
    fric_scale: float  # fricative-noise centre scaling
    colour: np.ndarray  # (257,) fixed voice-quality colouring of the spectrum (magnitude)


def sample_speaker(rng: np.random.Generator) -> Speaker:
    """Draw one speaker's voice."""
    female = rng.random() < 0.5
    f0 = (
        np.exp(rng.uniform(np.log(165), np.log(255)))
        if female
        else np.exp(rng.uniform(np.log(85), np.log(150)))
    )
    vtl = rng.uniform(1.08, 1.25) if female else rng.uniform(0.88, 1.05)
    return Speaker(
        f0_hz=float(f0),
        f0_range=float(rng.uniform(0.05, 0.18)),
        formant_scale=vtl * np.exp(rng.normal(0.0, 0.06, size=4)),
        bandwidth_scale=float(np.exp(rng.uniform(np.log(0.7), np.log(1.5)))),
        tilt_pole=float(rng.uniform(0.80, 0.97)),
        breathiness=float(np.exp(rng.uniform(np.log(0.01), np.log(0.12)))),
        rate=float(rng.uniform(0.8, 1.25)),
        fric_scale=float(vtl * np.exp(rng.normal(0.0, 0.08))),
        colour=_smooth_eq(rng, SPEAKER_COLOUR_DB),
    )


def _smooth(x: np.ndarray, width: int) -> np.ndarray:
    """Moving average along axis 0 with edge padding (coarticulation, slow contours)."""
    if width <= 1:
        return x
    kernel = np.ones(width) / width
    pad = [(width // 2, width - 1 - width // 2)] + [(0, 0)] * (x.ndim - 1)
    padded = np.pad(x, pad, mode="edge")
    return np.apply_along_axis(lambda c: np.convolve(c, kernel, mode="valid"), 0, padded)


def _phone_track(rng: np.random.Generator, spk: Speaker, n_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Random phone sequence as per-frame (class, index) arrays of shape ``(n_frames,)``."""
    classes, indices = [], []
    total = 0
    while total < n_frames:
        # Syllable-ish: optional consonant, vowel, sometimes a pause between words.
        r = rng.random()
        if r < 0.35:
            seg = [(_FRIC, int(rng.integers(len(_FRICATIVES))), rng.uniform(60, 140))]
        elif r < 0.55:
            seg = [(_NASAL, int(rng.integers(len(_NASALS))), rng.uniform(50, 100))]
        else:
            seg = []
        seg.append((_VOWEL, int(rng.integers(len(_VOWELS))), rng.uniform(70, 220)))
        if rng.random() < 0.12:
            seg.append((_PAUSE, 0, rng.uniform(60, 250)))
        for cls, idx, ms in seg:
            n = max(2, int(round(ms / spk.rate / (1000.0 * HOP / SAMPLE_RATE))))
            classes.append(np.full(n, cls))
            indices.append(np.full(n, idx))
            total += n
    return np.concatenate(classes)[:n_frames], np.concatenate(indices)[:n_frames]


def _resonators(formants: np.ndarray, bandwidths: np.ndarray) -> np.ndarray:
    """Cascade magnitude response ``(frames, bins)`` of second-order resonators.

    ``|H(f)| = F^2 / sqrt((F^2 - f^2)^2 + (B f)^2)`` per formant (unit gain at 0 Hz), multiplied.
    Shapes: formants, bandwidths ``(frames, K)`` in Hz.
    """
    f = _FREQS[None, :, None]
    fk, bk = formants[:, None, :], bandwidths[:, None, :]
    mag = fk**2 / np.sqrt((fk**2 - f**2) ** 2 + (bk * f) ** 2)
    return mag.prod(axis=2)


def random_channel(rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """A smooth random channel magnitude response ``(257,)``: band-limits plus a few EQ bumps (dB)."""
    low_cut = rng.uniform(50, 200)
    high_cut = rng.uniform(5500, 7800)
    f = _FREQS
    resp_db = -10 * np.log10(1 + (low_cut / np.maximum(f, 1.0)) ** 4) - 10 * np.log10(1 + (f / high_cut) ** 8)
    resp_db = strength * resp_db
    return 10 ** (resp_db / 20) * _smooth_eq(rng, strength * CHANNEL_EQ_DB)


def _smooth_eq(rng: np.random.Generator, sd_db: float, bumps: int = 3) -> np.ndarray:
    """A smooth random magnitude response ``(257,)``: Gaussian bumps on a log-frequency axis."""
    f = np.maximum(_FREQS, 1.0)
    resp_db = np.zeros_like(f)
    for _ in range(bumps):
        centre = np.exp(rng.uniform(np.log(200), np.log(7000)))
        width = rng.uniform(0.3, 1.2)  # octaves
        resp_db += rng.normal(0, sd_db) * np.exp(-0.5 * (np.log2(f / centre) / width) ** 2)
    return 10 ** (resp_db / 20)


def synthesize_utterance(
    rng: np.random.Generator, spk: Speaker, channel: np.ndarray, seconds: float
) -> np.ndarray:
    """One utterance: float32 samples ``(round(seconds * 16000),)`` in [-1, 1] at 16 kHz."""
    n = int(round(seconds * SAMPLE_RATE))
    n_total = n + 2 * N_FFT  # one FFT of margin each side, so the kept part has full overlap-add
    n_frames = (n_total - N_FFT) // HOP + 1
    cls, idx = _phone_track(rng, spk, n_frames)
    voiced = ((cls == _VOWEL) | (cls == _NASAL)).astype(np.float64)
    fric = (cls == _FRIC).astype(np.float64)

    # Formant targets per frame, scaled by the speaker's vocal tract, then coarticulated.
    targets = np.where((cls == _NASAL)[:, None], _NASALS[np.minimum(idx, len(_NASALS) - 1)], _VOWELS[idx])
    formants = _smooth(targets * spk.formant_scale * np.exp(rng.normal(0, 0.03, size=(n_frames, 4))), 5)
    bandwidths = spk.bandwidth_scale * (50.0 + 0.06 * formants)
    env = _resonators(formants, bandwidths)
    centre = _FRICATIVES[np.minimum(idx, len(_FRICATIVES) - 1)] * spk.fric_scale
    fric_env = 1.0 / np.sqrt(1 + ((_FREQS[None, :] - centre[:, None]) / (0.35 * centre[:, None])) ** 2)
    fric_env *= 1.0 / (1 + (1000.0 / np.maximum(_FREQS[None, :], 1.0)) ** 4)
    nasal_gain = np.where(cls == _NASAL, 0.3, 1.0)
    w_fric = _smooth(fric, 3)[:, None]
    w_voice = _smooth(voiced * nasal_gain, 3)[:, None]
    envelope = w_voice * env / env.max() + 0.5 * w_fric * fric_env  # (frames, bins)

    # Pitch contour: declination + slow random intonation around the speaker's mean.
    t = np.arange(n_frames) / n_frames
    wander = _smooth(rng.normal(0, 1, n_frames), 25)
    wander /= np.std(wander) + 1e-9
    log_f0 = np.log(spk.f0_hz) + rng.normal(0, 0.04) + spk.f0_range * wander - rng.uniform(0, 0.15) * t
    f0 = np.interp(np.arange(n_total), np.arange(n_frames) * HOP, np.exp(log_f0))
    phase = np.cumsum(f0 / SAMPLE_RATE)
    pulses = np.diff(np.floor(phase), prepend=0.0)
    pulses = lfilter([1.0], [1.0, -spk.tilt_pole], pulses * np.sqrt(f0 / 100.0))
    noise = rng.normal(0, 1, n_total)
    voicing = np.interp(np.arange(n_total), np.arange(n_frames) * HOP, w_voice[:, 0])
    excitation = pulses + spk.breathiness * voicing * noise * 3.0 + 0.08 * noise

    # STFT filtering: frame the excitation, shape each frame's spectrum, overlap-add.
    frames = sliding_window_view(excitation, N_FFT)[::HOP][:n_frames] * _WINDOW
    spec = np.fft.rfft(frames, axis=1) * envelope[: len(frames)] * (spk.colour * channel)
    out_frames = np.fft.irfft(spec, N_FFT, axis=1) * _WINDOW
    out = np.zeros(len(out_frames) * HOP + N_FFT)
    for k in range(N_FFT // HOP):  # overlap-add in N_FFT/HOP strided passes, each vectorised
        block = out_frames[k :: N_FFT // HOP].reshape(-1)
        start = k * HOP
        out[start : start + len(block)] += block
    speech = out[N_FFT : N_FFT + n]

    # Additive white/pink noise at a random SNR, then a random level.
    snr_db = rng.uniform(*SNR_RANGE_DB)
    white = rng.normal(0, 1, n)
    pink = lfilter([1.0], [1.0, -0.97], rng.normal(0, 1, n))
    mix = rng.uniform()
    bg = mix * white / white.std() + (1 - mix) * pink / (pink.std() + 1e-9)
    p_speech = np.mean(speech**2) + 1e-12
    signal = speech + bg * np.sqrt(p_speech / 10 ** (snr_db / 10))
    level = 10 ** (rng.uniform(*LEVEL_RANGE_DB) / 20)  # RMS level, dB below full scale
    signal *= level / (np.sqrt(np.mean(signal**2)) + 1e-12)
    return np.clip(signal, -1.0, 1.0).astype(np.float32)


@dataclass(frozen=True)
class MiniConfig:
    """Size and seed of the mini corpus; durations in seconds."""

    num_speakers: int = 40
    utts_per_speaker: int = 16
    num_test_speakers: int = 20
    test_utts_per_speaker: int = 8
    videos_per_speaker: int = 4
    min_seconds: float = 2.0
    max_seconds: float = 4.0
    seed: int = 777

    def validate(self) -> None:
        if self.num_speakers < 1 or self.num_test_speakers < 2:
            raise MemsvError("need at least 1 training speaker and 2 test speakers")
        if self.utts_per_speaker < 1 or self.test_utts_per_speaker < 2:
            raise MemsvError("need at least 1 utterance per training speaker and 2 per test speaker")
        if not 0.1 <= self.min_seconds <= self.max_seconds:
            raise MemsvError("need 0.1 <= min seconds <= max seconds")
        if self.videos_per_speaker < 1:
            raise MemsvError("need at least 1 video per speaker")


_VIDEO_CHARS = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"))


def _write_speaker(job: tuple[Path, str, int, int, int, MiniConfig]) -> tuple[list[str], int]:
    """Synthesise one speaker's utterances; returns their keys (``spk/video/utt``) and total samples.

    Every random draw comes from a generator seeded by (seed, subset, speaker[, utterance]), so the
    result does not depend on which process runs it or in what order.
    """
    root, name, id_base, s, n_utt, cfg = job
    subset = 0 if name == "train" else 1
    spk_id = f"id{id_base + s + 1:05d}"
    spk_rng = np.random.default_rng([cfg.seed, subset, s])
    spk = sample_speaker(spk_rng)
    n_videos = min(cfg.videos_per_speaker, n_utt)
    videos = ["".join(spk_rng.choice(_VIDEO_CHARS, 11)) for _ in range(n_videos)]
    channels = [random_channel(spk_rng) for _ in range(n_videos)]
    keys, total = [], 0
    for u in range(n_utt):
        v = u % n_videos
        rng = np.random.default_rng([cfg.seed, subset, s, u + 1])
        channel = channels[v] * random_channel(rng, strength=0.3)
        seconds = rng.uniform(cfg.min_seconds, cfg.max_seconds)
        audio = synthesize_utterance(rng, spk, channel, seconds)
        path = root / name / "wav" / spk_id / videos[v] / f"{u + 1:05d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            sf.write(str(tmp), audio, SAMPLE_RATE, subtype="PCM_16", format="WAV")
        keys.append(f"{spk_id}/{videos[v]}/{u + 1:05d}")
        total += len(audio)
    return keys, total


def _write_set(
    root: Path, name: str, id_base: int, n_spk: int, n_utt: int, cfg: MiniConfig, nj: int
) -> tuple[list[str], float]:
    """Synthesise one subset's tree; returns the utterance keys and total seconds."""
    jobs = [(root, name, id_base, s, n_utt, cfg) for s in range(n_spk)]
    if nj > 1:
        # fork: workers start at once and need nothing but numpy/scipy/soundfile (no threads involved).
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        with ctx.Pool(min(nj, n_spk)) as pool:
            results = pool.map(_write_speaker, jobs, chunksize=1)
    else:
        results = [_write_speaker(job) for job in jobs]
    keys = [k for spk_keys, _ in results for k in spk_keys]
    return keys, sum(n for _, n in results) / SAMPLE_RATE


def all_pair_trials(keys: list[str]) -> list[tuple[str, str, bool]]:
    """Every unordered pair of test utterances as (enroll, test, same speaker)."""
    trials = []
    for i, a in enumerate(keys):
        for b in keys[i + 1 :]:
            trials.append((a, b, a.split("/", 1)[0] == b.split("/", 1)[0]))
    return trials


@dataclass(frozen=True)
class MiniSummary:
    """What :func:`prepare_mini` wrote."""

    root: Path
    train_utts: int
    test_utts: int
    num_trials: int
    num_target_trials: int
    audio_seconds: float


def prepare_mini(root: str | Path, cfg: MiniConfig | None = None, *, nj: int = 1) -> MiniSummary:
    """Synthesise the mini corpus under ``root`` and prepare ``root/mini_train`` and ``root/mini_test``.

    Re-running with the same config rewrites identical audio (each file is a function of the seed and
    its speaker/utterance index only), whatever ``nj`` (worker processes, one speaker at a time).
    """
    cfg = cfg or MiniConfig()
    cfg.validate()
    root = Path(root)
    marker = root / MARKER
    trees = [root / "train" / "wav", root / "test" / "wav"]
    if any(t.exists() for t in trees) and not marker.exists():
        raise MemsvError(f"{root}: holds train/wav or test/wav not written by memsv; choose another --out")
    root.mkdir(parents=True, exist_ok=True)
    marker.write_text("memsv mini corpus: train/ test/ mini_train/ mini_test/ are regenerated here\n")
    for tree in trees:  # a re-run with another seed or size must not keep stale utterances
        shutil.rmtree(tree, ignore_errors=True)
    if nj < 1:
        raise MemsvError(f"--nj must be at least 1, got {nj}")
    train, train_s = _write_set(root, "train", 10000, cfg.num_speakers, cfg.utts_per_speaker, cfg, nj)
    test, test_s = _write_set(root, "test", 20000, cfg.num_test_speakers, cfg.test_utts_per_speaker, cfg, nj)
    trials = all_pair_trials(test)
    trial_path = root / "test" / "mini.txt"
    write_lines_atomic(trial_path, [f"{int(lab)} {a}.wav {b}.wav" for a, b, lab in trials])
    prepare_voxceleb(root / "train" / "wav", root / "mini_train")
    prepare_voxceleb(root / "test" / "wav", root / "mini_test", [trial_path])
    return MiniSummary(root, len(train), len(test), len(trials), sum(t[2] for t in trials), train_s + test_s)
