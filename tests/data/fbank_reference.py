"""An independent numpy transcription of Kaldi's ``compute-fbank-feats`` (``feat/feature-fbank.cc``,
``feature-window.cc``, ``mel-computations.cc``), used to make and check ``fbank_reference.npz``.

Run ``.venv/bin/python tests/data/fbank_reference.py`` to regenerate the stored reference; the tests
check that memsv's fbank matches it within 1e-3 and that this script still reproduces the stored file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

FLT_EPSILON = np.finfo(np.float32).eps
REFERENCE = Path(__file__).with_name("fbank_reference.npz")


def fixed_signal(sample_rate: int = 16000, seconds: float = 0.5) -> np.ndarray:
    """A deterministic test signal: a glide, two tones and a decaying click train, int16 values."""
    t = np.arange(int(sample_rate * seconds)) / sample_rate
    glide = 0.4 * np.sin(2 * np.pi * (150 * t + 1500 * t**2))
    tones = 0.2 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 3100 * t + 0.3)
    clicks = 0.3 * ((np.arange(t.size) % 137) == 0) * np.exp(-3 * t)
    return np.round(8000 * (glide + tones + clicks)).astype(np.int16)


def mel(f: np.ndarray | float) -> np.ndarray:
    return 1127.0 * np.log(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def kaldi_fbank_reference(
    samples: np.ndarray,
    sample_rate: int = 16000,
    num_bins: int = 80,
    frame_length_ms: float = 25.0,
    frame_shift_ms: float = 10.0,
    low_freq: float = 20.0,
    high_freq: float = 0.0,
) -> np.ndarray:
    """Log-Mel fbank ``(frames, num_bins)`` in float64, Kaldi defaults otherwise (dither 0)."""
    x = samples.astype(np.float64)
    win = int(sample_rate * 0.001 * frame_length_ms)
    shift = int(sample_rate * 0.001 * frame_shift_ms)
    n_frames = 1 + (len(x) - win) // shift  # snip_edges=true
    frames = np.stack([x[i * shift : i * shift + win] for i in range(n_frames)])
    frames -= frames.mean(axis=1, keepdims=True)  # remove_dc_offset
    pre = frames.copy()  # pre-emphasis 0.97; the first sample uses itself as its predecessor
    pre[:, 1:] -= 0.97 * frames[:, :-1]
    pre[:, 0] -= 0.97 * frames[:, 0]
    n = np.arange(win)
    povey = (0.5 - 0.5 * np.cos(2 * np.pi * n / (win - 1))) ** 0.85
    padded = 1 << int(np.ceil(np.log2(win)))  # round_to_power_of_two
    power = np.abs(np.fft.rfft(pre * povey, n=padded, axis=1)) ** 2
    n_fft_bins = padded // 2  # Kaldi's mel banks ignore the Nyquist bin
    nyquist = 0.5 * sample_rate
    high = high_freq if high_freq > 0 else nyquist + high_freq
    mel_low, mel_high = mel(low_freq), mel(high)
    delta = (mel_high - mel_low) / (num_bins + 1)
    fft_mel = mel(np.arange(n_fft_bins) * sample_rate / padded)
    banks = np.zeros((num_bins, n_fft_bins))
    for b in range(num_bins):
        left, centre, right = mel_low + b * delta, mel_low + (b + 1) * delta, mel_low + (b + 2) * delta
        up = (fft_mel > left) & (fft_mel <= centre)
        down = (fft_mel > centre) & (fft_mel < right)
        banks[b, up] = (fft_mel[up] - left) / (centre - left)
        banks[b, down] = (right - fft_mel[down]) / (right - centre)
    energies = power[:, :n_fft_bins] @ banks.T
    return np.log(np.maximum(energies, FLT_EPSILON))


def main() -> None:
    signal = fixed_signal()
    feats = kaldi_fbank_reference(signal).astype(np.float32)
    np.savez_compressed(REFERENCE, signal=signal, feats=feats)
    print(f"wrote {REFERENCE}: signal {signal.shape}, feats {feats.shape}")


if __name__ == "__main__":
    main()
