"""Kaldi data directories: read, write and validate ``wav.scp``, ``utt2spk``, ``spk2utt``, trials and
``utt2num_frames``.

Conventions (Kaldi ``utils/validate_data_dir.sh``):
- one entry per line, ``<key> <value>``; keys contain no whitespace; blank lines are errors;
- files are sorted in C-locale (byte) order, which for UTF-8 text is Python's code-point order;
- ``wav.scp`` values are a path or a pipe command ending in ``|`` (``ffmpeg ... -f wav - |``).

Every reader reports problems as :class:`~memsv_cli.errors.InputError` naming the file and line.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from memsv_cli.atomic import write_lines_atomic
from memsv_cli.errors import InputError, MemsvError

TARGET, NONTARGET = "target", "nontarget"


def c_sorted(keys: Iterable[str]) -> list[str]:
    """Sort like ``LC_ALL=C sort``: by UTF-8 bytes (equal to code-point order)."""
    return sorted(keys, key=lambda k: k.encode("utf-8"))


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    if not path.is_file():
        raise InputError(path, "no such file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise InputError(path, f"not UTF-8 text ({err.reason} at byte {err.start})") from None
    yield from enumerate(text.splitlines(), start=1)


def read_table(
    path: str | Path, *, min_fields: int = 2, max_fields: int | None = 2, rest_as_value: bool = False
) -> dict[str, str]:
    """Read a ``<key> <value>`` table into an insertion-ordered dict.

    Args:
        path: the file.
        min_fields, max_fields: field-count limits per line (``max_fields=None``: unlimited).
        rest_as_value: keep everything after the key (verbatim, stripped) as the value, as ``wav.scp``
            pipe commands need.

    Raises:
        InputError: missing file, blank or malformed line, duplicate key.
    """
    path = Path(path)
    table: dict[str, str] = {}
    for number, line in _lines(path):
        fields = line.split()
        if not fields:
            raise InputError(path, "empty line", number)
        if len(fields) < min_fields or (max_fields is not None and len(fields) > max_fields):
            want = f"{min_fields}" if min_fields == max_fields else f"at least {min_fields}"
            raise InputError(path, f"expected {want} fields, got {len(fields)}: {line.strip()!r}", number)
        key = fields[0]
        if key in table:
            raise InputError(path, f"duplicate key {key!r}", number)
        table[key] = line.strip()[len(key) :].strip() if rest_as_value else " ".join(fields[1:])
    return table


def write_table(path: str | Path, table: Mapping[str, str]) -> None:
    """Write ``<key> <value>`` lines in C-locale key order, atomically."""
    write_lines_atomic(path, [f"{k} {table[k]}" for k in c_sorted(table)])


def read_wav_scp(path: str | Path) -> dict[str, str]:
    """``wav.scp``: utterance -> path or pipe command (ending in ``|``)."""
    return read_table(path, max_fields=None, rest_as_value=True)


def read_utt2spk(path: str | Path) -> dict[str, str]:
    """``utt2spk``: utterance -> speaker."""
    return read_table(path)


def read_spk2utt(path: str | Path) -> dict[str, list[str]]:
    """``spk2utt``: speaker -> utterances; an utterance listed twice is an error."""
    path = Path(path)
    table = read_table(path, max_fields=None)
    seen: dict[str, str] = {}
    out: dict[str, list[str]] = {}
    for spk, value in table.items():
        utts = value.split()
        for utt in utts:
            if utt in seen:
                raise InputError(path, f"utterance {utt!r} listed for both {seen[utt]!r} and {spk!r}")
            seen[utt] = spk
        out[spk] = utts
    return out


def utt2spk_to_spk2utt(utt2spk: Mapping[str, str]) -> dict[str, list[str]]:
    """Invert utt2spk; speakers and their utterances in C-locale order."""
    out: dict[str, list[str]] = {}
    for utt in c_sorted(utt2spk):
        out.setdefault(utt2spk[utt], []).append(utt)
    return {spk: out[spk] for spk in c_sorted(out)}


def write_spk2utt(path: str | Path, spk2utt: Mapping[str, list[str]]) -> None:
    """Write spk2utt (speakers sorted, utterances sorted) atomically."""
    write_lines_atomic(path, [f"{s} {' '.join(c_sorted(spk2utt[s]))}" for s in c_sorted(spk2utt)])


def read_utt2num_frames(path: str | Path) -> dict[str, int]:
    """``utt2num_frames``: utterance -> number of frames (a non-negative integer)."""
    path = Path(path)
    out: dict[str, int] = {}
    for number, (key, value) in enumerate(read_table(path).items(), start=1):
        if not value.isdigit():
            raise InputError(path, f"frame count of {key!r} is not a non-negative integer: {value!r}", number)
        out[key] = int(value)
    return out


@dataclass(frozen=True)
class Trial:
    """One verification trial; ``label`` is True (target), False (nontarget) or None (unlabelled)."""

    enroll: str
    test: str
    label: bool | None


def read_trials(path: str | Path, *, require_labels: bool = False) -> list[Trial]:
    """Read a trial list in any of the three formats, detected per line:

    - Kaldi ``<enroll> <test> target|nontarget``
    - VoxCeleb ``1|0 <enroll> <test>``
    - unlabelled ``<enroll> <test>``

    Mixing labelled and unlabelled lines is an error. An empty list is an error.
    """
    path = Path(path)
    trials: list[Trial] = []
    labelled: bool | None = None
    for number, line in _lines(path):
        fields = line.split()
        if len(fields) == 3 and fields[2] in (TARGET, NONTARGET):
            trial = Trial(fields[0], fields[1], fields[2] == TARGET)
        elif len(fields) == 3 and fields[0] in ("0", "1"):
            trial = Trial(fields[1], fields[2], fields[0] == "1")
        elif len(fields) == 2:
            trial = Trial(fields[0], fields[1], None)
        else:
            raise InputError(
                path,
                "expected '<enroll> <test> target|nontarget', '1|0 <enroll> <test>' "
                f"or '<enroll> <test>', got {line.strip()!r}",
                number,
            )
        has_label = trial.label is not None
        if labelled is None:
            labelled = has_label
        elif labelled != has_label:
            raise InputError(path, "mixes labelled and unlabelled trials", number)
        trials.append(trial)
    if not trials:
        raise InputError(path, "empty trial list")
    if require_labels and not labelled:
        raise InputError(path, "trials have no target/nontarget labels")
    return trials


def write_trials(path: str | Path, trials: Iterable[Trial]) -> None:
    """Write trials in Kaldi format (input order kept: trial lists are not sorted), atomically."""
    lines = []
    for t in trials:
        label = "" if t.label is None else (f" {TARGET}" if t.label else f" {NONTARGET}")
        lines.append(f"{t.enroll} {t.test}{label}")
    write_lines_atomic(path, lines)


@dataclass
class DataDir:
    """A validated Kaldi data directory (``wav.scp``, ``utt2spk``, ``spk2utt``)."""

    path: Path
    wav_scp: dict[str, str]
    utt2spk: dict[str, str]

    @property
    def spk2utt(self) -> dict[str, list[str]]:
        return utt2spk_to_spk2utt(self.utt2spk)


def _check_sorted(path: Path, keys: list[str]) -> None:
    for number, (a, b) in enumerate(zip(keys, keys[1:], strict=False), start=2):
        if a.encode("utf-8") > b.encode("utf-8"):
            raise InputError(path, f"not sorted (LC_ALL=C sort): {b!r} after {a!r}", number)


def load_data_dir(path: str | Path, *, require_sorted: bool = True) -> DataDir:
    """Load and validate a data directory: keys of wav.scp and utt2spk must agree exactly, spk2utt
    (when present) must be the inverse of utt2spk, files sorted in C-locale order."""
    path = Path(path)
    if not path.is_dir():
        raise MemsvError(f"{path}: no such data directory")
    wav_scp = read_wav_scp(path / "wav.scp")
    utt2spk = read_utt2spk(path / "utt2spk")
    if not wav_scp:
        raise InputError(path / "wav.scp", "empty: no utterances")
    if require_sorted:
        _check_sorted(path / "wav.scp", list(wav_scp))
        _check_sorted(path / "utt2spk", list(utt2spk))
    check_same_keys(path / "wav.scp", wav_scp, path / "utt2spk", utt2spk)
    if (path / "spk2utt").exists():
        spk2utt = read_spk2utt(path / "spk2utt")
        expected = utt2spk_to_spk2utt(utt2spk)
        for spk, utts in expected.items():
            if sorted(spk2utt.get(spk, [])) != sorted(utts):
                raise InputError(
                    path / "spk2utt", f"speaker {spk!r} disagrees with utt2spk (regenerate it from utt2spk)"
                )
        extra = set(spk2utt) - set(expected)
        if extra:
            raise InputError(path / "spk2utt", f"speaker {sorted(extra)[0]!r} not in utt2spk")
    return DataDir(path, wav_scp, utt2spk)


def check_same_keys(path_a: Path, a: Mapping[str, object], path_b: Path, b: Mapping[str, object]) -> None:
    """Raise naming the first key found in one table but not the other."""
    only_a = [k for k in a if k not in b]
    if only_a:
        raise InputError(path_a, f"{len(only_a)} key(s) missing from {path_b}, first {only_a[0]!r}")
    only_b = [k for k in b if k not in a]
    if only_b:
        raise InputError(path_b, f"{len(only_b)} key(s) missing from {path_a}, first {only_b[0]!r}")


def write_data_dir(path: str | Path, wav_scp: Mapping[str, str], utt2spk: Mapping[str, str]) -> None:
    """Write ``wav.scp``, ``utt2spk`` and ``spk2utt`` (sorted, atomically)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    check_same_keys(path / "wav.scp", wav_scp, path / "utt2spk", utt2spk)
    write_table(path / "wav.scp", wav_scp)
    write_table(path / "utt2spk", utt2spk)
    write_spk2utt(path / "spk2utt", utt2spk_to_spk2utt(utt2spk))
