"""The LDA back-end: ``memsv compute-lda`` and ``memsv score --transform`` (memsv_cli/scoring/lda.py).

The synthetic embeddings have what LDA is for: speaker directions, plus a few strong nuisance directions
(channel, text) that vary within a speaker and swamp a plain cosine. Training and test speakers differ.
"""

from __future__ import annotations

import json
from pathlib import Path

import kaldiio
import numpy as np
import pytest
from test_cli_errors import assert_one_line, run_main
from test_scoring_cli import _write_scp

from memsv_cli.errors import InputError, MemsvError
from memsv_cli.scoring import score_trial_lists
from memsv_cli.scoring.lda import apply_transform, fit_lda, read_transform, write_transform
from memsv_cli.scoring.metrics import compute_eer

DIM, SPK_DIM, NUISANCE_DIM = 32, 24, 4


def _corpus(seed: int, speakers: int, utts: int) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """``speakers x utts`` embeddings (keys ``s<seed>spkS/uU``) and their utt2spk. Speakers live in a
    24-dim subspace; 4 nuisance directions with 3x the speaker spread change every utterance; the rest is
    small isotropic noise. The subspaces are fixed (seed 0), the speakers drawn from ``seed``."""
    basis = np.linalg.qr(np.random.default_rng(0).normal(size=(DIM, DIM)))[0]
    spk_dirs, nuisance_dirs = basis[:, :SPK_DIM], basis[:, SPK_DIM : SPK_DIM + NUISANCE_DIM]
    offset = np.random.default_rng(1).normal(size=DIM)  # a global mean far from 0, as real embeddings
    rng = np.random.default_rng(seed)
    emb, utt2spk = {}, {}
    for s in range(speakers):
        centre = spk_dirs @ rng.normal(size=SPK_DIM)
        for u in range(utts):
            key = f"s{seed}spk{s}/u{u}"
            nuisance = nuisance_dirs @ (3.0 * rng.normal(size=NUISANCE_DIM))
            emb[key] = offset + centre + nuisance + 0.3 * rng.normal(size=DIM)
            utt2spk[key] = f"s{seed}spk{s}"
    return emb, utt2spk


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lda")
    train, train_u2s = _corpus(seed=2, speakers=30, utts=10)
    test, test_u2s = _corpus(seed=3, speakers=10, utts=6)
    (root / "utt2spk").write_text("".join(f"{k} {v}\n" for k, v in sorted(train_u2s.items())))
    keys = sorted(test)
    trials = root / "trials.kaldi"
    trials.write_text(
        "".join(
            f"{a} {b} {'target' if test_u2s[a] == test_u2s[b] else 'nontarget'}\n"
            for i, a in enumerate(keys)
            for b in keys[i + 1 :]
        )
    )
    return {
        "root": root,
        "train": _write_scp(root / "train.scp", train),
        "test": _write_scp(root / "test.scp", test),
        "utt2spk": root / "utt2spk",
        "trials": trials,
    }


def _matrix(scp: Path) -> tuple[list[str], np.ndarray]:
    items = dict(kaldiio.load_scp(str(scp)))
    keys = list(items)
    return keys, np.stack([np.asarray(items[k], dtype=np.float64) for k in keys])


def test_fit_lda_is_an_affine_map_that_centres_the_training_set(sets) -> None:
    keys, x = _matrix(sets["train"])
    speakers = [k.split("/")[0] for k in keys]
    matrix = fit_lda(x, speakers)
    assert matrix.shape == (29, DIM + 1) and matrix.dtype == np.float32  # speakers - 1 dims, [A | b]
    y = apply_transform(matrix, x)
    np.testing.assert_allclose(y, x @ matrix[:, :DIM].T.astype(np.float64) + matrix[:, DIM], atol=1e-4)
    np.testing.assert_allclose(y.mean(axis=0), 0, atol=1e-3 * np.abs(y).max())  # b = -A m
    # the leading directions separate the speakers: between-speaker over within-speaker variance
    centres = np.stack([y[[s == spk for s in speakers]].mean(axis=0) for spk in sorted(set(speakers))])
    within = np.mean([y[[s == spk for s in speakers]].var(axis=0) for spk in sorted(set(speakers))], axis=0)
    assert centres[:, 0].var() / within[0] > 10  # 27 here
    assert fit_lda(x, speakers, dim=5).shape == (5, DIM + 1)
    np.testing.assert_allclose(apply_transform(matrix[:, :DIM], x), y - matrix[:, DIM], atol=1e-4)  # linear


def test_fit_lda_refuses_what_lda_cannot_give(sets) -> None:
    keys, x = _matrix(sets["train"])
    with pytest.raises(MemsvError, match="at least 2 speakers"):
        fit_lda(x, ["one"] * len(keys))
    with pytest.raises(MemsvError, match=r"--dim must be 1 \.\. 29"):
        fit_lda(x, [k.split("/")[0] for k in keys], dim=30)
    x[3, 5] = np.nan
    with pytest.raises(MemsvError, match="1 embedding\\(s\\) hold NaN or infinite values"):
        fit_lda(x, [k.split("/")[0] for k in keys])


def test_lda_beats_plain_cosine_on_unseen_speakers_and_score_applies_it_exactly(sets, capsys) -> None:
    lda = sets["root"] / "exp" / "lda.mat"
    code, _, err = run_main(["compute-lda", str(sets["train"]), str(sets["utt2spk"]), str(lda)], capsys)
    assert code == 0, err
    assert "300 embeddings of 30 speakers, 32 -> 29 dims" in err
    common = {"mean_from": sets["train"]}
    plain = score_trial_lists([sets["trials"]], sets["test"], **common)[0]
    out = sets["root"] / "scores"
    lda_result = score_trial_lists([sets["trials"]], sets["test"], transform=lda, out_dir=out, **common)[0]
    # the nuisance swamps the cosine; the LDA trained on other speakers removes it
    assert plain.metrics.eer_percent > 20 and lda_result.metrics.eer_percent < 5
    # the scores are the cosine of A x + b minus the transformed training mean, as the docstring says
    matrix = read_transform(lda)
    keys, x = _matrix(sets["test"])
    _, train = _matrix(sets["train"])
    y = apply_transform(matrix, x).astype(np.float64) - apply_transform(matrix, train).mean(axis=0)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    row = {k: i for i, k in enumerate(keys)}
    lines = [line.split() for line in (out / "trials.kaldi.score").read_text().splitlines()]
    expected = [float(y[row[a]] @ y[row[b]]) for a, b, *_ in lines]
    np.testing.assert_allclose([float(line[2]) for line in lines], expected, atol=2e-6)
    labels = np.array([line[3] == "target" for line in lines])
    assert 100 * compute_eer(np.array(expected), labels) == pytest.approx(lda_result.metrics.eer_percent)
    entry = json.loads((out / "thresholds.json").read_text())["lists"][0]
    assert entry["transform"] == str(lda.absolute())  # memsv similarity scores in the same space
    # AS-norm in the LDA space: the cohort goes through the transform too (else the dimensions differ)
    cohort = score_trial_lists(
        [sets["trials"]], sets["test"], transform=lda, norm="asnorm", cohort=sets["train"], top_n=50, **common
    )[0]
    assert cohort.metrics.eer_percent < 5


def test_transform_files_are_kaldi_matrices(sets, tmp_path: Path) -> None:
    keys, x = _matrix(sets["train"])
    matrix = fit_lda(x, [k.split("/")[0] for k in keys], dim=4)
    write_transform(tmp_path / "lda.mat", matrix)
    np.testing.assert_array_equal(read_transform(tmp_path / "lda.mat"), matrix)
    assert (tmp_path / "lda.mat").read_bytes()[:2] == b"\0B"  # Kaldi binary, as ivector-compute-lda writes
    rows = "\n".join("  " + " ".join(f"{v:.8g}" for v in r) for r in matrix)  # a text matrix reads too
    (tmp_path / "text.mat").write_text(f"[\n{rows} ]\n")
    np.testing.assert_allclose(read_transform(tmp_path / "text.mat"), matrix, rtol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lda.mat", "text.mat"]  # no temporary left


def test_bad_back_end_input_is_one_line_and_exit_1(sets, tmp_path: Path, capsys) -> None:
    lda = tmp_path / "lda.mat"
    other = tmp_path / "utt2spk"
    other.write_text("s2spk0/u0 a\n")  # misses 299 of the 300 embeddings
    code, _, err = run_main(["compute-lda", str(sets["train"]), str(other), str(lda)], capsys)
    assert code == 1
    assert_one_line(err, "memsv compute-lda: error:", str(other), "no speaker for 299 of the 300", "s2spk0/u")
    code, _, err = run_main(
        ["compute-lda", str(sets["train"]), str(sets["utt2spk"]), str(lda), "--dim", "40"], capsys
    )
    assert code == 1
    assert_one_line(err, "memsv compute-lda: error:", "--dim must be 1 .. 29")
    assert not lda.exists()
    write_transform(lda, np.ones((3, 11), dtype=np.float32))  # takes 10- or 11-dim input
    base = ["score", "-t", str(sets["trials"]), "-e", str(sets["test"])]
    code, _, err = run_main([*base, "--transform", str(lda)], capsys)
    assert code == 1
    assert_one_line(err, "memsv score: error:", str(lda), "3x11 transform", "the embeddings have 32")
    (tmp_path / "junk.mat").write_text("not a matrix\n")
    code, _, err = run_main([*base, "--transform", str(tmp_path / "junk.mat")], capsys)
    assert code == 1
    assert_one_line(err, "memsv score: error:", "junk.mat", "not a Kaldi matrix")
    with pytest.raises(InputError, match="no such transform file"):
        read_transform(tmp_path / "missing.mat")
    keys, x = _matrix(sets["train"])
    x[7, 0] = np.inf
    nan_scp = _write_scp(tmp_path / "nan.scp", dict(zip(keys, x, strict=True)))
    code, _, err = run_main(["compute-lda", str(nan_scp), str(sets["utt2spk"]), str(lda)], capsys)
    assert code == 1
    assert_one_line(err, "memsv compute-lda: error:", "nan.scp", "1 embedding(s) hold NaN", repr(keys[7]))
