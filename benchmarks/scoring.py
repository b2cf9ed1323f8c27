"""Scoring benchmark: 580,000 trials over 145,000 random 256-d embeddings (VoxCeleb1-E size).

Prints, in one run, the time of each part of ``memsv score`` and ratios against straightforward
references: a per-trial Python loop for cosine scoring (the WeSpeaker style; timed on a subset and
scaled) and sklearn's ``roc_curve`` for EER + minDCF. Target: scoring + metrics under 2 s on CPU.

Each part is timed as wall-clock and as this process's CPU time (one BLAS thread, so CPU time is what
the part costs on a dedicated core; on a shared machine wall time also counts waiting for a core).

    .venv/bin/python benchmarks/scoring.py [--trials 580000] [--utts 145000] [--dim 256]
        [--cohort 5994] [--files]
"""

from __future__ import annotations

import os

# One BLAS/OpenMP thread, set before numpy loads its BLAS: the target is for one core.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402


def _timed(fn: Callable[[], Any], repeat: int = 3) -> tuple[float, float, Any]:
    """Best-of-``repeat`` wall and CPU seconds, and the result."""
    wall, cpu, out = float("inf"), float("inf"), None
    for _ in range(repeat):
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        wall = min(wall, time.perf_counter() - w)
        cpu = min(cpu, time.process_time() - c)
    return wall, cpu, out


def _row(name: str, wall: float, cpu: float, ref: float | None = None, ref_cpu: float | None = None) -> None:
    line = f"{name:<46}{wall:>9.3f}{cpu:>9.3f}"
    if ref is not None and ref_cpu is not None:
        line += f"{ref:>11.3f}{ref_cpu:>9.3f}{ref_cpu / cpu:>8.1f}x"
    print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=580_000)
    parser.add_argument("--utts", type=int, default=145_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--files", action="store_true", help="also time the end-to-end file path")
    parser.add_argument(
        "--embed",
        action="store_true",
        help="also time extract-embeddings batching (ResNet34, width 32): one-by-one vs length-grouped",
    )
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
    from memsv_cli.scoring.norm import cosine_pairs, length_normalise, normalise_scores
    from memsv_cli.scoring.score import _trial_indices

    rng = np.random.default_rng(0)
    # Speakers with ~116 utterances each (VoxCeleb1: 1,251 speakers): utterance = speaker centre +
    # noise, half the trials same-speaker, so the EER is a few percent rather than 50 %.
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
    same = by_spk[first[spk[a]] + (rng.random(args.trials) * count[spk[a]]).astype(np.int64)]
    b = np.where(rng.random(args.trials) < 0.5, same, rng.integers(0, args.utts, args.trials))
    labels = spk[a] == spk[b]
    # Fresh key strings, as parsing a trial file gives (not the table's own string objects).
    trials = [Trial(*f"{keys[i]} {keys[j]}".split(), bool(y)) for i, j, y in zip(a, b, labels, strict=True)]

    def lookup() -> tuple[np.ndarray, np.ndarray]:
        return _trial_indices({k: i for i, k in enumerate(keys)}, trials)  # dict build included

    parts = {}
    parts["trial keys -> rows (dict incl. build)"] = _timed(lookup)
    ei, ti = parts["trial keys -> rows (dict incl. build)"][2]
    parts["length normalisation"] = _timed(lambda: length_normalise(emb))
    unit = parts["length normalisation"][2]
    parts["cosine scores"] = _timed(lambda: cosine_pairs(unit, ei, ti, normalised=True))
    scores = parts["cosine scores"][2]
    parts["EER + minDCF 0.01 + minDCF 0.05"] = _timed(lambda: compute_metrics(scores, labels))
    metrics = parts["EER + minDCF 0.01 + minDCF 0.05"][2][0]

    # Reference 1: a per-trial loop (WeSpeaker's score.py style), timed on 20k trials and scaled.
    sub = 20_000

    def loop() -> list[float]:
        return [
            float(emb[i] @ emb[j] / (np.linalg.norm(emb[i]) * np.linalg.norm(emb[j])))
            for i, j in zip(ei[:sub], ti[:sub], strict=True)
        ]

    loop_wall, loop_cpu, ref = _timed(loop, repeat=1)
    assert np.allclose(ref, scores[:sub], atol=1e-5)
    scale = args.trials / sub

    # Reference 2: sklearn's roc_curve, minDCF on its points (must agree exactly).
    def sklearn_metrics() -> tuple[float, float]:
        fpr, tpr, _ = roc_curve(labels, scores)
        fnr = 1 - tpr
        return tuple(float(np.min(p * fnr + (1 - p) * fpr) / min(p, 1 - p)) for p in (0.01, 0.05))

    sk_wall, sk_cpu, (sk_dcf1, sk_dcf5) = _timed(sklearn_metrics)
    assert abs(sk_dcf1 - metrics.min_dcf_01) < 1e-12 and abs(sk_dcf5 - metrics.min_dcf_05) < 1e-12

    print(
        f"{args.trials:,} trials over {args.utts:,} embeddings of dim {args.dim}: EER "
        f"{metrics.eer_percent:.3f}%, minDCF0.01 {metrics.min_dcf_01:.4f}; best of 3, one thread; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    print(f"{'part':<46}{'wall s':>9}{'cpu s':>9}{'ref wall':>11}{'ref cpu':>9}{'ratio':>9}")
    for name, (wall, cpu, _) in parts.items():
        if name == "cosine scores":
            _row(name + " vs per-trial loop", wall, cpu, loop_wall * scale, loop_cpu * scale)
        elif name.startswith("EER"):
            _row(name + " vs sklearn", wall, cpu, sk_wall, sk_cpu)
        else:
            _row(name, wall, cpu)
    wall = sum(p[0] for p in parts.values())
    cpu = sum(p[1] for p in parts.values())
    _row("total scoring + metrics", wall, cpu)
    print(
        f"target < 2 s: {'met' if cpu < 2.0 else 'NOT met'} on CPU time, "
        f"{'met' if wall < 2.0 else 'not met'} on wall time"
    )

    if args.cohort:
        cohort = length_normalise(
            centres[rng.integers(0, n_spk, args.cohort)]
            + 0.3 * rng.normal(size=(args.cohort, args.dim)).astype(np.float32)
        )
        w, c, _ = _timed(lambda: normalise_scores(scores, ei, ti, unit, cohort, 300), repeat=1)
        _row(f"AS-norm top-300 of {args.cohort:,} cohort (once)", w, c)

    if args.files:
        import kaldiio

        from memsv_cli.scoring.score import score_trial_lists

        with tempfile.TemporaryDirectory() as tmp:
            scp = Path(tmp) / "xvector.scp"
            with kaldiio.WriteHelper(f"ark,scp:{Path(tmp) / 'xvector.ark'},{scp}") as writer:
                for k, v in zip(keys, emb, strict=True):
                    writer(k, v)
            path = Path(tmp) / "vox1_E.kaldi"
            path.write_text(
                "".join(f"{t.enroll} {t.test} {'target' if t.label else 'nontarget'}\n" for t in trials)
            )
            w, c, _ = _timed(lambda: score_trial_lists([path], scp, out_dir=Path(tmp) / "s"), repeat=1)
        _row("end to end: files in, score file out (once)", w, c)

    if args.embed:
        _embed_benchmark()


def _embed_benchmark(n_utts: int = 32, frames: tuple[int, ...] = (200, 300), batch: int = 16) -> None:
    """Embeddings of ``n_utts`` utterances (lengths drawn from ``frames``), one by one vs batched."""
    import torch

    from memsv_cli.embed import embed_batches, mean_normalise, plan_batches
    from memsv_cli.models import get_model

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    model = get_model("resnet34").eval()
    feats = {
        f"u{i:03d}": rng.normal(size=(int(rng.choice(frames)), 80)).astype(np.float32) for i in range(n_utts)
    }
    lengths = {u: m.shape[0] for u, m in feats.items()}

    def run(batch_size: int) -> dict[str, np.ndarray]:
        batches = plan_batches(lengths, batch_size, 10**9)
        items = ((b, torch.from_numpy(np.stack([mean_normalise(feats[u]) for u in b]))) for b in batches)
        return embed_batches(model, items, torch.device("cpu"))

    w1, c1, one = _timed(lambda: run(1), repeat=1)
    wb, cb, many = _timed(lambda: run(batch), repeat=1)
    diff = max(float(np.abs(one[u] - many[u]).max()) for u in one)
    print(f"extract-embeddings, ResNet34 (6.6M params), {n_utts} utts of {frames} frames, one thread:")
    print(f"{'':<46}{'wall s':>9}{'cpu s':>9}{'utts/s':>9}")
    print(f"{'one by one (batch 1)':<46}{w1:>9.2f}{c1:>9.2f}{n_utts / c1:>9.1f}")
    print(f"{f'length-grouped (batch {batch})':<46}{wb:>9.2f}{cb:>9.2f}{n_utts / cb:>9.1f}")
    print(f"batched / one-by-one speed (cpu): {c1 / cb:.2f}x; max |difference| {diff:.2e}")


if __name__ == "__main__":
    main()
