"""``memsv extract-embeddings``: a thin adapter over :func:`memsv_cli.embed.extract_embeddings`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from memsv_cli.console import console as make_console


def extract_embeddings_command(
    checkpoint: Path = typer.Option(
        ...,
        "--checkpoint",
        help="EXP/models/avg_model.pt (or epoch_N.pt); the model is built from the config saved in it.",
    ),
    data: Path = typer.Option(
        ...,
        "--data",
        help="Features dir: feats.scp (+ utt2num_frames), or a data dir with wav.scp (features on the fly "
        "with the training's options); utt2spk for --spk-mean.",
    ),
    out: Path = typer.Option(..., "--out", help="Output dir for xvector.ark/scp."),
    batch_size: int | None = typer.Option(
        None,
        "--batch-size",
        help="Utterances per batch; only utterances of identical length share a batch, so results "
        "equal one-by-one. Default: 64 on CUDA, 1 on CPU (batching is no faster there).",
        show_default=False,
    ),
    max_batch_frames: int = typer.Option(
        64_000, "--max-batch-frames", help="Frames per batch cap; longer utterances run one by one."
    ),
    nj: int = typer.Option(0, "--nj", help="Feature-reading worker processes (0: read in the main process)."),
    device: str = typer.Option("auto", "--device", help="auto|cpu|cuda|cuda:N."),
    spk_mean: bool = typer.Option(
        False,
        "--spk-mean",
        help="Also write spk_xvector.ark/scp: per-speaker "
        "mean embeddings (an AS-norm cohort); needs utt2spk in --data.",
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    fbank_conf: Path | None = typer.Option(
        None,
        "--fbank-conf",
        help="wav.scp input: fbank.conf to use instead of the training's options.",
        show_default=False,
    ),
) -> None:
    """Whole-utterance speaker embeddings (per-utterance mean-normalised features) as Kaldi ark/scp.

    From feats.scp (extract-fbank) or from wav.scp: the same features, so the same embeddings.
    """
    from memsv_cli.embed import extract_embeddings

    s = extract_embeddings(
        checkpoint,
        data,
        out,
        batch_size=batch_size,
        max_batch_frames=max_batch_frames,
        nj=nj,
        device=device,
        spk_mean=spk_mean,
        progress=progress,
        fbank_conf=fbank_conf,
    )
    table = Table(title="extract-embeddings")
    table.add_column("output", overflow="fold")
    table.add_column("entries", justify="right")
    table.add_column("dim", justify="right")
    table.add_row(str(s.xvector_scp), str(s.num_utts), str(s.embed_dim))
    if s.spk_xvector_scp is not None:
        table.add_row(str(s.spk_xvector_scp), str(s.num_speakers), str(s.embed_dim))
    table.caption = (
        f"{s.num_batches} batches, {s.seconds:.1f} s, {s.num_utts / max(s.seconds, 1e-9):.1f} utts/s"
    )
    make_console().print(table)


def register(app: typer.Typer) -> None:
    """Add ``memsv extract-embeddings`` to the app."""
    app.command(name="extract-embeddings")(extract_embeddings_command)
