"""Issue 15 item 5: QMF calibration (``memsv score --qmf-train``), as WeSpeaker's score_calibration."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_cli_errors import assert_one_line
from test_scoring_cli import _read_scores, _run, _write_scp

from memsv_cli.scoring import fit_qmf, quality_features, score_trial_lists
from memsv_cli.scoring.qmf import cllr

N_SPK, N_UTT, DIM = 40, 6, 32


def _corpus(root: Path, seed: int = 0, prefix: str = "spk") -> dict[str, Path]:
    """Speakers whose short recordings (every other one, ~150 frames; the others ~1500) are noisier
    and share a common offset, so a short-short non-target scores like a long-long target: a single
    threshold cannot suit both durations, which is what the duration quality measures can fix.
    Speakers 0-19 form the QMF training list, 20-39 the evaluated list (all pairs of each)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(N_SPK, DIM))
    offset = rng.normal(size=DIM)
    emb, frames, speaker = {}, {}, {}
    for s in range(N_SPK):
        for u in range(N_UTT):
            short = u % 2 == 0
            key = f"{prefix}{s:02d}/utt{u}"
            noise = (0.8 if short else 0.3) * rng.normal(size=DIM)
            emb[key] = centres[s] + noise + (offset if short else 0.0)
            frames[key] = int((150 if short else 1500) * rng.uniform(0.8, 1.25))
            speaker[key] = s
    paths = {"scp": _write_scp(root / "xvector.scp", emb), "frames": root / "utt2num_frames"}
    paths["frames"].write_text("".join(f"{k} {n}\n" for k, n in frames.items()))
    for name, speakers in (("train.trials", range(0, 20)), ("eval.trials", range(20, 40))):
        keys = [k for k in emb if speaker[k] in speakers]
        pairs = [(a, b) for i, a in enumerate(keys) for b in keys[i + 1 :]]
        paths[name] = root / name
        label = {True: "target", False: "nontarget"}
        paths[name].write_text("".join(f"{a} {b} {label[speaker[a] == speaker[b]]}\n" for a, b in pairs))
    return paths


@pytest.fixture()
def corpus(tmp_path: Path) -> dict[str, Path]:
    return _corpus(tmp_path)


def test_qmf_with_durations_lowers_eer_and_min_dcf_where_duration_matters(corpus, tmp_path) -> None:
    raw, qmf = score_trial_lists(
        [corpus["eval.trials"]],
        corpus["scp"],
        qmf_train=corpus["train.trials"],
        qmf_durations=[corpus["frames"]],
        out_dir=tmp_path / "s",
    )
    assert (raw.name, qmf.name, qmf.qmf) == ("eval.trials", "eval.trials.qmf", True)
    # Measured (seed 0): EER 10.09 % -> 4.67 %, minDCF0.01 0.667 -> 0.506, minDCF0.05 0.619 -> 0.298.
    assert qmf.metrics.eer_percent < 0.6 * raw.metrics.eer_percent
    assert qmf.metrics.min_dcf_01 < raw.metrics.min_dcf_01
    assert qmf.metrics.min_dcf_05 < raw.metrics.min_dcf_05
    model = json.loads((tmp_path / "s/qmf.json").read_text())
    assert model["features"] == ["score", "min_log_duration", "max_log_duration"]
    assert model["train_cllr_calibrated"] < model["train_cllr_raw"]
    rows = _read_scores(tmp_path / "s/eval.trials.qmf.score")
    assert len(rows) == raw.num_trials and rows[0][3] in ("target", "nontarget")
    thresholds = json.loads((tmp_path / "s/thresholds.json").read_text())
    assert [e["name"] for e in thresholds["lists"]] == ["eval.trials"]  # no entry for the .qmf row


def test_qmf_on_the_score_alone_is_a_monotone_calibration(corpus) -> None:
    raw, qmf = score_trial_lists([corpus["eval.trials"]], corpus["scp"], qmf_train=corpus["train.trials"])
    assert qmf.metrics.eer_percent == pytest.approx(raw.metrics.eer_percent, abs=1e-9)
    assert qmf.metrics.min_dcf_01 == pytest.approx(raw.metrics.min_dcf_01, abs=1e-9)
    assert "an affine calibration" in qmf.notes[0]
    # The same by hand: an increasing affine map of the scores, so the order of the trials is kept.
    rng = np.random.default_rng(1)
    labels = rng.random(2000) < 0.2
    scores = rng.normal(size=2000) + 2 * labels
    features, names = quality_features(scores, None, None)
    model = fit_qmf(features, labels, names, "t")
    assert names == ("score",) and model.weights[0] > 0
    calibrated = model.apply(features)
    np.testing.assert_array_equal(np.argsort(calibrated, kind="stable"), np.argsort(scores, kind="stable"))
    assert cllr(calibrated, labels) < cllr(scores, labels)  # calibration itself still helps Cllr


def test_qmf_with_asnorm_adds_the_imposter_means(corpus, tmp_path) -> None:
    rng = np.random.default_rng(2)
    cohort = _write_scp(tmp_path / "cohort.scp", {f"c{i}": rng.normal(size=DIM) for i in range(30)})
    raw, qmf = score_trial_lists(
        [corpus["eval.trials"]],
        corpus["scp"],
        norm="asnorm",
        cohort=cohort,
        top_n=10,
        qmf_train=corpus["train.trials"],
        qmf_durations=[corpus["frames"]],
        out_dir=tmp_path / "s",
    )
    model = json.loads((tmp_path / "s/qmf.json").read_text())
    assert model["features"][3:] == ["min_imposter_mean", "max_imposter_mean"]
    assert qmf.metrics.eer_percent <= raw.metrics.eer_percent


def test_qmf_training_list_from_another_embedding_file(corpus, tmp_path) -> None:
    """WeSpeaker draws its calibration trials from the training set: their keys live in another scp."""
    train_emb = tmp_path / "train"
    train_emb.mkdir()
    train_paths = _corpus(train_emb, seed=5, prefix="train")
    _, qmf = score_trial_lists(
        [corpus["eval.trials"]],
        corpus["scp"],
        qmf_train=train_paths["train.trials"],
        qmf_embeddings=train_paths["scp"],
        qmf_durations=[corpus["frames"], train_paths["frames"]],
    )
    assert qmf.metrics is not None


def test_qmf_cli_prints_the_qmf_row_and_refuses_bad_inputs(corpus, tmp_path, capsys) -> None:
    args = ["score", "-t", str(corpus["eval.trials"]), "-e", str(corpus["scp"])]
    code, out, err = _run([*args, "--qmf-train", str(corpus["train.trials"]), "--json"], capsys)
    assert code == 0, err
    assert [r["trials"] for r in json.loads(out)["results"]] == ["eval.trials", "eval.trials.qmf"]
    unlabelled = tmp_path / "unlabelled"
    unlabelled.write_text("spk00/utt0 spk00/utt1\n")
    one_kind = tmp_path / "targets"
    one_kind.write_text("spk00/utt0 spk00/utt1 target\n")
    short = tmp_path / "short_frames"
    short.write_text("spk00/utt0 100\n")
    for extra, fragments in (
        (["--qmf-durations", corpus["frames"]], ["--qmf-durations and --qmf-embeddings need --qmf-train"]),
        (["--qmf-train", unlabelled], [str(unlabelled), "no target/nontarget labels"]),
        (["--qmf-train", one_kind], [str(one_kind), "both target and non-target"]),
        (["--qmf-train", corpus["train.trials"], "--qmf-durations", short], [str(short), "no duration for"]),
    ):
        code, out, err = _run([*args, *map(str, extra)], capsys)
        assert (code, out) == (1, ""), err
        assert_one_line(err, "memsv score: error: ", *fragments)


def test_zero_duration_is_refused_with_its_line(corpus, tmp_path, capsys) -> None:
    bad = tmp_path / "utt2num_frames"
    bad.write_text("spk00/utt0 120\nspk00/utt1 0\n")
    args = ["-t", corpus["eval.trials"], "-e", corpus["scp"], "--qmf-train", corpus["train.trials"]]
    code, _, err = _run(["score", *map(str, args), "--qmf-durations", str(bad)], capsys)
    assert code == 1
    assert_one_line(err, "memsv score: error: ", f"{bad}:2", "not a positive number")
