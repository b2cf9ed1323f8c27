"""Fbank values (stored Kaldi reference, torchaudio) and the extract-fbank stage's files."""

from __future__ import annotations

import importlib.util
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import kaldiio
import numpy as np
import pytest
import soundfile as sf

from memsv_cli.data.audio import read_audio
from memsv_cli.data.fbank import FbankConfig, compute_fbank, extract_fbank, split_jobs, torchaudio_available
from memsv_cli.data.kaldi_dir import read_utt2num_frames, write_data_dir
from memsv_cli.data.prepare import prepare_voxceleb
from memsv_cli.errors import MemsvError

DATA = Path(__file__).parent / "data"


def _reference_module():
    spec = importlib.util.spec_from_file_location("fbank_reference", DATA / "fbank_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fbank_matches_stored_kaldi_reference_within_1e3():
    ref = np.load(DATA / "fbank_reference.npz")
    feats = compute_fbank(ref["signal"].astype(np.float32))
    assert feats.shape == ref["feats"].shape == (48, 80)
    assert np.abs(feats - ref["feats"]).max() < 1e-3


def test_stored_reference_is_reproduced_by_its_generator():
    module = _reference_module()
    ref = np.load(DATA / "fbank_reference.npz")
    assert np.array_equal(module.fixed_signal(), ref["signal"])
    np.testing.assert_allclose(module.kaldi_fbank_reference(ref["signal"]), ref["feats"], atol=1e-5)


def test_fbank_options_change_the_reference_consistently():
    module = _reference_module()
    signal = module.fixed_signal()
    cfg = FbankConfig(num_mel_bins=40, frame_length_ms=20.0, frame_shift_ms=5.0)
    feats = compute_fbank(signal.astype(np.float32), cfg)
    expected = module.kaldi_fbank_reference(signal, num_bins=40, frame_length_ms=20.0, frame_shift_ms=5.0)
    assert feats.shape == expected.shape == (cfg.num_frames(len(signal)), 40)
    assert np.abs(feats - expected).max() < 1e-3


@pytest.mark.skipif(not torchaudio_available(), reason="torchaudio does not import here")
def test_fbank_matches_torchaudio_kaldi_within_1e2():
    ref = np.load(DATA / "fbank_reference.npz")
    ours = compute_fbank(ref["signal"].astype(np.float32))
    theirs = compute_fbank(ref["signal"].astype(np.float32), backend="torchaudio")
    assert np.abs(ours - theirs).max() < 1e-2


def test_torchaudio_backend_unavailable_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchaudio", None)  # makes the import fail
    with pytest.raises(MemsvError, match="torchaudio does not import"):
        compute_fbank(np.zeros(800, np.float32), backend="torchaudio")


def test_frame_count_follows_kaldi_snip_edges():
    cfg = FbankConfig()
    assert [cfg.num_frames(n) for n in (399, 400, 559, 560, 16000)] == [0, 1, 1, 2, 98]
    assert compute_fbank(np.ones(560, np.float32) * 100).shape == (2, 80)


def test_split_jobs_covers_all_items_contiguously():
    ranges = split_jobs(10, 3)
    assert [list(r) for r in ranges] == [[0, 1, 2], [3, 4, 5, 6], [7, 8, 9]]
    assert len(split_jobs(2, 8)) == 2


# --- the extract-fbank stage -------------------------------------------------------------------------


def _tone(seconds: float, freq: float, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _data_dir(tmp_path: Path, n: int = 3, entries: dict[str, str] | None = None) -> Path:
    wav_dir = tmp_path / "wav"
    wav_dir.mkdir(exist_ok=True)
    wav_scp, utt2spk = {}, {}
    for i in range(n):
        key = f"spk{i % 2}/vid/{i:05d}"
        path = wav_dir / f"{i}.wav"
        sf.write(path, _tone(0.3 + 0.1 * i, 200 + 100 * i), 16000, subtype="PCM_16")
        wav_scp[key], utt2spk[key] = str(path), key.split("/")[0]
    for key, value in (entries or {}).items():
        wav_scp[key], utt2spk[key] = value, key.split("/")[0]
    data = tmp_path / "data"
    write_data_dir(data, wav_scp, utt2spk)
    return data


def test_extract_writes_kaldiio_readable_feats_and_frame_counts(tmp_path):
    data = _data_dir(tmp_path)
    (data / "trials").mkdir()
    (data / "trials" / "t.kaldi").write_text("spk0/vid/00000 spk1/vid/00001 nontarget\n")
    summary = extract_fbank(data, tmp_path / "fbank")
    out = tmp_path / "fbank"
    feats = kaldiio.load_scp(str(out / "feats.scp"))
    assert list(feats) == ["spk0/vid/00000", "spk0/vid/00002", "spk1/vid/00001"]
    frames = read_utt2num_frames(out / "utt2num_frames")
    for i, key in enumerate(["spk0/vid/00000", "spk1/vid/00001", "spk0/vid/00002"]):
        expected = compute_fbank(read_audio(str(tmp_path / "wav" / f"{i}.wav")))
        np.testing.assert_array_equal(feats[key], expected)
        assert frames[key] == expected.shape[0] == FbankConfig().num_frames(int(16000 * (0.3 + 0.1 * i)))
    assert summary.num_frames == sum(frames.values())
    assert summary.audio_seconds == pytest.approx(0.3 + 0.4 + 0.5)
    # The fbank dir serves as a data dir on its own.
    assert (out / "utt2spk").read_text() == (data / "utt2spk").read_text()
    assert (out / "spk2utt").read_text() == (data / "spk2utt").read_text()
    assert (out / "trials" / "t.kaldi").read_text() == (data / "trials" / "t.kaldi").read_text()
    assert "--num-mel-bins=80" in (out / "fbank.conf").read_text()


def test_parallel_jobs_write_per_job_arks_with_identical_features(tmp_path):
    data = _data_dir(tmp_path, n=4)
    extract_fbank(data, tmp_path / "one")
    extract_fbank(data, tmp_path / "two", nj=2)
    one = kaldiio.load_scp(str(tmp_path / "one" / "feats.scp"))
    two = kaldiio.load_scp(str(tmp_path / "two" / "feats.scp"))
    assert sorted(p.name for p in (tmp_path / "two").glob("*.ark")) == ["feats.1.ark", "feats.2.ark"]
    assert list(one) == list(two)
    for key in one:
        np.testing.assert_array_equal(one[key], two[key])
    # Re-running with another --nj replaces the outputs and drops the arks no longer referenced.
    extract_fbank(data, tmp_path / "two", nj=1)
    assert sorted(p.name for p in (tmp_path / "two").glob("*.ark")) == ["feats.ark"]
    assert len(kaldiio.load_scp(str(tmp_path / "two" / "feats.scp"))) == 4


def test_pipe_entries_are_decoded_from_stdout(tmp_path):
    wav = tmp_path / "a.wav"
    sf.write(wav, _tone(0.2, 300), 16000, subtype="PCM_16")
    np.testing.assert_array_equal(read_audio(f"cat {wav} |"), read_audio(str(wav)))


def test_streamed_wav_with_unknown_sizes_is_repaired(tmp_path):
    # What ffmpeg/sox write to a pipe: RIFF and data sizes they could not seek back to fill in.
    pcm = (np.arange(1600) % 200 - 100).astype("<i2").tobytes()
    fmt = struct.pack("<4sIHHIIHH", b"fmt ", 16, 1, 1, 16000, 32000, 2, 16)
    stream = b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVE" + fmt + b"data" + struct.pack("<I", 0xFFFFFFFF)
    raw = tmp_path / "stream.bin"
    raw.write_bytes(stream + pcm)
    samples = read_audio(f"cat {raw} |")
    np.testing.assert_array_equal(samples, np.frombuffer(pcm, "<i2").astype(np.float32))


def test_failed_run_leaves_no_feats_scp_and_no_arks(tmp_path):
    data = _data_dir(tmp_path)
    out = tmp_path / "fbank"
    extract_fbank(data, out)
    assert (out / "feats.scp").exists()
    (tmp_path / "wav" / "2.wav").unlink()  # the last utterance in wav.scp order
    with pytest.raises(MemsvError, match=r"wav.scp:2: utterance 'spk0/vid/00002': no such file"):
        extract_fbank(data, out)
    assert not (out / "feats.scp").exists()
    assert not (out / "utt2num_frames").exists()
    assert not list(out.glob("*.ark")) and not list(out.glob(".*tmp"))


def test_failed_parallel_run_names_the_utterance_and_cleans_up(tmp_path):
    data = _data_dir(tmp_path, n=4, entries={"spk1/vid/99999": "false |"})
    out = tmp_path / "fbank"
    with pytest.raises(
        MemsvError, match=r"utterance 'spk1/vid/99999': pipe command failed with exit status 1"
    ):
        extract_fbank(data, out, nj=2)
    # Issue 13: the complete job 1 is kept for a rerun; the failed job 2 leaves no ark.
    assert not (out / "feats.scp").exists() and sorted(p.name for p in out.glob("*.ark")) == ["feats.1.ark"]
    assert (out / "feats.1.scp").exists() and not (out / "feats.2.scp").exists()


def test_worker_killed_mid_run_is_an_error_not_a_hang(tmp_path):
    # The pipe's shell kills its parent: the worker process, as the kernel's OOM killer would.
    data = _data_dir(tmp_path, n=4, entries={"spk1/vid/99999": "kill -9 $PPID |"})
    out = tmp_path / "fbank"
    with pytest.raises(MemsvError, match=r"extract-fbank job 2 died \(exit code -9"):
        extract_fbank(data, out, nj=2)
    # Issue 13: job 1 may have completed (and is then kept); the killed job 2 leaves no ark.
    assert not (out / "feats.scp").exists() and not (out / "feats.2.ark").exists()


def test_bad_options_are_rejected_before_any_work(tmp_path):
    data = _data_dir(tmp_path, n=1)
    with pytest.raises(MemsvError, match="--nj must be at least 1"):
        extract_fbank(data, tmp_path / "o", nj=0)
    with pytest.raises(MemsvError, match="--frame-shift"):
        extract_fbank(data, tmp_path / "o", FbankConfig(frame_shift_ms=30.0))
    with pytest.raises(MemsvError, match="must differ from the data directory"):
        extract_fbank(data, data)
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")
def test_m4a_through_the_ffmpeg_pipe_entry_of_prepare_data(tmp_path):
    wav = tmp_path / "src.wav"
    sf.write(wav, _tone(0.5, 440), 16000, subtype="PCM_16")
    m4a = tmp_path / "vox2" / "id00012" / "vid" / "00001.m4a"
    m4a.parent.mkdir(parents=True)
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(wav), "-c:a", "aac", str(m4a)], check=True
    )
    prepare_voxceleb(tmp_path / "vox2", tmp_path / "data")
    extract_fbank(tmp_path / "data", tmp_path / "fbank")
    feats = kaldiio.load_scp(str(tmp_path / "fbank" / "feats.scp"))["id00012/vid/00001"]
    # AAC adds encoder priming/padding (a few hundred samples): about 0.5 s of frames either way.
    assert abs(feats.shape[0] - FbankConfig().num_frames(8000)) <= 6
    # Same tone, lossy codec: the log-Mel spectrum agrees where the energy is (the 440 Hz bins).
    ref = compute_fbank(read_audio(str(wav)))
    peak = int(np.argmax(ref.mean(axis=0)))
    assert abs(np.median(feats[:, peak]) - np.median(ref[:, peak])) < 0.5


@pytest.mark.skipif(shutil.which("sox") is None, reason="sox not installed")
def test_sox_speed_perturbation_pipe_is_read(tmp_path):
    wav = tmp_path / "a.wav"
    sf.write(wav, _tone(1.0, 300), 16000, subtype="PCM_16")
    samples = read_audio(f"sox {wav} -t wav - speed 1.1 |")
    assert abs(len(samples) - 16000 / 1.1) < 20
