"""How hard is the mini corpus? EER of simple non-neural baselines on ``mini_test/trials/mini.kaldi``.

- ``mean-fbank cosine``: each utterance's mean log-Mel vector, centred by the training-set mean,
  scored by cosine similarity. This is the floor a trained model must beat clearly.
- ``mean+std LDA cosine``: mean and standard deviation of the log-Mel frames, projected by an LDA
  trained on ``mini_train`` speakers. Shows that speaker identity is learnable from training data.

Usage (prepares and extracts into a temporary directory unless --root is given)::

    .venv/bin/python benchmarks/mini_baseline.py [--root DIR] [--seed 777]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import kaldiio
import numpy as np
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.metrics import roc_curve

from memsv_cli.data.fbank import extract_fbank
from memsv_cli.data.kaldi_dir import read_trials, read_utt2spk
from memsv_cli.data.mini import MiniConfig, prepare_mini


def eer(scores: np.ndarray, labels: np.ndarray) -> float:
    """Equal error rate (fraction) at the ROC point where miss and false-alarm rates cross."""
    fpr, tpr, _ = roc_curve(labels, scores)
    fnr = 1 - tpr
    i = int(np.nanargmin(np.abs(fnr - fpr)))
    return float((fpr[i] + fnr[i]) / 2)


def stats(fbank_dir: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Per-utterance mean and std of log-Mel frames: keys, ``(utts, bins)``, ``(utts, bins)``."""
    keys, means, stds = [], [], []
    for key, feats in kaldiio.load_scp_sequential(str(fbank_dir / "feats.scp")):
        keys.append(key)
        means.append(feats.mean(axis=0))
        stds.append(feats.std(axis=0))
    return keys, np.array(means), np.array(stds)


def cosine_scores(emb: dict[str, np.ndarray], trials) -> np.ndarray:  # noqa: ANN001
    a = np.array([emb[t.enroll] for t in trials])
    b = np.array([emb[t.test] for t in trials])
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=MiniConfig.seed)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or Path(tmp) / "mini"
        t0 = time.perf_counter()
        summary = prepare_mini(root, MiniConfig(seed=args.seed))
        t1 = time.perf_counter()
        for subset in ("mini_train", "mini_test"):
            extract_fbank(root / subset, root / "fbank" / subset)
        t2 = time.perf_counter()
        tr_keys, tr_mean, tr_std = stats(root / "fbank" / "mini_train")
        te_keys, te_mean, te_std = stats(root / "fbank" / "mini_test")
        trials = read_trials(root / "mini_test" / "trials" / "mini.kaldi", require_labels=True)
        labels = np.array([t.label for t in trials], dtype=int)

        # Remove each vector's overall level (its mean over bins: a gain, not a voice), then centre.
        tr_flat = tr_mean - tr_mean.mean(axis=1, keepdims=True)
        te_flat = te_mean - te_mean.mean(axis=1, keepdims=True)
        base = cosine_scores(dict(zip(te_keys, te_flat - tr_flat.mean(axis=0), strict=True)), trials)

        utt2spk = read_utt2spk(root / "mini_train" / "utt2spk")
        lda = LinearDiscriminantAnalysis(n_components=min(39, summary.train_utts // 2))
        lda.fit(np.hstack([tr_mean, tr_std]), [utt2spk[k] for k in tr_keys])
        proj = lda.transform(np.hstack([te_mean, te_std]))
        lda_scores = cosine_scores(dict(zip(te_keys, proj, strict=True)), trials)

    print(
        f"mini corpus seed {args.seed}: {summary.train_utts} train / {summary.test_utts} test utterances, "
        f"{summary.audio_seconds / 60:.1f} min audio; {summary.num_trials} trials "
        f"({summary.num_target_trials} target)"
    )
    print(f"generation {t1 - t0:.1f} s, fbank {t2 - t1:.1f} s (nj=1)")
    print("| system | EER (%) |")
    print("|---|---|")
    print(f"| mean-fbank cosine (level-normalised, centred) | {100 * eer(base, labels):.2f} |")
    print(f"| mean+std fbank, LDA on mini_train, cosine | {100 * eer(lda_scores, labels):.2f} |")


if __name__ == "__main__":
    main()
