"""On-the-fly processing (issue 13): crops, speed perturbation, reverb/noise, seeded-dither fbank."""

from __future__ import annotations

import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.signal
import soundfile as sf
import torch

from memsv_cli.data import augment as offline
from memsv_cli.data.audio import AudioError, read_audio
from memsv_cli.data.fbank import FbankConfig, compute_fbank
from memsv_cli.data.kaldi_dir import write_data_dir
from memsv_cli.data.mini import random_channel, sample_speaker, synthesize_utterance
from memsv_cli.data.online import (
    ONLINE_SNR_DB,
    SPEED_FACTORS,
    AugmentSources,
    add_noise,
    augment,
    choose_speed,
    chunk_features,
    cmn,
    crop,
    crop_length,
    fbank,
    read_crop,
    reverberate,
    samples_for_frames,
    speed_perturb,
)
from memsv_cli.data.online_fbank import fbank_torch

RATE = 16000


def speech(seed: int, seconds: float, rms_dbfs: float | None = None) -> np.ndarray:
    """Mini-corpus speech (formant synthesis plus 15-35 dB background noise), int16 range, float32."""
    rng = np.random.default_rng(seed)
    x = synthesize_utterance(rng, sample_speaker(rng), random_channel(rng), seconds).astype(np.float64)
    if rms_dbfs is not None:
        x *= 10 ** (rms_dbfs / 20) / np.sqrt(np.mean(x**2))
    return (x * 32768).astype(np.float32)


def snr_db(clean: np.ndarray, noisy: np.ndarray) -> float:
    clean = clean.astype(np.float64)
    return float(10 * np.log10(np.mean(clean**2) / np.mean((noisy - clean) ** 2)))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Speech wavs (3 s, 0.5 s; PCM16 and FLAC), a speech data dir, synthetic noise/music/RIR dirs."""
    root = tmp_path_factory.mktemp("online")
    (root / "wav").mkdir()
    files = {"long": root / "wav" / "long.wav", "short": root / "wav" / "short.wav"}
    sf.write(files["long"], speech(1, 3.0) / 32768, RATE, subtype="PCM_16")
    sf.write(files["short"], speech(2, 0.5) / 32768, RATE, subtype="PCM_16")
    files["flac"] = root / "wav" / "long.flac"
    sf.write(files["flac"], speech(3, 3.0) / 32768, RATE, subtype="PCM_16")
    wav_scp = {f"spk{i}/v/{i:05d}": str(files[k]) for i, k in enumerate(("long", "short", "flac"))}
    write_data_dir(root / "speech", wav_scp, {k: k.split("/")[0] for k in wav_scp})
    dirs = offline.make_synthetic_sources(root / "sources", num_noises=3, num_rirs=3, noise_seconds=1.5)
    return {**files, "speech": root / "speech", **dirs}


def sources_of(corpus: dict[str, Path], **kwargs) -> AugmentSources:  # noqa: ANN003
    return AugmentSources(
        rirs=corpus["rirs"], noise=corpus["noise"], music=corpus["music"], babble=corpus["speech"], **kwargs
    )


# --- crops ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["long", "short", "flac"])
@pytest.mark.parametrize("num", [400, 8000, 32240])
def test_read_crop_equals_read_all_then_crop(corpus, name, num) -> None:
    path = str(corpus[name])
    for seed in range(5):
        rng_whole, rng_part = np.random.default_rng(seed), np.random.default_rng(seed)
        whole = crop(read_audio(path), num, rng_whole)
        part = read_crop(path, num, rng_part)
        assert part.dtype == np.float32 and part.shape == (num,)
        np.testing.assert_array_equal(part, whole)
        # the same draws either way: what follows in the chain does not shift
        assert rng_part.bit_generator.state == rng_whole.bit_generator.state
    # a pipe entry falls back to reading everything: same samples
    piped = read_crop(f"cat {path} |", num, np.random.default_rng(7))
    np.testing.assert_array_equal(piped, read_crop(path, num, np.random.default_rng(7)))


def test_read_crop_reports_bad_audio(tmp_path) -> None:
    stereo, other_rate = tmp_path / "stereo.wav", tmp_path / "8k.wav"
    sf.write(stereo, np.zeros((800, 2)), RATE)
    sf.write(other_rate, np.zeros(800), 8000)
    rng = np.random.default_rng(0)
    with pytest.raises(AudioError, match="2 channels"):
        read_crop(str(stereo), 100, rng)
    with pytest.raises(AudioError, match="sample rate 8000 Hz"):
        read_crop(str(other_rate), 100, rng)
    with pytest.raises(AudioError, match="no such file"):
        read_crop(str(tmp_path / "missing.wav"), 100, rng)


def test_crop_tiles_short_input_from_its_start() -> None:
    short = np.arange(10, dtype=np.float32)
    tiled = crop(short, 25, np.random.default_rng(0))
    np.testing.assert_array_equal(tiled, np.concatenate([short, short, short[:5]]))
    window = crop(np.arange(100, dtype=np.float32), 20, np.random.default_rng(0))
    assert window.shape == (20,) and np.all(np.diff(window) == 1)
    assert samples_for_frames(200) == 32240 and FbankConfig().num_frames(32240) == 200


# --- speed perturbation ----------------------------------------------------------------------------------


def test_speed_perturbation_lengths_and_direction() -> None:
    x = np.ones(16000, np.float32)
    # sox speed 1.1 plays faster: fewer samples; 0.9 more; 1.0 is the input itself
    assert len(speed_perturb(x, 1.1)) == round(16000 / 1.1) == 14545
    assert len(speed_perturb(x, 0.9)) == round(16000 / 0.9) == 17778
    assert speed_perturb(x, 1.0) is x
    for chunk in (1, 400, 16000, 32000, 32240, 12345):
        for factor in (0.9, 1.0, 1.1, 0.95, 1.05):
            out = len(speed_perturb(np.ones(crop_length(chunk, factor), np.float32), factor))
            assert chunk <= out <= chunk + 1, (chunk, factor, out)
    assert crop_length(32000, 1.1) == 35200 and crop_length(32000, 0.9) == 28800


def _dominant_hz(x: np.ndarray) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spec) * RATE / len(x))


def test_speed_perturbation_raises_pitch_and_agrees_with_polyphase_resampling() -> None:
    t = np.arange(RATE) / RATE
    tone = (8000 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    assert _dominant_hz(speed_perturb(tone, 1.1)) == pytest.approx(1100, abs=3)
    assert _dominant_hz(speed_perturb(tone, 0.9)) == pytest.approx(900, abs=3)
    x = speech(4, 2.0)
    low_passed = scipy.signal.filtfilt(*scipy.signal.butter(10, 5000 / 8000), x).astype(np.float32)
    for factor in (0.9, 1.1):
        for signal, min_snr in ((x, 25.0), (low_passed, 50.0)):
            ours, poly = speed_perturb(signal, factor), offline.speed_resample(signal, factor)
            assert abs(len(ours) - len(poly)) <= 1
            n = min(len(ours), len(poly))
            # Measured 32 dB full band (the two low-pass filters differ in the transition band near the
            # new Nyquist, where the mini corpus has fricative energy) and 60 dB on 5-kHz band-limited audio.
            assert snr_db(poly[:n], ours[:n]) > min_snr
            assert np.corrcoef(poly[:n], ours[:n])[0, 1] > 0.999


@pytest.mark.skipif(shutil.which("sox") is None, reason="sox not installed")
def test_speed_perturbation_matches_sox_speed(tmp_path) -> None:
    wav = tmp_path / "x.wav"
    # float (no int16 rounding) at half scale: sox clips resampling overshoots beyond full scale
    sf.write(wav, 0.5 * speech(5, 1.0) / 32768, RATE, subtype="FLOAT")
    x = read_audio(str(wav))
    for factor in (0.9, 1.1):
        theirs = read_audio(f"sox {wav} -t wav -e float - speed {factor} |")
        ours = speed_perturb(x, factor)
        assert len(ours) == len(theirs)
        assert snr_db(theirs, ours) > 70.0  # measured 90-93 dB: soxr is sox's own resampler


# --- reverberation and noise -----------------------------------------------------------------------------


def test_reverberate_is_the_offline_definition_faster(corpus) -> None:
    x = speech(6, 1.0)
    sources = sources_of(corpus)
    for seed in range(3):
        _, rir = sources.random_rir(np.random.default_rng(seed))
        assert float(np.sum(rir.astype(np.float64) ** 2)) == pytest.approx(1.0, rel=1e-5)  # unit energy
        wet = reverberate(x, rir)
        assert wet.dtype == np.float32 and wet.shape == x.shape
        ref = offline.reverberate(x, rir)
        assert np.abs(wet - ref).max() < 1e-5 * np.abs(ref).max()
        # the RIR's scale does not matter; the output keeps the input's power
        np.testing.assert_allclose(reverberate(x, 7.0 * rir), wet, rtol=0, atol=1e-5 * np.abs(wet).max())
        assert np.mean(wet.astype(np.float64) ** 2) == pytest.approx(np.mean(x.astype(np.float64) ** 2), 1e-4)
        assert snr_db(x, wet) < 10  # and it does change the signal
    for delay in (0, 37):
        delta = np.zeros(4000, np.float32)
        delta[delay] = 0.5
        np.testing.assert_allclose(reverberate(x, delta), x, rtol=0, atol=1e-4 * np.abs(x).max())


def test_add_noise_hits_the_requested_snr_within_0_1_db(corpus) -> None:
    x = speech(7, 1.0)
    noise = read_crop(str(Path(corpus["noise"]) / "wav" / "noise-0000.wav"), len(x), np.random.default_rng(0))
    for snr in (0.0, 5.0, 12.5, 30.0):
        assert snr_db(x, add_noise(x, noise, snr)) == pytest.approx(snr, abs=0.1)


def test_augmentation_mix_over_many_seeds(corpus) -> None:
    sources = sources_of(corpus)
    x = speech(8, 0.25)
    n = 2000
    kinds: dict[str | None, int] = {}
    for seed in range(n):
        out, kind = augment(x, sources, np.random.default_rng(seed))
        kinds[kind] = kinds.get(kind, 0) + 1
        assert out.shape == x.shape and out.dtype == np.float32
        if kind is None:
            assert out is x
        elif kind != "reverb":
            low, high = ONLINE_SNR_DB[kind]
            assert low - 0.01 <= snr_db(x, out) <= high + 0.01, (kind, snr_db(x, out))
    # Binomial tolerances of 4 standard deviations.
    augmented = n - kinds.get(None, 0)
    assert abs(augmented / n - 0.6) < 4 * np.sqrt(0.6 * 0.4 / n)
    assert abs(kinds["reverb"] / augmented - 0.5) < 4 * np.sqrt(0.25 / augmented)
    # Additive kinds weigh by their file counts (WeSpeaker): 3 noise, 3 music, 3 speech files.
    additive = augmented - kinds["reverb"]
    for kind in ("noise", "music", "babble"):
        assert abs(kinds[kind] / additive - 1 / 3) < 4 * np.sqrt(2 / 9 / additive)


def test_category_weights_and_single_source_types(corpus) -> None:
    x = speech(9, 0.25)
    weighted = sources_of(corpus, category_weights={"noise": 1.0, "music": 0.0, "babble": 0.0})
    only_rirs = AugmentSources(rirs=corpus["rirs"])
    only_music = AugmentSources(music=corpus["music"])
    for seed in range(200):
        assert augment(x, weighted, np.random.default_rng(seed))[1] in (None, "reverb", "noise")
        assert augment(x, only_rirs, np.random.default_rng(seed))[1] in (None, "reverb")
        assert augment(x, only_music, np.random.default_rng(seed))[1] in (None, "music")
    assert augment(x, AugmentSources(), np.random.default_rng(0), aug_prob=1.0) == (x, None)


def test_noise_sources_read_only_a_crop(corpus, monkeypatch) -> None:
    import memsv_cli.data.online as online

    def refuse(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("a wav source was read whole")

    monkeypatch.setattr(online, "read_audio", refuse)
    sources = AugmentSources(noise=corpus["noise"], babble=corpus["speech"])
    for seed in range(20):
        kind, key, noise = sources.random_noise(4000, np.random.default_rng(seed))
        assert kind in ("noise", "babble") and noise.shape == (4000,) and noise.dtype == np.float32


def test_sources_pickle_without_their_caches(corpus, tmp_path) -> None:
    sources = sources_of(corpus)
    for seed in range(10):
        augment(speech(10, 0.1), sources, np.random.default_rng(seed), aug_prob=1.0)
    assert sources._rirs  # RIRs cached after use
    blob = pickle.dumps(sources)
    assert len(blob) < 2000  # paths and options only
    clone = pickle.loads(blob)
    assert not clone._rirs and not clone._tables
    for seed in range(10):
        a = augment(speech(10, 0.1), sources, np.random.default_rng(seed), aug_prob=1.0)
        b = augment(speech(10, 0.1), clone, np.random.default_rng(seed), aug_prob=1.0)
        assert a[1] == b[1] and np.array_equal(a[0], b[0])
    # the recipe's layout
    for name, src in (("rirs", "rirs"), ("musan_noise", "noise"), ("musan_speech", "speech")):
        shutil.copytree(corpus[src], tmp_path / name)
    found = AugmentSources.from_data_root(tmp_path)
    assert found.has_reverb and found.noise_kinds == ["noise", "babble"]


def test_speed_choice_is_uniform_and_original_first() -> None:
    assert SPEED_FACTORS[0] == 1.0
    counts = np.bincount([choose_speed(np.random.default_rng(s))[0] for s in range(3000)], minlength=3)
    assert np.all(np.abs(counts / 3000 - 1 / 3) < 4 * np.sqrt(2 / 9 / 3000))


# --- features --------------------------------------------------------------------------------------------


def test_fbank_without_dither_matches_kaldi_native_fbank_within_1e3() -> None:
    for seed in range(4):
        x = speech(20 + seed, 2.0)
        for cfg in (FbankConfig(), FbankConfig(num_mel_bins=40, frame_length_ms=20.0, frame_shift_ms=5.0)):
            ours, ref = fbank(x, cfg, 0.0), compute_fbank(x, cfg)
            assert ours.dtype == np.float32 and ours.shape == ref.shape
            assert np.abs(ours - ref).max() < 1e-3
    assert fbank(np.ones(399, np.float32), None, 0.0).shape == (0, 80)


@pytest.mark.parametrize("per_frame", [False, True])
def test_dithered_fbank_is_a_pure_function_of_the_generator(per_frame) -> None:
    x = speech(30, 1.0, rms_dbfs=-10.0)  # loud speech
    clean = fbank(x, None, 0.0)
    a = fbank(x, None, 1.0, np.random.default_rng(1), per_frame_dither=per_frame)
    b = fbank(x, None, 1.0, np.random.default_rng(1), per_frame_dither=per_frame)
    c = fbank(x, None, 1.0, np.random.default_rng(2), per_frame_dither=per_frame)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and not np.array_equal(a, clean)
    # Dither of 1 (int16 units) barely moves loud speech: measured |mean| ~2e-5, mean |diff| ~7e-4.
    assert abs(float(np.mean(a - clean))) < 1e-3
    assert float(np.mean(np.abs(a - clean))) < 1e-2
    with pytest.raises(ValueError, match="random generator"):
        fbank(x, None, 1.0, None)


def test_torch_fbank_matches_and_is_seeded() -> None:
    waves = np.stack([speech(40, 1.0), speech(41, 1.0)])
    ref = np.stack([compute_fbank(w) for w in waves])
    batch = torch.from_numpy(waves)
    assert np.abs(fbank_torch(batch, dtype=torch.float64).numpy() - ref).max() < 1e-3
    assert np.abs(fbank_torch(batch).numpy() - ref).max() < 3e-3  # float32: lowest mel bins
    a = fbank_torch(batch, dither=1.0, generator=torch.Generator().manual_seed(0))
    b = fbank_torch(batch, dither=1.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == (2, 98, 80)


def test_cmn_removes_the_mean_over_time() -> None:
    feats = np.random.default_rng(0).normal(5.0, 2.0, size=(200, 80)).astype(np.float32)
    out = cmn(feats)
    assert out.dtype == np.float32 and np.abs(out.mean(axis=0)).max() < 1e-5
    np.testing.assert_allclose(out, feats - feats.mean(axis=0), atol=1e-5)


# --- the chain -------------------------------------------------------------------------------------------


def test_chunk_features_is_deterministic_and_has_the_chunk_shape(corpus) -> None:
    sources = sources_of(corpus)
    chunk = samples_for_frames(200)
    seen = set()
    for spec in (str(corpus["long"]), str(corpus["short"])):
        for seed in range(12):
            factor = choose_speed(np.random.default_rng(seed))[1]
            kw = {"factor": factor, "sources": sources}
            feats, kind = chunk_features(spec, chunk, np.random.default_rng(seed), **kw)
            again, kind2 = chunk_features(spec, chunk, np.random.default_rng(seed), **kw)
            other, _ = chunk_features(spec, chunk, np.random.default_rng(seed + 100), **kw)
            assert feats.shape == (200, 80) and feats.dtype == np.float32
            assert np.array_equal(feats, again) and kind == kind2
            assert not np.array_equal(feats, other)
            assert np.abs(feats.mean(axis=0)).max() < 1e-4
            seen.add(kind)
    assert {None, "reverb"} <= seen and seen & {"noise", "music", "babble"}


def test_pipe_and_file_entries_give_the_same_chunk(corpus) -> None:
    path = str(corpus["long"])
    a, _ = chunk_features(path, 16000, np.random.default_rng(3), factor=1.1)
    b, _ = chunk_features(f"cat {path} |", 16000, np.random.default_rng(3), factor=1.1)
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_benchmark_script_runs() -> None:
    script = Path(__file__).parents[1] / "benchmarks" / "online_processing.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--quick"],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).parents[1],
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    assert "whole chain" in proc.stdout
