"""An LDA back-end for embeddings, as Kaldi's ``ivector-compute-lda`` / ``transform-vec``.

``memsv compute-lda`` fits it on the training speakers' embeddings; ``memsv score --transform`` (and
``memsv similarity`` through ``thresholds.json``) applies it before cosine scoring. The transform is an
affine Kaldi matrix ``(dim, D + 1)``: ``y = A x + b``, with ``b = -A m`` so that the training set's mean
``m`` is subtracted first (Kaldi subtracts the global mean before its LDA the same way). A Kaldi user
reads it with ``copy-matrix`` and applies it with ``transform-vec``.

Why LDA at all, when WeSpeaker scores VoxCeleb with plain cosine: on corpora with few training speakers
(the synthetic demo corpora have 40) the embedding space keeps channel and text directions that the
classifier never had to discard; an LDA trained on those speakers removes them, as Kaldi's x-vector
recipes do with LDA + PLDA. As Kaldi's, it pools the within-speaker scatter over speakers; unlike it,
that scatter is shrunk towards a scaled identity (Ledoit-Wolf, scikit-learn's estimator): 16 utterances
per speaker in 128 dimensions leave the plain estimate near-singular, and the unshrunk LDA scored worse
than plain cosine in our runs (docs/results.md). The generalized eigenproblem is scipy's.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import kaldiio
import numpy as np

from memsv_cli.atomic import atomic_path
from memsv_cli.errors import InputError, MemsvError


def fit_lda(embeddings: np.ndarray, speakers: Sequence[str], dim: int | None = None) -> np.ndarray:
    """Fit the LDA affine transform on labelled embeddings.

    Args:
        embeddings: ``(N, D)`` training embeddings (raw, not length-normalised).
        speakers: ``N`` speaker labels.
        dim: output dimension; None takes the most LDA gives, ``min(speakers - 1, D)``.

    Returns:
        ``(dim, D + 1)`` float32 affine matrix ``[A | b]``, rows ordered by discriminance.

    Raises:
        MemsvError: NaN or infinite values, fewer than two speakers, ``dim`` outside ``1 .. min(speakers -
            1, D)``, or a singular within-speaker scatter.
    """
    from scipy.linalg import LinAlgError, eigh
    from sklearn.covariance import ledoit_wolf

    x = np.asarray(embeddings)
    bad = int((~np.isfinite(x)).any(axis=1).sum())
    if bad:
        raise MemsvError(f"{bad} embedding(s) hold NaN or infinite values")
    names, labels = np.unique(np.asarray(speakers), return_inverse=True)
    if len(names) < 2:
        raise MemsvError(f"LDA needs at least 2 speakers, got {len(names)}")
    most = min(len(names) - 1, x.shape[1])
    dim = most if dim is None else dim
    if not 1 <= dim <= most:
        raise MemsvError(f"--dim must be 1 .. {most} (speakers - 1, at most the embedding size), got {dim}")
    mean, counts, centres = _speaker_centres(x, labels, len(names))
    # Kaldi's pooled within-class covariance, shrunk towards a scaled identity (Ledoit-Wolf)
    within = ledoit_wolf(_within_residuals(x, mean, centres, labels), assume_centered=True)[0]
    between = (centres * counts[:, None]).T @ centres / len(x)
    try:  # B v = l W v, eigenvectors scaled so that V' W V = I: unit within-class variance per output
        values, vectors = eigh(between, within)
    except (LinAlgError, ValueError):
        raise MemsvError(
            f"cannot fit the LDA: the within-speaker scatter of {len(x)} embeddings of {len(names)} "
            "speakers is singular (too few utterances per speaker)"
        ) from None
    linear = vectors[:, np.argsort(values)[::-1][:dim]].T  # (dim, D), most discriminant first
    return np.hstack([linear, -(linear @ mean)[:, None]]).astype(np.float32)


def _speaker_centres(
    x: np.ndarray, labels: np.ndarray, num_speakers: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(D,)`` global mean, ``(S,)`` utterances per speaker and ``(S, D)`` speaker means minus the global
    mean, all float64; summed per speaker after one sort (``np.add.reduceat``, not the unbuffered and
    slow ``np.add.at``)."""
    order = np.argsort(labels, kind="stable")
    counts = np.bincount(labels, minlength=num_speakers)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    sums = np.add.reduceat(x[order].astype(np.float64), starts, axis=0)
    mean = sums.sum(axis=0) / len(x)
    return mean, counts, sums / counts[:, None] - mean


def _within_residuals(x: np.ndarray, mean: np.ndarray, centres: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``(N, D)`` float32 ``x - mean - centre of its speaker``, built in blocks: VoxCeleb2's 1.09M x 256
    would need three float64 copies (6.7 GB) at once; float32 suffices for the covariance statistics."""
    out = np.empty(x.shape, dtype=np.float32)
    for start in range(0, len(x), 65536):
        rows = slice(start, start + 65536)
        out[rows] = x[rows] - (mean + centres[labels[rows]])
    return out


def apply_transform(matrix: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
    """``(N, D)`` embeddings through a Kaldi transform ``(dim, D)`` (linear) or ``(dim, D + 1)`` (affine),
    as ``transform-vec`` does; returns ``(N, dim)`` float32."""
    x = np.asarray(embeddings, dtype=np.float64)
    linear = matrix[:, : x.shape[1]].astype(np.float64)
    y = x @ linear.T
    if matrix.shape[1] == x.shape[1] + 1:
        y += matrix[:, -1].astype(np.float64)
    return y.astype(np.float32)


def load_transform(path: str | Path, dim: int) -> np.ndarray:
    """:func:`read_transform`, refusing a matrix that does not take ``dim``-dimensional embeddings."""
    matrix = read_transform(path)
    if matrix.shape[1] not in (dim, dim + 1):
        raise InputError(
            Path(path),
            f"a {matrix.shape[0]}x{matrix.shape[1]} transform takes {matrix.shape[1]}- or "
            f"{matrix.shape[1] - 1}-dimensional input, the embeddings have {dim}",
        )
    return matrix


def read_transform(path: str | Path) -> np.ndarray:
    """A Kaldi matrix file (binary or text, as ``ivector-compute-lda`` writes it); ``(rows, cols)``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such transform file")
    try:
        matrix = np.asarray(kaldiio.load_mat(str(path)))
    except Exception as err:  # kaldiio raises assorted errors for malformed headers and sizes
        raise InputError(path, f"not a Kaldi matrix ({type(err).__name__}: {err})") from None
    if matrix.ndim != 2 or not matrix.size or not np.isfinite(matrix).all():
        raise InputError(path, f"not a finite 2-D matrix (shape {matrix.shape})")
    return matrix


def write_transform(path: str | Path, matrix: np.ndarray) -> None:
    """Write ``matrix`` as a binary Kaldi matrix, atomically."""
    with atomic_path(path) as tmp:
        kaldiio.save_mat(str(tmp), np.ascontiguousarray(matrix, dtype=np.float32))


def compute_lda(
    embeddings: str | Path, utt2spk: str | Path, out: str | Path, dim: int | None = None
) -> tuple[int, int, tuple[int, int]]:
    """``memsv compute-lda``: fit :func:`fit_lda` on an embedding scp labelled by a ``utt2spk`` and
    write the transform to ``out``.

    Returns:
        ``(embeddings used, speakers, transform shape)``.

    Raises:
        InputError: unreadable scp or utt2spk, an embedding whose key the utt2spk lacks, NaN or
            infinite values.
        MemsvError: fewer than two speakers, a bad ``dim``.
    """
    from memsv_cli.data.kaldi_dir import read_utt2spk
    from memsv_cli.scoring.score import load_embeddings  # score imports this module

    labels = read_utt2spk(utt2spk)
    table = load_embeddings(embeddings)
    unlabelled = [k for k in table.keys if k not in labels]
    if unlabelled:
        raise InputError(
            Path(utt2spk),
            f"no speaker for {len(unlabelled)} of the {len(table.keys)} embeddings of {embeddings} "
            f"(first: {unlabelled[0]!r}); give the utt2spk of the set they were extracted from",
        )
    bad = np.flatnonzero(~np.isfinite(table.matrix).all(axis=1))
    if bad.size:
        first = table.keys[int(bad[0])]
        message = f"{bad.size} embedding(s) hold NaN or infinite values (first: {first!r})"
        raise InputError(Path(embeddings), message)
    speakers = [labels[k] for k in table.keys]
    matrix = fit_lda(table.matrix, speakers, dim)
    write_transform(out, matrix)
    return len(table.keys), len(set(speakers)), (int(matrix.shape[0]), int(matrix.shape[1]))
