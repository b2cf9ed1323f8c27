"""The built-in ``hnm`` corpus: a second synthetic corpus, made differently from ``mini``.

It exists to check generalisation: a recipe tuned on ``mini`` should also work on a corpus whose
voices, texts and channels come from other models. Every part differs from ``mini`` (docs/design.md,
"A second synthetic corpus and the linear baseline"):

- voices: harmonic-plus-noise synthesis. Harmonics of a jittered, shimmered f0 are summed in the time
  domain (Chebyshev recursion), each with the amplitude of the spectral envelope at its frequency, up to
  a per-speaker maximum voiced frequency; above it, and as aspiration below it, noise shaped by the same
  envelope (pitch-synchronously modulated). Envelopes are log-spectra built from Gaussian log-domain
  peaks on an all-pass (bilinear) warped frequency axis; the speaker's warping coefficient plays the
  vocal-tract length, plus a random cepstral (cosine-series) timbre, spectral tilt, nasality (a fixed
  pole/zero pair in Hz), first-harmonic gain, and f0 from four groups (very low to very high voices);
- texts: a made-up language of (C)(C)V(V)(C) syllables with its own 25-segment inventory (six vowels
  and four diphthongs of them, stops as closure + burst + aspiration, fricatives, nasals, liquids,
  glides), words of 1-3 syllables with lexical stress, phrases separated by pauses, phrase-final
  lengthening, and a Fujisaki intonation model (phrase and accent commands);
- channels (one per video): a device (wideband microphone, telephone band with an 8 kHz 8-bit mu-law
  codec, or a low-pass device with requantisation) with a random cosine-series EQ, a synthetic room
  (exponential-decay impulse response, random RT60, frequency-dependent decay) on half the videos, one
  background type (babble of other synthetic talkers, mains hum, fan rumble, hiss) at a per-video SNR,
  a recording level, and on some videos overdrive into clipping.

Layout written under ROOT (``prepare_hnm``), as ``mini``'s::

    ROOT/train/wav/<spk>/<video>/<utt>.wav     ROOT/hnm_train/{wav.scp,utt2spk,spk2utt}
    ROOT/test/wav/<spk>/<video>/<utt>.wav      ROOT/hnm_test/{wav.scp,utt2spk,spk2utt,trials/hnm.kaldi}
    ROOT/test/hnm.txt                          (the trial list in VoxCeleb ``1|0 enroll test`` format)

Speaker ids are ``id3xxxx`` (train) and ``id4xxxx`` (test), disjoint from ``mini``'s. Everything is a
deterministic function of the seed.
"""

from __future__ import annotations

import functools
import multiprocessing as mp
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from numpy.lib.stride_tricks import sliding_window_view
from scipy import fft as sfft
from scipy.ndimage import uniform_filter1d
from scipy.signal import fftconvolve, lfilter, resample_poly

from memsv_cli.atomic import atomic_path, write_lines_atomic
from memsv_cli.data.mini import _VIDEO_CHARS, MiniConfig, all_pair_trials
from memsv_cli.data.prepare import prepare_voxceleb
from memsv_cli.errors import MemsvError

SAMPLE_RATE = 16000
N_FFT = 512  # noise-shaping STFT and the envelope grid (257 bins, 31.25 Hz apart)
HOP = 128  # 8 ms control frames: envelopes, f0 and excitation levels are given at frame boundaries
FRAME_S = HOP / SAMPLE_RATE
MARKER = ".memsv_hnm"  # marks a directory as ours to regenerate
_SALT = 0x686E6D  # "hnm": keeps this corpus's random streams apart from mini's for the same seed
_FREQS = np.fft.rfftfreq(N_FFT, 1.0 / SAMPLE_RATE)  # (257,) Hz
_BIN_HZ = SAMPLE_RATE / N_FFT
_WINDOW32 = np.sqrt(np.hanning(N_FFT + 1)[:-1]).astype(np.float32)  # periodic sqrt-Hann (x itself: Hann)
_OLA_GAIN = N_FFT / (2 * HOP)  # a periodic Hann summed at hop N/4
_DB = np.log(10.0) / 20.0  # dB -> natural-log amplitude
MAX_HARMONIC_HZ = 7600.0  # no harmonic above this (below Nyquist, so no aliasing)
MIN_F0_HZ = 50.0
_K_MAX = int(MAX_HARMONIC_HZ / MIN_F0_HZ)

# Difficulty knobs (docs/design.md). Voices:
REF_WARP = 0.42  # all-pass warping coefficient of the reference speaker (close to the mel scale at 16 kHz)
WARP_SD = 0.02  # per-speaker warping spread within an f0 group (vocal-tract length)
TIMBRE_DB = 2.5  # sd of the first cepstral coefficient of the speaker's timbre (dB); order m: / sqrt(m)
SOURCE_TILT_DB_OCT = (-7.0, -3.0)  # slope of the voiced source above 300 Hz (dB per octave)
# Channels:
DEVICE_PROBS = {"wide": 0.6, "phone": 0.1, "lowpass": 0.3}
DEVICE_EQ_DB = 2.0  # sd of the first cosine coefficient of a device's EQ (dB)
NOISE_PROBS = {"babble": 0.3, "hum": 0.2, "fan": 0.3, "hiss": 0.2}
NOISE_SNR_DB = {"babble": (10.0, 25.0), "hum": (15.0, 30.0), "fan": (10.0, 25.0), "hiss": (20.0, 40.0)}
REVERB_PROB = 0.5
RT60_RANGE_S = (0.15, 0.7)
DRR_RANGE_DB = (0.0, 10.0)  # direct-to-reverberant energy ratio
LEVEL_RANGE_DB = (-32.0, -14.0)  # RMS level of a video (dBFS); its utterances vary +-3 dB around it
HOT_PROB = 0.1  # videos recorded too hot: 6-14 dB of overdrive into clipping
BABBLE_TALKERS = 8  # synthetic talkers (not corpus speakers) that babble is mixed from


# ---------------------------------------------------------------------------------------------------
# The language: segment inventory and syllable grammar

# name: (peaks as (centre Hz for the reference speaker, width on the warped axis, height dB), tilt in dB
# across the warped axis, voicing level dB, noise level dB); None: no such excitation.
_SEGMENTS: dict[str, tuple[tuple[tuple[float, float, float], ...], float, float | None, float | None]] = {
    "a": (((780, 0.045, 12), (1250, 0.05, 9), (2650, 0.05, 3)), -18, 0, None),
    "e": (((430, 0.04, 11), (2050, 0.05, 8), (2750, 0.05, 5)), -16, 0, None),
    "i": (((290, 0.035, 11), (2450, 0.045, 7), (3250, 0.05, 6)), -14, 0, None),
    "o": (((520, 0.04, 12), (880, 0.045, 9), (2550, 0.05, 1)), -22, 0, None),
    "u": (((330, 0.035, 12), (720, 0.045, 6), (2350, 0.05, 0)), -24, -1, None),
    "y": (((370, 0.04, 11), (1550, 0.05, 7), (2450, 0.05, 4)), -18, 0, None),  # central vowel
    "l": (((380, 0.04, 8), (1250, 0.06, 3), (2900, 0.05, 4)), -20, -5, None),
    "r": (((420, 0.04, 8), (1150, 0.05, 6), (1650, 0.04, 6)), -20, -5, None),
    "w": (((300, 0.035, 10), (650, 0.04, 5), (2200, 0.05, -4)), -28, -6, None),
    "j": (((270, 0.035, 9), (2300, 0.05, 6), (3100, 0.05, 4)), -16, -5, None),
    "m": (((250, 0.03, 12), (1150, 0.05, -10), (2200, 0.06, 2)), -26, -7, None),
    "n": (((260, 0.03, 12), (1700, 0.05, -10), (2600, 0.06, 3)), -24, -7, None),
    "N": (((270, 0.03, 12), (2300, 0.05, -10), (3000, 0.06, 2)), -24, -7, None),  # velar nasal
    "f": (((5000, 0.2, 3), (1500, 0.2, 0), (300, 0.1, -6)), 0, None, -24),
    "s": (((6200, 0.06, 14), (4000, 0.1, 3), (300, 0.1, -12)), 6, None, -16),
    "S": (((3300, 0.07, 12), (5500, 0.08, 6), (300, 0.1, -12)), 0, None, -16),  # postalveolar
    "x": (((1900, 0.08, 8), (3500, 0.1, 3), (300, 0.1, -8)), -6, None, -20),  # velar
    "h": (((700, 0.08, 6), (1700, 0.08, 5), (2700, 0.08, 3)), -10, None, -24),  # aspiration
    "z": (((250, 0.04, 6), (6000, 0.07, 10), (4000, 0.1, 2)), 0, -12, -20),
    "cl": (((1000, 0.1, 0), (2000, 0.1, 0), (3000, 0.1, 0)), 0, None, None),  # stop closure
    "vb": (((200, 0.04, 10), (700, 0.1, -6), (2000, 0.1, -10)), -30, -22, None),  # voice bar
    "Bp": (((800, 0.3, 3), (2000, 0.2, 0), (300, 0.1, 0)), -6, None, -16),  # bursts
    "Bt": (((4500, 0.12, 8), (3000, 0.1, 3), (300, 0.1, -8)), 0, None, -12),
    "Bk": (((2200, 0.07, 10), (4000, 0.1, 2), (300, 0.1, -6)), -4, None, -13),
    "sil": (((1000, 0.1, 0), (2000, 0.1, 0), (3000, 0.1, 0)), 0, None, None),
}
_NAMES = list(_SEGMENTS)
_ID = {name: i for i, name in enumerate(_NAMES)}
_VOICE_AMP = np.array([0.0 if s[2] is None else 10 ** (s[2] / 20) for s in _SEGMENTS.values()])
_NOISE_AMP = np.array([0.0 if s[3] is None else 10 ** (s[3] / 20) for s in _SEGMENTS.values()])
_TILT_DB = np.array([s[1] for s in _SEGMENTS.values()])
_PEAK_HZ = np.array([[p[0] for p in s[0]] for s in _SEGMENTS.values()])  # (segments, 3)
_PEAK_WIDTH = np.array([[p[1] for p in s[0]] for s in _SEGMENTS.values()])
_PEAK_DB = np.array([[p[2] for p in s[0]] for s in _SEGMENTS.values()])

_VOWELS = ["a", "e", "i", "o", "u", "y"]
_DIPHTHONGS = [("a", "i"), ("a", "u"), ("o", "i"), ("e", "i")]
_ONSETS = list("ptkbdgfsSxhzmnlrwj")
_ONSET_WEIGHTS = np.array([3, 4, 4, 2, 3, 2, 2, 4, 2, 2, 2, 1, 4, 4, 3, 3, 2, 2], dtype=np.float64)
_CODAS = list("nmNslkr")
_STOP_BURST = {"p": "Bp", "b": "Bp", "t": "Bt", "d": "Bt", "k": "Bk", "g": "Bk"}
# Segment durations (ms, uniform range) before the speaking rate is applied.
_DURATION_MS = {
    "vowel": (60, 120),
    "stressed": (120, 210),
    "nasal": (50, 90),
    "liquid": (40, 80),
    "fricative": (70, 140),
    "closure": (40, 90),
    "burst": (8, 20),
    "aspiration": (15, 40),
    "word_gap": (20, 70),
    "pause": (150, 450),
}
_CLASS = {
    **dict.fromkeys("mnN", "nasal"),
    **dict.fromkeys("lrwj", "liquid"),
    **dict.fromkeys("fsSxhz", "fricative"),
}
ONSET_PROB, CLUSTER_PROB, CODA_PROB, DIPHTHONG_PROB = 0.85, 0.12, 0.3, 0.12


def _ms(rng: np.random.Generator, kind: str) -> float:
    """A random duration (ms) of one segment class."""
    return float(rng.uniform(*_DURATION_MS[kind]))


def _consonant(rng: np.random.Generator, c: str) -> list[tuple[str, float]]:
    """A consonant as (segment, ms) pairs: stops become closure + burst (+ aspiration if voiceless)."""
    if c in _STOP_BURST:
        if c in "bdg":  # voiced: a voice bar under the closure, a weaker burst, no aspiration
            return [("vb", 0.8 * _ms(rng, "closure")), (_STOP_BURST[c], 0.7 * _ms(rng, "burst"))]
        return [
            ("cl", _ms(rng, "closure")),
            (_STOP_BURST[c], _ms(rng, "burst")),
            ("h", _ms(rng, "aspiration")),
        ]
    return [(c, _ms(rng, _CLASS[c]))]


def _syllable(
    rng: np.random.Generator, stressed: bool, final: bool
) -> tuple[list[tuple[str, float]], int, int]:
    """One (C)(C)V(V)(C) syllable as (segment, ms) pairs, and the [start, end) indices of its nucleus."""
    segs: list[tuple[str, float]] = []
    if rng.random() < ONSET_PROB:
        c = _ONSETS[int(rng.choice(len(_ONSETS), p=_ONSET_WEIGHTS / _ONSET_WEIGHTS.sum()))]
        segs += _consonant(rng, c)
        if c in _STOP_BURST and rng.random() < CLUSTER_PROB:
            segs += _consonant(rng, "lr"[int(rng.integers(2))])
    start = len(segs)
    ms = _ms(rng, "stressed" if stressed else "vowel") * (1.4 if final else 1.0)  # phrase-final lengthening
    if rng.random() < DIPHTHONG_PROB:
        v1, v2 = _DIPHTHONGS[int(rng.integers(len(_DIPHTHONGS)))]
        segs += [(v1, 0.7 * ms), (v2, 0.6 * ms)]
    else:
        segs.append((_VOWELS[int(rng.integers(len(_VOWELS)))], ms))
    end = len(segs)
    if rng.random() < CODA_PROB:
        segs += _consonant(rng, _CODAS[int(rng.integers(len(_CODAS)))])
    return segs, start, end


def _phrase(rng: np.random.Generator) -> tuple[list[tuple[str, float]], list[tuple[int, int]]]:
    """2-5 words of 1-3 syllables, then a pause; returns segments and the stressed nuclei's segment spans."""
    segs: list[tuple[str, float]] = []
    accents: list[tuple[int, int]] = []
    n_words = int(rng.integers(2, 6))
    for w in range(n_words):
        n_syl = int(rng.integers(1, 4))
        stress = int(rng.integers(n_syl)) if rng.random() < 0.3 else 0  # mostly word-initial stress
        for s in range(n_syl):
            syl, a, b = _syllable(rng, s == stress, w == n_words - 1 and s == n_syl - 1)
            if s == stress:
                accents.append((len(segs) + a, len(segs) + b))
            segs += syl
        if w < n_words - 1 and rng.random() < 0.3:
            segs.append(("sil", _ms(rng, "word_gap")))
    segs.append(("sil", _ms(rng, "pause")))
    return segs, accents


def _segment_track(
    rng: np.random.Generator, rate: float, n_knots: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Segment ids at ``n_knots`` frame boundaries, accent spans (start, end) in frames, phrase starts.

    The text starts at a random point of its first phrase, as a VoxCeleb segment starts mid-speech.
    """
    ids: list[np.ndarray] = []
    accents: list[tuple[int, int]] = []
    phrases: list[int] = []
    total = 0
    while total < n_knots + 40:
        phrases.append(total)
        segs, spans = _phrase(rng)
        edges = np.cumsum([0] + [max(1, round(ms / rate / (1000 * FRAME_S))) for _, ms in segs])
        accents += [(total + int(edges[a]), total + int(edges[b])) for a, b in spans]
        ids += [np.full(int(edges[i + 1] - edges[i]), _ID[name]) for i, (name, _) in enumerate(segs)]
        total += int(edges[-1])
    shift = int(rng.integers(0, 40))
    track = np.concatenate(ids)[shift : shift + n_knots]
    return track, np.array(accents, dtype=np.float64).reshape(-1, 2) - shift, np.array(phrases) - shift


# ---------------------------------------------------------------------------------------------------
# Voices


def _warp(freqs_hz: np.ndarray, alpha: float) -> np.ndarray:
    """All-pass (bilinear) frequency warping to [0, 1]: larger ``alpha`` stretches the low frequencies."""
    w = np.pi * np.asarray(freqs_hz, dtype=np.float64) / (SAMPLE_RATE / 2)
    return (w + 2 * np.arctan(alpha * np.sin(w) / (1 - alpha * np.cos(w)))) / np.pi


_PEAK_U = _warp(_PEAK_HZ, REF_WARP)  # where each peak sits on the reference speaker's warped axis


def segment_envelopes(alpha: float) -> np.ndarray:
    """Log-amplitude envelopes ``(segments, 257)`` (dB) of every segment for a speaker warping ``alpha``.

    Peaks are fixed on the warped axis, so a larger ``alpha`` (a longer vocal tract) moves them all down
    in Hz, by a frequency-dependent factor.
    """
    u = _warp(_FREQS, alpha)
    d = (u[None, None, :] - _PEAK_U[:, :, None]) / _PEAK_WIDTH[:, :, None]
    return (_PEAK_DB[:, :, None] * np.exp(-0.5 * d**2)).sum(axis=1) + _TILT_DB[:, None] * u[None, :]


def _speaker_colour_db(rng: np.random.Generator, alpha: float, nasality: float) -> np.ndarray:
    """The speaker's fixed spectral offset ``(257,)`` in dB: cepstral timbre + nasal pole/zero."""
    u = _warp(_FREQS, alpha)
    m = np.arange(1, 13)
    timbre = np.cos(np.pi * u[:, None] * m[None, :]) @ (rng.normal(0.0, TIMBRE_DB, 12) / np.sqrt(m))
    pole, zero = rng.uniform(220, 320), rng.uniform(700, 1400)  # Hz: the nasal cavity does not scale
    nasal = nasality * (
        6 * np.exp(-0.5 * ((_FREQS - pole) / 80) ** 2)
        - 14 * np.exp(-0.5 * ((_FREQS - zero) / (0.12 * zero)) ** 2)
    )
    return timbre + nasal


# f0 groups: (probability, Fujisaki base-frequency range in Hz, warping offset). The mean f0 lies ~30%
# above the base, so the groups' means span about 65-95, 95-155, 170-270 and 270-390 Hz.
_F0_GROUPS = (
    (0.15, (50.0, 72.0), 0.05),  # very low
    (0.35, (72.0, 120.0), 0.03),
    (0.35, (130.0, 210.0), -0.03),
    (0.15, (210.0, 300.0), -0.06),  # very high
)


@dataclass(frozen=True)
class Speaker:
    """Voice parameters fixed for all of one speaker's utterances."""

    f0_hz: float  # Fujisaki base frequency: the floor the intonation rises from (Hz)
    phrase_amp: float  # phrase-command amplitude (natural-log f0 units)
    accent_amp: float  # accent-command amplitude (natural-log f0 units)
    jitter: float  # cycle-to-cycle f0 perturbation (standard deviation, fraction)
    shimmer: float  # cycle-to-cycle amplitude perturbation (standard deviation, fraction)
    max_voiced_hz: float  # HNM maximum voiced frequency: harmonics below, noise above
    aspiration: float  # noise amplitude below max_voiced_hz relative to the harmonics
    h1_gain: float  # first-harmonic gain (>1 breathy, <1 pressed)
    rate: float  # speaking-rate factor (>1 faster)
    warp: float  # all-pass warping coefficient (vocal-tract length)
    envelopes: np.ndarray  # (segments, 257) natural-log amplitude of every segment, colour included
    source: np.ndarray  # (257,) natural-log amplitude of the glottal source (its spectral tilt)
    harmonic_signs: np.ndarray  # (_K_MAX,) +-1: the voice's harmonic phase pattern (waveform shape)


def sample_speaker(rng: np.random.Generator) -> Speaker:
    """Draw one speaker's voice."""
    group = int(rng.choice(len(_F0_GROUPS), p=[g[0] for g in _F0_GROUPS]))
    _, (lo, hi), warp_offset = _F0_GROUPS[group]
    alpha = float(REF_WARP + warp_offset + rng.normal(0.0, WARP_SD))
    colour = _speaker_colour_db(rng, alpha, float(rng.beta(1.5, 3.0)))
    tilt_db_oct = rng.uniform(*SOURCE_TILT_DB_OCT)  # glottal source slope, lip radiation included
    return Speaker(
        f0_hz=float(np.exp(rng.uniform(np.log(lo), np.log(hi)))),
        phrase_amp=float(rng.uniform(0.2, 0.5)),
        accent_amp=float(rng.uniform(0.08, 0.35)),
        jitter=float(np.exp(rng.uniform(np.log(0.002), np.log(0.02)))),
        shimmer=float(rng.uniform(0.02, 0.12)),
        max_voiced_hz=float(np.exp(rng.uniform(np.log(2500), np.log(6500)))),
        aspiration=float(10 ** (rng.uniform(-40, -15) / 20)),
        h1_gain=float(10 ** (rng.uniform(-4, 8) / 20)),
        rate=float(rng.uniform(0.8, 1.25)),
        warp=alpha,
        envelopes=_DB * (segment_envelopes(alpha) + colour[None, :]),
        source=_DB * tilt_db_oct * np.log2(np.maximum(_FREQS, 300.0) / 300.0),
        harmonic_signs=rng.choice([-1.0, 1.0], _K_MAX).astype(np.float32),
    )


def _f0_track(
    rng: np.random.Generator, spk: Speaker, n_knots: int, accents: np.ndarray, phrases: np.ndarray
) -> np.ndarray:
    """Fujisaki f0 contour (Hz) at the frame boundaries ``(n_knots,)``.

    ln f0 = ln Fb + sum of phrase commands Ap * a^2 t e^(-a t) + sum of accent commands
    Aa * (Ga(t - T1) - Ga(t - T2)), Ga(t) = min(1 - (1 + b t) e^(-b t), 0.9); a = 2.5/s, b = 20/s.
    """
    t = np.arange(n_knots) * FRAME_S
    tp = np.maximum(t[None, :] - (phrases[:, None] * FRAME_S - 0.15), 0.0)  # commands precede the phrase
    amp_p = spk.phrase_amp * rng.uniform(0.6, 1.3, len(phrases))
    log_f0 = (
        np.log(spk.f0_hz) + rng.normal(0.0, 0.05) + (amp_p[:, None] * 6.25 * tp * np.exp(-2.5 * tp)).sum(0)
    )

    def ga(tt: np.ndarray) -> np.ndarray:
        tt = np.maximum(tt, 0.0)
        return np.minimum(1 - (1 + 20 * tt) * np.exp(-20 * tt), 0.9)

    on, off = accents[:, :1] * FRAME_S - 0.05, accents[:, 1:] * FRAME_S - 0.05
    amp_a = spk.accent_amp * rng.uniform(0.5, 1.3, len(accents))
    log_f0 += (amp_a[:, None] * (ga(t[None, :] - on) - ga(t[None, :] - off))).sum(0)
    log_f0 += uniform_filter1d(rng.normal(0.0, 0.03, n_knots), 9, mode="nearest")  # micro-prosody
    return np.maximum(np.exp(log_f0), MIN_F0_HZ)


def _glottal_phase(rng: np.random.Generator, f0_knots: np.ndarray, n: int, jitter: float) -> np.ndarray:
    """Glottal phase in cycles ``(n,)`` float64; each cycle's f0 is perturbed by ``jitter`` (fraction)."""
    f0 = np.interp(np.arange(n), np.arange(len(f0_knots)) * HOP, f0_knots)
    cycle = (np.cumsum(f0) / SAMPLE_RATE).astype(np.int64)
    f0 *= 1.0 + rng.normal(0.0, jitter, int(cycle[-1]) + 1)[cycle]
    return np.cumsum(f0) / SAMPLE_RATE + rng.random()


def _envelope_at(log_env: np.ndarray, freqs_hz: np.ndarray) -> np.ndarray:
    """Linear interpolation of each row of ``log_env`` ``(F, 257)`` at ``freqs_hz`` ``(F, K)``."""
    pos = np.clip(freqs_hz / _BIN_HZ, 0.0, len(_FREQS) - 1.001)
    i0 = pos.astype(np.int64)
    lo = np.take_along_axis(log_env, i0, axis=1)
    hi = np.take_along_axis(log_env, i0 + 1, axis=1)
    return lo + (pos - i0) * (hi - lo)


def _harmonic_amplitudes(spk: Speaker, f0: np.ndarray, log_env: np.ndarray, voice: np.ndarray) -> np.ndarray:
    """Amplitudes ``(knots, K)`` of harmonics 1..K at the frame boundaries.

    The sqrt(f0) factor keeps the power per Hz of the harmonics equal to the envelope whatever the f0,
    so a high voice is not louder than a low one; the logistic taper fades harmonics out at the maximum
    voiced frequency, where the noise part takes over.
    """
    k = np.arange(1, int(min(spk.max_voiced_hz + 900, MAX_HARMONIC_HZ) / f0.min()) + 1)
    fk = f0[:, None] * k[None, :]
    amp = np.exp(_envelope_at(log_env, fk)) * (np.sqrt(f0 / 4000.0) * voice)[:, None]
    amp *= 1.0 / (1.0 + np.exp((fk - spk.max_voiced_hz) / 150.0)) * (fk < MAX_HARMONIC_HZ)
    amp[:, 0] *= spk.h1_gain
    return (amp * spk.harmonic_signs[: len(k)]).astype(np.float32)


def _harmonic_part(
    rng: np.random.Generator, spk: Speaker, phase: np.ndarray, cos_phase: np.ndarray, amp: np.ndarray
) -> np.ndarray:
    """Sum over k of amp_k(t) cos(2 pi k phase(t)), amplitudes linear between frame boundaries.

    ``phase`` ``(F * HOP,)`` cycles and its ``cos(2 pi phase)`` (float32); ``amp`` ``(F + 1, K)``.
    cos(k x) comes from the Chebyshev recursion c_(k+1) = 2 c_1 c_k - c_(k-1) (two multiply-adds per
    sample and harmonic instead of a cosine); float32 keeps it in cache, its error stays < 1e-3 for the
    <= 152 harmonics used. Only frames with some voicing are computed.
    """
    n_frames = len(amp) - 1
    out = np.zeros((n_frames, HOP), dtype=np.float32)
    rows = np.flatnonzero(np.abs(amp[:-1]).max(axis=1) + np.abs(amp[1:]).max(axis=1) > 0)  # voiced frames
    c1 = cos_phase.reshape(n_frames, HOP)[rows]
    two_c1 = 2 * c1
    a0 = np.ascontiguousarray(amp[:-1][rows].T)  # (K, frames): one contiguous row per harmonic
    da = np.ascontiguousarray((amp[1:] - amp[:-1])[rows].T)
    acc0, acc1, tmp = np.zeros_like(c1), np.zeros_like(c1), np.empty_like(c1)
    prev, cur = np.ones_like(c1), c1.copy()
    for k in range(amp.shape[1]):  # in place: no temporaries inside the loop
        np.multiply(a0[k, :, None], cur, out=tmp)
        acc0 += tmp
        np.multiply(da[k, :, None], cur, out=tmp)
        acc1 += tmp
        np.multiply(two_c1, cur, out=tmp)
        tmp -= prev
        prev, cur, tmp = cur, tmp, prev
    acc1 *= np.arange(HOP, dtype=np.float32) / HOP
    out[rows] = acc0 + acc1
    out = out.reshape(-1).astype(np.float64)
    # Shimmer: one random gain per glottal cycle, linear in between (no steps, so no clicks).
    cycle = np.floor(phase).astype(np.int64)
    cycle -= cycle[0]
    gain = 1.0 + spk.shimmer * rng.standard_normal(int(cycle[-1]) + 2)
    frac = phase - np.floor(phase)
    return out * (gain[cycle] + frac * (gain[cycle + 1] - gain[cycle]))


def _stft_filter(x: np.ndarray, gains: np.ndarray) -> np.ndarray:
    """Shape ``x`` ``(F * HOP,)`` by magnitude ``gains`` ``(F + 1, 257)`` given at the frame boundaries.

    Frame f is centred on sample f * HOP; sqrt-Hann analysis and synthesis, overlap-add at hop N/4.
    """
    pad = N_FFT // 2
    padded = np.pad(x, (pad, pad))
    frames = sliding_window_view(padded.astype(np.float32), N_FFT)[::HOP] * _WINDOW32
    spec = sfft.rfft(frames, axis=1) * gains.astype(np.float32)  # float32 halves the FFT time
    out_frames = sfft.irfft(spec, N_FFT, axis=1) * _WINDOW32
    out = np.zeros(len(padded))
    step = N_FFT // HOP
    for k in range(step):  # N_FFT/HOP strided passes, each one vectorised
        block = out_frames[k::step].reshape(-1)
        out[k * HOP : k * HOP + len(block)] += block
    return out[pad : pad + len(x)] / _OLA_GAIN


def synthesize_speech(rng: np.random.Generator, spk: Speaker, seconds: float) -> np.ndarray:
    """One dry utterance (no room, noise, device): float64 ``(round(seconds * 16000),)``, arbitrary scale."""
    n = int(round(seconds * SAMPLE_RATE))
    margin = 4  # frames each side, so the kept part has full overlap-add and no edge transients
    n_frames = -(-n // HOP) + 2 * margin
    ids, accents, phrases = _segment_track(rng, spk.rate * rng.uniform(0.92, 1.08), n_frames + 1)
    log_env = uniform_filter1d(spk.envelopes[ids], 5, axis=0, mode="nearest")  # coarticulation (40 ms)
    voice = uniform_filter1d(_VOICE_AMP[ids], 3, mode="nearest")
    noise_amp = uniform_filter1d(_NOISE_AMP[ids], 2, mode="nearest")
    f0 = _f0_track(rng, spk, n_frames + 1, accents, phrases)
    phase = _glottal_phase(rng, f0, n_frames * HOP, spk.jitter)
    voiced_env = log_env + spk.source[None, :]  # frication and bursts do not pass the glottal source
    cos_phase = np.cos(2 * np.pi * (phase % 1.0)).astype(np.float32)
    harmonics = _harmonic_part(rng, spk, phase, cos_phase, _harmonic_amplitudes(spk, f0, voiced_env, voice))
    # Noise part: above the maximum voiced frequency and as aspiration in voiced frames, frication and
    # bursts elsewhere; voiced noise is modulated with the glottal cycle, as aspiration is in speech.
    above = 1.0 / (1.0 + np.exp(-(_FREQS - spk.max_voiced_hz) / 300.0))
    gains = voice[:, None] * np.exp(voiced_env) * (spk.aspiration + above[None, :])
    gains += noise_amp[:, None] * np.exp(log_env)
    voicing = np.minimum(np.interp(np.arange(n_frames * HOP), np.arange(n_frames + 1) * HOP, voice), 1.0)
    white = rng.standard_normal(n_frames * HOP, dtype=np.float32) * (1.0 + 0.6 * voicing * cos_phase)
    speech = harmonics + _stft_filter(white, gains)
    return speech[margin * HOP : margin * HOP + n]


# ---------------------------------------------------------------------------------------------------
# Channels


@dataclass(frozen=True)
class Channel:
    """One video's recording chain: room, background, device, level, codec."""

    device: str  # wide | phone | lowpass
    response: np.ndarray  # (257,) device magnitude response (band limits x EQ)
    rir: np.ndarray | None  # room impulse response, direct path at sample 0; None: close-talking
    noise: str  # babble | hum | fan | hiss
    snr_db: float  # the video's SNR; its utterances vary +-3 dB around it
    talkers: np.ndarray  # babble: indices into the babble bank
    hum: np.ndarray  # (1600,) one 0.1 s period of mains hum (50 and 60 Hz both repeat in 1600 samples)
    level_db: float  # RMS level (dBFS) of the video
    hot_db: float  # > 0: overdriven by this much into clipping
    soft_clip: bool  # overdrive saturates (tanh) instead of clipping hard
    bits: int  # word length of the lowpass device's requantiser


def _device_response(rng: np.random.Generator, device: str) -> np.ndarray:
    """Band limits of the device class times a random EQ (cosine series in log frequency), ``(257,)``."""
    f = np.maximum(_FREQS, 1.0)
    lo, hi, order = {
        "phone": (rng.uniform(250, 350), rng.uniform(3200, 3500), 8),
        "lowpass": (rng.uniform(100, 250), rng.uniform(3500, 5500), 6),
        "wide": (rng.uniform(50, 150), rng.uniform(6000, 7800), 4),
    }[device]
    db = -10 * np.log10(1 + (lo / f) ** order) - 10 * np.log10(1 + (f / hi) ** (2 * order))
    x = np.log(np.maximum(f, 50.0) / 50.0) / np.log(SAMPLE_RATE / 2 / 50.0)
    m = np.arange(1, 7)
    db += np.cos(np.pi * x[:, None] * m[None, :]) @ (rng.normal(0.0, DEVICE_EQ_DB, 6) / np.sqrt(m))
    return 10 ** (db / 20)


def room_response(rng: np.random.Generator) -> np.ndarray:
    """A synthetic room impulse response: direct path (1.0 at sample 0), early reflections, decaying tail.

    The tail is noise decaying 60 dB over a random RT60, its high band twice as fast (air and wall
    absorption), scaled to a random direct-to-reverberant ratio.
    """
    rt60 = rng.uniform(*RT60_RANGE_S)
    n = int(1.2 * rt60 * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    white = rng.standard_normal(n)
    low = lfilter([0.2], [1.0, -0.8], white)
    tail = low * np.exp(-6.91 * t / rt60) + (white - low) * np.exp(-13.8 * t / rt60)
    tail *= np.clip((t - 0.002) / 0.008, 0.0, 1.0)  # the diffuse tail builds up over the first 10 ms
    tail *= np.sqrt(10 ** (-rng.uniform(*DRR_RANGE_DB) / 10) / np.sum(tail**2))
    rir = tail
    taps = rng.integers(int(0.002 * SAMPLE_RATE), int(0.02 * SAMPLE_RATE), 5)
    np.add.at(rir, taps, rng.uniform(0.2, 0.6, 5) * rng.choice([-1.0, 1.0], 5))
    rir[0] = 1.0
    return rir


def _hum_period(rng: np.random.Generator) -> np.ndarray:
    """0.1 s of mains hum (50 or 60 Hz and 9 harmonics, random roll-off and phases): ``(1600,)``."""
    mains = 50.0 if rng.random() < 0.5 else 60.0
    h = np.arange(1, 11)
    amps = h ** -rng.uniform(0.3, 2.0) * np.where(h % 2 == 1, 1.0, rng.uniform(0.2, 1.0))  # buzz: odd ones
    t = np.arange(1600) / SAMPLE_RATE
    return (
        amps[:, None] * np.cos(2 * np.pi * mains * h[:, None] * t + rng.uniform(0, 2 * np.pi, 10)[:, None])
    ).sum(0)


def sample_channel(rng: np.random.Generator) -> Channel:
    """Draw one video's channel."""
    device = str(rng.choice(list(DEVICE_PROBS), p=list(DEVICE_PROBS.values())))
    noise = str(rng.choice(list(NOISE_PROBS), p=list(NOISE_PROBS.values())))
    return Channel(
        device=device,
        response=_device_response(rng, device),
        rir=room_response(rng) if rng.random() < REVERB_PROB else None,
        noise=noise,
        snr_db=float(rng.uniform(*NOISE_SNR_DB[noise])),
        talkers=rng.choice(BABBLE_TALKERS, int(rng.integers(3, 7)), replace=False),
        hum=_hum_period(rng),
        level_db=float(rng.uniform(*LEVEL_RANGE_DB)),
        hot_db=float(rng.uniform(6, 14)) if rng.random() < HOT_PROB else 0.0,
        soft_clip=bool(rng.random() < 0.5),
        bits=int(rng.integers(9, 13)),
    )


@functools.lru_cache(maxsize=2)
def babble_bank(seed: int, seconds: float) -> tuple[np.ndarray, ...]:
    """Dry speech of ``BABBLE_TALKERS`` synthetic talkers (none of them a corpus speaker), unit RMS.

    Cached per process: every babble video of a run mixes from the same bank, built once per worker.
    """
    bank = []
    for b in range(BABBLE_TALKERS):
        rng = np.random.default_rng([seed, _SALT, 2, b])
        x = synthesize_speech(rng, sample_speaker(rng), seconds)
        bank.append(x / (np.sqrt(np.mean(x**2)) + 1e-12))
    return tuple(bank)


def _background(rng: np.random.Generator, ch: Channel, n: int, bank: tuple[np.ndarray, ...]) -> np.ndarray:
    """Background noise ``(n,)`` of the video's type, arbitrary scale."""
    if ch.noise == "babble":
        idx = np.arange(n)
        return sum(  # each talker from a random point of its recording, at its own level
            10 ** (rng.uniform(-6, 0) / 20) * np.take(bank[t], idx + rng.integers(len(bank[t])), mode="wrap")
            for t in ch.talkers
        )
    if ch.noise == "hum":
        return np.take(ch.hum, np.arange(n) + rng.integers(1600), mode="wrap") + 0.05 * rng.standard_normal(n)
    if ch.noise == "fan":  # rumble: strongly low-passed noise
        return lfilter([1.0], [1.0, -rng.uniform(0.95, 0.995)], rng.standard_normal(n))
    return rng.standard_normal(n)


def _apply_response(x: np.ndarray, response: np.ndarray) -> np.ndarray:
    """Zero-phase filtering of a whole signal by a ``(257,)`` magnitude response (padded: no wrap-around)."""
    n_fft = sfft.next_fast_len(len(x) + 2 * N_FFT, real=True)
    h = np.interp(np.fft.rfftfreq(n_fft, 1.0 / SAMPLE_RATE), _FREQS, response)
    return sfft.irfft(sfft.rfft(x, n_fft) * h, n_fft)[: len(x)]


def _mu_law_8k(x: np.ndarray) -> np.ndarray:
    """Telephone codec: resample to 8 kHz, 8-bit mu-law (G.711-like, mu = 255), back to 16 kHz."""
    x8 = np.clip(resample_poly(x, 1, 2), -1.0, 1.0)
    y = np.sign(x8) * np.log1p(255 * np.abs(x8)) / np.log1p(255)
    y = np.round(y * 127.5) / 127.5
    x8 = np.sign(y) * np.expm1(np.abs(y) * np.log1p(255)) / 255
    return resample_poly(x8, 2, 1)[: len(x)]


def record(
    rng: np.random.Generator, ch: Channel, speech: np.ndarray, bank: tuple[np.ndarray, ...] = ()
) -> np.ndarray:
    """Pass dry speech through a video's channel: room, background, device, level, overdrive, codec.

    Returns float32 ``(len(speech),)`` in [-1, 1).
    """
    x = fftconvolve(speech, ch.rir)[: len(speech)] if ch.rir is not None else speech
    bg = _background(rng, ch, len(x), bank)
    snr_db = ch.snr_db + rng.uniform(-3.0, 3.0)
    x = x + bg * np.sqrt(np.mean(x**2) / (np.mean(bg**2) + 1e-20) / 10 ** (snr_db / 10))
    x = _apply_response(x, ch.response)
    x *= 10 ** ((ch.level_db + rng.uniform(-3.0, 3.0)) / 20) / (np.sqrt(np.mean(x**2)) + 1e-12)
    if ch.hot_db > 0:  # overdrive into hard clipping or soft saturation
        x *= 10 ** (ch.hot_db / 20)
        x = np.tanh(x) if ch.soft_clip else np.clip(x, -1.0, 1.0)
    if ch.device == "phone":
        x = _mu_law_8k(x)
    elif ch.device == "lowpass":
        x = np.round(x * 2 ** (ch.bits - 1)) / 2 ** (ch.bits - 1)
    return np.clip(x, -1.0, 32767 / 32768).astype(np.float32)


# ---------------------------------------------------------------------------------------------------
# The corpus


@dataclass(frozen=True)
class HnmConfig(MiniConfig):
    """Size and seed of the hnm corpus (mini's fields and checks); utterances of 2-6 s instead of 2-4 s."""

    max_seconds: float = 6.0


def _write_speaker(job: tuple[Path, str, int, int, int, HnmConfig]) -> tuple[list[str], int]:
    """Synthesise one speaker's utterances; returns their keys (``spk/video/utt``) and total samples.

    Every random draw comes from a generator seeded by (seed, salt, subset, speaker[, utterance]), so the
    result does not depend on which process runs it or in what order.
    """
    root, name, id_base, s, n_utt, cfg = job
    subset = 0 if name == "train" else 1
    spk_id = f"id{id_base + s + 1:05d}"
    spk_rng = np.random.default_rng([cfg.seed, _SALT, subset, s])
    spk = sample_speaker(spk_rng)
    n_videos = min(cfg.videos_per_speaker, n_utt)
    videos = ["".join(spk_rng.choice(_VIDEO_CHARS, 11)) for _ in range(n_videos)]
    channels = [sample_channel(spk_rng) for _ in range(n_videos)]
    needs_babble = any(ch.noise == "babble" for ch in channels)
    bank = babble_bank(cfg.seed, cfg.max_seconds) if needs_babble else ()
    keys, total = [], 0
    for u in range(n_utt):
        v = u % n_videos
        rng = np.random.default_rng([cfg.seed, _SALT, subset, s, u + 1])
        speech = synthesize_speech(rng, spk, rng.uniform(cfg.min_seconds, cfg.max_seconds))
        audio = record(rng, channels[v], speech, bank)
        path = root / name / "wav" / spk_id / videos[v] / f"{u + 1:05d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            sf.write(str(tmp), audio, SAMPLE_RATE, subtype="PCM_16", format="WAV")
        keys.append(f"{spk_id}/{videos[v]}/{u + 1:05d}")
        total += len(audio)
    return keys, total


def _write_set(
    root: Path, name: str, id_base: int, n_spk: int, n_utt: int, cfg: HnmConfig, nj: int
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


@dataclass(frozen=True)
class HnmSummary:
    """What :func:`prepare_hnm` wrote (the same fields as ``mini``'s summary)."""

    root: Path
    train_utts: int
    test_utts: int
    num_trials: int
    num_target_trials: int
    audio_seconds: float


def prepare_hnm(root: str | Path, cfg: HnmConfig | None = None, *, nj: int = 1) -> HnmSummary:
    """Synthesise the hnm corpus under ``root`` and prepare ``root/hnm_train`` and ``root/hnm_test``.

    Re-running with the same config rewrites identical audio (each file is a function of the seed and
    its speaker/utterance index only), whatever ``nj`` (worker processes, one speaker at a time). Trees
    ``root/{train,test}/wav`` are replaced only when ``root`` holds our marker file.
    """
    cfg = cfg or HnmConfig()
    cfg.validate()
    if nj < 1:
        raise MemsvError(f"--nj must be at least 1, got {nj}")
    root = Path(root)
    marker = root / MARKER
    trees = [root / "train" / "wav", root / "test" / "wav"]
    if any(t.exists() for t in trees) and not marker.exists():
        raise MemsvError(
            f"{root}: holds train/wav or test/wav not written by memsv hnm; choose another --out"
        )
    root.mkdir(parents=True, exist_ok=True)
    marker.write_text("memsv hnm corpus: train/ test/ hnm_train/ hnm_test/ are regenerated here\n")
    for tree in trees:  # a re-run with another seed or size must not keep stale utterances
        shutil.rmtree(tree, ignore_errors=True)
    train, train_s = _write_set(root, "train", 30000, cfg.num_speakers, cfg.utts_per_speaker, cfg, nj)
    test, test_s = _write_set(root, "test", 40000, cfg.num_test_speakers, cfg.test_utts_per_speaker, cfg, nj)
    trials = all_pair_trials(test)
    trial_path = root / "test" / "hnm.txt"
    write_lines_atomic(trial_path, [f"{int(lab)} {a}.wav {b}.wav" for a, b, lab in trials])
    prepare_voxceleb(root / "train" / "wav", root / "hnm_train")
    prepare_voxceleb(root / "test" / "wav", root / "hnm_test", [trial_path])
    return HnmSummary(root, len(train), len(test), len(trials), sum(t[2] for t in trials), train_s + test_s)
