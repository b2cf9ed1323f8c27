"""Scoring benchmark: 580,000 trials over 145,000 random 256-d embeddings (VoxCeleb1-E size).

Prints, in one run, the time of each part of ``memsv score`` and ratios against straightforward
references: a per-trial Python loop for cosine scoring (the WeSpeaker style; timed on a subset and
scaled) and sklearn's ``roc_curve`` for EER + minDCF. Target: scoring + metrics under 2 s on CPU.

    .venv/bin/python benchmarks/scoring.py [--trials 580000] [--utts 145000] [--dim 256] [--files]

``--files`` also times the end-to-end path from an ark/scp and a trial file (I/O dominated).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def _timed(fn, repeat: int = 3):  # noqa: ANN001, ANN202 - tiny local helper
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=580_000)
    parser.add_argument("--utts", type=int, default=145_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--files", action="store_true", help="also time the end-to-end file path")
    parser.add_argument(
        "--cohort",
        type=int,
        default=0,
        help="also time AS-norm with this many cohort speakers (WeSpeaker VoxCeleb: 5994), top 300",
    )
    args = parser.parse_args()

    from sklearn.metrics import roc_curve

    from memsv_cli.data.kaldi_dir import Trial
    from memsv_cli.scoring.metrics import compute_metrics
    from memsv_cli.scoring.norm import cosine_pairs, length_normalise
    from memsv_cli.scoring.score import _trial_indices

    rng = np.random.default_rng(0)
    # Speakers with ~116 utterances each (VoxCeleb1: 1,251 speakers): utterance = speaker centre +
    # noise, half the trials same-speaker, so the EER is a realistic few percent rather than 50 %.
    n_spk = max(2, args.utts // 116)
    spk = rng.integers(0, n_spk, args.utts)
    centres = rng.normal(size=(n_spk, args.dim)).astype(np.float32)
    emb = centres[spk] + 2.2 * rng.normal(size=(args.utts, args.dim)).astype(np.float32)
    keys = [f"id{s:05d}/vid{i % 7}/{i:06d}" for i, s in enumerate(spk)]
    by_spk = np.argsort(spk, kind="stable")
    first = np.searchsorted(spk[by_spk], np.arange(n_spk))
    count = np.bincount(spk, minlength=n_spk)
    # Sorted by enrolment utterance, as the VoxCeleb1-O/E/H lists are (each enrolment's trials together).
    a = np.sort(rng.integers(0, args.utts, args.trials))
    labels = rng.random(args.trials) < 0.5
    same = by_spk[first[spk[a]] + (rng.random(args.trials) * count[spk[a]]).astype(np.int64)]
    b = np.where(labels, same, rng.integers(0, args.utts, args.trials))
    labels = spk[a] == spk[b]
    # Fresh key strings, as parsing a trial file gives (not the table's own string objects).
    trials = [Trial(*f"{keys[i]} {keys[j]}".split(), bool(y)) for i, j, y in zip(a, b, labels, strict=True)]
    enroll = [t.enroll for t in trials]
    test = [t.test for t in trials]

    def lookup() -> tuple[np.ndarray, np.ndarray]:
        return _trial_indices({k: i for i, k in enumerate(keys)}, trials)  # dict build included

    t_lookup, (ei, ti) = _timed(lookup)
    t_norm, unit = _timed(lambda: length_normalise(emb))
    t_cos, scores = _timed(lambda: cosine_pairs(unit, ei, ti, normalised=True))
    t_metrics, (metrics, _) = _timed(lambda: compute_metrics(scores, labels))
    total = t_lookup + t_norm + t_cos + t_metrics

    # References. Per-trial loop: WeSpeaker's score.py style, timed on 20k trials and scaled.
    sub = 20_000
    start = time.perf_counter()
    ref = [
        float(emb[i] @ emb[j] / (np.linalg.norm(emb[i]) * np.linalg.norm(emb[j])))
        for i, j in zip(ei[:sub], ti[:sub], strict=True)
    ]
    t_loop = (time.perf_counter() - start) * args.trials / sub
    assert np.allclose(ref, scores[:sub], atol=1e-5)

    def sklearn_metrics() -> tuple[float, float, float]:
        fpr, tpr, _ = roc_curve(labels, scores)
        fnr = 1 - tpr
        i = np.nanargmin(np.abs(fnr - fpr))
        dcf = [np.min(p * fnr + (1 - p) * fpr) / min(p, 1 - p) for p in (0.01, 0.05)]
        return float(fpr[i]), dcf[0], dcf[1]

    t_sk, (sk_eer, sk_dcf1, sk_dcf5) = _timed(sklearn_metrics)
    assert abs(sk_dcf1 - metrics.min_dcf_01) < 1e-12 and abs(sk_dcf5 - metrics.min_dcf_05) < 1e-12

    print(
        f"{args.trials:,} trials over {args.utts:,} embeddings of dim {args.dim} "
        f"(EER {metrics.eer_percent:.3f}%, minDCF0.01 {metrics.min_dcf_01:.4f}); best of 3, 1 thread"
    )
    load = os.getloadavg()[0]
    print(f"load average {load:.1f} on {os.cpu_count()} cores (shared machine: absolute times are inflated)")
    print(f"{'part':<40}{'memsv (s)':>12}{'reference (s)':>15}{'ratio':>9}")
    print(f"{'trial keys -> rows (dict, incl. build)':<40}{t_lookup:>12.3f}")
    print(f"{'length normalisation':<40}{t_norm:>12.3f}")
    print(f"{'cosine scores vs per-trial loop':<40}{t_cos:>12.3f}{t_loop:>15.3f}{t_loop / t_cos:>8.0f}x")
    print(
        f"{'EER + 2 minDCF vs sklearn roc_curve':<40}{t_metrics:>12.3f}{t_sk:>15.3f}{t_sk / t_metrics:>8.1f}x"
    )
    print(
        f"{'scoring + metrics (target < 2 s)':<40}{total:>12.3f}{'':>15}"
        f"{'  PASS' if total < 2.0 else '  FAIL':>9}"
    )

    if args.cohort:
        from memsv_cli.scoring.norm import normalise_scores

        cohort = length_normalise(
            centres[rng.integers(0, n_spk, args.cohort)]
            + 0.3 * rng.normal(size=(args.cohort, args.dim)).astype(np.float32)
        )
        start = time.perf_counter()
        normalise_scores(scores, ei, ti, unit, cohort, 300)
        t_as = time.perf_counter() - start
        print(f"{f'AS-norm top-300 of {args.cohort} cohort':<40}{t_as:>12.3f}   (once; one BLAS thread)")

    if args.files:
        import kaldiio

        from memsv_cli.scoring.score import score_trial_lists

        with tempfile.TemporaryDirectory() as tmp:
            scp = Path(tmp) / "xvector.scp"
            with kaldiio.WriteHelper(f"ark,scp:{Path(tmp) / 'xvector.ark'},{scp}") as writer:
                for k, v in zip(keys, emb, strict=True):
                    writer(k, v)
            trials = Path(tmp) / "vox1_E.kaldi"
            names = np.where(labels, "target", "nontarget")
            trials.write_text("".join(f"{e} {t} {y}\n" for e, t, y in zip(enroll, test, names, strict=True)))
            start = time.perf_counter()
            score_trial_lists([trials], scp, out_dir=Path(tmp) / "scores")
            t_files = time.perf_counter() - start
        print(
            f"{'end to end from files (+ score file)':<40}{t_files:>12.3f}   (read ark/scp + trials, write)"
        )


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    main()
