"""`memsv score`: trial formats, cosine / AS-norm / S-norm scores, score files, JSON, DET plot, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import kaldiio
import numpy as np
import pytest

from memsv_cli.cli import main
from memsv_cli.scoring import compute_eer, compute_min_dcf, load_embeddings, score_trial_lists
from memsv_cli.scoring import score as score_module

DIM = 16
N_SPK, N_UTT = 6, 4  # speakers, utterances per speaker


def _write_scp(path: Path, items: dict[str, np.ndarray]) -> Path:
    ark = path.with_suffix(".ark")
    with kaldiio.WriteHelper(f"ark,scp:{ark},{path}") as writer:
        for key, vec in items.items():
            writer(key, np.asarray(vec, dtype=np.float32))
    return path


def _utt_embeddings(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(N_SPK, DIM))
    return {
        f"spk{s}/utt{u}": centres[s] + 0.8 * rng.normal(size=DIM) for s in range(N_SPK) for u in range(N_UTT)
    }


def _trials(keys: list[str]) -> list[tuple[str, str, bool]]:
    out = []
    for i, a in enumerate(keys):
        for b in keys[i + 1 :]:
            out.append((a, b, a.split("/")[0] == b.split("/")[0]))
    return out


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        main(argv)
        code = 0
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture()
def setup(tmp_path: Path) -> dict[str, object]:
    emb = _utt_embeddings()
    scp = _write_scp(tmp_path / "xvector.scp", emb)
    trials = _trials(list(emb))
    kaldi = tmp_path / "trials.kaldi"
    kaldi.write_text("".join(f"{a} {b} {'target' if t else 'nontarget'}\n" for a, b, t in trials))
    vox = tmp_path / "trials.vox"
    vox.write_text("".join(f"{int(t)} {a} {b}\n" for a, b, t in trials))
    plain = tmp_path / "trials.plain"
    plain.write_text("".join(f"{a} {b}\n" for a, b, _ in trials))
    return {
        "emb": emb,
        "scp": scp,
        "trials": trials,
        "kaldi": kaldi,
        "vox": vox,
        "plain": plain,
        "dir": tmp_path,
    }


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def _read_scores(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()]


def test_every_trial_format_gives_the_same_cosine_scores(setup, capsys) -> None:
    out_dir = setup["dir"] / "scores"
    code, out, err = _run(
        [
            "score",
            "--trials",
            str(setup["kaldi"]),
            str(setup["vox"]),
            str(setup["plain"]),
            "--embeddings",
            str(setup["scp"]),
            "--out-dir",
            str(out_dir),
            "--json",
        ],
        capsys,
    )
    assert code == 0, err
    emb, trials = setup["emb"], setup["trials"]
    want = [_cosine(emb[a], emb[b]) for a, b, _ in trials]
    for name, labelled in (("trials.kaldi", True), ("trials.vox", True), ("trials.plain", False)):
        rows = _read_scores(out_dir / f"{name}.score")
        assert [(r[0], r[1]) for r in rows] == [(a, b) for a, b, _ in trials]
        np.testing.assert_allclose([float(r[2]) for r in rows], want, atol=1e-6)
        if labelled:
            assert [r[3] == "target" for r in rows] == [t for _, _, t in trials]
        else:
            assert all(len(r) == 3 for r in rows)
    result = json.loads(out)
    assert list(result) == ["results"]
    assert json.loads((out_dir / "results.json").read_text()) == result  # --out-dir keeps the report
    by_name = {r["trials"]: r for r in result["results"]}
    labels = np.array([t for _, _, t in trials])
    eer = 100 * compute_eer(np.array(want), labels)
    for name in ("trials.kaldi", "trials.vox"):
        r = by_name[name]
        assert set(r) == {"trials", "num_trials", "num_target", "eer", "min_dcf_0.01", "min_dcf_0.05"}
        assert r["num_trials"] == len(trials) and r["num_target"] == int(labels.sum())
        assert r["eer"] == pytest.approx(eer, abs=1e-6)
        assert r["min_dcf_0.01"] == pytest.approx(compute_min_dcf(np.array(want), labels, 0.01), abs=1e-6)
        assert r["min_dcf_0.05"] == pytest.approx(compute_min_dcf(np.array(want), labels, 0.05), abs=1e-6)
    assert by_name["trials.plain"]["eer"] is None and by_name["trials.plain"]["num_target"] is None


def test_table_output_names_each_list(setup, capsys) -> None:
    code, out, _ = _run(
        ["score", "-t", str(setup["kaldi"]), "-t", str(setup["vox"]), "-e", str(setup["scp"])], capsys
    )
    assert code == 0
    assert "trials.kaldi" in out and "trials.vox" in out and "EER" in out


def test_mean_from_subtracts_the_mean_before_cosine(setup, capsys) -> None:
    rng = np.random.default_rng(5)
    train = {f"train{i}": rng.normal(size=DIM) + 3.0 for i in range(10)}
    mean_scp = _write_scp(setup["dir"] / "train.scp", train)
    mean = np.mean(np.stack(list(train.values())).astype(np.float32), axis=0)
    results = score_trial_lists(
        [setup["kaldi"]], setup["scp"], mean_from=mean_scp, out_dir=setup["dir"] / "s"
    )
    rows = _read_scores(results[0].score_file)
    emb = setup["emb"]
    want = [
        _cosine(emb[a].astype(np.float32) - mean, emb[b].astype(np.float32) - mean)
        for a, b, _ in setup["trials"]
    ]
    np.testing.assert_allclose([float(r[2]) for r in rows], want, atol=1e-6)


def _direct_asnorm(emb: dict, cohort: list[np.ndarray], a: str, b: str, top_n: int) -> float:
    """The WeSpeaker formula, written out one trial at a time."""
    s = _cosine(emb[a], emb[b])

    def stats(x: np.ndarray) -> tuple[float, float]:
        c = sorted((_cosine(x, y) for y in cohort), reverse=True)[:top_n]
        return float(np.mean(c)), float(np.std(c))

    (me, se), (mt, st) = stats(emb[a]), stats(emb[b])
    return 0.5 * ((s - me) / se + (s - mt) / st)


@pytest.mark.parametrize("top_n", [3, 7])
def test_asnorm_matches_direct_formula(setup, top_n: int) -> None:
    rng = np.random.default_rng(11)
    cohort = {f"c{i}": rng.normal(size=DIM) for i in range(12)}
    cohort_scp = _write_scp(setup["dir"] / "cohort.scp", cohort)
    res = score_trial_lists(
        [setup["kaldi"]],
        setup["scp"],
        norm="asnorm",
        cohort=cohort_scp,
        top_n=top_n,
        out_dir=setup["dir"] / "s",
    )
    got = [float(r[2]) for r in _read_scores(res[0].score_file)]
    cohort32 = [v.astype(np.float32) for v in cohort.values()]
    emb32 = {k: v.astype(np.float32) for k, v in setup["emb"].items()}
    want = [_direct_asnorm(emb32, cohort32, a, b, top_n) for a, b, _ in setup["trials"]]
    # Scores are computed in float32 (as WeSpeaker does); z-scores divide by a cohort spread of ~0.1,
    # so agreement is to float32 precision relative to the score, not absolute.
    np.testing.assert_allclose(got, want, rtol=5e-6, atol=2e-6)


def test_snorm_uses_the_whole_cohort(setup) -> None:
    rng = np.random.default_rng(12)
    cohort = {f"c{i}": rng.normal(size=DIM) for i in range(9)}
    cohort_scp = _write_scp(setup["dir"] / "cohort.scp", cohort)
    snorm = score_trial_lists(
        [setup["kaldi"]], setup["scp"], norm="snorm", cohort=cohort_scp, top_n=2, out_dir=setup["dir"] / "a"
    )
    full = score_trial_lists(
        [setup["kaldi"]], setup["scp"], norm="asnorm", cohort=cohort_scp, top_n=9, out_dir=setup["dir"] / "b"
    )
    top2 = score_trial_lists(
        [setup["kaldi"]], setup["scp"], norm="asnorm", cohort=cohort_scp, top_n=2, out_dir=setup["dir"] / "c"
    )
    s, f, t = (_read_scores(r[0].score_file) for r in (snorm, full, top2))
    assert s == f
    assert s != t


def test_det_plot_is_written_as_png(setup, capsys) -> None:
    out_dir = setup["dir"] / "scores"
    code, _, err = _run(
        ["score", "-t", str(setup["kaldi"]), "-e", str(setup["scp"]), "-o", str(out_dir), "--det-plot"],
        capsys,
    )
    assert code == 0, err
    png = out_dir / "trials.kaldi.det.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 5000


def test_scores_file_mode_reads_memsv_wespeaker_and_kaldi_formats(setup, capsys) -> None:
    out_dir = setup["dir"] / "scores"
    code, out, _ = _run(
        ["score", "-t", str(setup["kaldi"]), "-e", str(setup["scp"]), "-o", str(out_dir), "--json"], capsys
    )
    assert code == 0
    reference = json.loads(out)["results"][0]
    rows = _read_scores(out_dir / "trials.kaldi.score")
    wespeaker = setup["dir"] / "asnorm.score"  # WeSpeaker's AS-norm output carries 4 extra columns
    wespeaker.write_text("".join(f"{' '.join(r)} 1.0 1.0 0.1 0.1\n" for r in rows))
    kaldi = setup["dir"] / "kaldi.scores"  # the input of Kaldi's compute-eer
    kaldi.write_text("".join(f"{r[2]} {r[3]}\n" for r in rows))
    for path in (out_dir / "trials.kaldi.score", wespeaker, kaldi):
        code, out, err = _run(["score", "--scores", str(path), "--json"], capsys)
        assert code == 0, err
        got = json.loads(out)["results"][0]
        assert got["trials"] == path.name
        for key in ("num_trials", "num_target", "eer", "min_dcf_0.01", "min_dcf_0.05"):
            assert got[key] == pytest.approx(reference[key], abs=1e-5)


def test_missing_embeddings_error_names_count_and_first_keys(setup, capsys) -> None:
    trials = setup["dir"] / "extra.trials"
    trials.write_text(setup["kaldi"].read_text() + "ghost1 spk0/utt0 nontarget\nspk0/utt1 ghost2 nontarget\n")
    code, _, err = _run(["score", "-t", str(trials), "-e", str(setup["scp"])], capsys)
    assert code == 1
    assert "2 trial(s) use 2 key(s) without an embedding" in err and "'ghost1'" in err
    assert "--skip-missing" in err and "Traceback" not in err
    code, out, err = _run(
        ["score", "-t", str(trials), "-e", str(setup["scp"]), "--skip-missing", "--json"], capsys
    )
    assert code == 0
    assert "skipped 2 trial(s)" in err
    assert json.loads(out)["results"][0]["num_trials"] == len(setup["trials"])


def test_dimension_mismatch_is_reported(setup, capsys) -> None:
    bad = dict(setup["emb"])
    bad["spk9/odd"] = np.zeros(DIM + 1)
    scp = _write_scp(setup["dir"] / "bad.scp", bad)
    code, _, err = _run(["score", "-t", str(setup["kaldi"]), "-e", str(scp)], capsys)
    assert code == 1 and "dimension mismatch" in err and "'spk9/odd'" in err
    cohort = _write_scp(setup["dir"] / "cohort.scp", {"c0": np.ones(DIM + 2), "c1": np.ones(DIM + 2)})
    code, _, err = _run(
        [
            "score",
            "-t",
            str(setup["kaldi"]),
            "-e",
            str(setup["scp"]),
            "--norm",
            "asnorm",
            "--cohort",
            str(cohort),
        ],
        capsys,
    )
    assert code == 1 and f"dimension {DIM + 2}" in err


def test_empty_trial_list_is_an_error(setup, capsys) -> None:
    empty = setup["dir"] / "empty.trials"
    empty.write_text("")
    code, _, err = _run(["score", "-t", str(empty), "-e", str(setup["scp"])], capsys)
    assert code == 1 and "empty trial list" in err


def test_single_label_list_writes_scores_and_explains_missing_metrics(setup, capsys) -> None:
    only_target = setup["dir"] / "target.trials"
    only_target.write_text("spk0/utt0 spk0/utt1 target\nspk1/utt0 spk1/utt2 target\n")
    out_dir = setup["dir"] / "scores"
    code, out, err = _run(
        ["score", "-t", str(only_target), "-e", str(setup["scp"]), "-o", str(out_dir), "--json"], capsys
    )
    assert code == 0
    assert "only target trials: EER and minDCF are undefined" in err
    r = json.loads(out)["results"][0]
    assert r["eer"] is None and r["min_dcf_0.01"] is None and r["num_target"] == 2
    assert len(_read_scores(out_dir / "target.trials.score")) == 2
    single = setup["dir"] / "single.score"
    single.write_text("a b 0.5 nontarget\n")
    code, _, err = _run(["score", "--scores", str(single)], capsys)
    assert code == 1 and "only non-target trials" in err


def test_malformed_score_file_names_the_line(setup, capsys) -> None:
    bad = setup["dir"] / "bad.score"
    bad.write_text("a b 0.5 target\na b zero nontarget\n")
    code, _, err = _run(["score", "--scores", str(bad)], capsys)
    assert code == 1 and "bad.score:2" in err and "'zero'" in err


def test_norm_needs_a_cohort(setup, capsys) -> None:
    code, _, err = _run(
        ["score", "-t", str(setup["kaldi"]), "-e", str(setup["scp"]), "--norm", "asnorm"], capsys
    )
    assert code == 1 and "--cohort" in err


def test_load_embeddings_keeps_file_order_and_values(setup) -> None:
    table = load_embeddings(setup["scp"])
    assert table.keys == list(setup["emb"])
    np.testing.assert_allclose(table.matrix[table.index["spk2/utt3"]], setup["emb"]["spk2/utt3"], rtol=1e-6)


def test_nan_embedding_is_reported_with_the_trial(setup, capsys) -> None:
    bad = dict(setup["emb"])
    bad["spk0/utt0"] = np.full(DIM, np.nan)
    scp = _write_scp(setup["dir"] / "nan.scp", bad)
    code, _, err = _run(["score", "-t", str(setup["kaldi"]), "-e", str(scp)], capsys)
    assert code == 1 and "NaN" in err and "spk0/utt0" in err


def test_key_rows_marks_missing_keys() -> None:
    index = {"a": 0, "b": 1, "c": 2}
    np.testing.assert_array_equal(score_module.key_rows(index, ["c", "a", "c"]), [2, 0, 2])
    np.testing.assert_array_equal(score_module.key_rows(index, ["b", "zz", "a", ""]), [1, -1, 0, -1])


def test_unknown_option_is_a_usage_error_without_traceback(capsys) -> None:
    code, _, err = _run(["score", "--bogus"], capsys)
    assert code == 2 and "No such option: --bogus" in err and "Traceback" not in err


def test_relative_ark_paths_resolve_against_the_scp_directory(tmp_path, monkeypatch) -> None:
    emb_dir = tmp_path / "exp" / "embeddings"
    emb_dir.mkdir(parents=True)
    monkeypatch.chdir(emb_dir)
    with kaldiio.WriteHelper("ark,scp:xvector.ark,xvector.scp") as writer:  # relative, Kaldi style
        writer("a", np.ones(4, dtype=np.float32))
        writer("b", np.arange(4, dtype=np.float32))
    monkeypatch.chdir(tmp_path)
    table = load_embeddings(emb_dir / "xvector.scp")
    assert table.keys == ["a", "b"]
    np.testing.assert_array_equal(table.matrix[1], np.arange(4))


def test_scoring_never_imports_torch() -> None:
    import subprocess
    import sys

    code = "import sys, memsv_cli.commands.score; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_moved_embedding_directory_still_loads(tmp_path) -> None:
    old = tmp_path / "cluster" / "emb"
    old.mkdir(parents=True)
    _write_scp(old / "xvector.scp", {"a": np.ones(4), "b": np.arange(4)})  # absolute ark paths
    new = tmp_path / "laptop" / "emb"
    new.parent.mkdir()
    old.rename(new)
    table = load_embeddings(new / "xvector.scp")
    np.testing.assert_array_equal(table.matrix[table.index["b"]], np.arange(4))
