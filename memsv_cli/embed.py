"""``extract-embeddings``: whole-utterance speaker embeddings from a checkpoint, as Kaldi ark/scp.

- Input: a features directory with ``feats.scp`` (``utt2num_frames`` used when present, ``utt2spk``
  needed only for speaker means), or a data directory with ``wav.scp`` (``feats.scp`` wins when both
  are there): features are then computed on the fly by the code ``extract-fbank`` runs
  (:func:`memsv_cli.data.fbank.audio_fbank`) with the options the model was trained on
  (:func:`memsv_cli.inference.feature_options`) and dither 0, so the embeddings equal those of
  ``extract-fbank`` followed by ``extract-embeddings`` on its output. Audio lengths are known only
  once decoded, so each audio utterance is a batch of its own.
- Every utterance is mean-normalised over its frames, as in training (there per 200-frame chunk,
  here over the whole utterance), and embedded whole: no cropping, no padding.
- Batching never changes a result: only utterances of *identical* length share a batch, so every batch
  is a plain stack of full utterances and the model (in eval mode: BatchNorm uses running statistics)
  computes each row exactly as it would alone, up to floating-point summation order (< 1e-5).
  Batches are capped in frames as well as in utterances so that long recordings run one by one.
- Output: ``xvector.ark`` + ``xvector.scp`` (and ``spk_xvector.{ark,scp}`` with ``spk_mean``), keys in
  C-locale order. The scp is the completion marker: an old scp is removed before anything is written,
  the ark is written under its final name, and the scp is renamed into place last.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import kaldiio
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from memsv_cli.atomic import atomic_path
from memsv_cli.console import console as make_console
from memsv_cli.data.ark import ArkReader
from memsv_cli.data.dataset import read_feats_scp
from memsv_cli.data.kaldi_dir import c_sorted, read_utt2num_frames, read_utt2spk
from memsv_cli.errors import InputError, MemsvError


def resolve_device(choice: str) -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    if choice == "cpu" or (choice == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if choice == "auto":
        return torch.device("cuda")
    if not (choice == "cuda" or choice.startswith("cuda:")):
        raise MemsvError(f"--device must be auto, cpu, cuda or cuda:N, got {choice!r}")
    if not torch.cuda.is_available():
        raise MemsvError(f"--device {choice}: CUDA is not available here (use --device cpu or auto)")
    try:
        device = torch.device(choice)
    except RuntimeError:
        raise MemsvError(f"--device {choice!r} is not a valid device") from None
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise MemsvError(f"--device {choice}: only {torch.cuda.device_count()} CUDA device(s) present")
    return device


def mean_normalise(feats: np.ndarray) -> np.ndarray:
    """Subtract the per-dimension mean over frames: ``(frames, F)`` -> ``(frames, F)`` float32."""
    feats = np.asarray(feats, dtype=np.float32)
    return feats - feats.mean(axis=0, keepdims=True)


def plan_batches(lengths: Mapping[str, int], batch_size: int, max_batch_frames: int) -> list[list[str]]:
    """Group utterances of identical length into batches.

    Args:
        lengths: utterance -> frames.
        batch_size: at most this many utterances per batch.
        max_batch_frames: at most this many frames per batch (``len(batch) * frames``); an utterance
            longer than this gets a batch of its own.

    Returns:
        Batches (lists of utterance ids, C-locale order within a batch), shortest utterances first.
    """
    if batch_size < 1:
        raise MemsvError(f"--batch-size must be at least 1, got {batch_size}")
    by_length: dict[int, list[str]] = {}
    for utt in c_sorted(lengths):
        by_length.setdefault(lengths[utt], []).append(utt)
    batches = []
    for frames in sorted(by_length):
        per_batch = max(1, min(batch_size, max_batch_frames // max(frames, 1)))
        utts = by_length[frames]
        batches += [utts[i : i + per_batch] for i in range(0, len(utts), per_batch)]
    return batches


class _AudioReader(Dataset):
    """Item ``i``: ``(utt, (1, frames, F) float32 tensor or None, error or None)``, mean-normalised.

    Audio errors travel as values: an exception raised in a DataLoader worker reaches the main process
    re-wrapped with the worker's traceback in its message, not as one line.
    """

    def __init__(self, entries: list[tuple[str, str]], fbank: Any) -> None:
        self.entries, self.fbank = entries, fbank

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> tuple[str, torch.Tensor | None, str | None]:
        from memsv_cli.data.audio import AudioError, raise_if_interrupted
        from memsv_cli.data.fbank import audio_fbank

        utt, spec = self.entries[index]
        try:
            _, feats = audio_fbank(spec, self.fbank)
        except AudioError as err:
            raise_if_interrupted(err)
            return utt, None, str(err)
        return utt, torch.from_numpy(mean_normalise(feats))[None], None


def _audio_batches(
    loader: DataLoader, wav_scp: Path, lines: Mapping[str, int]
) -> Iterator[tuple[list[str], torch.Tensor]]:
    """Batches of one utterance from an :class:`_AudioReader` loader; its first error as InputError."""
    for utt, feats, error in loader:
        if error is not None:
            raise InputError(wav_scp, f"utterance {utt!r}: {error}", lines[utt])
        yield [utt], feats


class _BatchReader(Dataset):
    """Item ``i`` is batch ``i``: ``(utt ids, (B, frames, F) float32 tensor or None, error or None)``,
    mean-normalised. Errors travel as values (see :class:`_AudioReader`): one line in the main process."""

    def __init__(self, batches: list[list[str]], arks: Mapping[str, str], scp: Path) -> None:
        self.batches, self.arks, self.scp = batches, dict(arks), scp
        self._reader = ArkReader(scp)

    def __len__(self) -> int:
        return len(self.batches)

    def close(self) -> None:
        self._reader.close()

    def __getitem__(self, index: int) -> tuple[list[str], torch.Tensor | None, str | None]:
        try:
            return *self._load(self.batches[index]), None
        except MemsvError as err:
            return self.batches[index], None, str(err)

    def _load(self, utts: list[str]) -> tuple[list[str], torch.Tensor]:
        mats = []
        for utt in utts:
            mat = self._reader.load(self.arks[utt], utt)
            if mat.ndim != 2:
                raise InputError(self.scp, f"features of {utt!r} are not a (frames, dim) matrix")
            mats.append(mean_normalise(mat))
        if len({m.shape for m in mats}) != 1:
            shapes = ", ".join(f"{u}: {m.shape}" for u, m in zip(utts, mats, strict=True))
            raise InputError(self.scp, f"utt2num_frames disagrees with the features ({shapes})")
        return utts, torch.from_numpy(np.stack(mats))


def _feats_batches(loader: DataLoader) -> Iterator[tuple[list[str], torch.Tensor]]:
    """Batches of a :class:`_BatchReader` loader; its first error as a one-line MemsvError."""
    for utts, feats, error in loader:
        if error is not None:
            raise MemsvError(error)
        yield utts, feats


def _utterance_lengths(feats_dir: Path, arks: Mapping[str, str]) -> dict[str, int]:
    """Frames per utterance from ``utt2num_frames``, else by reading every matrix once."""
    path = feats_dir / "utt2num_frames"
    if path.is_file():
        lengths = read_utt2num_frames(path)
        missing = [u for u in arks if u not in lengths]
        if missing:
            raise InputError(path, f"{len(missing)} utterance(s) of feats.scp missing, first {missing[0]!r}")
        return {u: lengths[u] for u in arks}
    # No utt2num_frames: read every matrix once just for its length (slower, but always possible).
    fds: dict[str, Any] = {}
    try:
        return {u: int(kaldiio.load_mat(spec, fd_dict=fds).shape[0]) for u, spec in arks.items()}
    finally:
        for fd in fds.values():
            fd.close()


@torch.inference_mode()
def embed_batches(
    model: torch.nn.Module,
    batches: Iterator[tuple[list[str], torch.Tensor]],
    device: torch.device,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, np.ndarray]:
    """Run ``model`` (already in eval mode on ``device``) over batches; utt -> ``(D,)`` float32."""
    out: dict[str, np.ndarray] = {}
    for utts, feats in batches:
        try:
            emb = model(feats.to(device))
        except RuntimeError as err:
            raise MemsvError(
                f"model failed on {utts[0]!r} ({feats.shape[1]} frames): {str(err).splitlines()[0]}"
            ) from None
        emb = emb.float().cpu().numpy()
        finite = np.isfinite(emb).all(axis=1)
        if not finite.all():
            bad = utts[int(np.argmin(finite))]
            raise MemsvError(
                f"model produced a NaN/inf embedding for {bad!r} ({feats.shape[1]} frames): "
                "check the features and the checkpoint"
            )
        for utt, vec in zip(utts, emb, strict=True):
            out[utt] = vec
        if on_batch is not None:
            on_batch(len(utts))
    return out


def write_vectors(out_dir: Path, name: str, vectors: Mapping[str, np.ndarray]) -> Path:
    """Write ``<name>.ark`` and ``<name>.scp`` (C-locale key order); the scp appears last."""
    out_dir.mkdir(parents=True, exist_ok=True)
    # Absolute ark paths in the scp (as extract-fbank writes feats.scp): valid from any directory.
    scp, ark = out_dir / f"{name}.scp", (out_dir / f"{name}.ark").resolve()
    scp.unlink(missing_ok=True)  # the old scp would point into the ark about to be overwritten
    with atomic_path(scp) as tmp_scp, kaldiio.WriteHelper(f"ark,scp:{ark},{tmp_scp}") as writer:
        for key in c_sorted(vectors):
            writer(key, np.asarray(vectors[key], dtype=np.float32))
    return scp


def speaker_means(embeddings: Mapping[str, np.ndarray], utt2spk: Mapping[str, str]) -> dict[str, np.ndarray]:
    """Mean of each speaker's raw embeddings (the AS-norm cohort, as WeSpeaker's ``vector_mean.py``)."""
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for utt, vec in embeddings.items():
        spk = utt2spk[utt]
        sums[spk] = sums.get(spk, 0.0) + vec.astype(np.float64)
        counts[spk] = counts.get(spk, 0) + 1
    return {spk: (sums[spk] / counts[spk]).astype(np.float32) for spk in sums}


@dataclass(frozen=True)
class EmbedSummary:
    """What ``extract_embeddings`` wrote."""

    num_utts: int
    num_batches: int
    embed_dim: int
    xvector_scp: Path
    spk_xvector_scp: Path | None
    num_speakers: int | None
    seconds: float


@dataclass
class _Source:
    """What to embed: the utterances, and a ``(batches, close)`` factory over them."""

    kind: str  # "feats" or "audio"
    path: Path  # feats.scp or wav.scp
    utts: list[str]
    num_batches: int
    open: Callable[[int, bool], tuple[Iterator[tuple[list[str], torch.Tensor]], Callable[[], None]]]


def _feats_source(feats_dir: Path, batch_size: int, max_batch_frames: int) -> _Source:
    """Features of ``feats.scp``, batched by identical length (:func:`plan_batches`)."""
    scp = feats_dir / "feats.scp"
    arks = read_feats_scp(scp)
    if not arks:
        raise InputError(scp, "empty: no utterances")
    lengths = _utterance_lengths(feats_dir, arks)
    empty = [u for u, n in lengths.items() if n == 0]
    if empty:
        raise InputError(scp, f"{len(empty)} utterance(s) have no frames, first {empty[0]!r}")
    batches = plan_batches(lengths, batch_size, max_batch_frames)

    def open_(nj: int, pin: bool) -> tuple[Iterator[tuple[list[str], torch.Tensor]], Callable[[], None]]:
        reader = _BatchReader(batches, arks, scp)
        loader = DataLoader(reader, batch_size=None, shuffle=False, num_workers=nj, pin_memory=pin)
        return _feats_batches(loader), reader.close

    return _Source("feats", scp, list(arks), len(batches), open_)


def _audio_source(data_dir: Path, config: dict[str, Any], fbank_conf: str | Path | None) -> _Source:
    """Audio of ``wav.scp``, features on the fly with the training options, one utterance per batch."""
    from memsv_cli.data.kaldi_dir import read_wav_scp
    from memsv_cli.inference import feature_options

    wav_scp = data_dir / "wav.scp"
    table = read_wav_scp(wav_scp)
    if not table:
        raise InputError(wav_scp, "empty: no utterances")
    fbank, _ = feature_options(config, fbank_conf)
    lines = {utt: i for i, utt in enumerate(table, start=1)}
    entries = [(utt, table[utt]) for utt in c_sorted(table)]

    def open_(nj: int, pin: bool) -> tuple[Iterator[tuple[list[str], torch.Tensor]], Callable[[], None]]:
        loader = DataLoader(
            _AudioReader(entries, fbank), batch_size=None, shuffle=False, num_workers=nj, pin_memory=pin
        )
        return _audio_batches(loader, wav_scp, lines), lambda: None

    return _Source("audio", wav_scp, list(table), len(entries), open_)


def _check_ark_features(feats_dir: Path, config: dict[str, Any]) -> None:
    """Stop when the arks' ``fbank.conf`` (extract-fbank's record of its options) differs from the
    options the model was trained on: a frame shift or band edge of its own gives matrices of the same
    width and silently worse embeddings. Dither is not compared (test features have none). Arks without
    ``fbank.conf`` (made by other tools) and models whose options cannot be told are not checked."""
    from memsv_cli.data.fbank import FbankConfig
    from memsv_cli.inference import feature_options

    conf = feats_dir / "fbank.conf"
    if not conf.is_file():
        return
    try:
        trained, source = feature_options(config)
    except MemsvError:  # a feature-trained run whose training fbank.conf is gone: nothing to compare
        return
    arks = replace(FbankConfig.from_kaldi_conf(conf), dither=0.0)
    diffs = [
        f"{f.name} {getattr(arks, f.name):g} against {getattr(trained, f.name):g}"
        for f in fields(FbankConfig)
        if getattr(arks, f.name) != getattr(trained, f.name)
    ]
    if diffs:
        raise InputError(
            conf,
            f"these features differ from the model's ({source}): {', '.join(diffs)}; extract them "
            "again with the training options (memsv extract-fbank --train-config CONFIG)",
        )


def _check_utt2spk(data_dir: Path, utts: list[str], listed_in: Path) -> dict[str, str]:
    """``utt2spk`` of ``data_dir``, which must name a speaker for every utterance (``--spk-mean``)."""
    path = data_dir / "utt2spk"
    if not path.is_file():
        raise MemsvError(f"--spk-mean needs {path} (speaker of each utterance)")
    utt2spk = read_utt2spk(path)
    missing = [u for u in utts if u not in utt2spk]
    if missing:
        raise InputError(
            path, f"{len(missing)} utterance(s) of {listed_in.name} have no speaker, first {missing[0]!r}"
        )
    return utt2spk


def _run_with_progress(
    model: torch.nn.Module, source: _Source, device: torch.device, nj: int, progress: bool
) -> dict[str, np.ndarray]:
    """Embed every batch of ``source`` with a rich progress bar on stderr (unless ``progress`` is off)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("[bold]embeddings"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("utts"),
        TimeRemainingColumn(),
        console=make_console(stderr=True),
        disable=not progress,
    ) as bar:
        task = bar.add_task("embed", total=len(source.utts))
        batches, close = source.open(nj, device.type == "cuda")
        try:
            return embed_batches(model, batches, device, on_batch=lambda n: bar.update(task, advance=n))
        finally:
            close()


def extract_embeddings(
    checkpoint: str | Path,
    feats_dir: str | Path,
    out_dir: str | Path,
    *,
    batch_size: int | None = None,
    max_batch_frames: int = 64_000,
    nj: int = 0,
    device: str = "auto",
    spk_mean: bool = False,
    progress: bool = True,
    fbank_conf: str | Path | None = None,
) -> EmbedSummary:
    """Embed every utterance of ``feats_dir`` (``feats.scp``, else ``wav.scp``) with ``checkpoint``'s model.

    Args:
        checkpoint: ``avg_model.pt`` or ``epoch_N.pt``; the model is built from its saved config.
        feats_dir: directory with ``feats.scp`` (and ``utt2num_frames``), or with ``wav.scp`` (audio:
            features on the fly, see the module docstring); ``utt2spk`` for ``spk_mean``.
        out_dir: receives ``xvector.{ark,scp}`` (and ``spk_xvector.{ark,scp}``).
        batch_size: utterances per batch (only identical lengths are batched together); None: 64 on
            CUDA, 1 on CPU, where batching measured no faster (benchmarks/scoring.py --embed).
        max_batch_frames: frames per batch cap (memory bound for long utterances).
        nj: feature-reading (audio: feature-computing) worker processes (0: the main process).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        spk_mean: also write per-speaker mean embeddings.
        progress: show a rich progress bar on stderr.
        fbank_conf: audio input only: the fbank options (a ``fbank.conf``) instead of the training's.
    """
    from memsv_cli.inference import plain_model
    from memsv_cli.train.checkpoint import load_model_from_checkpoint

    start = time.perf_counter()
    feats_dir, out_dir = Path(feats_dir), Path(out_dir)
    if not feats_dir.is_dir():
        raise MemsvError(f"{feats_dir}: no such features directory")
    if not (feats_dir / "feats.scp").is_file() and not (feats_dir / "wav.scp").is_file():
        raise MemsvError(f"{feats_dir}: neither feats.scp (extract-fbank output) nor wav.scp (a data dir)")
    if nj < 0:
        raise MemsvError(f"--nj must be >= 0, got {nj}")
    torch_device = resolve_device(device)
    if batch_size is None:
        batch_size = 64 if torch_device.type == "cuda" else 1
    model, config = load_model_from_checkpoint(checkpoint, torch_device)
    if (feats_dir / "feats.scp").is_file():
        _check_ark_features(feats_dir, config)
        source = _feats_source(feats_dir, batch_size, max_batch_frames)
    else:
        source = _audio_source(feats_dir, config, fbank_conf)
    utt2spk = _check_utt2spk(feats_dir, source.utts, source.path) if spk_mean else None
    vectors = _run_with_progress(plain_model(model), source, torch_device, nj, progress)
    xvector_scp = write_vectors(out_dir, "xvector", vectors)
    spk_scp, num_spk = None, None
    if utt2spk is not None:
        means = speaker_means(vectors, utt2spk)
        spk_scp, num_spk = write_vectors(out_dir, "spk_xvector", means), len(means)
    dim = int(next(iter(vectors.values())).shape[0])
    return EmbedSummary(
        len(vectors), source.num_batches, dim, xvector_scp, spk_scp, num_spk, time.perf_counter() - start
    )


__all__ = [
    "EmbedSummary",
    "embed_batches",
    "extract_embeddings",
    "mean_normalise",
    "plan_batches",
    "resolve_device",
    "speaker_means",
    "write_vectors",
]
