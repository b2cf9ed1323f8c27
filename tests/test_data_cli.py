"""``memsv prepare-data`` / ``memsv extract-fbank`` end to end, and every bad-input case: one-line error
naming file and line or key, exit status 1, no traceback, nothing half-written."""

from __future__ import annotations

from pathlib import Path

import kaldiio
import numpy as np
import pytest
import soundfile as sf

from memsv_cli.cli import main


def run(argv: list[str], capsys) -> tuple[int, str]:
    """Run the CLI; returns (exit status, stderr)."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
        raise SystemExit(0)
    return exit_.value.code or 0, capsys.readouterr().err


def _wav(path: Path, seconds: float = 0.2, rate: int = 16000, channels: int = 1) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    x = 0.2 * np.sin(2 * np.pi * 220 * t)
    sf.write(path, np.stack([x] * channels, axis=1) if channels > 1 else x, rate, subtype="PCM_16")
    return str(path)


def _data_dir(tmp_path: Path, wav_scp: str, utt2spk: str | None = None) -> Path:
    d = tmp_path / "data"
    d.mkdir(exist_ok=True)
    (d / "wav.scp").write_text(wav_scp)
    if utt2spk is None:
        utt2spk = "".join(
            f"{line.split()[0]} {line.split()[0].split('/')[0]}\n" for line in wav_scp.splitlines()
        )
    (d / "utt2spk").write_text(utt2spk)
    return d


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 1, err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("memsv extract-fbank: error: ") or lines[0].startswith(
        "memsv prepare-data: error: "
    )
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def test_mini_corpus_to_fbank_through_the_cli(tmp_path, capsys):
    root = tmp_path / "mini"
    argv = ["prepare-data", "--corpus", "mini", "--out", str(root), "--num-speakers", "2"]
    argv += ["--utts-per-speaker", "1", "--num-test-speakers", "2", "--test-utts-per-speaker", "2"]
    code, err = run(argv, capsys)
    assert code == 0, err
    assert (root / "mini_test" / "trials" / "mini.kaldi").read_text().count("\n") == 6
    code, err = run(["extract-fbank", str(root / "mini_test"), str(tmp_path / "fbank"), "--nj", "2"], capsys)
    assert code == 0, err
    feats = kaldiio.load_scp(str(tmp_path / "fbank" / "feats.scp"))
    assert len(feats) == 4 and all(v.shape[1] == 80 and v.shape[0] >= 198 for v in feats.values())
    assert (tmp_path / "fbank" / "trials" / "mini.kaldi").exists()


def test_voxceleb_tree_through_the_cli(tmp_path, capsys):
    _wav(tmp_path / "vox" / "wav" / "id1" / "v1" / "00001.wav")
    _wav(tmp_path / "vox" / "wav" / "id2" / "v1" / "00001.wav")
    (tmp_path / "veri_test2.txt").write_text("0 id1/v1/00001.wav id2/v1/00001.wav\n")
    argv = [
        "prepare-data",
        "--corpus",
        "voxceleb",
        "--root",
        str(tmp_path / "vox"),
        "--out",
        str(tmp_path / "d"),
    ]
    code, err = run([*argv, "--trials", str(tmp_path / "veri_test2.txt")], capsys)
    assert code == 0, err
    assert (
        tmp_path / "d" / "trials" / "veri_test2.kaldi"
    ).read_text() == "id1/v1/00001 id2/v1/00001 nontarget\n"


def _extract_fails(tmp_path, capsys, data: Path, *fragments: str) -> None:
    out = tmp_path / "fbank"
    code, err = run(["extract-fbank", str(data), str(out)], capsys)
    assert_one_line_error(code, err, *fragments)
    assert not (out / "feats.scp").exists()
    assert not list(out.glob("*.ark")) if out.exists() else True


def test_missing_audio_file(tmp_path, capsys):
    good = _wav(tmp_path / "a.wav")
    data = _data_dir(tmp_path, f"a/v/1 {good}\na/v/2 {tmp_path}/gone.wav\n")
    _extract_fails(tmp_path, capsys, data, "wav.scp:2:", "'a/v/2'", "no such file")


def test_unreadable_audio_path(tmp_path, capsys):
    (tmp_path / "dir.wav").mkdir()
    data = _data_dir(tmp_path, f"a/v/1 {tmp_path}/dir.wav\n")
    _extract_fails(tmp_path, capsys, data, "wav.scp:1:", "'a/v/1'", "not a regular file")


def test_corrupt_audio(tmp_path, capsys):
    (tmp_path / "bad.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunkjunk" + bytes(range(200)))
    data = _data_dir(tmp_path, f"a/v/1 {_wav(tmp_path / 'a.wav')}\na/v/2 {tmp_path}/bad.wav\n")
    _extract_fails(tmp_path, capsys, data, "wav.scp:2:", "'a/v/2'", "cannot decode audio")


def test_empty_audio(tmp_path, capsys):
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), 16000, subtype="PCM_16")
    data = _data_dir(tmp_path, f"a/v/1 {tmp_path}/empty.wav\n")
    _extract_fails(tmp_path, capsys, data, "wav.scp:1:", "empty audio")


def test_audio_shorter_than_one_frame(tmp_path, capsys):
    data = _data_dir(tmp_path, f"a/v/1 {_wav(tmp_path / 'short.wav', seconds=0.02)}\n")
    _extract_fails(tmp_path, capsys, data, "wav.scp:1:", "320 samples is shorter than one 25 ms frame")


def test_wrong_sample_rate(tmp_path, capsys):
    data = _data_dir(tmp_path, f"a/v/1 {_wav(tmp_path / 'a8k.wav', rate=8000)}\n")
    _extract_fails(tmp_path, capsys, data, "wav.scp:1:", "sample rate 8000 Hz, expected 16000 Hz")


def test_stereo_audio(tmp_path, capsys):
    data = _data_dir(tmp_path, f"a/v/1 {_wav(tmp_path / 'st.wav', channels=2)}\n")
    _extract_fails(tmp_path, capsys, data, "wav.scp:1:", "2 channels, expected mono")


def test_failing_pipe_command(tmp_path, capsys):
    data = _data_dir(tmp_path, "a/v/1 sh -c 'echo no such input >&2; exit 3' |\n")
    _extract_fails(tmp_path, capsys, data, "wav.scp:1:", "exit status 3: no such input")


def test_duplicate_key(tmp_path, capsys):
    good = _wav(tmp_path / "a.wav")
    data = _data_dir(tmp_path, f"a/v/1 {good}\na/v/2 {good}\na/v/2 {good}\n", "a/v/1 a\na/v/2 a\n")
    _extract_fails(tmp_path, capsys, data, "wav.scp:3:", "duplicate key 'a/v/2'")


def test_malformed_line(tmp_path, capsys):
    good = _wav(tmp_path / "a.wav")
    data = _data_dir(tmp_path, f"a/v/1 {good}\na/v/2 {good}\n", "a/v/1 a\na/v/2 a extra\n")
    _extract_fails(tmp_path, capsys, data, "utt2spk:2:", "expected 2 fields, got 3")


def test_utt2spk_and_wav_scp_disagree(tmp_path, capsys):
    good = _wav(tmp_path / "a.wav")
    data = _data_dir(tmp_path, f"a/v/1 {good}\na/v/2 {good}\n", "a/v/1 a\na/v/3 a\n")
    _extract_fails(tmp_path, capsys, data, "wav.scp", "1 key(s) missing from", "utt2spk", "'a/v/2'")


def test_missing_data_dir(tmp_path, capsys):
    _extract_fails(tmp_path, capsys, tmp_path / "nowhere", "nowhere: no such data directory")


def test_trial_keys_missing_through_the_cli(tmp_path, capsys):
    _wav(tmp_path / "vox" / "id1" / "v1" / "00001.wav")
    (tmp_path / "list_test_all2.txt").write_text("1 id1/v1/00001.wav id9/v1/00001.wav\n")
    argv = [
        "prepare-data",
        "--corpus",
        "voxceleb",
        "--root",
        str(tmp_path / "vox"),
        "--out",
        str(tmp_path / "d"),
    ]
    code, err = run([*argv, "--trials", str(tmp_path / "list_test_all2.txt")], capsys)
    assert_one_line_error(code, err, "list_test_all2.txt", "1 trial key(s) not found", "id9/v1/00001")
    assert not (tmp_path / "d").exists()


def test_voxceleb_without_root_is_a_usage_error(tmp_path, capsys):
    code, err = run(["prepare-data", "--corpus", "voxceleb", "--out", str(tmp_path / "d")], capsys)
    assert_one_line_error(code, err, "--corpus voxceleb needs --root")


def test_extract_fbank_takes_bins_and_frames_from_a_training_config(tmp_path, capsys):
    """--train-config: the evaluation features get the config's data.fbank_args (what the model saw
    online); a flag that contradicts it is one line, exit 1, nothing written."""
    data = _data_dir(tmp_path, f"a/1 {_wav(tmp_path / 'a1.wav')}\n")
    config = tmp_path / "c.yaml"
    config.write_text("data:\n  fbank_args: {num_mel_bins: 40, frame_shift: 20}\n")
    code, err = run(["extract-fbank", str(data), str(tmp_path / "f"), "--train-config", str(config)], capsys)
    assert code == 0, err
    (feats,) = kaldiio.load_scp(str(tmp_path / "f" / "feats.scp")).values()
    assert feats.shape == (9, 40)  # 0.2 s: 1 + (3200 - 400) // 320 frames of 20 ms shift
    assert "--num-mel-bins=40" in (tmp_path / "f" / "fbank.conf").read_text()
    argv = [
        "extract-fbank",
        str(data),
        str(tmp_path / "g"),
        "--train-config",
        str(config),
        "--num-mel-bins",
        "80",
    ]
    assert_one_line_error(*run(argv, capsys), "--num-mel-bins 80 contradicts", "c.yaml")
    assert not (tmp_path / "g").exists()
