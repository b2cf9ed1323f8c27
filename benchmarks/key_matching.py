"""Key-matching benchmark: official-format (``.wav``-keyed) trials vs the same list without extensions.

Builds, in a temporary directory, 145,000 random 256-d embeddings in a Kaldi ark/scp under VoxCeleb-style
keys (``id1xxxx/<11-character video id>/0000N``) and a 580,000-trial VoxCeleb-format list twice: keys as
in the scp, and keys with ``.wav`` appended (as the official lists write them). Times
``score_trial_lists`` (embeddings loaded, trials parsed, keys matched, scored, score file and
thresholds.json written) on each, alternating, best of ``--repeat``, and the key lookup alone; prints
the ratios. Target (issue 15): ``.wav`` keys within 1.2x of the plain list end to end.

    .venv/bin/python benchmarks/key_matching.py [--trials 580000] [--utts 145000] [--dim 256] [--repeat 3]
"""

from __future__ import annotations

import os

# One BLAS/OpenMP thread, set before numpy loads its BLAS (as benchmarks/scoring.py).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

_ALPHABET = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"))


def _keys(rng: np.random.Generator, n_utts: int, n_spk: int) -> tuple[list[str], np.ndarray]:
    """``n_utts`` VoxCeleb-style keys (~8 utterances per video) and each one's speaker index."""
    spk = np.sort(rng.integers(0, n_spk, n_utts))
    n_videos = n_utts // 8 + 1
    videos = ["".join(v) for v in _ALPHABET[rng.integers(0, _ALPHABET.size, (n_videos, 11))]]
    video = np.sort(rng.integers(0, n_videos, n_utts))
    keys = [
        f"id1{s:04d}/{videos[v]}/{i % 10**5:05d}" for i, (s, v) in enumerate(zip(spk, video, strict=True))
    ]
    return keys, spk


def _trial_text(rng: np.random.Generator, keys: list[str], spk: np.ndarray, n_trials: int, ext: str) -> str:
    """A VoxCeleb-format list ``1|0 enroll test`` sorted by enrolment, about half target trials."""
    first = np.searchsorted(spk, np.arange(spk.max() + 1))
    count = np.bincount(spk)
    a = np.sort(rng.integers(0, len(keys), n_trials))
    same = first[spk[a]] + (rng.random(n_trials) * count[spk[a]]).astype(np.int64)
    b = np.where(rng.random(n_trials) < 0.5, same, rng.integers(0, len(keys), n_trials))
    labels = (spk[a] == spk[b]).astype(int)
    return "".join(f"{y} {keys[i]}{ext} {keys[j]}{ext}\n" for y, i, j in zip(labels, a, b, strict=True))


def _best(fn: Callable[[], Any], repeat: int) -> tuple[float, float, Any]:
    """Best-of-``repeat`` wall and CPU seconds, and the last result."""
    wall, cpu, out = float("inf"), float("inf"), None
    for _ in range(repeat):
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        wall, cpu = min(wall, time.perf_counter() - w), min(cpu, time.process_time() - c)
    return wall, cpu, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=580_000)
    parser.add_argument("--utts", type=int, default=145_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    import kaldiio

    from memsv_cli.data.kaldi_dir import read_trials
    from memsv_cli.scoring import KeyIndex, score_trial_lists

    rng = np.random.default_rng(0)
    keys, spk = _keys(rng, args.utts, max(2, args.utts // 116))
    emb = rng.normal(size=(args.utts, args.dim)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        scp = tmp / "xvector.scp"
        with kaldiio.WriteHelper(f"ark,scp:{tmp / 'xvector.ark'},{scp}") as writer:
            for key, vec in zip(keys, emb, strict=True):
                writer(key, vec)
        lists = {}
        for name, ext in (("plain", ""), (".wav", ".wav")):
            lists[name] = tmp / f"vox1_E{ext or '_plain'}.txt"
            lists[name].write_text(_trial_text(np.random.default_rng(1), keys, spk, args.trials, ext))

        timings: dict[str, list[tuple[float, float]]] = {name: [] for name in lists}
        results = {}
        for _ in range(args.repeat):  # alternate, so that a load spike hits both
            for name, path in lists.items():
                w, c, res = _best(lambda p=path: score_trial_lists([p], scp, out_dir=tmp / "scores"), 1)
                timings[name].append((w, c))
                results[name] = res[0]
        assert results[".wav"].metrics == results["plain"].metrics, "the two lists must score the same"
        note = results[".wav"].notes

        lookups = {}
        for name, path in lists.items():
            trials = read_trials(path)
            trial_keys = [t.enroll for t in trials] + [t.test for t in trials]
            lookups[name] = _best(lambda k=trial_keys: KeyIndex(keys, scp).rows(k, "t"), args.repeat)

    print(
        f"{args.trials:,} VoxCeleb-format trials over {args.utts:,} embeddings of dim {args.dim}; best of "
        f"{args.repeat}, one thread; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    print(f"note: {note[0] if note else None}")
    print(f"{'part':<52}{'plain s':>10}{'.wav s':>10}{'ratio':>8}")

    def row(part: str, plain: float, wav: float) -> None:
        print(f"{part:<52}{plain:>10.3f}{wav:>10.3f}{wav / plain:>7.2f}x")

    for kind, index in (("wall", 0), ("CPU", 1)):
        plain, wav = (min(t[index] for t in timings[n]) for n in ("plain", ".wav"))
        row(f"score_trial_lists, end to end, {kind}", plain, wav)
    for kind, index in (("wall", 0), ("CPU", 1)):
        row(
            f"keys -> rows alone (KeyIndex build incl.), {kind}",
            lookups["plain"][index],
            lookups[".wav"][index],
        )
    ratio = min(t[1] for t in timings[".wav"]) / min(t[1] for t in timings["plain"])
    print(f"target: .wav keys within 1.2x of plain keys end to end: {'met' if ratio <= 1.2 else 'NOT met'}")


if __name__ == "__main__":
    main()
