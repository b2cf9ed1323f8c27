"""Issue 15 item 2 (scoring side): ``memsv score --out-dir`` stores EER and minDCF thresholds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_cli_errors import assert_one_line, run_main
from test_scoring_cli import DIM, _read_scores, _trials, _utt_embeddings, _write_scp

from memsv_cli.errors import InputError
from memsv_cli.scoring import compute_metrics, read_thresholds, score_trial_lists
from memsv_cli.scoring.thresholds import list_thresholds

KEYS = {
    "name",
    "trials",
    "embeddings",
    "mean_from",
    "norm",
    "eer_percent",
    "eer_threshold",
    "min_dcf_01",
    "min_dcf_01_threshold",
    "min_dcf_05",
    "min_dcf_05_threshold",
    "transform",
}


@pytest.fixture()
def lists(tmp_path: Path) -> dict[str, Path]:
    emb = _utt_embeddings()
    trials = _trials(list(emb))
    kaldi = tmp_path / "vox1_O.kaldi"
    kaldi.write_text("".join(f"{a} {b} {'target' if t else 'nontarget'}\n" for a, b, t in trials))
    plain = tmp_path / "unlabelled.txt"
    plain.write_text("".join(f"{a} {b}\n" for a, b, _ in trials))
    return {"scp": _write_scp(tmp_path / "xvector.scp", emb), "kaldi": kaldi, "plain": plain, "dir": tmp_path}


def _cost(scores: np.ndarray, labels: np.ndarray, threshold: float, p_target: float) -> float:
    accept = scores >= threshold
    p_miss, p_fa = np.mean(~accept[labels]), np.mean(accept[~labels])
    return (p_target * p_miss + (1 - p_target) * p_fa) / min(p_target, 1 - p_target)


def test_thresholds_json_holds_each_labelled_list_and_its_operating_points(lists) -> None:
    out = lists["dir"] / "scores"
    results = score_trial_lists([lists["kaldi"], lists["plain"]], lists["scp"], out_dir=out)
    data = json.loads((out / "thresholds.json").read_text())
    assert data["version"] == 1 and len(data["lists"]) == 1  # the unlabelled list has no entry
    entry = data["lists"][0]
    assert set(entry) == KEYS
    assert entry["name"] == "vox1_O.kaldi" == results[0].name
    assert entry["trials"] == str(lists["kaldi"].absolute()) and Path(entry["trials"]).is_absolute()
    assert entry["embeddings"] == str(lists["scp"].absolute())
    assert entry["mean_from"] is None and entry["norm"] is None and entry["transform"] is None
    m = results[0].metrics
    assert (entry["eer_percent"], entry["min_dcf_01"], entry["min_dcf_05"]) == (
        m.eer_percent,
        m.min_dcf_01,
        m.min_dcf_05,
    )
    # Check the thresholds against the score file: accept when score >= threshold.
    rows = _read_scores(out / "vox1_O.kaldi.score")
    scores = np.array([float(r[2]) for r in rows])
    labels = np.array([r[3] == "target" for r in rows])
    thr = round(entry["eer_threshold"], 6)  # the score file has 6 decimals
    accept = scores >= thr
    assert np.mean(~accept[labels]) <= np.mean(accept[~labels])  # P_miss <= P_fa at the threshold ...
    above = scores > thr
    assert np.mean(~above[labels]) > np.mean(above[~labels])  # ... but not at the next higher score
    assert np.mean(~accept[labels]) <= m.eer_percent / 100 <= np.mean(accept[~labels])
    for p, key in ((0.01, "min_dcf_01"), (0.05, "min_dcf_05")):
        assert _cost(scores, labels, round(entry[f"{key}_threshold"], 6), p) == pytest.approx(
            entry[key], abs=1e-9
        )
    assert read_thresholds(out / "thresholds.json")[0].eer_threshold == entry["eer_threshold"]


def test_normalised_scoring_records_norm_and_mean_and_a_rerun_replaces_only_its_lists(lists) -> None:
    rng = np.random.default_rng(3)
    cohort = _write_scp(lists["dir"] / "cohort.scp", {f"c{i}": rng.normal(size=DIM) for i in range(8)})
    other = lists["dir"] / "other"
    other.mkdir()
    second = other / "vox1_H.kaldi"
    second.write_text(lists["kaldi"].read_text())
    out = lists["dir"] / "scores"
    score_trial_lists([lists["kaldi"], second], lists["scp"], out_dir=out)
    score_trial_lists(
        [lists["kaldi"]], lists["scp"], mean_from=cohort, norm="asnorm", cohort=cohort, top_n=3, out_dir=out
    )
    entries = {e.name: e for e in read_thresholds(out / "thresholds.json")}
    assert list(entries) == ["vox1_H.kaldi", "vox1_O.kaldi"]  # kept, then this run's
    assert entries["vox1_O.kaldi"].norm == "asnorm" and entries["vox1_H.kaldi"].norm is None
    assert entries["vox1_O.kaldi"].mean_from == str(cohort.absolute())
    unlabelled = other / "vox1_O.kaldi"  # the same name, now without labels: its entry goes
    unlabelled.write_text(lists["plain"].read_text())
    score_trial_lists([unlabelled], lists["scp"], out_dir=out)
    assert [e.name for e in read_thresholds(out / "thresholds.json")] == ["vox1_H.kaldi"]


def test_min_dcf_threshold_is_null_when_rejecting_everything_is_cheapest(tmp_path) -> None:
    metrics, _ = compute_metrics([0.1, 0.2, 0.9, 0.8], [1, 1, 0, 0])  # inverted scores
    entry = list_thresholds("t", Path("t"), Path("x.scp"), None, None, metrics)
    assert entry.min_dcf_01_threshold is None and entry.min_dcf_01 == 1.0
    path = tmp_path / "thresholds.json"
    path.write_text(json.dumps({"version": 1, "lists": [entry.__dict__]}))
    assert read_thresholds(path) == [entry]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("{not json", "not JSON"),
        ('{"version": 2, "lists": []}', "not a version-1 memsv thresholds file"),
        ('{"version": 1, "lists": {}}', "'lists' must be a list"),
        ('{"version": 1, "lists": [{"name": "a"}]}', "lists[0] ('a') lacks trials, embeddings"),
        ("BAD_NUMBER", "eer_threshold must be a finite number, got 'x'"),
        ("BAD_NORM", "norm must be null, 'asnorm' or 'snorm', got 'znorm'"),
        ("DUPLICATE", "two entries for the list 'a'"),
    ],
)
def test_read_thresholds_rejects_malformed_files_in_one_line(tmp_path, text: str, fragment: str) -> None:
    good = dict.fromkeys(KEYS, 0.5) | {
        "name": "a",
        "trials": "/t",
        "embeddings": "/e",
        "mean_from": None,
        "norm": None,
        "transform": None,
    }
    lists = {
        "BAD_NUMBER": [good | {"eer_threshold": "x"}],
        "BAD_NORM": [good | {"norm": "znorm"}],
        "DUPLICATE": [good, good],
    }
    if text in lists:
        text = json.dumps({"version": 1, "lists": lists[text]})
    path = tmp_path / "thresholds.json"
    path.write_text(text)
    with pytest.raises(InputError) as err:
        read_thresholds(path)
    assert fragment in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)


def test_a_corrupt_thresholds_file_stops_scoring_before_it_starts(lists, capsys) -> None:
    out = lists["dir"] / "scores"
    out.mkdir()
    (out / "thresholds.json").write_text("{")
    code, _, err = run_main(
        ["score", "-t", str(lists["kaldi"]), "-e", str(lists["scp"]), "-o", str(out)], capsys
    )
    assert code == 1
    assert_one_line(err, "memsv score: error: ", "thresholds.json", "not JSON", "remove it")
    assert not (out / "vox1_O.kaldi.score").exists()
