"""Issue 13: ``extract-fbank`` survives failures. Complete jobs are kept after a bad utterance or Ctrl-C,
a rerun with the same ``--nj`` redoes only the others, and ``--skip-bad`` leaves unreadable utterances
out (listed in ``bad_utts``)."""

from __future__ import annotations

from pathlib import Path

import kaldiio
import numpy as np
import pytest
import soundfile as sf
from test_cli_errors import assert_one_line, interrupt_memsv, run_main, start_memsv

from memsv_cli.data.fbank import FbankConfig, extract_fbank
from memsv_cli.data.kaldi_dir import write_data_dir
from memsv_cli.errors import MemsvError

N_UTTS = 6  # with --nj 3: job 1 = u1 u2, job 2 = u3 u4, job 3 = u5 u6


def _data_dir(root: Path, specs: dict[int, str] | None = None) -> Path:
    """Six 0.3 s noise utterances ``s/v/u1 .. s/v/u6``; ``specs`` replaces wav.scp values by number."""
    rng = np.random.default_rng(13)
    wav_scp, utt2spk = {}, {}
    for i in range(1, N_UTTS + 1):
        wav = root / "wav" / f"u{i}.wav"
        wav.parent.mkdir(parents=True, exist_ok=True)
        sf.write(wav, rng.integers(-3000, 3000, 4800).astype(np.int16), 16000, subtype="PCM_16")
        wav_scp[f"s/v/u{i}"] = (specs or {}).get(i, str(wav))
        utt2spk[f"s/v/u{i}"] = "s"
    write_data_dir(root / "data", wav_scp, utt2spk)
    return root / "data"


def _mtimes(out: Path, names: list[str]) -> dict[str, int]:
    return {name: (out / name).stat().st_mtime_ns for name in names}


def _assert_same_features(a: Path, b: Path) -> None:
    fa, fb = kaldiio.load_scp(str(a / "feats.scp")), kaldiio.load_scp(str(b / "feats.scp"))
    assert list(fa) == list(fb)
    for key in fa:
        np.testing.assert_array_equal(fa[key], fb[key])
    assert (a / "utt2num_frames").read_text() == (b / "utt2num_frames").read_text()


def _job_parts(out: Path) -> list[str]:
    return sorted(p.name for p in out.glob("feats.*.*") if p.suffix in (".scp", ".json"))


def test_bad_utterance_keeps_complete_jobs_and_a_rerun_redoes_only_the_failed_one(tmp_path, capsys):
    missing = tmp_path / "late" / "u4.wav"  # job 2's second utterance: not there yet
    data = _data_dir(tmp_path, {4: str(missing)})
    out = tmp_path / "fbank"
    code, _, err = run_main(["extract-fbank", str(data), str(out), "--nj", "3"], capsys)
    assert code == 1
    assert_one_line(
        err, "memsv extract-fbank: error: ", "wav.scp:4:", "'s/v/u4'", "no such file", "2 of 3 jobs"
    )
    assert not (out / "feats.scp").exists() and not (out / "utt2num_frames").exists()
    assert sorted(p.name for p in out.glob("*.ark")) == ["feats.1.ark", "feats.3.ark"]
    assert _job_parts(out) == ["feats.1.json", "feats.1.scp", "feats.3.json", "feats.3.scp"]
    kept = _mtimes(out, ["feats.1.ark", "feats.1.scp", "feats.3.ark", "feats.3.scp"])

    missing.parent.mkdir()
    missing.write_bytes((tmp_path / "wav" / "u4.wav").read_bytes())  # fix the input
    code, _, err = run_main(["extract-fbank", str(data), str(out), "--nj", "3"], capsys)
    assert code == 0, err
    assert err.splitlines()[0] == (
        f"memsv extract-fbank: resuming the unfinished run in {out}: 2 of 3 jobs already complete"
    )
    assert _mtimes(out, ["feats.1.ark", "feats.3.ark"]) == {
        k: kept[k] for k in ("feats.1.ark", "feats.3.ark")
    }
    assert (out / "feats.2.ark").exists() and _job_parts(out) == []  # parts merged, then removed
    clean = tmp_path / "clean"
    extract_fbank(_data_dir(tmp_path / "c"), clean, nj=3)
    _assert_same_features(out, clean)
    scp = (out / "feats.scp").read_text().splitlines()
    assert [line.split()[1].rsplit(":", 1)[0] for line in scp] == [
        str(out / f"feats.{j}.ark") for j in (1, 1, 2, 2, 3, 3)
    ]
    # A completed run is not resumed: the next one recomputes everything.
    extract_fbank(data, out, nj=3)
    assert (out / "feats.1.ark").stat().st_mtime_ns != kept["feats.1.ark"]


def test_skip_bad_writes_the_others_and_lists_the_bad_ones(tmp_path, capsys):
    data = _data_dir(tmp_path, {2: str(tmp_path / "gone.wav"), 5: "false |"})
    out = tmp_path / "fbank"
    code, _, err = run_main(["extract-fbank", str(data), str(out), "--nj", "2", "--skip-bad"], capsys)
    assert code == 0, err
    assert f"memsv extract-fbank: skipped 2 unreadable utterance(s), listed in {out / 'bad_utts'}" in err
    assert (out / "bad_utts").read_text() == (
        f"s/v/u2 no such file {tmp_path / 'gone.wav'}\n"
        "s/v/u5 pipe command failed with exit status 1: (no message)\n"
    )
    feats = kaldiio.load_scp(str(out / "feats.scp"))
    assert list(feats) == ["s/v/u1", "s/v/u3", "s/v/u4", "s/v/u6"]
    assert (out / "utt2spk").read_text() == "".join(f"s/v/u{i} s\n" for i in (1, 3, 4, 6))
    assert (out / "spk2utt").read_text() == "s s/v/u1 s/v/u3 s/v/u4 s/v/u6\n"
    assert len((out / "utt2num_frames").read_text().splitlines()) == 4
    # A clean rerun drops the stale list.
    extract_fbank(_data_dir(tmp_path / "fixed"), out, nj=2, skip_bad=True)
    assert not (out / "bad_utts").exists()


def test_skip_bad_rerun_reuses_the_jobs_of_a_failed_run(tmp_path):
    data = _data_dir(tmp_path, {3: "false |"})
    out = tmp_path / "fbank"
    with pytest.raises(MemsvError, match="'s/v/u3'"):
        extract_fbank(data, out, nj=3)
    kept = _mtimes(out, ["feats.1.ark", "feats.3.ark"])
    notices: list[str] = []
    summary = extract_fbank(data, out, nj=3, skip_bad=True, notify=notices.append)
    assert summary.num_reused_jobs == 2 and summary.num_bad == 1 and summary.num_utts == 5
    assert _mtimes(out, ["feats.1.ark", "feats.3.ark"]) == kept
    assert notices == [f"resuming the unfinished run in {out}: 2 of 3 jobs already complete"]


def test_a_job_whose_ark_was_cut_is_redone(tmp_path):
    data = _data_dir(tmp_path, {4: "false |"})
    out = tmp_path / "fbank"
    with pytest.raises(MemsvError, match="'s/v/u4'"):
        extract_fbank(data, out, nj=3)
    with open(out / "feats.1.ark", "r+b") as f:  # a damaged part must not be trusted
        f.truncate(100)
    summary = extract_fbank(data, out, nj=3, skip_bad=True)
    assert summary.num_reused_jobs == 1 and summary.num_utts == 5
    assert all(v.shape[1] == 80 for v in kaldiio.load_scp(str(out / "feats.scp")).values())


def test_another_nj_or_other_options_start_over(tmp_path):
    data = _data_dir(tmp_path, {6: "false |"})
    out = tmp_path / "fbank"
    for attempt in range(2):  # the same failure twice: jobs 1 and 2 are reused the second time
        notices: list[str] = []
        with pytest.raises(MemsvError, match="'s/v/u6'"):
            extract_fbank(data, out, nj=3, notify=notices.append)
        assert len(notices) == attempt
    notices = []
    summary = extract_fbank(data, out, nj=2, skip_bad=True, notify=notices.append)
    assert notices == [f"{out} holds an unfinished run with --nj 3: starting over with --nj 2"]
    assert summary.num_reused_jobs == 0 and summary.num_utts == 5
    assert sorted(p.name for p in out.glob("*.ark")) == ["feats.1.ark", "feats.2.ark"]
    assert _job_parts(out) == []
    # Options are part of a job's fingerprint: 40 bins never reuse 80-bin jobs.
    with pytest.raises(MemsvError, match="'s/v/u6'"):
        extract_fbank(data, out, nj=2)
    summary = extract_fbank(data, out, FbankConfig(num_mel_bins=40), nj=2, skip_bad=True)
    assert summary.num_reused_jobs == 0
    assert {v.shape[1] for v in kaldiio.load_scp(str(out / "feats.scp")).values()} == {40}


def test_ctrl_c_keeps_complete_jobs_and_a_rerun_completes(tmp_path):
    flag = tmp_path / "go"
    wav3 = tmp_path / "wav" / "u3.wav"
    # Job 2's first utterance waits for the flag (at most 60 s): the run is reliably busy when interrupted.
    data = _data_dir(tmp_path, {3: f"test -e {flag} || sleep 60; cat {wav3} |"})
    out = tmp_path / "fbank"
    proc = start_memsv(["extract-fbank", data, out, "--nj", "3"])

    def jobs_1_and_3_done() -> bool:
        return (out / "feats.1.scp").exists() and (out / "feats.3.scp").exists()

    code, stdout, stderr = interrupt_memsv(proc, jobs_1_and_3_done)
    assert (code, stdout, stderr) == (130, "", "memsv extract-fbank: interrupted\n")
    assert not (out / "feats.scp").exists() and not list(out.glob(".*tmp"))
    assert sorted(p.name for p in out.glob("*.ark")) == ["feats.1.ark", "feats.3.ark"]
    kept = _mtimes(out, ["feats.1.ark", "feats.3.ark"])

    flag.touch()
    proc = start_memsv(["extract-fbank", data, out, "--nj", "3"])
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert "resuming the unfinished run" in stderr and "2 of 3 jobs already complete" in stderr
    assert _mtimes(out, ["feats.1.ark", "feats.3.ark"]) == kept
    clean = tmp_path / "clean"
    extract_fbank(_data_dir(tmp_path / "c"), clean, nj=3)
    _assert_same_features(out, clean)
