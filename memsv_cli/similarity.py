"""``memsv similarity a.wav b.wav``: the recipe's cosine score of two recordings and a same/different call.

- **Score** as ``memsv score`` computes it: both embeddings through the list's ``transform`` (an LDA
  of ``memsv compute-lda``) when it has one, minus the training-set mean (the mean of all vectors of
  the threshold list's ``mean_from`` scp, or ``--mean-from``, transformed alike), length-normalised,
  cosine.
- **Threshold** from ``thresholds.json``, which ``memsv score --out-dir DIR`` writes for labelled trial
  lists (default: ``EXP/scores/thresholds.json`` for ``--checkpoint EXP/models/avg_model.pt``, where
  the recipe's stage 5 puts it). Only lists scored without normalisation (``"norm": null``) are used:
  a raw cosine cannot be compared with an AS-norm threshold. ``eer`` (default), ``mindcf01`` or
  ``mindcf05`` of the first such list, or of ``--list NAME``; or a number. ``same`` means
  ``score >= threshold`` (the scoring's acceptance rule).
- Without a thresholds file the score is reported with a note naming how to get one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from memsv_cli.errors import MemsvError
from memsv_cli.scoring.thresholds import ListThresholds, read_thresholds

#: ``--threshold`` names -> fields of :class:`~memsv_cli.scoring.thresholds.ListThresholds`
THRESHOLD_KEYS = {
    "eer": "eer_threshold",
    "mindcf01": "min_dcf_01_threshold",
    "mindcf05": "min_dcf_05_threshold",
}


def raw_cosine_lists(path: str | Path) -> list[ListThresholds]:
    """The entries of a ``thresholds.json`` scored without normalisation (``norm`` null), in file order.

    Raises:
        InputError: a file that :func:`memsv_cli.scoring.thresholds.read_thresholds` rejects.
    """
    return [entry for entry in read_thresholds(path) if entry.norm is None]


def stored_threshold(entry: ListThresholds, kind: str) -> float | None:
    """``entry``'s threshold of ``kind`` (a :data:`THRESHOLD_KEYS` name); None where the file stores null
    (the reader admits only finite numbers or null, so None is the one "no threshold" case)."""
    value = getattr(entry, THRESHOLD_KEYS[kind])
    return None if value is None else float(value)


def default_thresholds_path(checkpoint: str | Path) -> Path:
    """``EXP/scores/thresholds.json`` for ``EXP/models/<checkpoint>.pt`` (the recipe's layout)."""
    return Path(checkpoint).resolve().parent.parent / "scores" / "thresholds.json"


@dataclass(frozen=True)
class Choice:
    """The threshold (None: no decision), its origin, and the mean scp the score must use."""

    threshold: float | None
    kind: str | None  # eer | mindcf01 | mindcf05 | value
    list_name: str | None
    file: Path | None
    mean_from: str | None
    note: str | None  # why there is no decision
    transform: str | None = None  # the list's transform (memsv compute-lda), applied before the mean


def _pick_list(lists: list[ListThresholds], file: Path, list_name: str | None) -> ListThresholds:
    if list_name is None:
        return lists[0]
    for entry in lists:
        if entry.name == list_name:
            return entry
    names = ", ".join(e.name for e in lists)
    raise MemsvError(f"{file}: no un-normalised list named {list_name!r} (lists: {names})")


def _parse_threshold(threshold: str | None) -> tuple[str, float | None]:
    """``--threshold`` -> (kind, value): a stored kind with None, or ``("value", number)``."""
    kind = (threshold or "eer").lower()
    if kind in THRESHOLD_KEYS:
        return kind, None
    try:
        return "value", float(kind)
    except ValueError:
        raise MemsvError(
            f"--threshold must be eer, mindcf01, mindcf05 or a number, got {threshold!r}"
        ) from None


def choose_threshold(
    checkpoint: str | Path, thresholds: str | Path | None, threshold: str | None, list_name: str | None
) -> Choice:
    """Resolve ``--thresholds/--threshold/--list`` (see the module docstring).

    ``threshold`` None means ``eer`` where a file provides it, else no decision (a note says why);
    an explicitly named kind that the file cannot provide is an error. A number is used as it is,
    with the mean of the chosen list when a thresholds file is there.
    """
    kind, value = _parse_threshold(threshold)
    file = Path(thresholds) if thresholds is not None else default_thresholds_path(checkpoint)
    if thresholds is not None and not file.is_file():
        raise MemsvError(f"{file}: no such thresholds file")
    lists = raw_cosine_lists(file) if file.is_file() else []
    if not lists:
        found = file if file.is_file() else None
        if value is not None:
            return Choice(value, kind, None, found, None, None)
        if found is not None:
            note = (
                f"{file} holds only score-normalised lists; a raw cosine needs a list scored without --norm"
            )
        else:
            note = (
                f"no decision threshold stored ({file} not found): score a labelled trial list with "
                "`memsv score --trials T --embeddings E --mean-from M --out-dir EXP/scores` (recipe "
                "stage 5), or pass --threshold VALUE"
            )
        if threshold is not None:
            raise MemsvError(note)
        return Choice(None, None, None, found, None, note)
    entry = _pick_list(lists, file, list_name)
    stored = value if value is not None else stored_threshold(entry, kind)
    if stored is None:
        message = f"{file}: list {entry.name!r} stores no finite {kind} threshold"
        if threshold is not None:
            raise MemsvError(message)
        return Choice(None, None, entry.name, file, entry.mean_from, message, entry.transform)
    return Choice(stored, kind, entry.name, file, entry.mean_from, None, entry.transform)


def training_mean(scp: str | Path) -> np.ndarray:
    """``(D,)`` float32 mean of all raw vectors of an embedding scp (as ``memsv score --mean-from``)."""
    from memsv_cli.scoring.score import load_embeddings, mean_embedding

    return mean_embedding(load_embeddings(scp))


def cosine_score(a: np.ndarray, b: np.ndarray, mean: np.ndarray | None) -> float:
    """Cosine of ``a - mean`` and ``b - mean`` (``(D,)`` each), computed as ``memsv score`` does."""
    from memsv_cli.scoring.norm import cosine_pairs

    emb = np.stack([a, b]).astype(np.float32)
    if mean is not None:
        if mean.shape != a.shape:
            raise MemsvError(f"the mean has dimension {mean.shape[0]}, the embeddings {a.shape[0]}")
        emb = emb - mean.astype(np.float32)
    return float(cosine_pairs(emb, np.array([0]), np.array([1]))[0])


@dataclass(frozen=True)
class SimilarityResult:
    """Score, decision (None: no threshold) and where the threshold and mean came from."""

    score: float
    same: bool | None
    choice: Choice
    mean_from: str | None

    def to_json(self) -> dict[str, Any]:
        c = self.choice
        return {
            "score": self.score,
            "decision": None if self.same is None else ("same" if self.same else "different"),
            "threshold": c.threshold,
            "threshold_kind": c.kind,
            "list": c.list_name,
            "thresholds_file": None if c.file is None else str(c.file),
            "mean_from": self.mean_from,
            "transform": c.transform,
            "note": c.note,
        }


def similarity(
    checkpoint: str | Path,
    file_a: str | Path,
    file_b: str | Path,
    *,
    thresholds: str | Path | None = None,
    threshold: str | None = None,
    list_name: str | None = None,
    mean_from: str | Path | None = None,
    vad: bool = False,
    window_seconds: float | None = None,
    device: str = "cpu",
    fbank_conf: str | Path | None = None,
) -> SimilarityResult:
    """Score two recordings with ``checkpoint``'s model and decide same/different (module docstring).

    ``mean_from`` overrides the threshold list's mean scp; without either the cosine is raw.
    """
    from memsv_cli.inference import load_embedder

    choice = choose_threshold(checkpoint, thresholds, threshold, list_name)
    mean_scp = str(mean_from) if mean_from is not None else choice.mean_from
    embedder = load_embedder(checkpoint, device, fbank_conf)
    detector = None
    if vad:
        from memsv_cli.vad import SileroVad

        detector = SileroVad()
    window = embedder.window_frames(window_seconds)
    a, b = (embedder.embed_file(f, window, detector) for f in (file_a, file_b))
    mean = training_mean(mean_scp) if mean_scp is not None else None
    if choice.transform is not None:  # the list was scored in the LDA space: so is this pair
        from memsv_cli.scoring.lda import apply_transform, load_transform

        matrix = load_transform(choice.transform, a.shape[0])
        a, b = apply_transform(matrix, np.stack([a, b]))
        mean = None if mean is None else apply_transform(matrix, mean[None])[0]
    score = cosine_score(a, b, mean)
    same = None if choice.threshold is None else score >= choice.threshold
    return SimilarityResult(score, same, choice, mean_scp)


__all__ = [
    "THRESHOLD_KEYS",
    "Choice",
    "SimilarityResult",
    "choose_threshold",
    "cosine_score",
    "default_thresholds_path",
    "raw_cosine_lists",
    "similarity",
    "stored_threshold",
    "training_mean",
]
