from pathlib import Path

import pytest

from memsv_cli.data import kaldi_dir as kd
from memsv_cli.errors import InputError


def test_data_dir_round_trip_sorted(tmp_path: Path) -> None:
    wav = {"id2/v/00001": "/a/b.wav", "id1/v/00002": "ffmpeg -i /x.m4a -f wav - |", "id1/v/00001": "/c.wav"}
    u2s = {k: k.split("/")[0] for k in wav}
    kd.write_data_dir(tmp_path, wav, u2s)
    lines = (tmp_path / "wav.scp").read_text().splitlines()
    assert [line.split()[0] for line in lines] == ["id1/v/00001", "id1/v/00002", "id2/v/00001"]
    assert (tmp_path / "spk2utt").read_text() == "id1 id1/v/00001 id1/v/00002\nid2 id2/v/00001\n"
    d = kd.load_data_dir(tmp_path)
    assert d.wav_scp == wav and d.utt2spk == u2s
    assert d.wav_scp["id1/v/00002"].endswith("|")


def test_c_locale_order() -> None:
    assert kd.c_sorted(["b", "B", "a", "_", "A"]) == ["A", "B", "_", "a", "b"]


@pytest.mark.parametrize(
    ("text", "problem"),
    [("a x\na y\n", "duplicate key 'a'"), ("a x\n\nb y\n", "empty line"), ("a\n", "expected 2 fields")],
)
def test_malformed_table_names_file_and_line(tmp_path: Path, text: str, problem: str) -> None:
    p = tmp_path / "utt2spk"
    p.write_text(text)
    with pytest.raises(InputError, match=problem) as err:
        kd.read_utt2spk(p)
    assert str(p) in str(err.value) and err.value.line in (1, 2)


def test_trials_all_formats(tmp_path: Path) -> None:
    p = tmp_path / "t"
    p.write_text("a b target\nc d nontarget\n")
    assert kd.read_trials(p) == [kd.Trial("a", "b", True), kd.Trial("c", "d", False)]
    p.write_text("1 a b\n0 c d\n")
    assert kd.read_trials(p) == [kd.Trial("a", "b", True), kd.Trial("c", "d", False)]
    p.write_text("a b\n")
    assert kd.read_trials(p) == [kd.Trial("a", "b", None)]
    p.write_text("a b\n1 c d\n")
    with pytest.raises(InputError, match=":2: mixes"):
        kd.read_trials(p)
    p.write_text("")
    with pytest.raises(InputError, match="empty trial list"):
        kd.read_trials(p)


def test_wav_scp_and_utt2spk_disagree(tmp_path: Path) -> None:
    (tmp_path / "wav.scp").write_text("u1 /a.wav\nu2 /b.wav\n")
    (tmp_path / "utt2spk").write_text("u1 s1\n")
    with pytest.raises(InputError, match="1 key\\(s\\) missing from .*utt2spk, first 'u2'"):
        kd.load_data_dir(tmp_path)


def test_unsorted_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "wav.scp").write_text("u2 /b.wav\nu1 /a.wav\n")
    (tmp_path / "utt2spk").write_text("u1 s1\nu2 s1\n")
    with pytest.raises(InputError, match="wav.scp:2: not sorted"):
        kd.load_data_dir(tmp_path)
