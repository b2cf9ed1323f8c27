"""The linear baselines a trained speaker model must beat, on ``mini`` and ``hnm`` side by side.

For each corpus (a prepared train data dir and a test data dir with ``trials/*.kaldi``):

- ``mean-fbank cosine``: each utterance's mean 80-dim log-Mel vector minus its own mean over bins (a
  gain is not a voice), minus the training-set average, cosine (docs/design.md, "Baseline definition";
  the same numbers as benchmarks/mini_baseline.py up to its EER interpolation).
- ``mean+std LDA cosine``: mean and standard deviation of the log-Mel frames (160 dims), an LDA
  (scikit-learn) trained on the training speakers, ``min(#speakers - 1, 150)`` dimensions; the
  projections are length-normalised, the mean of the (normalised) training projections is subtracted,
  and trials are scored by cosine.

Features are memsv's own fbank with the recipe's options (``FbankConfig()``: 80 bins, 25/10 ms, no
dither, no CMN). EER and minDCF (p_target 0.01 and 0.05, C_miss = C_fa = 1) come from
``memsv_cli.scoring``.

Usage (without --data both corpora are synthesised at their default sizes into a temporary directory)::

    .venv/bin/python benchmarks/linear_baseline.py [--seed 777] [--nj 2] [--work DIR]
    .venv/bin/python benchmarks/linear_baseline.py --data NAME TRAIN_DIR TEST_DIR [--data ...]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

from memsv_cli.data.audio import read_audio
from memsv_cli.data.fbank import FbankConfig, compute_fbank
from memsv_cli.data.kaldi_dir import Trial, read_trials, read_utt2spk, read_wav_scp
from memsv_cli.scoring import compute_eer, compute_min_dcf
from memsv_cli.scoring.norm import cosine_pairs, length_normalise

LDA_MAX_DIM = 150


def _stats_one(spec: str) -> np.ndarray:
    """Mean and std over frames of one utterance's log-Mel fbank: ``(160,)`` float64."""
    feats = compute_fbank(read_audio(spec), FbankConfig()).astype(np.float64)
    return np.concatenate([feats.mean(axis=0), feats.std(axis=0)])


def utterance_stats(data_dir: Path, nj: int = 1) -> tuple[list[str], np.ndarray]:
    """Keys (wav.scp order) and per-utterance [mean | std] of the 80-dim fbank, ``(utts, 160)``."""
    wav_scp = read_wav_scp(data_dir / "wav.scp")
    keys = list(wav_scp)
    if nj > 1:
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        with ctx.Pool(nj) as pool:
            rows = pool.map(_stats_one, [wav_scp[k] for k in keys], chunksize=16)
    else:
        rows = [_stats_one(wav_scp[k]) for k in keys]
    return keys, np.array(rows)


def _trial_rows(keys: list[str], trials: list[Trial]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row indices of every trial's enroll and test utterance, and the labels (1 = target)."""
    index = {k: i for i, k in enumerate(keys)}
    enroll = np.array([index[t.enroll] for t in trials])
    test = np.array([index[t.test] for t in trials])
    return enroll, test, np.array([int(bool(t.label)) for t in trials])


def mean_fbank_scores(train: np.ndarray, test: np.ndarray, trials: tuple[np.ndarray, ...]) -> np.ndarray:
    """The mean-fbank cosine baseline: level-normalised, centred by the training mean (first 80 dims)."""
    train_flat = train[:, :80] - train[:, :80].mean(axis=1, keepdims=True)
    test_flat = test[:, :80] - test[:, :80].mean(axis=1, keepdims=True)
    return cosine_pairs(test_flat - train_flat.mean(axis=0), trials[0], trials[1])


def lda_scores(
    train: np.ndarray,
    speakers: list[str],
    test: np.ndarray,
    trials: tuple[np.ndarray, ...],
    solver: str = "svd",
) -> np.ndarray:
    """LDA on the training speakers, length-normalise, subtract the training mean, cosine.

    ``solver``: ``svd`` (scikit-learn's default, no shrinkage) or ``eigen`` with Ledoit-Wolf shrinkage of
    the within-class covariance.
    """
    dim = min(len(set(speakers)) - 1, LDA_MAX_DIM, train.shape[1])
    if solver == "svd":
        lda = LinearDiscriminantAnalysis(n_components=dim)
    else:
        lda = LinearDiscriminantAnalysis(n_components=dim, solver="eigen", shrinkage="auto")
    lda.fit(train, speakers)
    train_proj = length_normalise(lda.transform(train))
    test_proj = length_normalise(lda.transform(test)) - train_proj.mean(axis=0)
    return cosine_pairs(test_proj, trials[0], trials[1])


@dataclass(frozen=True)
class Result:
    """One system on one trial list: EER in percent, minDCF at p_target 0.01 and 0.05."""

    eer_percent: float
    min_dcf_01: float
    min_dcf_05: float


def evaluate(scores: np.ndarray, labels: np.ndarray) -> Result:
    """EER (%) and minDCF of one score vector against 0/1 labels."""
    return Result(
        100 * compute_eer(scores, labels),
        compute_min_dcf(scores, labels, p_target=0.01),
        compute_min_dcf(scores, labels, p_target=0.05),
    )


def run_baselines(train_dir: Path, test_dir: Path, nj: int = 1) -> dict[str, Result]:
    """Every baseline on the first trial list of ``test_dir/trials``; system name -> result."""
    trial_files = sorted((test_dir / "trials").glob("*.kaldi"))
    if not trial_files:
        raise SystemExit(f"{test_dir}/trials: no *.kaldi trial list")
    train_keys, train = utterance_stats(train_dir, nj)
    test_keys, test = utterance_stats(test_dir, nj)
    utt2spk = read_utt2spk(train_dir / "utt2spk")
    speakers = [utt2spk[k] for k in train_keys]
    enroll, probe, labels = _trial_rows(test_keys, read_trials(trial_files[0], require_labels=True))
    trials = (enroll, probe)
    return {
        "mean-fbank cosine": evaluate(mean_fbank_scores(train, test, trials), labels),
        "mean+std LDA (svd) cosine": evaluate(lda_scores(train, speakers, test, trials), labels),
        "mean+std LDA (shrinkage) cosine": evaluate(
            lda_scores(train, speakers, test, trials, "eigen"), labels
        ),
    }


def _generate(work: Path, seed: int, nj: int) -> list[tuple[str, Path, Path]]:
    """Synthesise mini and hnm at their default sizes under ``work``; prints generation times."""
    from memsv_cli.data.prepare import prepare_synthetic

    corpora = []
    for name in ("mini", "hnm"):
        t0 = time.perf_counter()
        summary = prepare_synthetic(name, work / name, seed=seed, nj=nj)
        print(
            f"{name}: {summary.train_utts} train / {summary.test_utts} test utterances, "
            f"{summary.audio_seconds / 60:.1f} min audio, {summary.num_trials} trials "
            f"({summary.num_target_trials} target); generated in {time.perf_counter() - t0:.1f} s (nj={nj})"
        )
        corpora.append((name, work / name / f"{name}_train", work / name / f"{name}_test"))
    return corpora


def _print_table(results: dict[str, dict[str, Result]]) -> None:
    names = list(results)
    systems = list(next(iter(results.values())))
    print(
        "| system | " + " | ".join(f"{n} EER (%) | {n} minDCF 0.01 | {n} minDCF 0.05" for n in names) + " |"
    )
    print("|---|" + "---|---|---|" * len(names))
    for system in systems:
        cells = [results[n][system] for n in names]
        row = " | ".join(f"{r.eer_percent:.2f} | {r.min_dcf_01:.3f} | {r.min_dcf_05:.3f}" for r in cells)
        print(f"| {system} | {row} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs=3, action="append", metavar=("NAME", "TRAIN_DIR", "TEST_DIR"))
    parser.add_argument("--seed", type=int, default=777, help="seed of both synthetic corpora")
    parser.add_argument("--nj", type=int, default=1, help="processes for synthesis and fbank")
    parser.add_argument("--work", type=Path, default=None, help="keep the synthesised corpora here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.data:
            corpora = [(name, Path(tr), Path(te)) for name, tr, te in args.data]
        else:
            corpora = _generate(args.work or Path(tmp), args.seed, args.nj)
        results = {}
        for name, train_dir, test_dir in corpora:
            t0 = time.perf_counter()
            results[name] = run_baselines(train_dir, test_dir, args.nj)
            print(f"{name}: fbank statistics and scoring in {time.perf_counter() - t0:.1f} s")
    _print_table(results)


if __name__ == "__main__":
    main()
