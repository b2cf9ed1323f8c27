"""Issue 13: ``memsv make-shards`` (WeSpeaker tar shards of raw audio) and the shard reading API."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from test_cli_errors import (
    assert_one_line,
    hold_in_subprocess,
    interrupt_memsv,
    kill_group,
    run_main,
    start_memsv,
)

from memsv_cli.data.audio import AudioError
from memsv_cli.data.kaldi_dir import read_table, write_data_dir
from memsv_cli.data.shards import (
    BadSample,
    ShardSample,
    decode_wav,
    encode_wav,
    iter_shard,
    make_shards,
    read_shard_list,
    shard_order,
    shard_utterance_count,
)
from memsv_cli.errors import InputError, MemsvError

SPEAKERS = ("id10001", "id10002", "id10003")
KEYS = sorted(f"{spk}/vid{u % 2}/{u:05d}" for spk in SPEAKERS for u in range(4))  # as _corpus makes them


def _corpus(root: Path, specs: dict[str, str] | None = None) -> tuple[Path, dict[str, np.ndarray]]:
    """12 utterances (3 speakers x 4) of int16 noise, 0.05-0.1 s; ``specs`` replaces wav.scp values."""
    rng = np.random.default_rng(0)
    wav_scp, utt2spk, audio = {}, {}, {}
    for spk in SPEAKERS:
        for u in range(4):
            key = f"{spk}/vid{u % 2}/{u:05d}"
            pcm = rng.integers(-32768, 32768, int(rng.integers(800, 1600)), dtype=np.int16)
            wav = root / "wav" / f"{key}.wav"
            wav.parent.mkdir(parents=True, exist_ok=True)
            sf.write(wav, pcm, 16000, subtype="PCM_16")
            wav_scp[key], utt2spk[key], audio[key] = (specs or {}).get(key, str(wav)), spk, pcm
    write_data_dir(root / "data", wav_scp, utt2spk)
    return root / "data", audio


def _shard_of(key: str, keys: list[str], seed: int = 777, per_shard: int = 4) -> int:
    return shard_order(keys, seed).index(key) // per_shard


def _tars(out: Path) -> list[Path]:
    return sorted((out / "shards").glob("shard_*.tar"))


def _mtimes(paths: list[Path]) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in paths}


# --- layout and content ------------------------------------------------------------------------------


def test_layout_member_names_and_side_files(tmp_path):
    data, audio = _corpus(tmp_path)
    out = tmp_path / "shards_out"
    summary = make_shards(data, out, utts_per_shard=5, nj=2)
    assert (summary.num_shards, summary.num_utts, summary.num_bad) == (3, 12, 0)
    assert [p.name for p in _tars(out)] == ["shard_000000.tar", "shard_000001.tar", "shard_000002.tar"]
    assert sorted(p.name for p in out.iterdir()) == [
        ".memsv.lock",
        "shard.list",
        "shards",
        "spk2utt",
        "utt2num_samples",
        "utt2spk",
    ]
    assert read_shard_list(out / "shard.list") == _tars(out)
    assert all(Path(line).is_absolute() for line in (out / "shard.list").read_text().splitlines())
    order = shard_order(list(audio), 777)
    with tarfile.open(_tars(out)[0]) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == [f"{k}.{ext}" for k in order[:5] for ext in ("wav", "spk")]
        assert tar.extractfile(members[1]).read() == order[0].split("/")[0].encode()  # no newline
        assert all(m.mtime == 0 and m.mode == 0o644 and m.isreg() for m in members)
    assert (out / "utt2spk").read_text() == (data / "utt2spk").read_text()
    assert (out / "spk2utt").read_text() == (data / "spk2utt").read_text()
    samples = read_table(out / "utt2num_samples")
    assert list(samples) == sorted(audio) and {k: int(v) for k, v in samples.items()} == {
        k: len(v) for k, v in audio.items()
    }
    assert [shard_utterance_count(p) for p in _tars(out)] == [5, 5, 2]


def test_every_utterance_exactly_once_with_bit_exact_audio(tmp_path):
    data, audio = _corpus(tmp_path)
    make_shards(data, tmp_path / "out", utts_per_shard=4)
    items = [item for p in read_shard_list(tmp_path / "out" / "shard.list") for item in iter_shard(p)]
    assert all(isinstance(item, ShardSample) for item in items)
    assert sorted(item.key for item in items) == sorted(audio)
    for item in items:
        assert item.spk == item.key.split("/")[0]
        np.testing.assert_array_equal(decode_wav(item.wav), audio[item.key].astype(np.float32))


def test_shuffle_is_a_function_of_seed_and_key_set_and_mixes_speakers(tmp_path):
    keys = [f"id{s}/v/{u:05d}" for s in range(10) for u in range(20)]
    order = shard_order(keys, 777)
    assert shard_order(list(reversed(keys)), 777) == order  # not of the input order
    assert shard_order(keys, 778) != order and sorted(shard_order(keys, 778)) == sorted(keys)
    assert len({k.split("/")[0] for k in order[:20]}) >= 5  # the first "shard" mixes speakers
    # Same shards, byte for byte, whatever --nj; another seed cuts them differently.
    data, _ = _corpus(tmp_path)
    make_shards(data, tmp_path / "a", utts_per_shard=4, nj=1)
    make_shards(data, tmp_path / "b", utts_per_shard=4, nj=3)
    make_shards(data, tmp_path / "c", utts_per_shard=4, seed=1)
    a, b, c = ([p.read_bytes() for p in _tars(tmp_path / d)] for d in "abc")
    assert a == b and a != c


def test_decode_wav_round_trip_and_errors():
    pcm = np.concatenate([[-32768, 32767, 0, -1, 1], np.random.default_rng(1).integers(-32768, 32768, 995)])
    pcm = pcm.astype(np.int16)
    np.testing.assert_array_equal(decode_wav(encode_wav(pcm.astype(np.float32))), pcm.astype(np.float32))
    with pytest.raises(AudioError, match="cannot decode WAV data"):
        decode_wav(b"RIFF....WAVEjunk")
    with pytest.raises(AudioError, match="sample rate 8000 Hz, expected 16000 Hz"):
        decode_wav(encode_wav(pcm, 8000))
    stereo = io.BytesIO()
    sf.write(stereo, np.zeros((10, 2), np.int16), 16000, format="WAV", subtype="PCM_16")
    with pytest.raises(AudioError, match="2 channels, expected mono"):
        decode_wav(stereo.getvalue())
    with pytest.raises(AudioError, match="empty audio"):
        decode_wav(encode_wav(np.zeros(0)))


# --- reading: skip, damage ---------------------------------------------------------------------------


def test_skip_equals_dropping_the_first_n_without_reading_their_data(tmp_path, monkeypatch):
    data, _ = _corpus(tmp_path)
    make_shards(data, tmp_path / "out", utts_per_shard=12)
    shard = _tars(tmp_path / "out")[0]
    full = list(iter_shard(shard))
    assert len(full) == 12
    reads = []
    real = tarfile.TarFile.extractfile
    monkeypatch.setattr(tarfile.TarFile, "extractfile", lambda self, m: reads.append(m.name) or real(self, m))
    for n in (0, 1, 5, 11, 12, 20):
        reads.clear()
        assert list(iter_shard(shard, skip=n)) == full[n:]
        assert len(reads) == 2 * max(0, 12 - n)  # only the members yielded are read


def _write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_truncated_or_corrupt_tar_yields_one_bad_sample_then_stops(tmp_path):
    wav = encode_wav(np.arange(2000))  # 4044 bytes: 8 blocks of data
    members = [(f"s/v/{i}.{ext}", wav if ext == "wav" else b"s") for i in range(4) for ext in ("wav", "spk")]
    shard = _write_tar(tmp_path / "ok.tar", members)
    raw = shard.read_bytes()
    utt = 512 + 8 * 512 + 512 + 512  # one utterance: header + data of .wav, header + data of .spk

    cut = tmp_path / "cut.tar"
    cut.write_bytes(raw[: 2 * utt + 512 + 1000])  # inside the third .wav's data
    items = list(iter_shard(cut))
    assert [type(i) for i in items] == [ShardSample, ShardSample, BadSample]
    assert items[2].key == "s/v/2" and items[2].shard == str(cut) and "s/v/2.wav" in items[2].reason
    skipped = list(iter_shard(cut, skip=3))  # the damage lies in a skipped utterance: still reported
    assert len(skipped) == 1 and skipped[0].key == "s/v/2" and "truncated" in skipped[0].reason

    cut.write_bytes(raw[: 2 * utt])  # at a header boundary: tarfile alone would end quietly
    items = list(iter_shard(cut))
    assert [type(i) for i in items] == [ShardSample, ShardSample, BadSample]
    assert items[2].key == "" and "truncated (no end-of-archive block) after 's/v/1'" in items[2].reason
    with pytest.raises(MemsvError, match="cut.tar: tar truncated"):
        shard_utterance_count(cut)

    cut.write_bytes(raw[: 2 * utt] + b"\x07" * 512 + raw[2 * utt + 512 :])  # a garbage header
    items = list(iter_shard(cut))
    assert [type(i) for i in items] == [ShardSample, ShardSample, BadSample]
    assert "corrupt member header after 's/v/1'" in items[2].reason

    cut.write_bytes(b"")
    assert [(i.key, i.reason) for i in iter_shard(cut)] == [("", "not a tar file: empty file")]
    assert [type(i) for i in iter_shard(tmp_path / "missing.tar")] == [BadSample]


def test_incomplete_or_foreign_utterances_are_bad_samples(tmp_path):
    wav = encode_wav(np.ones(100))
    shard = _write_tar(
        tmp_path / "odd.tar",
        [
            ("a.wav", wav),
            ("b.spk", b"spk"),
            ("b.wav", wav),
            ("c.wav", wav),
            ("c.spk", b"\xff"),
            ("d.txt", b""),
        ],
    )
    items = list(iter_shard(shard))
    assert [(type(i).__name__, i.key) for i in items] == [
        ("BadSample", "a"),
        ("ShardSample", "b"),
        ("BadSample", "c"),
        ("BadSample", "d"),
    ]
    assert [i.reason for i in items if isinstance(i, BadSample)] == [
        "no .spk member",
        ".spk member is not UTF-8",
        "unexpected member d.txt; no .wav member; no .spk member",
    ]
    assert items[1] == ShardSample("b", "spk", wav)


def test_read_shard_list_errors(tmp_path):
    with pytest.raises(InputError, match=r"shard.list: no such file"):
        read_shard_list(tmp_path / "shard.list")
    (tmp_path / "shard.list").write_text("")
    with pytest.raises(InputError, match=r"shard.list: empty: no shards"):
        read_shard_list(tmp_path / "shard.list")
    (tmp_path / "a.tar").write_bytes(b"")
    (tmp_path / "shard.list").write_text(f"{tmp_path / 'a.tar'}\n{tmp_path / 'b.tar'}\n")
    with pytest.raises(InputError, match=rf"shard.list:2: no such shard {tmp_path / 'b.tar'}"):
        read_shard_list(tmp_path / "shard.list")


# --- the stage: failures, resuming, lock ---------------------------------------------------------------


def test_bad_utterance_fails_keeps_complete_shards_and_a_rerun_writes_only_the_rest(tmp_path, capsys):
    bad_key = "id10002/vid1/00001"
    missing = tmp_path / "late.wav"
    data, audio = _corpus(tmp_path, {bad_key: str(missing)})
    out = tmp_path / "out"
    argv = ["make-shards", str(data), str(out), "--utts-per-shard", "4", "--nj", "2"]
    code, _, err = run_main(argv, capsys)
    assert code == 1
    line = assert_one_line(
        err,
        "memsv make-shards: error: ",
        f"wav.scp:{KEYS.index(bad_key) + 1}:",
        f"'{bad_key}'",
        "no such file",
    )
    assert "2 of 3 shards complete" in line
    bad_shard = _shard_of(bad_key, KEYS)
    kept = [p for p in _tars(out) if p.name != f"shard_{bad_shard:06d}.tar"]
    assert len(_tars(out)) == len(kept) == 2 and not (out / "shard.list").exists()
    assert not list((out / "shards").glob(".*"))  # no temporary tar left
    before = _mtimes(kept)

    missing.write_bytes((tmp_path / "wav" / f"{bad_key}.wav").read_bytes())  # fix the input
    code, _, err = run_main(argv, capsys)
    assert code == 0, err
    assert f"resuming the unfinished run in {out}: 2 of 3 shards already complete" in err
    assert _mtimes(kept) == before
    assert sorted(p.name for p in (out / "shards").iterdir()) == [f"shard_00000{i}.tar" for i in range(3)]
    make_shards(_corpus(tmp_path / "clean")[0], tmp_path / "clean_out", utts_per_shard=4)
    assert [p.read_bytes() for p in _tars(out)] == [p.read_bytes() for p in _tars(tmp_path / "clean_out")]


def test_another_cut_after_a_failure_rewrites_everything(tmp_path):
    data, audio = _corpus(tmp_path, {"id10001/vid0/00000": "false |"})
    out = tmp_path / "out"
    with pytest.raises(MemsvError, match="'id10001/vid0/00000'"):
        make_shards(data, out, utts_per_shard=2)
    assert len(_tars(out)) == 5
    summary = make_shards(data, out, utts_per_shard=5, skip_bad=True)
    assert (summary.num_shards, summary.num_reused_shards, summary.num_utts) == (3, 0, 11)
    assert sorted(p.name for p in (out / "shards").iterdir()) == [f"shard_00000{i}.tar" for i in range(3)]


def test_skip_bad_lists_and_omits_bad_utterances(tmp_path, capsys):
    tmp_path.joinpath("8k.wav").write_bytes(encode_wav(np.ones(800), 8000))
    bad = {
        "id10001/vid1/00001": "false |",
        "id10002/vid0/00000": str(tmp_path / "8k.wav"),
        "id10003/vid0/00002": str(tmp_path / "gone.wav"),
    }
    data, audio = _corpus(tmp_path, bad)
    out = tmp_path / "out"
    code, _, err = run_main(
        ["make-shards", str(data), str(out), "--utts-per-shard", "4", "--skip-bad"], capsys
    )
    assert code == 0, err
    assert f"memsv make-shards: skipped 3 unreadable utterance(s), listed in {out / 'bad_utts'}" in err
    assert (out / "bad_utts").read_text() == (
        "id10001/vid1/00001 pipe command failed with exit status 1: (no message)\n"
        "id10002/vid0/00000 sample rate 8000 Hz, expected 16000 Hz (resample with sox/ffmpeg)\n"
        f"id10003/vid0/00002 no such file {tmp_path / 'gone.wav'}\n"
    )
    good = sorted(set(audio) - set(bad))
    assert list(read_table(out / "utt2spk")) == good and list(read_table(out / "utt2num_samples")) == good
    assert all(k in good for p in _tars(out) for k in (i.key for i in iter_shard(p)))
    assert "id10001/vid1/00001" not in (out / "spk2utt").read_text()


def test_ctrl_c_exits_130_and_a_rerun_completes(tmp_path):
    flag = tmp_path / "go"
    # 6 shards of 2; job 1 writes shards 0, 2, 4 and job 2 shards 1, 3, 5. The last utterance of shard 5
    # waits for the flag (at most 60 s), so the run is reliably busy when interrupted, with nothing after.
    slow = shard_order(KEYS, 777)[-1]
    wav = tmp_path / "wav" / f"{slow}.wav"
    data, _ = _corpus(tmp_path, {slow: f"test -e {flag} || sleep 60; cat {wav} |"})
    out = tmp_path / "out"
    argv = ["make-shards", data, out, "--utts-per-shard", "2", "--nj", "2"]
    slow_shard = "shard_000005.tar"
    proc = start_memsv(argv)

    def the_rest_is_done() -> bool:  # every shard but the blocked one is complete
        return len([p for p in _tars(out) if p.name != slow_shard]) == 5

    code, stdout, stderr = interrupt_memsv(proc, the_rest_is_done)
    assert (code, stdout, stderr) == (130, "", "memsv make-shards: interrupted\n")
    assert not (out / "shard.list").exists() and not list((out / "shards").glob(".*"))
    kept = _tars(out)
    assert slow_shard not in [p.name for p in kept] and len(kept) == 5
    before = _mtimes(kept)

    flag.touch()
    proc = start_memsv(argv)
    try:
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        kill_group(proc)
    assert proc.returncode == 0, stderr
    assert "5 of 6 shards already complete" in stderr
    assert _mtimes(kept) == before and len(read_shard_list(out / "shard.list")) == 6


def test_second_run_into_a_held_output_dir_is_refused(tmp_path, capsys):
    data, _ = _corpus(tmp_path)
    holder, _ = hold_in_subprocess(tmp_path / "out")
    try:
        code, _, err = run_main(["make-shards", str(data), str(tmp_path / "out")], capsys)
    finally:
        kill_group(holder)
        holder.communicate()
    assert code == 1
    assert_one_line(
        err, "memsv make-shards: error: output directory ", f"pid {holder.pid}", "wait for it or stop it"
    )
    assert not (tmp_path / "out" / "shards").exists()


def test_bad_options_are_rejected_before_any_work(tmp_path):
    data, _ = _corpus(tmp_path)
    with pytest.raises(MemsvError, match="--utts-per-shard must be at least 1"):
        make_shards(data, tmp_path / "o", utts_per_shard=0)
    with pytest.raises(MemsvError, match="--nj must be at least 1"):
        make_shards(data, tmp_path / "o", nj=0)
    with pytest.raises(MemsvError, match="must differ from the data directory"):
        make_shards(data, data)
    assert not (tmp_path / "o").exists()
