"""Utterance keys that match modulo a known audio extension.

The official VoxCeleb trial lists name recordings ``id10270/x6uYqmx31kE/00001.wav``; memsv's data
directories key them ``id10270/x6uYqmx31kE/00001``; WeSpeaker keeps the ``.wav``. A :class:`KeyIndex`
over the keys of one table (an embedding scp, a durations file) answers a lookup by exact key first and
otherwise by the key's *stem* (the key without a known audio extension), so either spelling finds the
other. Each distinct looked-up key is normalised once and the rest are dict lookups: O(keys), no scans.

Ambiguity: when the table holds two keys with the same stem (``X`` and ``X.wav``, or ``X.wav`` and
``X.flac``), it holds the same recording twice under two names and a lookup of any spelling of ``X`` is
refused, even an exact one: which of the two a trial list means is a guess.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from memsv_cli.errors import InputError

AUDIO_EXTENSIONS = (".wav", ".flac", ".m4a", ".mp3", ".ogg", ".opus", ".sph")
_EXTENSION_NAMES = frozenset(ext[1:] for ext in AUDIO_EXTENSIONS)


def split_audio_extension(key: str) -> tuple[str, str]:
    """``(stem, extension)``: ``"a/b.WAV"`` -> ``("a/b", ".wav")``; ``("a/b", "")`` without a known one.

    The extension is compared case-insensitively and returned lower-cased.
    """
    stem, dot, ext = key.rpartition(".")
    ext = ext.lower()
    if dot and stem and ext in _EXTENSION_NAMES:
        return stem, "." + ext
    return key, ""


@dataclass
class KeyMatch:
    """The rows of looked-up keys.

    Attributes:
        rows: ``(T,)`` int64 row of each key, ``-1`` where the table has no match.
        num_by_extension: distinct keys matched only modulo an audio extension.
        extensions: the extensions that differed in those matches (lower-case, e.g. ``{".wav"}``).
    """

    rows: np.ndarray
    num_by_extension: int = 0
    extensions: set[str] = field(default_factory=set)

    def note(self, what: str) -> str | None:
        """One line for stderr when keys matched modulo an extension, e.g. ``what="embeddings"``."""
        if not self.num_by_extension:
            return None
        exts = "/".join(sorted(self.extensions))
        plural = "s" if len(self.extensions) > 1 else ""
        return f"matched {self.num_by_extension} key(s) to {what} modulo the {exts} extension{plural}"


class KeyIndex:
    """Exact and extension-tolerant lookup of keys in one table (see the module docstring).

    Args:
        keys: the table's ``N`` keys, distinct; row ``i`` is ``keys[i]``.
        source: the table's file, named in errors.
        exact: an existing ``key -> row`` dict for ``keys`` (shared, not copied), if the caller has one.
    """

    def __init__(self, keys: Sequence[str], source: str | Path, exact: dict[str, int] | None = None) -> None:
        self.keys = keys
        self.source = source
        self.exact = exact if exact is not None else {k: i for i, k in enumerate(keys)}
        self.by_stem: dict[str, int] = {}
        # stem -> the table's keys with that stem, for stems held more than once; every spelling of
        # such a recording (the stem and each key) is in ambiguous_forms, for a cheap exact-path check.
        self.ambiguous: dict[str, list[str]] = {}
        for row, key in enumerate(keys):
            stem = split_audio_extension(key)[0]
            first = self.by_stem.setdefault(stem, row)
            if first != row:
                self.ambiguous.setdefault(stem, [keys[first]]).append(key)
        self.ambiguous_forms = {form for stem, ks in self.ambiguous.items() for form in (stem, *ks)}

    def _refuse(self, key: str, where: str | Path) -> None:
        stem = split_audio_extension(key)[0]
        both = " and ".join(repr(k) for k in self.ambiguous[stem])
        raise InputError(
            self.source,
            f"key {key!r} (from {where}) is ambiguous: this file holds both {both}, the same recording "
            "modulo its audio extension; keep one of them",
        )

    def rows(self, keys: Sequence[str], where: str | Path) -> KeyMatch:
        """Rows of ``keys`` (``-1`` where none matches); ``where`` names their file in errors.

        Raises:
            InputError: a key whose stem the table holds under two keys (naming the key and the table).
        """
        try:  # the common case, every key exact: one C-level dict lookup per key
            rows = np.fromiter(map(self.exact.get, keys), np.int64, len(keys))
        except TypeError:  # some key is not exact: resolve each distinct key once
            return self._resolve(keys, where)
        if self.ambiguous_forms:
            hit = next((k for k in keys if k in self.ambiguous_forms), None)
            if hit is not None:
                self._refuse(hit, where)
        return KeyMatch(rows)

    def _resolve(self, keys: Sequence[str], where: str | Path) -> KeyMatch:
        resolver = _Resolver(self, where)
        resolver.match.rows = np.fromiter(map(resolver.__getitem__, keys), np.int64, len(keys))
        return resolver.match

    def resolve_one(self, key: str, where: str | Path, match: KeyMatch) -> int:
        """Row of one key (exact, else by stem; ``-1`` if none), counted in ``match`` when by stem."""
        stem, ext = split_audio_extension(key)
        if stem in self.ambiguous:
            self._refuse(key, where)
        row = self.exact.get(key)
        if row is None:
            row = self.by_stem.get(stem, -1)
            if row >= 0:
                match.num_by_extension += 1
                match.extensions.add(ext or split_audio_extension(self.keys[row])[1])
        return row


class _Resolver(dict[str, int]):
    """Looked-up key -> row, resolved on a key's first sight (``__missing__``) and then a plain hit, so
    that a whole list is one C-level ``map`` with Python code only once per distinct key (measured 1.8x
    faster than deduplicating first and mapping after: 0.71 s vs 1.25 s for 1.16M keys)."""

    def __init__(self, index: KeyIndex, where: str | Path) -> None:
        super().__init__()
        self.index, self.where = index, where
        self.match = KeyMatch(np.empty(0, np.int64))

    def __missing__(self, key: str) -> int:
        row = self[key] = self.index.resolve_one(key, self.where, self.match)
        return row
