"""The ``prepare-data`` stage for VoxCeleb-style corpora: audio tree + trial lists -> Kaldi data dir.

A corpus is any tree holding ``<spk>/<video>/<utt>.{wav,flac,m4a}`` (VoxCeleb1 ``wav/``, VoxCeleb2
``dev/aac/``); the utterance key is ``<spk>/<video>/<utt>`` without the extension (as WeSpeaker's
VoxCeleb recipe), so VoxCeleb1 trial entries ``id10270/x6uYqmx31kE/00001.wav`` match after the same
extension is stripped. m4a files enter ``wav.scp`` as ffmpeg pipe commands (or convert the tree first
with ``local/m4a2wav.sh`` and prepare the converted tree).
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from memsv_cli.data.kaldi_dir import Trial, read_trials, write_data_dir, write_trials
from memsv_cli.errors import InputError, MemsvError

AUDIO_EXTENSIONS = (".wav", ".flac", ".m4a")


def utterance_key(name: str) -> str:
    """Strip a known audio extension from a trial or file key (``a/b/00001.wav`` -> ``a/b/00001``)."""
    for ext in AUDIO_EXTENSIONS:
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def ffmpeg_pipe(path: Path, sample_rate: int = 16000) -> str:
    """A Kaldi ``wav.scp`` pipe entry decoding ``path`` to 16-bit mono WAV at ``sample_rate`` Hz."""
    return (
        f"ffmpeg -nostdin -hide_banner -loglevel error -i {shlex.quote(str(path))} "
        f"-ac 1 -ar {sample_rate} -f wav -acodec pcm_s16le - |"
    )


def scan_corpus(root: str | Path) -> dict[str, Path]:
    """Find ``<spk>/<video>/<utt>.{wav,flac,m4a}`` files under ``root``.

    Returns:
        utterance key (``spk/video/utt``) -> absolute path, in C-locale key order.

    Raises:
        MemsvError: root missing, no audio found, or two files giving the same key.
    """
    root = Path(root)
    if not root.is_dir():
        raise MemsvError(f"{root}: no such corpus directory")
    root = root.resolve()
    found: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        rel = Path(dirpath).relative_to(root).parts
        if len(rel) < 2:
            continue
        for name in sorted(filenames):
            if not name.endswith(AUDIO_EXTENSIONS) or name.startswith("."):
                continue
            key = f"{rel[-2]}/{rel[-1]}/{utterance_key(name)}"
            path = Path(dirpath) / name
            if len(key.split()) != 1:
                raise MemsvError(f"{path}: utterance key {key!r} contains whitespace (Kaldi keys cannot)")
            if key in found:
                raise MemsvError(f"{path}: utterance key {key!r} also given by {found[key]}")
            found[key] = path
    if not found:
        raise MemsvError(f"{root}: no <spk>/<video>/<utt>.wav|flac|m4a files found")
    return {k: found[k] for k in sorted(found, key=lambda k: k.encode("utf-8"))}


def convert_trials(path: str | Path, keys: set[str] | dict[str, object]) -> list[Trial]:
    """Read a VoxCeleb or Kaldi trial list, strip extensions, and check every key exists.

    Raises:
        InputError: malformed list, or keys missing from the corpus (how many, and the first few).
    """
    trials = [Trial(utterance_key(t.enroll), utterance_key(t.test), t.label) for t in read_trials(path)]
    missing: list[str] = []
    seen: set[str] = set()
    for t in trials:
        for key in (t.enroll, t.test):
            if key not in keys and key not in seen:
                missing.append(key)
            seen.add(key)
    if missing:
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise InputError(path, f"{len(missing)} trial key(s) not found in the corpus, first: {shown}")
    return trials


@dataclass(frozen=True)
class PrepareSummary:
    """What :func:`prepare_voxceleb` wrote."""

    out_dir: Path
    num_utts: int
    num_speakers: int
    num_m4a: int
    trials: dict[str, int]  # trial-list name -> number of trials


def prepare_voxceleb(
    root: str | Path, out_dir: str | Path, trials: Sequence[str | Path] = (), *, sample_rate: int = 16000
) -> PrepareSummary:
    """Write ``wav.scp``, ``utt2spk``, ``spk2utt`` and ``trials/<name>.kaldi`` for a VoxCeleb-style tree.

    Everything is checked before anything is written, so a bad trial list leaves no partial directory.

    Args:
        root: corpus root holding ``<spk>/<video>/<utt>.*`` at any depth.
        out_dir: the data directory to write.
        trials: VoxCeleb (``1|0 enroll test``) or Kaldi trial lists; each becomes
            ``out_dir/trials/<file stem>.kaldi``.
        sample_rate: rate (Hz) m4a files are decoded to by their ffmpeg pipe entries.
    """
    corpus = scan_corpus(root)
    converted: dict[str, list[Trial]] = {}
    for t in trials:
        name = Path(t).stem
        if name in converted:
            raise MemsvError(f"{t}: two trial lists named {name!r}")
        converted[name] = convert_trials(t, corpus)
    wav_scp = {k: ffmpeg_pipe(p, sample_rate) if p.suffix == ".m4a" else str(p) for k, p in corpus.items()}
    utt2spk = {k: k.split("/", 1)[0] for k in corpus}
    out_dir = Path(out_dir)
    write_data_dir(out_dir, wav_scp, utt2spk)
    for name, trial_list in converted.items():
        write_trials(out_dir / "trials" / f"{name}.kaldi", trial_list)
    return PrepareSummary(
        out_dir=out_dir,
        num_utts=len(wav_scp),
        num_speakers=len(set(utt2spk.values())),
        num_m4a=sum(p.suffix == ".m4a" for p in corpus.values()),
        trials={n: len(v) for n, v in converted.items()},
    )


# ---------------------------------------------------------------------------------------------------
# The built-in synthetic corpora (``prepare-data --corpus mini|hnm``)

SYNTHETIC_CORPORA = ("mini", "hnm")


class SyntheticSummary(Protocol):
    """What a synthetic corpus wrote (``MiniSummary``, ``HnmSummary``)."""

    root: Path
    train_utts: int
    test_utts: int
    num_trials: int
    num_target_trials: int
    audio_seconds: float


def prepare_synthetic(
    corpus: str,
    root: str | Path,
    *,
    num_speakers: int | None = None,
    utts_per_speaker: int | None = None,
    num_test_speakers: int | None = None,
    test_utts_per_speaker: int | None = None,
    seed: int | None = None,
    nj: int = 1,
) -> SyntheticSummary:
    """Synthesise a built-in corpus under ``root``; prepare ``root/<corpus>_{train,test}`` from it.

    ``corpus`` is ``mini`` (source-filter voices, :mod:`memsv_cli.data.mini`) or ``hnm``
    (harmonic-plus-noise voices, another language and other channels, :mod:`memsv_cli.data.hnm`).
    Sizes and seed left as ``None`` keep that corpus's defaults (durations always do: 2-4 s for mini,
    2-6 s for hnm). ``nj`` worker processes give the same audio as one.
    """
    given = {
        "num_speakers": num_speakers,
        "utts_per_speaker": utts_per_speaker,
        "num_test_speakers": num_test_speakers,
        "test_utts_per_speaker": test_utts_per_speaker,
        "seed": seed,
    }
    sizes = {k: v for k, v in given.items() if v is not None}
    # Imported here: both corpus modules import this one (for prepare_voxceleb).
    if corpus == "mini":
        from memsv_cli.data.mini import MiniConfig, prepare_mini

        return prepare_mini(root, MiniConfig(**sizes), nj=nj)
    if corpus == "hnm":
        from memsv_cli.data.hnm import HnmConfig, prepare_hnm

        return prepare_hnm(root, HnmConfig(**sizes), nj=nj)
    raise MemsvError(f"unknown synthetic corpus {corpus!r}; choose one of {', '.join(SYNTHETIC_CORPORA)}")
