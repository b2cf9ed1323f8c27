"""VoxCeleb-style trees and trial lists to Kaldi data directories."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from memsv_cli.data.kaldi_dir import load_data_dir, read_trials
from memsv_cli.data.prepare import prepare_voxceleb, scan_corpus, utterance_key
from memsv_cli.errors import InputError, MemsvError


def _wav(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.zeros(800, np.float32), 16000, subtype="PCM_16")


def _vox1(root: Path) -> Path:
    """A VoxCeleb1-like ``wav/`` tree: 2 speakers x 2 videos x 2 utterances, plus noise files."""
    wav = root / "vox1" / "wav"
    for spk in ("id10002", "id10001"):
        for vid in ("b_vid", "a-Vid"):
            for utt in ("00002", "00001"):
                _wav(wav / spk / vid / f"{utt}.wav")
    (wav / "id10001" / "a-Vid" / "notes.txt").write_text("not audio")
    (wav / "README").write_text("not audio")
    return root / "vox1"


def test_utterance_keys_drop_audio_extensions_only():
    assert utterance_key("id1/v/00001.wav") == "id1/v/00001"
    assert utterance_key("id1/v/00001.m4a") == "id1/v/00001"
    assert utterance_key("id1/v/00001") == "id1/v/00001"
    assert utterance_key("id1/v/00001.txt") == "id1/v/00001.txt"


def test_voxceleb1_tree_becomes_sorted_data_dir_with_absolute_paths(tmp_path):
    root = _vox1(tmp_path)
    summary = prepare_voxceleb(root, tmp_path / "data")
    data = load_data_dir(tmp_path / "data")  # validates sorting and consistency
    keys = list(data.wav_scp)
    assert len(keys) == summary.num_utts == 8 and summary.num_speakers == 2
    assert keys[0] == "id10001/a-Vid/00001" and keys[-1] == "id10002/b_vid/00002"
    assert keys == sorted(keys, key=lambda k: k.encode())
    path = Path(data.wav_scp["id10001/a-Vid/00001"])
    assert path.is_absolute() and path == (root / "wav/id10001/a-Vid/00001.wav").resolve()
    assert data.utt2spk["id10002/b_vid/00001"] == "id10002"
    assert (tmp_path / "data" / "spk2utt").read_text().splitlines()[0].split() == [
        "id10001",
        "id10001/a-Vid/00001",
        "id10001/a-Vid/00002",
        "id10001/b_vid/00001",
        "id10001/b_vid/00002",
    ]


def test_m4a_and_flac_files_enter_wav_scp_as_ffmpeg_pipe_and_path(tmp_path):
    root = tmp_path / "vox2" / "dev" / "aac"
    for vid in ("21Uxsk56VDQ", "it's"):
        (root / "id00012" / vid).mkdir(parents=True)
        (root / "id00012" / vid / "00001.m4a").write_bytes(b"not decoded at prepare time")
    (root / "id00013" / "v").mkdir(parents=True)
    sf.write(root / "id00013" / "v" / "00001.flac", np.zeros(100, np.float32), 16000)
    summary = prepare_voxceleb(tmp_path / "vox2", tmp_path / "data")
    wav_scp = load_data_dir(tmp_path / "data").wav_scp
    assert summary.num_m4a == 2 and summary.num_utts == 3
    entry = wav_scp["id00012/21Uxsk56VDQ/00001"]
    assert entry.startswith("ffmpeg ") and entry.endswith("-f wav -acodec pcm_s16le - |")
    assert "-ar 16000" in entry and "-ac 1" in entry
    quoted = shlex.split(wav_scp["id00012/it's/00001"][:-1])  # the shell sees the path as one word
    assert str(root.resolve() / "id00012" / "it's" / "00001.m4a") in quoted
    assert wav_scp["id00013/v/00001"] == str(root.resolve() / "id00013" / "v" / "00001.flac")


def test_whitespace_in_a_utterance_key_is_an_error(tmp_path):
    _wav(tmp_path / "c" / "id1" / "my video" / "00001.wav")
    with pytest.raises(MemsvError, match="contains whitespace"):
        scan_corpus(tmp_path / "c")


def test_voxceleb_trial_lists_convert_to_kaldi_format(tmp_path):
    root = _vox1(tmp_path)
    lists = tmp_path / "meta"
    lists.mkdir()
    (lists / "veri_test2.txt").write_text(
        "1 id10001/a-Vid/00001.wav id10001/b_vid/00002.wav\n"
        "0 id10001/a-Vid/00001.wav id10002/a-Vid/00001.wav\n"
    )
    (lists / "kaldi_style.txt").write_text("id10002/b_vid/00001 id10001/a-Vid/00002 nontarget\n")
    summary = prepare_voxceleb(root, tmp_path / "data", [lists / "veri_test2.txt", lists / "kaldi_style.txt"])
    assert summary.trials == {"veri_test2": 2, "kaldi_style": 1}
    text = (tmp_path / "data" / "trials" / "veri_test2.kaldi").read_text()
    assert text == (
        "id10001/a-Vid/00001 id10001/b_vid/00002 target\nid10001/a-Vid/00001 id10002/a-Vid/00001 nontarget\n"
    )
    assert read_trials(tmp_path / "data" / "trials" / "kaldi_style.kaldi")[0].label is False


def test_trial_keys_missing_from_corpus_are_counted_and_nothing_is_written(tmp_path):
    root = _vox1(tmp_path)
    trials = tmp_path / "list_test_hard2.txt"
    trials.write_text(
        "1 id10001/a-Vid/00001.wav id10009/x/00001.wav\n"
        "0 id10008/x/00001.wav id10007/x/00001.wav\n"
        "0 id10006/x/00001.wav id10001/a-Vid/00001.wav\n"
    )
    with pytest.raises(
        InputError,
        match=r"list_test_hard2.txt: 4 trial key\(s\) not found in the corpus, "
        r"first: id10009/x/00001, id10008/x/00001, id10007/x/00001, \.\.\.",
    ):
        prepare_voxceleb(root, tmp_path / "data", [trials])
    assert not (tmp_path / "data").exists()


def test_malformed_trial_line_names_file_and_line(tmp_path):
    root = _vox1(tmp_path)
    trials = tmp_path / "t.txt"
    trials.write_text("1 id10001/a-Vid/00001.wav id10001/b_vid/00002.wav\n1 a b c\n")
    with pytest.raises(InputError, match=r"t.txt:2: expected"):
        prepare_voxceleb(root, tmp_path / "data", [trials])


def test_empty_or_missing_corpus_is_an_error(tmp_path):
    (tmp_path / "empty" / "a" / "b").mkdir(parents=True)
    with pytest.raises(MemsvError, match="no <spk>/<video>/<utt>.wav|flac|m4a files found"):
        scan_corpus(tmp_path / "empty")
    with pytest.raises(MemsvError, match="no such corpus directory"):
        scan_corpus(tmp_path / "nowhere")


def test_same_utterance_in_two_formats_is_a_duplicate_key(tmp_path):
    _wav(tmp_path / "c" / "id1" / "v" / "00001.wav")
    _wav(tmp_path / "c" / "id1" / "v" / "00001.flac")
    with pytest.raises(MemsvError, match="utterance key 'id1/v/00001' also given by"):
        scan_corpus(tmp_path / "c")


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")
def test_m4a2wav_script_converts_a_tree_that_prepares_as_wav(tmp_path):
    src = tmp_path / "aac" / "id00012" / "vid"
    src.mkdir(parents=True)
    _wav(tmp_path / "tone.wav")
    for utt in ("00001", "00002"):
        cmd = [
            "ffmpeg",
            "-nostdin",
            "-loglevel",
            "error",
            "-i",
            str(tmp_path / "tone.wav"),
            str(src / f"{utt}.m4a"),
        ]
        subprocess.run(cmd, check=True)
    script = Path(__file__).resolve().parents[1] / "local" / "m4a2wav.sh"
    subprocess.run([str(script), "--nj", "2", str(tmp_path / "aac"), str(tmp_path / "wav")], check=True)
    summary = prepare_voxceleb(tmp_path / "wav", tmp_path / "data")
    assert summary.num_utts == 2 and summary.num_m4a == 0
    info = sf.info(tmp_path / "wav" / "id00012" / "vid" / "00001.wav")
    assert info.samplerate == 16000 and info.channels == 1 and info.subtype == "PCM_16"
    (src / "00003.m4a").write_bytes(b"corrupt")  # a failure is reported, and leaves no partial wav
    proc = subprocess.run(
        [str(script), str(tmp_path / "aac"), str(tmp_path / "wav")], capture_output=True, text=True
    )
    assert proc.returncode == 1 and "ffmpeg failed on" in proc.stderr
    assert sorted(p.name for p in (tmp_path / "wav" / "id00012" / "vid").iterdir()) == [
        "00001.wav",
        "00002.wav",
    ]
