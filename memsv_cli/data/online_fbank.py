"""Vectorised Kaldi fbank with dither drawn from an explicit generator (numpy, and batched torch).

The same computation as :func:`memsv_cli.data.fbank.compute_fbank` (kaldi-native-fbank with the options
of :class:`~memsv_cli.data.fbank.FbankConfig`: povey window, pre-emphasis 0.97, DC removal, snip_edges,
FFT rounded to a power of two, power spectrum, Kaldi mel banks, log floored at FLT_EPSILON), written
as whole-array operations. Two reasons for a second implementation (docs/design.md, "Online
augmentation and fbank (issue 13)"):

- **Seedable dither.** kaldi-native-fbank draws its dither from an internal generator we cannot seed;
  on-the-fly training needs every random draw to come from the sample's own ``np.random.Generator`` so
  that a resumed run sees the same features.
- **Speed.** A 2-s chunk takes about 1.5 ms here against about 5.5 ms in kaldi-native-fbank (whose
  per-frame FFT is the slow part), single thread.

:func:`fbank_torch` is the batched torch version of the same steps, for running fbank on the training
device after the workers hand over waveforms; measured, not used by default.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import scipy.fft
from numpy.lib.stride_tricks import sliding_window_view

from memsv_cli.data.fbank import FbankConfig

PREEMPH = 0.97  # as memsv_cli.data.fbank._knf_options
FLT_EPSILON = float(np.finfo(np.float32).eps)  # Kaldi's log floor


def _mel(freq: np.ndarray) -> np.ndarray:
    """Kaldi's mel scale (``MelBanks::MelScale``), float64."""
    return 1127.0 * np.log(1.0 + freq / 700.0)


@functools.lru_cache(maxsize=16)
def fbank_tables(cfg: FbankConfig) -> tuple[int, int, int, np.ndarray, np.ndarray]:
    """Constants of one configuration: ``(window, shift, fft_size, povey (window,), banks (bins, F))``.

    ``window``/``shift`` in samples, ``fft_size`` the window rounded up to a power of two, ``povey`` the
    float64 window function, ``banks`` the float32 triangular mel weights over the ``fft_size // 2 + 1``
    rfft bins (the Nyquist row is zero: Kaldi's banks stop below it). Cached: ``FbankConfig`` is frozen.
    """
    window = cfg.window_samples
    shift = int(cfg.sample_rate * 0.001 * cfg.frame_shift_ms)
    fft_size = 1 << (window - 1).bit_length()
    n = np.arange(window)
    povey = (0.5 - 0.5 * np.cos(2 * math.pi * n / (window - 1))) ** 0.85
    nyquist = 0.5 * cfg.sample_rate
    high = cfg.high_freq_hz if cfg.high_freq_hz > 0 else nyquist + cfg.high_freq_hz
    mel_low, mel_high = _mel(np.float64(cfg.low_freq_hz)), _mel(np.float64(high))
    delta = (mel_high - mel_low) / (cfg.num_mel_bins + 1)
    fft_mel = _mel(np.arange(fft_size // 2) * cfg.sample_rate / fft_size)[:, None]  # (bins, 1)
    left = mel_low + delta * np.arange(cfg.num_mel_bins)[None, :]  # (1, F)
    centre, right = left + delta, left + 2 * delta
    rising = (fft_mel - left) / (centre - left)
    falling = (right - fft_mel) / (right - centre)
    weights = np.where(fft_mel <= centre, rising, falling)
    weights = np.where((fft_mel > left) & (fft_mel < right), weights, 0.0)
    banks = np.zeros((fft_size // 2 + 1, cfg.num_mel_bins), dtype=np.float32)
    banks[: fft_size // 2] = weights
    povey.setflags(write=False)  # shared by every call through the cache
    banks.setflags(write=False)
    return window, shift, fft_size, povey, banks


def _frames(samples: np.ndarray, cfg: FbankConfig) -> np.ndarray:
    """Kaldi frames (snip_edges): a read-only view ``(T, window)`` of ``samples``."""
    window, shift, *_ = fbank_tables(cfg)
    return sliding_window_view(samples, window)[::shift]


def fbank_numpy(
    samples: np.ndarray,
    cfg: FbankConfig | None = None,
    dither: float = 0.0,
    rng: np.random.Generator | None = None,
    *,
    per_frame_dither: bool = False,
) -> np.ndarray:
    """Kaldi log-Mel fbank of one signal, dither drawn from ``rng``.

    Args:
        samples: ``(N,)`` float samples at ``cfg.sample_rate`` Hz in the int16 range.
        cfg: options (``cfg.dither`` is ignored: ``dither`` is the one used).
        dither: standard deviation of the Gaussian dither, in int16 units (Kaldi's ``--dither``).
        rng: the generator of the dither (required when ``dither > 0``).
        per_frame_dither: False (default): one noise sample per waveform sample, shared by the
            overlapping frames (``N`` draws). True: independent noise per frame sample, exactly as Kaldi
            (``T * window`` draws, about 2.5x as many). Each frame's noise has the same distribution
            either way.

    Returns:
        float32 ``(T, num_mel_bins)``, ``T = cfg.num_frames(N)`` (0 rows when shorter than a window).
    """
    cfg = cfg or FbankConfig()
    window, _, fft_size, povey, banks = fbank_tables(cfg)
    # float64 up to the power spectrum: in float32 the FFT's rounding noise (about 1e-7 of the frame's
    # energy) shows in the lowest mel bins, where pre-emphasis leaves speech about 100 dB below the
    # frame total: up to 1.6e-3 off in log-Mel, against 2e-4 in float64, for +0.4 ms per 2-s chunk.
    samples = np.asarray(samples, dtype=np.float64)
    if len(samples) < window:
        return np.zeros((0, cfg.num_mel_bins), dtype=np.float32)
    if dither > 0 and rng is None:
        raise ValueError("dither > 0 needs a random generator")
    if dither > 0 and not per_frame_dither:
        samples = samples + dither * rng.standard_normal(len(samples), dtype=np.float32)
    frames = _frames(samples, cfg)
    if dither > 0 and per_frame_dither:
        frames = frames + dither * rng.standard_normal(frames.shape, dtype=np.float32)
    frames = frames - frames.mean(axis=1, keepdims=True)  # remove_dc_offset (a new array)
    # Pre-emphasis, Kaldi style: the first sample of a frame uses itself as its predecessor.
    emphasised = np.empty_like(frames)
    np.subtract(frames[:, 1:], PREEMPH * frames[:, :-1], out=emphasised[:, 1:])
    emphasised[:, 0] = (1.0 - PREEMPH) * frames[:, 0]
    emphasised *= povey
    spec = scipy.fft.rfft(emphasised, n=fft_size, axis=1, workers=1)  # workers=1: one core per worker
    power = (np.square(spec.real) + np.square(spec.imag)).astype(np.float32)
    return np.log(np.maximum(power @ banks, np.float32(FLT_EPSILON)))


def fbank_torch(waves, cfg: FbankConfig | None = None, dither: float = 0.0, generator=None, dtype=None):  # noqa: ANN001, ANN201
    """Batched Kaldi log-Mel fbank in torch: the same steps as :func:`fbank_numpy`, on any device.

    Args:
        waves: ``torch.Tensor`` ``(B, N)`` in the int16 range, equal-length chunks.
        cfg: options (``cfg.dither`` ignored).
        dither: Gaussian dither std (int16 units), drawn per frame sample as Kaldi does.
        generator: ``torch.Generator`` on ``waves.device`` for the dither (None: torch's global one).
        dtype: compute dtype up to the power spectrum; default ``torch.float32`` (up to ~2e-3 off
            kaldi-native-fbank in the lowest mel bins, see :func:`fbank_numpy`), ``torch.float64`` for
            agreement within 1e-3.

    Returns:
        ``torch.Tensor`` ``(B, T, num_mel_bins)`` float32, ``T = cfg.num_frames(N)``.
    """
    import torch

    cfg = cfg or FbankConfig()
    dtype = dtype or torch.float32
    window, shift, fft_size, povey, banks = fbank_tables(cfg)
    device = waves.device
    frames = waves.to(dtype).unfold(-1, window, shift)  # (B, T, window) view
    if dither > 0:
        frames = frames + dither * torch.randn(frames.shape, generator=generator, device=device, dtype=dtype)
    frames = frames - frames.mean(dim=-1, keepdim=True)
    first = (1.0 - PREEMPH) * frames[..., :1]
    emphasised = torch.cat([first, frames[..., 1:] - PREEMPH * frames[..., :-1]], dim=-1)
    emphasised = emphasised * torch.tensor(povey, dtype=dtype, device=device)
    spec = torch.fft.rfft(emphasised, n=fft_size, dim=-1)
    power = (spec.real.square() + spec.imag.square()).to(torch.float32)
    mel = power @ torch.tensor(banks, device=device)
    return mel.clamp_min(FLT_EPSILON).log()
