"""Decision thresholds that ``memsv score --out-dir DIR`` stores in ``DIR/thresholds.json``.

The contract (read by ``memsv similarity`` through :func:`read_thresholds`)::

    {"version": 1,
     "lists": [{"name": "<trial list name as in the results table>", "trials": "<abs path>",
                "embeddings": "<abs path>", "mean_from": "<abs path or null>", "norm": null,
                "transform": "<abs path or null>",
                "eer_percent": 1.23, "eer_threshold": 0.41,
                "min_dcf_01": 0.12, "min_dcf_01_threshold": 0.55,
                "min_dcf_05": 0.08, "min_dcf_05_threshold": 0.50}]}

``transform`` is the ``--transform`` matrix (``memsv compute-lda``) the vectors went through before the
mean was subtracted; files written before it existed lack the key, which reads as null. ``norm`` is
``"asnorm"`` or ``"snorm"`` when the scores were normalised (against a cohort that the file
does not name) and null for plain cosine. Thresholds are on the scale of the score file: accept a trial
when ``score >= threshold``. ``eer_threshold`` is the largest distinct score at which the miss rate no
longer exceeds the false-alarm rate (the ROC's first operating point at or past the EER crossing);
``min_dcf_*_threshold`` is the largest score attaining that minDCF (p_target 0.01 / 0.05, C_miss = C_fa =
1), or null when no threshold beats rejecting every trial (JSON has no infinity).

Only labelled lists with both kinds of trial have an entry; QMF-calibrated rows have none (their scale
needs the calibration model). A later run into the same directory replaces the entries of the lists it
scored (removing those now unlabelled) and keeps the others, as it keeps their score files.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from memsv_cli.atomic import write_text_atomic
from memsv_cli.errors import InputError
from memsv_cli.scoring.metrics import Metrics

THRESHOLDS_FILE = "thresholds.json"
VERSION = 1
_NORMS = (None, "asnorm", "snorm")


@dataclass(frozen=True)
class ListThresholds:
    """One list's entry of ``thresholds.json`` (field names and meanings: the module docstring)."""

    name: str
    trials: str
    embeddings: str
    mean_from: str | None
    norm: str | None
    eer_percent: float
    eer_threshold: float
    min_dcf_01: float
    min_dcf_01_threshold: float | None
    min_dcf_05: float
    min_dcf_05_threshold: float | None
    transform: str | None = None


#: keys a file may lack (added after version 1 was first written), with the value they read as
_OPTIONAL = {"transform": None}


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def list_thresholds(
    name: str,
    trials: Path,
    embeddings: Path,
    mean_from: Path | None,
    norm: str | None,
    metrics: Metrics,
    transform: Path | None = None,
) -> ListThresholds:
    """The entry of one scored list; paths are made absolute."""
    return ListThresholds(
        name=name,
        trials=str(Path(trials).absolute()),
        embeddings=str(Path(embeddings).absolute()),
        mean_from=None if mean_from is None else str(Path(mean_from).absolute()),
        norm=norm,
        eer_percent=metrics.eer_percent,
        eer_threshold=metrics.eer_threshold,
        min_dcf_01=metrics.min_dcf_01,
        min_dcf_01_threshold=_finite_or_none(metrics.min_dcf_01_threshold),
        min_dcf_05=metrics.min_dcf_05,
        min_dcf_05_threshold=_finite_or_none(metrics.min_dcf_05_threshold),
        transform=None if transform is None else str(Path(transform).absolute()),
    )


def _number(value: object, nullable: bool) -> bool:
    if value is None:
        return nullable
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _entry(path: Path, number: int, obj: object) -> ListThresholds:
    """Validate list ``number`` (1-based) of the file; one-line errors name it."""
    if not isinstance(obj, dict):
        raise InputError(path, f"lists[{number - 1}] is not an object")
    where = f"lists[{number - 1}] ({obj.get('name')!r})"
    obj = {**_OPTIONAL, **obj}
    missing = [f for f in ListThresholds.__dataclass_fields__ if f not in obj]
    if missing:
        raise InputError(path, f"{where} lacks {', '.join(missing)}")
    for key in ("name", "trials", "embeddings"):
        if not isinstance(obj[key], str) or not obj[key]:
            raise InputError(path, f"{where}: {key} must be a non-empty string, got {obj[key]!r}")
    for key in ("mean_from", "transform"):
        if obj[key] is not None and not isinstance(obj[key], str):
            raise InputError(path, f"{where}: {key} must be a path or null, got {obj[key]!r}")
    if obj["norm"] not in _NORMS:
        raise InputError(path, f"{where}: norm must be null, 'asnorm' or 'snorm', got {obj['norm']!r}")
    for key in ("eer_percent", "eer_threshold", "min_dcf_01", "min_dcf_05"):
        if not _number(obj[key], nullable=False):
            raise InputError(path, f"{where}: {key} must be a finite number, got {obj[key]!r}")
    for key in ("min_dcf_01_threshold", "min_dcf_05_threshold"):
        if not _number(obj[key], nullable=True):
            raise InputError(path, f"{where}: {key} must be a finite number or null, got {obj[key]!r}")
    return ListThresholds(**{f: obj[f] for f in ListThresholds.__dataclass_fields__})


def read_thresholds(path: str | Path) -> list[ListThresholds]:
    """Load and validate a ``thresholds.json`` (extra keys are ignored, for later versions' additions).

    Raises:
        InputError: missing file, not JSON, another version, a malformed entry, two entries of one name.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such thresholds file (memsv score --out-dir DIR writes one in DIR)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise InputError(path, f"not UTF-8 text ({err.reason} at byte {err.start})") from None
    except json.JSONDecodeError as err:
        raise InputError(path, f"not JSON ({err.msg}, column {err.colno})", err.lineno) from None
    if not isinstance(data, dict) or data.get("version") != VERSION:
        version = data.get("version") if isinstance(data, dict) else None
        raise InputError(path, f"not a version-{VERSION} memsv thresholds file (version {version!r})")
    if not isinstance(data.get("lists"), list):
        raise InputError(path, "'lists' must be a list")
    entries = [_entry(path, i, obj) for i, obj in enumerate(data["lists"], start=1)]
    names = [e.name for e in entries]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise InputError(path, f"two entries for the list {dup!r}")
    return entries


def update_thresholds(path: str | Path, scored: Iterable[ListThresholds], rescored: Iterable[str]) -> None:
    """Write ``path`` atomically: the ``scored`` entries, after the old file's entries of other lists.

    Args:
        scored: entries of the lists this run scored with labels.
        rescored: names of every list this run scored (an old entry of one of them is dropped, so an
            unlabelled re-score leaves no stale threshold).
    """
    path = Path(path)
    drop = set(rescored)
    kept = [e for e in read_thresholds(path) if e.name not in drop] if path.exists() else []
    lists = [asdict(e) for e in (*kept, *scored)]
    write_text_atomic(path, json.dumps({"version": VERSION, "lists": lists}, indent=1) + "\n")
