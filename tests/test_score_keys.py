"""Issue 15 item 4: trial keys and embedding keys match modulo a known audio extension."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_cli_errors import assert_one_line, run_memsv
from test_scoring_cli import _read_scores, _run, _trials, _utt_embeddings, _write_scp

from memsv_cli.errors import InputError
from memsv_cli.scoring import KeyIndex, score_trial_lists, split_audio_extension


@pytest.fixture()
def emb() -> dict[str, np.ndarray]:
    return _utt_embeddings()


def _vox_list(path: Path, trials: list[tuple[str, str, bool]], suffix: str = "") -> Path:
    """VoxCeleb format ``1|0 enroll test``, every key with ``suffix`` appended."""
    path.write_text("".join(f"{int(t)} {a}{suffix} {b}{suffix}\n" for a, b, t in trials))
    return path


def test_split_audio_extension_knows_the_audio_extensions_case_insensitively() -> None:
    assert split_audio_extension("id10270/x6uYqmx31kE/00001.wav") == ("id10270/x6uYqmx31kE/00001", ".wav")
    assert split_audio_extension("a/b.FLAC") == ("a/b", ".flac")
    for ext in (".m4a", ".mp3", ".ogg", ".opus", ".sph"):
        assert split_audio_extension(f"k{ext}") == ("k", ext)
    for key in ("a/b", "a/b.txt", "a.b/c", ".wav", "a/b.wav.gz", "a/b."):
        assert split_audio_extension(key) == (key, "")


def test_key_index_matches_either_spelling_and_counts_distinct_keys() -> None:
    index = KeyIndex(["a/1", "a/2.wav", "b/3"], "x.scp")
    match = index.rows(["a/1.wav", "a/2", "b/3", "a/2", "a/1.WAV", "zz.wav", "b/3.flac"], "t")
    np.testing.assert_array_equal(match.rows, [0, 1, 2, 1, 0, -1, 2])
    assert match.num_by_extension == 4  # a/1.wav, a/2, a/1.WAV, b/3.flac (a/2 twice counts once)
    assert match.extensions == {".wav", ".flac"}
    assert match.note("embeddings") == "matched 4 key(s) to embeddings modulo the .flac/.wav extensions"
    exact = index.rows(["b/3", "a/1"], "t")
    assert exact.num_by_extension == 0 and exact.note("embeddings") is None


@pytest.mark.parametrize("key", ["a/1", "a/1.wav", "a/1.flac", "a/1.mp3"])
def test_key_index_refuses_any_spelling_of_a_stem_held_twice(key: str) -> None:
    index = KeyIndex(["a/1", "a/1.wav", "b/2"], "x.scp")
    with pytest.raises(InputError, match=r"x\.scp: key .* \(from t\) is ambiguous.*'a/1' and 'a/1\.wav'"):
        index.rows(["b/2", key], "t")
    assert index.rows(["b/2", "b/2.wav"], "t").rows.tolist() == [2, 2]  # other keys are fine


def test_wav_keyed_voxceleb_list_scores_to_the_same_eer_as_the_stripped_list(tmp_path, emb, capsys) -> None:
    scp = _write_scp(tmp_path / "xvector.scp", emb)
    trials = _trials(list(emb))
    plain = _vox_list(tmp_path / "plain.txt", trials)
    wav = _vox_list(tmp_path / "veri_test.txt", trials, ".wav")
    code, out, err = _run(
        ["score", "-t", str(plain), str(wav), "-e", str(scp), "-o", str(tmp_path / "s"), "--json"], capsys
    )
    assert code == 0, err
    by_name = {r["trials"]: r for r in json.loads(out)["results"]}
    assert by_name["veri_test.txt"]["eer"] == by_name["plain.txt"]["eer"]
    assert by_name["veri_test.txt"]["min_dcf_0.01"] == by_name["plain.txt"]["min_dcf_0.01"]
    assert (
        err
        == f"memsv score: veri_test.txt: matched {len(emb)} key(s) to embeddings modulo the .wav extension\n"
    )
    plain_rows, wav_rows = (
        _read_scores(tmp_path / "s/plain.txt.score"),
        _read_scores(tmp_path / "s/veri_test.txt.score"),
    )
    assert [r[2:] for r in wav_rows] == [r[2:] for r in plain_rows]
    assert [r[:2] for r in wav_rows] == [[f"{a}.wav", f"{b}.wav"] for a, b, _ in trials]  # keys as written


def test_wav_keyed_embeddings_score_a_plain_trial_list(tmp_path, emb) -> None:
    """WeSpeaker keeps the extension in its embedding keys; memsv's lists have none."""
    plain_scp = _write_scp(tmp_path / "plain.scp", emb)
    wav_scp = _write_scp(tmp_path / "wespeaker.scp", {f"{k}.wav": v for k, v in emb.items()})
    trials = _vox_list(tmp_path / "trials", _trials(list(emb)))
    want = score_trial_lists([trials], plain_scp)[0]
    got = score_trial_lists([trials], wav_scp)[0]
    assert got.metrics == want.metrics
    assert got.notes == [f"matched {len(emb)} key(s) to embeddings modulo the .wav extension"]


def test_mixed_spellings_in_one_list_and_skip_missing(tmp_path, emb) -> None:
    scp = _write_scp(tmp_path / "x.scp", emb)
    trials = tmp_path / "t"
    trials.write_text("1 spk0/utt0.WAV spk0/utt1\n0 spk0/utt0 spk1/utt0.flac\n0 spk0/utt0.txt spk1/utt1\n")
    with pytest.raises(
        InputError, match=r"1 trial\(s\) use 1 key\(s\) without an embedding.*'spk0/utt0.txt'"
    ):
        score_trial_lists([trials], scp)
    result = score_trial_lists([trials], scp, skip_missing=True)[0]
    assert (result.num_trials, result.num_skipped) == (2, 1)
    assert result.notes == ["matched 2 key(s) to embeddings modulo the .flac/.wav extensions"]


def test_ambiguous_key_is_one_line_and_exit_1(tmp_path, emb) -> None:
    both = dict(emb)
    both["spk0/utt0.wav"] = emb["spk0/utt0"] + 1.0  # the same recording under two names
    scp = _write_scp(tmp_path / "xvector.scp", both)
    trials = _vox_list(tmp_path / "trials", _trials(list(emb)))
    code, out, err = run_memsv(["score", "-t", trials, "-e", scp])
    assert (code, out) == (1, "")
    assert_one_line(err, "memsv score: error: ", str(scp), "'spk0/utt0'", "'spk0/utt0.wav'", "ambiguous")
