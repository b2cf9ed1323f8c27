"""Using a trained model: ``memsv embed``, ``memsv similarity`` and ``memsv export`` (thin adapters over
:mod:`memsv_cli.inference`, :mod:`memsv_cli.similarity` and :mod:`memsv_cli.export`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from memsv_cli.console import console as make_console

if TYPE_CHECKING:
    from memsv_cli.similarity import SimilarityResult

_CHECKPOINT_HELP = "EXP/models/avg_model.pt (or model_N.pt); the model is built from the config saved in it."
_FBANK_HELP = (
    "fbank.conf to use instead of the training's (found through the experiment config: the training "
    "dir's fbank.conf, or memsv's defaults for online features)."
)
_WINDOW_HELP = (
    "Embed windows of this many seconds and average them (default: the whole recording, as WeSpeaker)."
)
_VAD_HELP = "Keep only speech (Silero VAD from the silero-vad package; pip install 'memsv[vad]')."


def embed_command(
    files: list[str] = typer.Argument(
        ..., help="Audio files (WAV, FLAC, ...; resampled to the model's rate)."
    ),
    checkpoint: Path = typer.Option(..., "--checkpoint", help=_CHECKPOINT_HELP),
    out: Path | None = typer.Option(
        None,
        "--out",
        help="Write DIR/xvector.ark + xvector.scp (keys: the paths as given); default: Kaldi text "
        "vectors on stdout.",
    ),
    window: float | None = typer.Option(None, "--window", help=_WINDOW_HELP, show_default=False),
    vad: bool = typer.Option(False, "--vad", help=_VAD_HELP),
    device: str = typer.Option("cpu", "--device", help="auto|cpu|cuda|cuda:N."),
    fbank_conf: Path | None = typer.Option(None, "--fbank-conf", help=_FBANK_HELP, show_default=False),
) -> None:
    """Speaker embeddings of single audio files, with the features the model was trained on."""
    from memsv_cli.embed import write_vectors
    from memsv_cli.inference import embed_files, text_vector

    _, vectors = embed_files(
        checkpoint, files, window_seconds=window, vad=vad, device=device, fbank_conf=fbank_conf
    )
    if out is None:
        for key, vec in vectors.items():
            print(text_vector(key, vec))
        return
    scp = write_vectors(out, "xvector", vectors)
    make_console(stderr=True).print(f"embed: {len(vectors)} embeddings -> {scp}")


def similarity_command(
    file_a: str = typer.Argument(..., help="First recording."),
    file_b: str = typer.Argument(..., help="Second recording."),
    checkpoint: Path = typer.Option(..., "--checkpoint", help=_CHECKPOINT_HELP),
    thresholds: Path | None = typer.Option(
        None,
        "--thresholds",
        help="thresholds.json of `memsv score --out-dir`; default EXP/scores/thresholds.json next to "
        "EXP/models/ of --checkpoint.",
        show_default=False,
    ),
    threshold: str | None = typer.Option(
        None,
        "--threshold",
        help="eer (default) | mindcf01 | mindcf05 (of the stored list) | a number.",
        show_default=False,
    ),
    list_name: str | None = typer.Option(
        None, "--list", help="Trial list whose thresholds to use (default: the first un-normalised one)."
    ),
    mean_from: Path | None = typer.Option(
        None,
        "--mean-from",
        help="Embedding scp whose mean is subtracted (default: the list's mean_from).",
        show_default=False,
    ),
    window: float | None = typer.Option(None, "--window", help=_WINDOW_HELP, show_default=False),
    vad: bool = typer.Option(False, "--vad", help=_VAD_HELP),
    device: str = typer.Option("cpu", "--device", help="auto|cpu|cuda|cuda:N."),
    fbank_conf: Path | None = typer.Option(None, "--fbank-conf", help=_FBANK_HELP, show_default=False),
    as_json: bool = typer.Option(False, "--json", help="Print the result as one JSON object."),
) -> None:
    """Cosine score of two recordings (the recipe's scoring) and a same / different speaker decision."""
    from memsv_cli.similarity import similarity

    r = similarity(
        checkpoint,
        file_a,
        file_b,
        thresholds=thresholds,
        threshold=threshold,
        list_name=list_name,
        mean_from=mean_from,
        vad=vad,
        window_seconds=window,
        device=device,
        fbank_conf=fbank_conf,
    )
    if as_json:
        print(json.dumps(r.to_json()))
    else:
        _print_similarity(r)


def _print_similarity(r: SimilarityResult) -> None:
    """Score, decision, threshold origin and mean, one ``name value`` line each."""
    c = r.choice
    print(f"score     {r.score:.6f}")
    if r.same is None:
        print("decision  none")
        print(f"note      {c.note}")
    else:
        rule = ">=" if r.same else "<"
        print(f"decision  {'same' if r.same else 'different'} speaker (score {rule} {c.threshold:.6f})")
        if c.kind == "value":
            print("threshold given with --threshold")
        else:
            print(f"threshold {c.kind} of list {c.list_name!r} in {c.file}")
    print(f"mean      {r.mean_from or 'none subtracted'}")
    if c.transform is not None:
        print(f"transform {c.transform}")


def export_command(
    checkpoint: Path = typer.Option(..., "--checkpoint", help=_CHECKPOINT_HELP),
    fmt: str = typer.Option(..., "--format", help="torchscript | onnx (onnx: pip install 'memsv[export]')."),
    out: Path = typer.Option(..., "--out", help="Output file (e.g. model.pt, model.onnx)."),
    fbank_conf: Path | None = typer.Option(None, "--fbank-conf", help=_FBANK_HELP, show_default=False),
) -> None:
    """Export the embedding model (plain feed-forward, dynamic batch and frames) for deployment.

    Input: (batch, frames, feat_dim) mean-normalised fbank; output: (batch, embed_dim). The export is
    checked against memsv's embeddings before it is written.
    """
    from memsv_cli.export import export_model

    s = export_model(checkpoint, fmt, out, fbank_conf)
    check = f"max |diff| vs memsv {s.max_abs_diff:.2e}" if s.max_abs_diff is not None else s.note
    make_console().print(
        f"export: {s.format} -> {s.path} ({s.bytes / 2**20:.1f} MiB, embed dim {s.embed_dim}; {check}; "
        f"{s.seconds:.1f} s)",
        soft_wrap=True,
    )


def register(app: typer.Typer) -> None:
    """Add ``memsv embed``, ``memsv similarity`` and ``memsv export`` to the app."""
    app.command(name="embed")(embed_command)
    app.command(name="similarity")(similarity_command)
    app.command(name="export")(export_command)
