"""Score trial lists with cosine (optionally AS-norm / S-norm) and compute EER and minDCF.

One library function per use: :func:`score_trial_lists` (embeddings + trial lists -> score files and
metrics) and :func:`evaluate_score_file` (an existing score file -> metrics). The CLI only adapts
arguments; these are callable from Python as they are.

Score files are ``<enroll> <test> <score> [target|nontarget]``, one per trial list, named
``<trials file name>.score`` (WeSpeaker names them the same way), in the trial list's order, with the
keys as the list writes them (trial and embedding keys may differ by an audio extension, see
:mod:`memsv_cli.scoring.keys`). Beside them go ``thresholds.json`` (:mod:`memsv_cli.scoring.thresholds`)
and, with a QMF calibration (:mod:`memsv_cli.scoring.qmf`), ``<trials file name>.qmf.score`` and
``qmf.json``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import kaldiio
import numpy as np

from memsv_cli.atomic import write_text_atomic
from memsv_cli.data.kaldi_dir import NONTARGET, TARGET, Trial, read_table, read_trials
from memsv_cli.errors import InputError, MemsvError
from memsv_cli.scoring.keys import KeyIndex
from memsv_cli.scoring.lda import apply_transform, load_transform
from memsv_cli.scoring.metrics import ErrorRates, Metrics, compute_metrics
from memsv_cli.scoring.norm import cosine_pairs, length_normalise, normalise_with_stats, trial_cohort_stats
from memsv_cli.scoring.qmf import QMF_FILE, Durations, QmfModel, fit_qmf, quality_features, read_durations
from memsv_cli.scoring.thresholds import THRESHOLDS_FILE, list_thresholds, read_thresholds, update_thresholds

NORM_METHODS = ("asnorm", "snorm")


@dataclass
class EmbeddingTable:
    """Embeddings from one scp: ``matrix[index[key]]`` is ``key``'s vector.

    Attributes:
        path: the scp file.
        keys: ``N`` keys in file order.
        index: key -> row.
        matrix: ``(N, D)`` float32.
    """

    path: Path
    keys: list[str]
    index: dict[str, int]
    matrix: np.ndarray

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])

    @cached_property
    def key_index(self) -> KeyIndex:
        """Exact and audio-extension-tolerant lookup of ``keys`` (built on first use)."""
        return KeyIndex(self.keys, self.path, self.index)


def _read_vector_scp(path: Path) -> dict[str, str]:
    """``<key> <ark>:<offset>`` lines -> key to ``ark:offset``, with missing arks looked up next to the scp.

    An ark path that does not exist as written is tried relative to the scp's directory (the rule of
    ``memsv_cli.data.dataset.read_feats_scp``, not imported because that module loads torch) and then
    as a file of the same name beside the scp, so a copied or moved experiment directory still scores.
    """
    table = read_table(path)
    resolved: dict[str, str] = {}  # one file-system check per distinct ark, not per entry
    for key, spec in table.items():
        ark, sep, offset = spec.rpartition(":")
        if not sep or not offset.isdigit():
            raise InputError(path, f"entry of {key!r} is not 'ark_path:offset': {spec!r}")
        if ark not in resolved:
            resolved[ark] = ark
            if not os.path.exists(ark):
                candidates = [path.parent / Path(ark).name]
                if not os.path.isabs(ark):
                    candidates.insert(0, path.parent / ark)
                resolved[ark] = str(next((c for c in candidates if c.exists()), ark))
        table[key] = f"{resolved[ark]}:{offset}"
    return table


def load_embeddings(path: str | Path) -> EmbeddingTable:
    """Read every vector of a Kaldi ``xvector.scp`` (``<key> <ark>:<offset>`` lines).

    Ark paths that do not exist as written are looked up next to the scp (see ``_read_vector_scp``).

    Raises:
        InputError: missing or empty scp, malformed line, duplicate key, unreadable entry, an entry
            that is not a vector, or vectors of different dimensions.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such embedding file")
    arks = _read_vector_scp(path)
    if not arks:
        raise InputError(path, "empty: no embeddings")
    keys = list(arks)
    matrix: np.ndarray | None = None  # (N, D) float32, allocated once D is known (np.stack of 145k
    # rows costs a second; row assignment a tenth of that)
    fds: dict[str, object] = {}  # open arks, kept across entries (kaldiio fd_dict)
    try:
        for row, key in enumerate(keys):
            try:
                vec = np.asarray(kaldiio.load_mat(arks[key], fd_dict=fds))
            except Exception as err:  # kaldiio raises assorted errors for bad paths, offsets and headers
                raise InputError(
                    path, f"cannot read the embedding of {key!r} ({type(err).__name__}: {err})"
                ) from None
            if vec.ndim != 1:
                raise InputError(path, f"entry {key!r} is a {vec.shape} matrix, not an embedding vector")
            if matrix is None:
                matrix = np.empty((len(keys), vec.shape[0]), dtype=np.float32)
            elif vec.shape[0] != matrix.shape[1]:
                raise InputError(
                    path,
                    f"embedding dimension mismatch: {key!r} has {vec.shape[0]}, {keys[0]!r} has "
                    f"{matrix.shape[1]}",
                )
            matrix[row] = vec
    finally:
        for fd in fds.values():
            fd.close()  # type: ignore[attr-defined]
    index = {k: i for i, k in enumerate(keys)}
    assert matrix is not None  # arks is non-empty
    return EmbeddingTable(path, keys, index, matrix)


def mean_embedding(table: EmbeddingTable) -> np.ndarray:
    """``(D,)`` float32 mean of all raw (not length-normalised) embeddings, as WeSpeaker's mean_vec."""
    return table.matrix.astype(np.float64).mean(axis=0).astype(np.float32)


def _load_alike(
    path: str | Path, raw_dim: int, reference: Path, what: str, transform: np.ndarray | None
) -> EmbeddingTable:
    """Load an scp that must have the trial embeddings' dimension ``raw_dim`` (those of ``reference``),
    then put its vectors through ``transform`` as theirs were."""
    table = load_embeddings(path)
    if table.dim != raw_dim:
        raise InputError(
            table.path, f"{what} embeddings have dimension {table.dim}, but {reference} has {raw_dim}"
        )
    return _transformed(table, transform)


def _transformed(table: EmbeddingTable, transform: np.ndarray | None) -> EmbeddingTable:
    """``table`` with its vectors through ``transform`` (unchanged for None)."""
    if transform is None:
        return table
    return EmbeddingTable(table.path, table.keys, table.index, apply_transform(transform, table.matrix))


@dataclass
class TrialListResult:
    """What scoring one trial list produced.

    ``metrics`` is None for unlabelled lists and for lists with only one kind of label; ``note`` then
    says why. ``notes`` are further one-line remarks for stderr (keys matched modulo an audio
    extension, QMF caveats). ``num_skipped`` counts trials dropped by ``--skip-missing``. ``qmf`` marks
    the row of a list's QMF-calibrated scores (named ``<trials name>.qmf``).
    """

    name: str
    path: Path
    num_trials: int
    num_target: int | None
    num_skipped: int = 0
    metrics: Metrics | None = None
    rates: ErrorRates | None = field(default=None, repr=False)
    note: str | None = None
    score_file: Path | None = None
    det_plot: Path | None = None
    notes: list[str] = field(default_factory=list)
    qmf: bool = False

    def to_json(self) -> dict[str, object]:
        """The machine-readable record (``memsv score --json``); metrics are null when undefined."""
        m = self.metrics
        return {
            "trials": self.name,
            "num_trials": self.num_trials,
            "num_target": self.num_target,
            "eer": None if m is None else m.eer_percent,
            "min_dcf_0.01": None if m is None else m.min_dcf_01,
            "min_dcf_0.05": None if m is None else m.min_dcf_05,
        }


def _metrics_or_note(
    scores: np.ndarray, labels: np.ndarray | None
) -> tuple[Metrics | None, ErrorRates | None, str | None]:
    if labels is None:
        return None, None, "unlabelled trials: scores only"
    n_tar = int(labels.sum())
    if n_tar == 0 or n_tar == labels.size:
        kind = "target" if n_tar else "non-target"
        return None, None, f"only {kind} trials: EER and minDCF are undefined (scores written)"
    metrics, rates = compute_metrics(scores, labels)
    return metrics, rates, None


def _format_score_lines(
    enroll: Sequence[str], test: Sequence[str], scores: np.ndarray, labels: np.ndarray | None
) -> str:
    """Score-file text, one ``<enroll> <test> <score> [target|nontarget]`` line per trial."""
    # Six decimals: cosine scores live in [-1, 1] and AS-norm z-scores in a few units, so this keeps
    # well below the score differences that move EER on a 580k-trial list. Lists of str joined by
    # str.join: 2.4x faster than numpy char formatting plus an f-string per line (measured).
    columns = [enroll, test, [f"{v:.6f}" for v in scores.tolist()]]
    if labels is not None:
        columns.append([TARGET if v else NONTARGET for v in labels.tolist()])
    return "\n".join(map(" ".join, zip(*columns, strict=True))) + "\n"


def key_rows(index: dict[str, int], keys: Sequence[str]) -> np.ndarray:
    """``(T,)`` int64 row of each key in ``index``, ``-1`` for keys it lacks (exact keys only; the
    extension-tolerant lookup is :class:`~memsv_cli.scoring.keys.KeyIndex`)."""
    # map() over the dict's C-level get, without a default, is ~4x faster than a comprehension calling
    # get(k, -1) (measured 0.26 s vs 1.1 s for 580k keys); a missing key yields None and the rare slow
    # path fills in -1. (A vectorised hash + searchsorted join was tried: no faster, so not kept.)
    try:
        return np.fromiter(map(index.get, keys), np.int64, len(keys))
    except TypeError:
        return np.array([index.get(k, -1) for k in keys], dtype=np.int64)


def _trial_indices(index: dict[str, int], trials: Sequence[Trial]) -> tuple[np.ndarray, np.ndarray]:
    """Rows of each trial's enrolment and test embedding by exact key, ``-1`` where none; ``(T,)`` each
    (benchmarks/scoring.py times this part alone)."""
    return key_rows(index, [t.enroll for t in trials]), key_rows(index, [t.test for t in trials])


@dataclass
class _Scorer:
    """What every trial list is scored against.

    Attributes:
        table: the trial embeddings.
        unit: ``(N, D)`` float32 rows of ``table`` after mean subtraction and length normalisation.
        mean: ``(D,)`` the subtracted mean, or None.
        unit_cohort: ``(C, D)`` the cohort, processed the same way, or None (no normalisation).
        top_n: AS-norm's top-N; None with a cohort means S-norm.
        transform: the ``--transform`` matrix applied to every scp first (:mod:`.lda`), or None.
        raw_dim: the dimension of the embeddings before ``transform``.
    """

    table: EmbeddingTable
    unit: np.ndarray
    mean: np.ndarray | None
    unit_cohort: np.ndarray | None
    top_n: int | None
    transform: np.ndarray | None
    raw_dim: int

    def with_embeddings(self, embeddings: str | Path) -> _Scorer:
        """The same processing (transform, mean, cohort, normalisation) applied to another embedding scp."""
        table = _load_alike(embeddings, self.raw_dim, self.table.path, "--qmf-embeddings", self.transform)
        unit = length_normalise(table.matrix if self.mean is None else table.matrix - self.mean)
        return dataclasses.replace(self, table=table, unit=unit)


def _prepare(
    embeddings: str | Path,
    mean_from: str | Path | None,
    cohort: str | Path | None,
    top_n: int | None,
    transform: str | Path | None = None,
) -> _Scorer:
    """Load the trial embeddings (and cohort), apply ``transform``, subtract the ``mean_from`` mean (of
    the transformed vectors), length-normalise."""
    table = load_embeddings(embeddings)
    raw_dim, path = table.dim, table.path
    matrix = None if transform is None else load_transform(transform, raw_dim)
    table = _transformed(table, matrix)
    mean = None
    if mean_from is not None:
        mean = mean_embedding(_load_alike(mean_from, raw_dim, path, "--mean-from", matrix))
    unit = length_normalise(table.matrix if mean is None else table.matrix - mean)
    if cohort is None:
        return _Scorer(table, unit, mean, None, None, matrix, raw_dim)
    cohort_emb = _load_alike(cohort, raw_dim, path, "cohort", matrix).matrix
    cohort_emb = cohort_emb if mean is None else cohort_emb - mean
    return _Scorer(table, unit, mean, length_normalise(cohort_emb), top_n, matrix, raw_dim)


@dataclass
class _Scored:
    """One scored list (after ``--skip-missing``): ``T`` trials.

    Attributes:
        trials: the scored trials, keys as the list writes them.
        scores: ``(T,)`` float64, normalised when the scorer has a cohort.
        labels: ``(T,)`` bool, or None for an unlabelled list.
        enroll_idx, test_idx: ``(T,)`` rows of the scorer's table.
        imposter_means: ``(T, 2)`` mean top-N cohort scores of enrolment and test, or None.
        num_skipped: trials dropped for lack of an embedding.
        notes: one-line remarks (keys matched modulo an audio extension).
    """

    trials: list[Trial]
    scores: np.ndarray
    labels: np.ndarray | None
    enroll_idx: np.ndarray
    test_idx: np.ndarray
    imposter_means: np.ndarray | None
    num_skipped: int
    notes: list[str]


def _trial_rows(
    path: Path, trial_list: list[Trial], table: EmbeddingTable, skip_missing: bool
) -> tuple[list[Trial], np.ndarray, np.ndarray, int, str | None]:
    """``(trials kept, enrolment rows, test rows, number skipped, key-matching note)``."""
    keys = [t.enroll for t in trial_list] + [t.test for t in trial_list]
    match = table.key_index.rows(keys, path)
    enroll_idx, test_idx = np.split(match.rows, 2)
    keep = (enroll_idx >= 0) & (test_idx >= 0)
    num_skipped = int(keep.size - keep.sum())
    if num_skipped:
        missing = list(dict.fromkeys(keys[i] for i in np.flatnonzero(match.rows < 0).tolist()))
        first = ", ".join(repr(k) for k in missing[:3])
        if not skip_missing:
            raise InputError(
                path,
                f"{num_skipped} trial(s) use {len(missing)} key(s) without an "
                f"embedding in {table.path} (first: {first}); pass --skip-missing to "
                "score the rest",
            )
        if num_skipped == keep.size:
            raise InputError(path, f"no trial has both embeddings in {table.path} (first missing: {first})")
        trial_list = [t for t, k in zip(trial_list, keep, strict=True) if k]
        enroll_idx, test_idx = enroll_idx[keep], test_idx[keep]
    return trial_list, enroll_idx, test_idx, num_skipped, match.note("embeddings")


def _score_list(path: Path, trial_list: list[Trial], scorer: _Scorer, skip_missing: bool) -> _Scored:
    """Cosine (and AS-norm / S-norm) scores of one list."""
    trial_list, enroll_idx, test_idx, num_skipped, note = _trial_rows(
        path, trial_list, scorer.table, skip_missing
    )
    scores = cosine_pairs(scorer.unit, enroll_idx, test_idx, normalised=True)
    imposter_means = None
    if scorer.unit_cohort is not None:
        stats = trial_cohort_stats(enroll_idx, test_idx, scorer.unit, scorer.unit_cohort, scorer.top_n)
        scores = normalise_with_stats(scores, *stats)
        imposter_means = np.column_stack([stats[0], stats[2]])
    bad = ~np.isfinite(scores)
    if bad.any():
        culprit = trial_list[int(np.argmax(bad))]
        raise InputError(
            scorer.table.path,
            f"{int(bad.sum())} trial score(s) of {path.name} are NaN or "
            f"infinite (first: {culprit.enroll} {culprit.test}): check the embeddings for NaN",
        )
    labels = None
    if trial_list[0].label is not None:
        labels = np.array([t.label for t in trial_list], dtype=np.bool_)
    notes = [] if note is None else [note]
    return _Scored(trial_list, scores, labels, enroll_idx, test_idx, imposter_means, num_skipped, notes)


def _result(
    name: str, path: Path, scored: _Scored, scores: np.ndarray, out_dir: Path | None, det_plot: bool
) -> TrialListResult:
    """Metrics of ``scores`` (``(T,)``, the scored list's trials) and, with ``out_dir``, its files."""
    metrics, rates, note = _metrics_or_note(scores, scored.labels)
    num_target = None if scored.labels is None else int(scored.labels.sum())
    result = TrialListResult(
        name, path, len(scored.trials), num_target, scored.num_skipped, metrics, rates, note
    )
    if out_dir is not None:
        result.score_file = out_dir / f"{name}.score"
        enroll, test = [t.enroll for t in scored.trials], [t.test for t in scored.trials]
        write_text_atomic(result.score_file, _format_score_lines(enroll, test, scores, scored.labels))
        if det_plot and rates is not None:
            from memsv_cli.scoring.plot import write_det_plot

            result.det_plot = out_dir / f"{name}.det.png"
            write_det_plot(result.det_plot, {name: (rates, metrics)}, title=f"DET: {name}")
    return result


def _log_durations(
    durations: Durations, table: EmbeddingTable, scored: _Scored, path: Path
) -> tuple[np.ndarray, str | None]:
    """``(T, 2)`` log durations of each trial's enrolment and test, and a key-matching note."""
    used = np.unique(np.concatenate([scored.enroll_idx, scored.test_idx]))
    keys = [table.keys[i] for i in used.tolist()]
    match = durations.index.rows(keys, table.path)
    lacking = np.flatnonzero(match.rows < 0)
    if lacking.size:
        raise MemsvError(
            f"{durations.source}: no duration for {lacking.size} key(s) of {path.name} "
            f"(first: {keys[lacking[0]]!r}); give the utt2num_frames or utt2dur of every set scored"
        )
    log_used = np.log(durations.values[match.rows])
    pos_e, pos_t = np.searchsorted(used, scored.enroll_idx), np.searchsorted(used, scored.test_idx)
    return np.column_stack([log_used[pos_e], log_used[pos_t]]), match.note("durations")


def _qmf_features(
    scored: _Scored, table: EmbeddingTable, durations: Durations | None, path: Path
) -> tuple[np.ndarray, tuple[str, ...], list[str]]:
    """``((T, F) features, F names, notes)`` of a scored list (see :mod:`memsv_cli.scoring.qmf`)."""
    log_durations, note = None, None
    if durations is not None:
        log_durations, note = _log_durations(durations, table, scored, path)
    features, names = quality_features(scored.scores, log_durations, scored.imposter_means)
    return features, names, [] if note is None else [note]


def _train_qmf(
    path: Path, trial_list: list[Trial], scorer: _Scorer, durations: Durations | None, skip_missing: bool
) -> tuple[QmfModel, list[str]]:
    """Score the QMF training list as the evaluated lists and fit the QMF; returns it and notes."""
    scored = _score_list(path, trial_list, scorer, skip_missing)
    features, names, notes = _qmf_features(scored, scorer.table, durations, path)
    assert scored.labels is not None  # read with require_labels
    model = fit_qmf(features, scored.labels, names, path)
    if scored.num_skipped:
        notes.append(f"skipped {scored.num_skipped} trial(s) without embeddings")
    notes = [f"QMF training list {path.name}: {n}" for n in scored.notes + notes]
    if names == ("score",):
        notes.append(
            "QMF has only the score as feature (no --qmf-durations, no --norm): an affine calibration, "
            "EER and minDCF do not change"
        )
    return model, notes


def _check_options(
    paths: list[Path],
    norm: str | None,
    cohort: str | Path | None,
    top_n: int,
    out_dir: str | Path | None,
    det_plot: bool,
    qmf: tuple[str | Path | None, Sequence[str | Path], str | Path | None],
) -> None:
    """Refuse option combinations that cannot work, before any file is read."""
    qmf_train, qmf_durations, qmf_embeddings = qmf
    if not paths:
        raise MemsvError("no trial list given")
    names = [p.name for p in paths] + ([f"{p.name}.qmf" for p in paths] if qmf_train is not None else [])
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise MemsvError(f"two trial lists are named {dup!r}: their score files would collide")
    if norm is not None and norm not in NORM_METHODS:
        raise MemsvError(f"unknown --norm {norm!r}; choose one of {', '.join(NORM_METHODS)}")
    if norm is not None and cohort is None:
        raise MemsvError(f"--norm {norm} needs --cohort (e.g. the training speakers' spk_xvector.scp)")
    if norm is None and cohort is not None:
        raise MemsvError("--cohort is only used with --norm asnorm|snorm")
    if top_n < 1:
        raise MemsvError(f"--top-n must be at least 1, got {top_n}")
    if det_plot and out_dir is None:
        raise MemsvError("--det-plot needs --out-dir")
    if qmf_train is None and (qmf_durations or qmf_embeddings is not None):
        raise MemsvError("--qmf-durations and --qmf-embeddings need --qmf-train TRIALS")


def _check_old_thresholds(out_dir: Path | None) -> None:
    """Fail before scoring, not after, when the thresholds file to be updated is unreadable."""
    if out_dir is not None and (out_dir / THRESHOLDS_FILE).exists():
        try:
            read_thresholds(out_dir / THRESHOLDS_FILE)
        except InputError as err:
            raise MemsvError(
                f"{err}; remove it (memsv score writes it anew) or use another --out-dir"
            ) from None


def _write_records(
    out_dir: Path,
    results: list[TrialListResult],
    embeddings: str | Path,
    mean_from: str | Path | None,
    norm: str | None,
    model: QmfModel | None,
    transform: str | Path | None = None,
) -> None:
    """``thresholds.json`` (the plain lists) and, with QMF, ``qmf.json`` in ``out_dir``."""
    plain = [r for r in results if not r.qmf]
    mean_path = None if mean_from is None else Path(mean_from)
    transform_path = None if transform is None else Path(transform)
    entries = [
        list_thresholds(r.name, r.path, Path(embeddings), mean_path, norm, m, transform_path)
        for r in plain
        if (m := r.metrics) is not None
    ]
    update_thresholds(out_dir / THRESHOLDS_FILE, entries, [r.name for r in plain])
    if model is not None:
        write_text_atomic(out_dir / QMF_FILE, json.dumps(model.to_json(), indent=1) + "\n")


def _list_results(
    path: Path,
    scored: _Scored,
    scorer: _Scorer,
    qmf: tuple[QmfModel | None, Durations | None, list[str]],
    out: Path | None,
    det_plot: bool,
) -> list[TrialListResult]:
    """A scored list's result row and, with a QMF ``(model, durations, notes)``, its ``.qmf`` row."""
    model, durations, qmf_notes = qmf
    result = _result(path.name, path, scored, scored.scores, out, det_plot)
    result.notes = list(scored.notes)
    if model is None:
        return [result]
    features, names, notes = _qmf_features(scored, scorer.table, durations, path)
    assert names == model.features  # the same inputs (durations, cohort) for every list
    calibrated = _result(f"{path.name}.qmf", path, scored, model.apply(features), out, det_plot)
    calibrated.qmf, calibrated.notes = True, notes + qmf_notes
    return [result, calibrated]


def score_trial_lists(
    trials: Sequence[str | Path],
    embeddings: str | Path,
    *,
    mean_from: str | Path | None = None,
    norm: str | None = None,
    cohort: str | Path | None = None,
    top_n: int = 300,
    transform: str | Path | None = None,
    out_dir: str | Path | None = None,
    det_plot: bool = False,
    skip_missing: bool = False,
    qmf_train: str | Path | None = None,
    qmf_durations: Sequence[str | Path] = (),
    qmf_embeddings: str | Path | None = None,
) -> list[TrialListResult]:
    """Cosine-score every trial list against one embedding scp; write score files; compute metrics.

    Trial keys match embedding keys exactly or modulo a known audio extension (``.wav``, ...; see
    :mod:`memsv_cli.scoring.keys`); score files keep the keys as the trial list writes them.

    Args:
        trials: trial lists (Kaldi, VoxCeleb or unlabelled format; see ``read_trials``).
        embeddings: ``xvector.scp`` holding every enrolment and test key.
        mean_from: scp whose mean embedding is subtracted from all embeddings (incl. the cohort) before
            scoring, e.g. the training set's ``xvector.scp``.
        norm: None, ``"asnorm"`` (top-``top_n`` cohort scores) or ``"snorm"`` (all cohort scores).
        cohort: scp of cohort embeddings (e.g. training-speaker means, ``spk_xvector.scp``).
        transform: a Kaldi matrix (``memsv compute-lda``'s LDA) applied to every scp's vectors first;
            ``mean_from``'s mean is then taken of the transformed vectors.
        out_dir: where ``<trials name>.score`` (and ``.det.png``) go, with ``thresholds.json``
            (:mod:`memsv_cli.scoring.thresholds`); None writes no files.
        det_plot: also write a DET curve per labelled list (needs ``out_dir``).
        skip_missing: score the trials whose keys have embeddings instead of failing on the others.
        qmf_train: a held-out labelled trial list: train a QMF calibration on it (scored the same way)
            and add a ``<trials name>.qmf`` result (and score file) per list.
        qmf_durations: ``utt2num_frames`` / ``utt2dur`` files giving the QMF duration features.
        qmf_embeddings: the scp holding ``qmf_train``'s keys, when not ``embeddings``.

    Raises:
        MemsvError / InputError: bad options, unreadable files, trial keys without embeddings (unless
            ``skip_missing``), ambiguous keys, dimension mismatches, empty lists.
    """
    paths = [Path(t) for t in trials]
    _check_options(paths, norm, cohort, top_n, out_dir, det_plot, (qmf_train, qmf_durations, qmf_embeddings))
    out = None if out_dir is None else Path(out_dir)
    # Read every list (and the small inputs) before the slower embedding load, so that a typo fails fast.
    parsed = [read_trials(p) for p in paths]
    if out is None and any(t[0].label is None for t in parsed):
        raise MemsvError("unlabelled trial lists only produce scores: pass --out-dir")
    _check_old_thresholds(out)
    train = None if qmf_train is None else read_trials(qmf_train, require_labels=True)
    durations = read_durations(qmf_durations) if qmf_durations else None

    scorer = _prepare(embeddings, mean_from, cohort, top_n if norm == "asnorm" else None, transform)
    model, qmf_notes = None, []
    if qmf_train is not None and train is not None:
        train_scorer = scorer if qmf_embeddings is None else scorer.with_embeddings(qmf_embeddings)
        model, qmf_notes = _train_qmf(Path(qmf_train), train, train_scorer, durations, skip_missing)
        if any(p.resolve() == Path(qmf_train).resolve() for p in paths):
            qmf_notes.append("the QMF training list is also evaluated: its .qmf figures are optimistic")
    results = []
    for path, trial_list in zip(paths, parsed, strict=True):
        scored = _score_list(path, trial_list, scorer, skip_missing)
        results += _list_results(path, scored, scorer, (model, durations, qmf_notes), out, det_plot)
        qmf_notes = []  # said once, on the first list's .qmf row
    if out is not None:
        _write_records(out, results, embeddings, mean_from, norm, model, transform)
    return results


def read_score_file(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Scores and labels of a labelled score file.

    Accepted lines: ``<enroll> <test> <score> target|nontarget [extra columns...]`` (memsv, WeSpeaker,
    incl. WeSpeaker's AS-norm output with magnitude columns) and ``<score> target|nontarget`` (the
    input of Kaldi's ``compute-eer``).

    Returns:
        ``(scores, labels)``: ``(N,)`` float64 and ``(N,)`` bool.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such score file")
    scores: list[float] = []
    labels: list[bool] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            fields = line.split()
            if len(fields) >= 4 and fields[3] in (TARGET, NONTARGET):
                score, label = fields[2], fields[3]
            elif len(fields) == 2 and fields[1] in (TARGET, NONTARGET):
                score, label = fields
            else:
                raise InputError(
                    path,
                    "expected '<enroll> <test> <score> target|nontarget' or "
                    f"'<score> target|nontarget', got {line.strip()!r}",
                    number,
                )
            try:
                scores.append(float(score))
            except ValueError:
                raise InputError(path, f"score {score!r} is not a number", number) from None
            labels.append(label == TARGET)
    if not scores:
        raise InputError(path, "empty score file")
    return np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=np.bool_)


def evaluate_score_file(path: str | Path, *, det_plot: str | Path | None = None) -> TrialListResult:
    """EER and minDCF of an existing labelled score file (memsv, WeSpeaker or Kaldi).

    Raises:
        InputError: malformed file, or only one kind of label (metrics undefined).
    """
    path = Path(path)
    scores, labels = read_score_file(path)
    if not np.isfinite(scores).all():
        raise InputError(path, f"{int((~np.isfinite(scores)).sum())} score(s) are NaN or infinite")
    metrics, rates, note = _metrics_or_note(scores, labels)
    if metrics is None:
        raise InputError(path, note.replace(" (scores written)", "") if note else "no metrics")
    result = TrialListResult(path.name, path, metrics.num_trials, metrics.num_target, 0, metrics, rates)
    if det_plot is not None:
        from memsv_cli.scoring.plot import write_det_plot

        result.det_plot = Path(det_plot)
        write_det_plot(result.det_plot, {path.name: (rates, metrics)}, title=f"DET: {path.name}")
    return result
