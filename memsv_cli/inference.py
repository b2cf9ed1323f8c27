"""Using a trained model on audio: the checkpoint's model, its feature options, and embeddings of files.

- **Features** come from :func:`memsv_cli.data.fbank.fbank_of_samples` (kaldi-native-fbank), the code
  ``extract-fbank`` runs, with the options the experiment trained on (:func:`feature_options`) and
  dither 0, so an utterance embedded from audio equals the same utterance embedded from
  ``extract-fbank`` features. Mean normalisation is per utterance (per window with ``window``), as in
  ``extract-embeddings``.
- **Long recordings** are embedded whole by default, as WeSpeaker's recipe and its
  ``extract_embedding`` CLI do (the model pools over all frames). ``window`` (frames) instead cuts the
  recording into consecutive windows (:func:`window_spans`), embeds each on its own (mean-normalised
  over its frames) and returns the mean of the raw window embeddings (the speaker-mean rule of
  ``extract-embeddings --spk-mean``): memory bounded by the window, at the cost of context.
- **Reversible models** run their plain feed-forward function (``reversible_backward = False``; under
  ``torch.inference_mode`` they would anyway): the same outputs, no custom autograd.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from memsv_cli.data.audio import AudioError, read_audio
from memsv_cli.data.fbank import FbankConfig, fbank_of_samples
from memsv_cli.embed import embed_batches, mean_normalise, resolve_device
from memsv_cli.errors import MemsvError


def feature_options(config: dict[str, Any], fbank_conf: str | Path | None = None) -> tuple[FbankConfig, str]:
    """The fbank options a model was trained on, with dither 0: ``(options, where they came from)``.

    Order: ``fbank_conf`` when given; else the options ``memsv train`` recorded in the config
    (``features``); else (experiments trained before it recorded them) ``fbank.conf`` in the training
    dir the config records
    (``data.dir``; extract-fbank writes it, so a ``data.type: feat`` run trained on exactly those);
    else, for a run that computed its features online (``data.type`` raw or shard, or a training dir
    holding ``wav.scp`` / ``shard.list``) or a config that records no training dir, memsv's defaults
    (:class:`FbankConfig()`, what the online chain uses). A feature-trained run whose ``fbank.conf``
    cannot be found is an error naming ``--fbank-conf``: guessing could silently change the features.
    """
    recorded = config.get("features")
    if fbank_conf is not None:
        cfg, source = FbankConfig.from_kaldi_conf(fbank_conf), str(fbank_conf)
    elif recorded:  # what memsv train recorded (config ``features``)
        names = {f.name for f in fields(FbankConfig)}
        cfg = FbankConfig(**{k: v for k, v in recorded.items() if k in names})
        source = f"the experiment's config ({recorded.get('source', 'recorded in training')})"
    else:
        data = config.get("data") or {}
        data_dir, kind = data.get("dir"), data.get("type", "auto")
        conf = Path(data_dir) / "fbank.conf" if data_dir else None
        online = kind in ("raw", "shard") or (
            data_dir is not None
            and kind == "auto"
            and not (Path(data_dir) / "feats.scp").is_file()
            and any((Path(data_dir) / m).is_file() for m in ("wav.scp", "shard.list"))
        )
        if conf is not None and conf.is_file():
            cfg, source = FbankConfig.from_kaldi_conf(conf), str(conf)
        elif data_dir is None or online:
            cfg, source = FbankConfig(), "memsv defaults (features computed online in training)"
        else:
            raise MemsvError(
                f"cannot tell which fbank options the model was trained on: {conf} is missing "
                "(moved or deleted training features); pass --fbank-conf FILE (the fbank.conf that "
                "extract-fbank wrote next to feats.scp)"
            )
    return replace(cfg, dither=0.0), source


def window_spans(frames: int, window: int | None) -> list[tuple[int, int]]:
    """Consecutive ``[start, end)`` frame spans of at most about ``window`` frames covering ``frames``.

    None, or a recording no longer than one window: one span (the whole recording). Otherwise windows
    of ``window`` frames; a remainder shorter than half a window joins the last window, so no span is
    shorter than ``window / 2`` frames (very short windows give poor embeddings).
    """
    if window is None or frames <= window:
        return [(0, frames)]
    if window < 1:
        raise MemsvError(f"the window must be at least 1 frame, got {window}")
    starts = list(range(0, frames, window))
    if frames - starts[-1] < window / 2:
        starts.pop()
    return [(s, e) for s, e in zip(starts, [*starts[1:], frames], strict=True)]


@dataclass(frozen=True)
class Embedder:
    """A checkpoint's model ready to embed audio; see the module docstring.

    Attributes:
        model: ``(B, frames, F)`` mean-normalised fbank -> ``(B, D)``, eval mode, plain forward.
        config: the training config saved in the checkpoint.
        fbank: feature options (dither 0); ``fbank.sample_rate`` is the rate audio is brought to.
        fbank_source: where ``fbank`` came from (a file, or the defaults), for reports.
        device: where the model runs.
    """

    model: torch.nn.Module
    config: dict[str, Any]
    fbank: FbankConfig
    fbank_source: str
    device: torch.device

    @property
    def embed_dim(self) -> int:
        return int(self.model.embedding.out_features)  # type: ignore[union-attr]

    def window_frames(self, seconds: float | None) -> int | None:
        """``--window SECONDS`` in frames (None stays None)."""
        if seconds is None:
            return None
        if seconds <= 0:
            raise MemsvError(f"--window must be positive (seconds), got {seconds:g}")
        return max(1, round(seconds * 1000.0 / self.fbank.frame_shift_ms))

    def embed_features(self, feats: np.ndarray, window: int | None = None, name: str = "input") -> np.ndarray:
        """``(frames, F)`` raw fbank -> ``(D,)`` float32: the whole matrix, or the mean over windows."""
        spans = window_spans(len(feats), window)
        keys = (
            [name]
            if len(spans) == 1
            else [f"{name} (window {i + 1} of {len(spans)})" for i in range(len(spans))]
        )
        batches = (
            ([key], torch.from_numpy(mean_normalise(feats[a:b]))[None])
            for key, (a, b) in zip(keys, spans, strict=True)
        )
        vectors = embed_batches(self.model, batches, self.device)
        if len(keys) == 1:
            return vectors[name]
        return np.mean([vectors[k].astype(np.float64) for k in keys], axis=0).astype(np.float32)

    def read(self, path: str | Path, vad: Any = None) -> np.ndarray:
        """Samples of one audio file at the model's rate (resampled with soxr if needed), speech only
        with ``vad`` (a :class:`memsv_cli.vad.SileroVad`); ``(samples,)`` float32 in the int16 range."""
        try:
            samples = read_audio(str(path), sample_rate=self.fbank.sample_rate, resample=True)
        except AudioError as err:  # its messages about a missing or undecodable file name it already
            raise MemsvError(str(err) if str(path) in str(err) else f"{path}: {err}") from None
        return samples if vad is None else vad.speech(samples, self.fbank.sample_rate, path)

    def embed_file(self, path: str | Path, window: int | None = None, vad: Any = None) -> np.ndarray:
        """One file's ``(D,)`` float32 embedding (see the module docstring)."""
        samples = self.read(path, vad)
        try:
            feats = fbank_of_samples(samples, self.fbank)
        except AudioError as err:
            raise MemsvError(f"{path}: {err}") from None
        return self.embed_features(feats, window, str(path))


def plain_model(model: torch.nn.Module) -> torch.nn.Module:
    """Switch a reversible model to its plain feed-forward function (no custom autograd); eval mode."""
    if getattr(model, "reversible_backward", None) is not None:
        model.reversible_backward = False  # type: ignore[attr-defined]
    return model.eval()


def load_embedder(
    checkpoint: str | Path, device: str = "cpu", fbank_conf: str | Path | None = None
) -> Embedder:
    """The model of ``checkpoint`` with its feature options (:func:`feature_options`).

    Raises:
        MemsvError: missing or foreign checkpoint, unknown feature options, or options whose mel-bin
            count differs from the model's input dimension.
    """
    from memsv_cli.train.checkpoint import load_model_from_checkpoint

    torch_device = resolve_device(device)
    model, config = load_model_from_checkpoint(checkpoint, torch_device)
    fbank, source = feature_options(config, fbank_conf)
    feat_dim = getattr(model, "feat_dim", fbank.num_mel_bins)
    if fbank.num_mel_bins != feat_dim:
        raise MemsvError(
            f"{source}: {fbank.num_mel_bins} mel bins, but the model of {checkpoint} takes {feat_dim}"
        )
    return Embedder(plain_model(model), config, fbank, source, torch_device)


def embed_files(
    checkpoint: str | Path,
    files: list[str],
    *,
    window_seconds: float | None = None,
    vad: bool = False,
    device: str = "cpu",
    fbank_conf: str | Path | None = None,
) -> tuple[Embedder, dict[str, np.ndarray]]:
    """Embed audio files (the ``memsv embed`` stage): path as given -> ``(D,)`` float32, in input order.

    Raises:
        MemsvError: no files, a path given twice or containing whitespace (it is the Kaldi key), or
            any problem of :func:`load_embedder` / :meth:`Embedder.embed_file`.
    """
    if not files:
        raise MemsvError("no audio files given")
    seen: set[str] = set()
    for name in files:
        if len(name.split()) != 1 or name != name.strip():
            raise MemsvError(
                f"{name!r}: a file name with whitespace cannot be a Kaldi key (rename or link it)"
            )
        if name in seen:
            raise MemsvError(f"{name}: given twice (file paths are the output keys)")
        seen.add(name)
    embedder = load_embedder(checkpoint, device, fbank_conf)
    detector = None
    if vad:
        from memsv_cli.vad import SileroVad

        detector = SileroVad()
    window = embedder.window_frames(window_seconds)
    return embedder, {name: embedder.embed_file(name, window, detector) for name in files}


def text_vector(key: str, vec: np.ndarray) -> str:
    """One Kaldi text-format vector line, ``<key>  [ v1 v2 ... ]`` (``copy-vector ark,t:-``)."""
    return f"{key}  [ {' '.join(f'{v:.7g}' for v in np.asarray(vec, dtype=np.float32))} ]"


__all__ = [
    "Embedder",
    "embed_files",
    "feature_options",
    "load_embedder",
    "plain_model",
    "text_vector",
    "window_spans",
]
