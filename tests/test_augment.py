"""Augmentation: SNRs, reverberation, speed perturbation and the data directories they write."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from memsv_cli.cli import main
from memsv_cli.data.augment import (
    AugmentOptions,
    add_noise,
    augment_data_dir,
    fit_length,
    make_synthetic_sources,
    parse_factors,
    read_wav_entry,
    reverberate,
    speed_perturb_data_dir,
    speed_resample,
    write_wav,
)
from memsv_cli.data.kaldi_dir import load_data_dir, read_table, read_wav_scp, write_data_dir
from memsv_cli.errors import InputError, MemsvError

RATE = 16000
needs_sox = pytest.mark.skipif(shutil.which("sox") is None, reason="sox not installed")


def snr_db(clean: np.ndarray, noisy: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(clean.astype(np.float64) ** 2) / np.mean((noisy - clean) ** 2)))


def dominant_hz(x: np.ndarray) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spec) * RATE / len(x))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Six 0.5 s tone 'utterances' of two speakers, plus synthetic noise/music/RIR sets."""
    root = tmp_path_factory.mktemp("aug")
    t = np.arange(RATE // 2) / RATE
    wav_scp, utt2spk = {}, {}
    for i in range(6):
        spk = f"id1000{i % 2}"
        utt = f"{spk}/vid{i}/{i:05d}"
        path = root / "audio" / f"u{i}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_wav(path, 0.3 * np.sin(2 * np.pi * (200 + 100 * i) * t), RATE)
        wav_scp[utt], utt2spk[utt] = str(path), spk
    write_data_dir(root / "data", wav_scp, utt2spk)
    dirs = make_synthetic_sources(root / "sources", num_noises=3, num_rirs=3, noise_seconds=0.3)
    return {"data": root / "data", "speech": root / "data", **dirs}


def test_add_noise_reaches_requested_snr() -> None:
    rng = np.random.default_rng(1)
    speech = rng.standard_normal(8000).astype(np.float32)
    noise = 5 * rng.standard_normal(8000).astype(np.float32)
    for snr in (0.0, 7.5, 20.0):
        assert snr_db(speech, add_noise(speech, noise, snr)) == pytest.approx(snr, abs=1e-3)


def test_fit_length_loops_short_noise_and_crops_long_noise() -> None:
    rng = np.random.default_rng(0)
    short = np.arange(10, dtype=np.float32)
    looped = fit_length(short, 35, rng)
    assert len(looped) == 35
    # consecutive samples follow the noise cyclically: the loop has no gap or repeat
    assert np.all((looped[1:] - looped[:-1]) % 10 == 1)
    long = np.arange(100, dtype=np.float32)
    window = fit_length(long, 20, rng)
    assert len(window) == 20 and np.all(np.diff(window) == 1)


def test_reverberate_with_delayed_impulse_is_identity() -> None:
    rng = np.random.default_rng(2)
    speech = rng.standard_normal(4000).astype(np.float32)
    rir = np.zeros(300)
    rir[37] = 0.25  # pre-delay and gain are both undone (direct-path alignment, power normalisation)
    np.testing.assert_allclose(reverberate(speech, rir), speech, atol=1e-4)


def test_reverberate_keeps_length_and_power_but_smears_the_signal() -> None:
    rng = np.random.default_rng(3)
    speech = rng.standard_normal(4000).astype(np.float32)
    rir = np.zeros(2000)
    rir[0] = 1.0
    rir[1:] = 0.2 * rng.standard_normal(1999) * np.exp(-np.arange(1999) / 400)
    wet = reverberate(speech, rir)
    assert wet.shape == speech.shape
    assert np.mean(wet**2) == pytest.approx(np.mean(speech**2), rel=1e-4)
    corr = float(np.corrcoef(wet, speech)[0, 1])
    assert 0.3 < corr < 0.99  # still aligned with the direct path, yet clearly reverberant


def test_speed_resample_changes_duration_and_pitch() -> None:
    t = np.arange(RATE) / RATE
    tone = np.sin(2 * np.pi * 500 * t).astype(np.float32)
    fast = speed_resample(tone, 1.1)
    slow = speed_resample(tone, 0.9)
    assert len(fast) == pytest.approx(RATE / 1.1, abs=2)
    assert len(slow) == pytest.approx(RATE / 0.9, abs=2)
    assert dominant_hz(fast) == pytest.approx(550, abs=3)
    assert dominant_hz(slow) == pytest.approx(450, abs=3)


@pytest.mark.parametrize(
    ("aug_type", "low", "high"), [("noise", 0, 15), ("music", 5, 15), ("babble", 13, 20)]
)
def test_additive_copies_use_wespeaker_snr_ranges(corpus, tmp_path, aug_type, low, high) -> None:
    source = corpus["speech"] if aug_type == "babble" else corpus[aug_type]
    count = augment_data_dir(corpus["data"], tmp_path / aug_type, source, AugmentOptions(aug_type, seed=5))
    assert count == 6
    out = load_data_dir(tmp_path / aug_type)
    clean = load_data_dir(corpus["data"])
    assert set(out.wav_scp) == {u + f"-{aug_type}" for u in clean.wav_scp}
    assert all(out.utt2spk[u + f"-{aug_type}"] == s for u, s in clean.utt2spk.items())  # same speakers
    for utt, desc in read_table(tmp_path / aug_type / "utt2aug", max_fields=None).items():
        fields = desc.split()
        assert fields[0] == aug_type
        snrs = [float(x) for x in fields[2::2]]
        assert all(low <= s <= high for s in snrs)
        if aug_type == "babble":
            assert 3 <= len(snrs) <= 6  # 3-7 speakers, capped by the 6 available utterances
        else:
            # the written audio really has the recorded SNR (up to 16-bit rounding)
            base = utt[: -len(aug_type) - 1]
            speech = read_wav_entry(clean.wav_scp[base])
            noisy = read_wav_entry(out.wav_scp[utt])
            assert snr_db(speech, noisy) == pytest.approx(snrs[0], abs=0.05)


def test_reverb_copies_convolve_with_the_recorded_rir(corpus, tmp_path) -> None:
    augment_data_dir(corpus["data"], tmp_path / "rev", corpus["rirs"], AugmentOptions("reverb"))
    out = load_data_dir(tmp_path / "rev")
    clean = load_data_dir(corpus["data"])
    rirs = read_wav_scp(corpus["rirs"] / "wav.scp")
    used = read_table(tmp_path / "rev" / "utt2aug", max_fields=None)
    for utt, entry in clean.wav_scp.items():
        kind, rir_key = used[utt + "-reverb"].split()
        assert kind == "reverb" and rir_key in rirs
        dry = read_wav_entry(entry)
        wet = read_wav_entry(out.wav_scp[utt + "-reverb"])
        expected = reverberate(dry, read_wav_entry(rirs[rir_key]))
        np.testing.assert_allclose(wet, expected, atol=2e-4)  # 16-bit rounding
        assert np.max(np.abs(wet - dry)) > 0.05  # and it is not the dry signal


def test_augmentation_is_deterministic_and_independent_of_nj(corpus, tmp_path) -> None:
    opts = AugmentOptions("noise", seed=11)
    augment_data_dir(corpus["data"], tmp_path / "a", corpus["noise"], opts, nj=1)
    augment_data_dir(corpus["data"], tmp_path / "b", corpus["noise"], opts, nj=2)
    augment_data_dir(corpus["data"], tmp_path / "c", corpus["noise"], AugmentOptions("noise", seed=12))
    files_a = sorted((tmp_path / "a" / "wav").rglob("*.wav"))
    assert len(files_a) == 6
    for fa in files_a:
        rel = fa.relative_to(tmp_path / "a")
        assert fa.read_bytes() == (tmp_path / "b" / rel).read_bytes()
    assert any(
        fa.read_bytes() != (tmp_path / "c" / fa.relative_to(tmp_path / "a")).read_bytes() for fa in files_a
    )


def test_num_utts_augments_a_random_subset(corpus, tmp_path) -> None:
    augment_data_dir(corpus["data"], tmp_path / "sub", corpus["music"], AugmentOptions("music"), num_utts=4)
    assert len(load_data_dir(tmp_path / "sub").wav_scp) == 4


def test_source_at_another_sample_rate_is_an_input_error(corpus, tmp_path) -> None:
    write_wav(tmp_path / "n8k.wav", np.zeros(800) + 0.1, 8000)
    write_data_dir(tmp_path / "src8k", {"n": str(tmp_path / "n8k.wav")}, {"n": "n"})
    with pytest.raises(InputError, match="8000 Hz"):
        augment_data_dir(corpus["data"], tmp_path / "out", tmp_path / "src8k", AugmentOptions("noise"))


def test_bad_options_raise_one_line_errors() -> None:
    with pytest.raises(MemsvError, match="unknown augmentation type"):
        AugmentOptions("echo")
    with pytest.raises(MemsvError, match="low > high"):
        AugmentOptions("noise", snr_db=(10.0, 5.0))
    with pytest.raises(MemsvError, match="duplicate"):
        parse_factors("0.9,0.9")
    assert parse_factors("0.9, 1.0,1.1") == [0.9, 1.0, 1.1]


def test_speed_perturb_resample_makes_new_speakers(corpus, tmp_path) -> None:
    n = speed_perturb_data_dir(corpus["data"], tmp_path / "sp", (0.9, 1.0, 1.1), backend="resample")
    assert n == 18
    out = load_data_dir(tmp_path / "sp")
    clean = load_data_dir(corpus["data"])
    assert set(out.spk2utt) == {p + s for p in ("", "sp0.9-", "sp1.1-") for s in clean.spk2utt}
    utt = next(iter(clean.wav_scp))
    assert out.wav_scp[utt] == clean.wav_scp[utt]  # factor 1.0 keeps the original entry
    dry = read_wav_entry(clean.wav_scp[utt])
    fast = read_wav_entry(out.wav_scp["sp1.1-" + utt])
    assert len(fast) == pytest.approx(len(dry) / 1.1, abs=2)
    assert dominant_hz(fast) == pytest.approx(1.1 * dominant_hz(dry), rel=0.01)


@needs_sox
def test_speed_perturb_sox_pipes_match_resampling(corpus, tmp_path) -> None:
    speed_perturb_data_dir(corpus["data"], tmp_path / "sox", (0.9, 1.1), backend="sox")
    entries = read_wav_scp(tmp_path / "sox" / "wav.scp")
    clean = load_data_dir(corpus["data"])
    assert len(entries) == 12
    for utt, entry in clean.wav_scp.items():
        dry = read_wav_entry(entry)
        for factor in (0.9, 1.1):
            piped = entries[f"sp{factor:g}-{utt}"]
            assert piped.startswith("sox ") and piped.endswith("speed " + f"{factor:g} |")
            wet = read_wav_entry(piped)
            assert len(wet) == pytest.approx(len(dry) / factor, rel=0.002)
            assert dominant_hz(wet) == pytest.approx(factor * dominant_hz(dry), rel=0.01)


@needs_sox
def test_speed_perturb_chains_onto_existing_pipes(corpus, tmp_path) -> None:
    clean = load_data_dir(corpus["data"])
    piped = {u: f"cat {p} |" for u, p in clean.wav_scp.items()}
    write_data_dir(tmp_path / "piped", piped, clean.utt2spk)
    speed_perturb_data_dir(tmp_path / "piped", tmp_path / "sp", (1.1,), backend="sox")
    utt = next(iter(clean.wav_scp))
    entry = read_wav_scp(tmp_path / "sp" / "wav.scp")["sp1.1-" + utt]
    assert entry == f"cat {clean.wav_scp[utt]} | sox -t wav - -t wav - speed 1.1 |"
    assert len(read_wav_entry(entry)) == pytest.approx(
        len(read_wav_entry(clean.wav_scp[utt])) / 1.1, rel=0.002
    )


def test_cli_augment_data_writes_a_valid_data_dir(corpus, tmp_path, capsys) -> None:
    out = tmp_path / "cli"
    args = ["augment-data", str(corpus["data"]), str(out), "--type", "music", "--source"]
    main([*args, str(corpus["music"]), "--snr", "10:10", "--num-utts", "3"])  # returns on success
    table = read_table(out / "utt2aug", max_fields=None)
    assert len(table) == 3 and all(v.endswith(" 10.00") for v in table.values())
    assert len(load_data_dir(out).wav_scp) == 3


def test_cli_reports_bad_input_in_one_line(corpus, tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(
            [
                "augment-data",
                str(corpus["data"]),
                str(tmp_path / "x"),
                "--type",
                "noise",
                "--source",
                str(tmp_path / "missing"),
            ]
        )
    assert exit_.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "missing/wav.scp: no such file" in err
    with pytest.raises(SystemExit) as exit_:
        main(["speed-perturb", str(corpus["data"]), str(tmp_path / "y"), "--factors", "0,1.1"])
    assert exit_.value.code == 1
    assert "speed factors must be in (0, 4]" in capsys.readouterr().err
