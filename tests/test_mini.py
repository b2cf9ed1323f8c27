"""The synthetic mini corpus: layout, determinism, trials, and that it carries speaker identity."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import soundfile as sf

from memsv_cli.data.kaldi_dir import load_data_dir, read_trials
from memsv_cli.data.mini import (
    SAMPLE_RATE,
    MiniConfig,
    all_pair_trials,
    prepare_mini,
    sample_speaker,
    synthesize_utterance,
)
from memsv_cli.errors import MemsvError

TINY = MiniConfig(
    num_speakers=3,
    utts_per_speaker=2,
    num_test_speakers=3,
    test_utts_per_speaker=2,
    videos_per_speaker=2,
    min_seconds=0.3,
    max_seconds=0.5,
    seed=5,
)


def _audio(root):
    return {p.relative_to(root).as_posix(): sf.read(p, dtype="int16")[0] for p in sorted(root.rglob("*.wav"))}


def test_mini_corpus_layout_and_trials(tmp_path):
    summary = prepare_mini(tmp_path / "mini", TINY)
    train = load_data_dir(tmp_path / "mini" / "mini_train")
    test = load_data_dir(tmp_path / "mini" / "mini_test")
    assert len(train.wav_scp) == summary.train_utts == 6 and len(test.wav_scp) == summary.test_utts == 6
    assert not set(train.utt2spk.values()) & set(test.utt2spk.values())  # disjoint speakers
    trials = read_trials(tmp_path / "mini" / "mini_test" / "trials" / "mini.kaldi", require_labels=True)
    assert len(trials) == summary.num_trials == 15  # every pair of 6 test utterances
    assert sum(t.label for t in trials) == summary.num_target_trials == 3
    for t in trials:
        assert t.label == (test.utt2spk[t.enroll] == test.utt2spk[t.test])
    for path in train.wav_scp.values():
        info = sf.info(path)
        assert info.samplerate == 16000 and info.channels == 1 and info.subtype == "PCM_16"
        assert 0.3 <= info.duration <= 0.5


def test_default_mini_corpus_has_enough_trials_of_both_labels():
    cfg = MiniConfig()
    keys = [
        f"id{s}/v/{u:05d}" for s in range(cfg.num_test_speakers) for u in range(cfg.test_utts_per_speaker)
    ]
    trials = all_pair_trials(keys)
    targets = sum(t[2] for t in trials)
    assert len(trials) >= 2000 and targets >= 500 and len(trials) - targets >= 2000


def test_mini_corpus_is_deterministic_per_seed(tmp_path):
    prepare_mini(tmp_path / "a", TINY)
    prepare_mini(tmp_path / "b", TINY)
    a, b = _audio(tmp_path / "a"), _audio(tmp_path / "b")
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    for f in ("mini_train/utt2spk", "mini_test/spk2utt", "mini_test/trials/mini.kaldi"):
        assert (tmp_path / "a" / f).read_text() == (tmp_path / "b" / f).read_text()
    prepare_mini(tmp_path / "p", TINY, nj=2)  # worker processes change nothing
    p = _audio(tmp_path / "p")
    assert p.keys() == a.keys() and all(np.array_equal(a[k], p[k]) for k in a)
    prepare_mini(tmp_path / "c", dataclasses.replace(TINY, seed=6))
    c = _audio(tmp_path / "c")
    assert a.keys() != c.keys()  # video ids are drawn from the seed too


def test_rerun_with_another_seed_leaves_no_stale_utterances(tmp_path):
    prepare_mini(tmp_path / "m", TINY)
    prepare_mini(tmp_path / "m", dataclasses.replace(TINY, seed=9, num_speakers=2))
    assert len(list((tmp_path / "m" / "train" / "wav").rglob("*.wav"))) == 4
    assert len(load_data_dir(tmp_path / "m" / "mini_train").wav_scp) == 4


def test_refuses_to_regenerate_a_tree_it_did_not_write(tmp_path):
    (tmp_path / "vox" / "train" / "wav").mkdir(parents=True)
    with pytest.raises(MemsvError, match="not written by memsv"):
        prepare_mini(tmp_path / "vox", TINY)
    assert (tmp_path / "vox" / "train" / "wav").is_dir()


def test_bad_sizes_are_rejected():
    with pytest.raises(MemsvError, match="2 per test speaker"):
        MiniConfig(test_utts_per_speaker=1).validate()
    with pytest.raises(MemsvError, match="2 test speakers"):
        MiniConfig(num_test_speakers=1).validate()


def _pitch_hz(x: np.ndarray) -> float:
    """Autocorrelation pitch over the whole signal, searched in 60-400 Hz."""
    x = x - x.mean()
    spec = np.fft.rfft(x, 2 * len(x))
    ac = np.fft.irfft(np.abs(spec) ** 2)[: len(x)]
    lo, hi = SAMPLE_RATE // 400, SAMPLE_RATE // 60
    return SAMPLE_RATE / (lo + int(np.argmax(ac[lo:hi])))


def test_utterances_carry_their_speakers_pitch():
    rng = np.random.default_rng(0)
    flat = np.ones(257)
    for f0 in (100.0, 210.0):
        spk = dataclasses.replace(sample_speaker(rng), f0_hz=f0, f0_range=0.02)
        estimates = [
            _pitch_hz(synthesize_utterance(np.random.default_rng(s), spk, flat, 1.0)) for s in range(5)
        ]
        # Median over utterances: a single autocorrelation estimate may lock onto a formant period.
        assert abs(np.log(np.median(estimates) / f0)) < 0.2, (f0, estimates)


def test_utterances_of_one_speaker_differ_and_are_not_clipped():
    rng = np.random.default_rng(1)
    spk = sample_speaker(rng)
    a = synthesize_utterance(np.random.default_rng(1), spk, np.ones(257), 0.5)
    b = synthesize_utterance(np.random.default_rng(2), spk, np.ones(257), 0.5)
    assert a.shape == b.shape == (8000,) and a.dtype == np.float32
    assert not np.allclose(a, b)
    assert np.abs(a).max() < 1.0 and np.sqrt(np.mean(a**2)) > 0.01
