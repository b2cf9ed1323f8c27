"""``memsv export``: a checkpoint's embedding model as a TorchScript or ONNX file for deployment.

**Input contract** of the exported model: ``feats``, float32 ``(batch, frames, F)`` log-Mel fbank
(Kaldi options of the training, dither 0; ``F`` = the model's ``feat_dim``), mean-normalised per
utterance over its frames (``memsv_cli.embed.mean_normalise``), ``frames >= time stride + 1``
(9 for every memsv model: the pooled map needs two frames). Output ``embedding`` ``(batch, D)``,
the raw embedding (scoring subtracts the training mean and length-normalises). Batch and frames are
dynamic. The fbank front-end is not part of the export. The file carries these facts as metadata
(TorchScript: the extra file ``memsv.json``; ONNX: ``metadata_props`` key ``memsv``).

**What is exported**: the plain feed-forward function. Reversible models are switched to
``reversible_backward = False`` (identical outputs; no custom autograd Function, no training-only
stream bookkeeping) and put in eval mode (BatchNorm running statistics). Type II models pad the
frames up to a multiple of the total time stride with zero frames *before* the network (what the
model does itself inside), so the graph has no branch on the input length.

- ``torchscript``: ``torch.jit.trace`` (tracing records ops, so only the inference path is seen).
- ``onnx``: torch's dynamo-based exporter (``torch.onnx.export(dynamo=True)``, needs ``onnx`` and
  ``onnxscript``; works offline). Why not the TorchScript-based exporter (``dynamo=False``): it
  mistranslates the in-place update of a channel slice in the Type II transitions (the exported
  fullrev model was 0.13 off), while the dynamo exporter functionalises it (within 3e-7).

Every export is checked before it is renamed into place: the file is loaded (ONNX: with onnxruntime,
when installed) and its embeddings compared with memsv's on random inputs of two lengths; more than
``TOLERANCE`` apart is an error.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from memsv_cli.atomic import atomic_path
from memsv_cli.errors import MemsvError

FORMATS = ("torchscript", "onnx")
TOLERANCE = 1e-4  # max |exported - memsv| over the check's embeddings
EXAMPLE_FRAMES = 200  # the trace / export example (2 s)
CHECK_SHAPES = ((2, 200), (1, 331))  # (batch, frames) of the check after export
INSTALL_HINT = "pip install 'memsv[export]' (onnx, onnxscript, onnxruntime)"


class InferenceNet(nn.Module):
    """The exported function ``(B, frames, F)`` -> ``(B, D)``: the model's forward, Type II models after
    padding the frames to a multiple of the time stride with zero frames (as the model would inside)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.pad_to = int(model.time_stride) if getattr(model, "variant", "") == "fullrev" else 1

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        if self.pad_to > 1:
            frames = feats.shape[1]
            padded = (frames + self.pad_to - 1) // self.pad_to * self.pad_to
            feats = F.pad(feats, (0, 0, 0, self.pad_to - 1))[:, :padded]
        return self.model(feats)


@dataclass(frozen=True)
class ExportSummary:
    """What :func:`export_model` wrote; ``max_abs_diff`` None when the file could not be checked."""

    path: Path
    format: str
    bytes: int
    embed_dim: int
    max_abs_diff: float | None
    note: str | None
    seconds: float


def _metadata(checkpoint: Path, config: dict[str, Any], model: nn.Module, fbank: dict | None) -> str:
    """The input contract and provenance, as JSON (stored inside the exported file)."""
    return json.dumps(
        {
            "memsv_export": 1,
            "input": "feats: float32 (batch, frames, feat_dim) Kaldi log-Mel fbank, mean-normalised per "
            "utterance over its frames",
            "output": "embedding: float32 (batch, embed_dim), raw (not length-normalised)",
            "feat_dim": int(model.feat_dim),
            "embed_dim": int(model.embedding.out_features),
            "min_frames": int(model.time_stride) + 1,
            "fbank": fbank,
            "model": config.get("model"),
            "checkpoint": str(checkpoint),
        },
        sort_keys=True,
    )


def _check_inputs(feat_dim: int) -> list[torch.Tensor]:
    """Random inputs of :data:`CHECK_SHAPES`, mean-normalised like real features (fixed seed)."""
    gen = torch.Generator().manual_seed(0)
    out = []
    for batch, frames in CHECK_SHAPES:
        x = torch.randn(batch, frames, feat_dim, generator=gen) * 3 + 5
        out.append(x - x.mean(dim=1, keepdim=True))
    return out


def _export_torchscript(net: InferenceNet, example: torch.Tensor, path: Path, meta: str) -> None:
    # Warnings silenced: the tracer's about Python bools from shapes (channel counts and the feature
    # dimension, fixed; the one on frames, TSTP's one-frame fallback, is why min_frames is 9) and
    # torch.jit's deprecation notices (torch 2.13 still ships and loads TorchScript).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(net, example, check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={"memsv.json": meta})


def _export_onnx(net: InferenceNet, example: torch.Tensor, path: Path, meta: str) -> None:
    missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise MemsvError(f"--format onnx needs {' and '.join(missing)}: {INSTALL_HINT}")
    import onnx

    batch = torch.export.Dim("batch", min=1, max=65_536)
    frames = torch.export.Dim("frames", min=net.model.time_stride + 1, max=1 << 24)
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "torchvision is not installed" and progress chatter
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                net,
                (example,),
                dynamo=True,
                input_names=["feats"],
                output_names=["embedding"],
                dynamic_shapes={"feats": {0: batch, 1: frames}},
                optimize=True,
            )
    except Exception as err:  # the exporter raises its own assorted types
        raise MemsvError(f"ONNX export failed: {type(err).__name__}: {str(err).splitlines()[0]}") from None
    finally:
        quiet.setLevel(level)
    proto = program.model_proto
    onnx.helper.set_model_props(proto, {"memsv": meta})
    onnx.save_model(proto, str(path))


def _max_diff_torchscript(path: Path, net: InferenceNet, inputs: list[torch.Tensor]) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        loaded = torch.jit.load(str(path), map_location="cpu")
    with torch.inference_mode():
        return max(float((loaded(x) - net(x)).abs().max()) for x in inputs)


def _max_diff_onnx(path: Path, net: InferenceNet, inputs: list[torch.Tensor]) -> float | None:
    if importlib.util.find_spec("onnxruntime") is None:
        return None
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        return max(
            float(np.abs(session.run(None, {"feats": x.numpy()})[0] - net(x).numpy()).max()) for x in inputs
        )


def export_model(
    checkpoint: str | Path, fmt: str, out: str | Path, fbank_conf: str | Path | None = None
) -> ExportSummary:
    """Export ``checkpoint``'s embedding model to ``out`` as ``fmt`` (see the module docstring).

    Raises:
        MemsvError: unknown format, missing checkpoint or export packages, a failed export, or an
            exported model whose embeddings differ from memsv's by more than :data:`TOLERANCE`.
    """
    from memsv_cli.inference import feature_options, plain_model
    from memsv_cli.train.checkpoint import load_model_from_checkpoint

    start = time.perf_counter()
    if fmt not in FORMATS:
        raise MemsvError(f"unknown --format {fmt!r}; choose one of {', '.join(FORMATS)}")
    model, config = load_model_from_checkpoint(checkpoint, "cpu")
    net = InferenceNet(plain_model(model)).eval()
    try:
        fbank = asdict(feature_options(config, fbank_conf)[0])
    except MemsvError:
        if fbank_conf is not None:
            raise
        fbank = None  # metadata only: the export itself does not depend on it
    meta = _metadata(Path(checkpoint), config, model, fbank)
    example = _check_inputs(model.feat_dim)[0]
    out = Path(out)
    with atomic_path(out) as tmp:
        if fmt == "torchscript":
            _export_torchscript(net, example, tmp, meta)
            diff = _max_diff_torchscript(tmp, net, _check_inputs(model.feat_dim))
        else:
            _export_onnx(net, example, tmp, meta)
            diff = _max_diff_onnx(tmp, net, _check_inputs(model.feat_dim))
        if diff is not None and not diff <= TOLERANCE:
            raise MemsvError(
                f"{out}: the exported model is {diff:.2e} off memsv's embeddings (> {TOLERANCE})"
            )
        size = tmp.stat().st_size
    note = None if diff is not None else "not checked: onnxruntime is not installed"
    return ExportSummary(
        out, fmt, size, int(model.embedding.out_features), diff, note, time.perf_counter() - start
    )


__all__ = ["FORMATS", "ExportSummary", "InferenceNet", "TOLERANCE", "export_model"]
