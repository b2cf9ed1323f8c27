"""``memsv augment-data`` and ``memsv speed-perturb``: Kaldi-style augmented copies of a data directory."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from memsv_cli.console import console as make_console
from memsv_cli.data.augment import (
    AUG_TYPES,
    DEFAULT_BABBLE_SPEAKERS,
    DEFAULT_SNR_DB,
    SPEED_BACKENDS,
    AugmentOptions,
    augment_data_dir,
    make_synthetic_sources,
    parse_factors,
    select_utts,
    speed_perturb_data_dir,
)
from memsv_cli.data.kaldi_dir import load_data_dir
from memsv_cli.errors import MemsvError


def _range(text: str | None, what: str, cast: type = float) -> tuple | None:
    """``"5:15"`` -> ``(5.0, 15.0)``; a single number means a fixed value."""
    if text is None:
        return None
    parts = text.split(":")
    try:
        values = [cast(p) for p in parts]
    except ValueError:
        raise MemsvError(f"{what} must be LOW:HIGH numbers, got {text!r}") from None
    if len(values) == 1:
        values = values * 2
    if len(values) != 2:
        raise MemsvError(f"{what} must be LOW:HIGH, got {text!r}")
    return tuple(values)


def augment_data(
    src: Path = typer.Argument(..., help="Input Kaldi data directory (wav.scp, utt2spk)."),
    out: Path = typer.Argument(..., help="Output data directory; audio goes to OUT/wav/."),
    aug_type: str = typer.Option(..., "--type", help=f"One of {', '.join(AUG_TYPES)}."),
    source: Path = typer.Option(
        ...,
        "--source",
        help="Data directory whose wav.scp lists the RIRs (reverb), MUSAN noise / music, or speech "
        "(babble); see local/prepare_musan.sh and local/prepare_rirs.sh.",
    ),
    snr: str = typer.Option(
        None,
        help="SNR range LOW:HIGH in dB, uniform per utterance. Defaults (WeSpeaker): "
        + ", ".join(f"{k} {lo:g}:{hi:g}" for k, (lo, hi) in DEFAULT_SNR_DB.items())
        + ".",
    ),
    babble_speakers: str = typer.Option(
        f"{DEFAULT_BABBLE_SPEAKERS[0]}:{DEFAULT_BABBLE_SPEAKERS[1]}",
        help="Number of overlapping babble utterances LOW:HIGH.",
    ),
    num_utts: int = typer.Option(
        None, help="Augment a random subset of this many utterances (default: all)."
    ),
    suffix: str = typer.Option(None, help="Utterance-id suffix of the copies (default -TYPE)."),
    sample_rate: int = typer.Option(16000, help="Sample rate (Hz) of speech and sources."),
    seed: int = typer.Option(0, help="Random seed; each utterance draws from (seed, its id)."),
    nj: int = typer.Option(1, help="Parallel worker processes."),
) -> None:
    """Write an augmented copy of a data directory: reverb, noise, music or babble (Kaldi style)."""
    if nj < 1:
        raise MemsvError(f"--nj must be >= 1, got {nj}")
    bab = _range(babble_speakers, "--babble-speakers", int)
    options = AugmentOptions(
        aug_type=aug_type,
        snr_db=_range(snr, "--snr"),
        babble_speakers=bab,
        seed=seed,
        suffix=suffix,
        sample_rate=sample_rate,
    )
    total = len(select_utts(load_data_dir(src).wav_scp, num_utts, seed))
    console = make_console(stderr=True)
    with Progress(
        TextColumn(f"augment-data {aug_type}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("utts", total=total)
        count = augment_data_dir(
            src, out, source, options, num_utts=num_utts, nj=nj, progress=lambda n: bar.advance(task, n)
        )
    lo, hi = options.snr_range
    detail = "" if aug_type == "reverb" else f" at {lo:g}-{hi:g} dB"
    console.print(f"augment-data: wrote {count} {aug_type} utterances{detail} to {out}")


def speed_perturb(
    src: Path = typer.Argument(..., help="Input Kaldi data directory."),
    out: Path = typer.Argument(..., help="Output data directory."),
    factors: str = typer.Option(
        "0.9,1.0,1.1", help="Comma-separated speed factors; 1.0 keeps the original, others are new speakers."
    ),
    backend: str = typer.Option(
        "sox", help=f"{' | '.join(SPEED_BACKENDS)}: sox pipes in wav.scp, or resampled wav files."
    ),
    sample_rate: int = typer.Option(16000, help="Sample rate (Hz) for the resample backend."),
    nj: int = typer.Option(1, help="Parallel worker processes (resample backend)."),
) -> None:
    """Speed-perturbed copies (sp0.9-, sp1.1-) as new speakers, Kaldi perturb_data_dir_speed style."""
    if nj < 1:
        raise MemsvError(f"--nj must be >= 1, got {nj}")
    parsed = parse_factors(factors)
    count = speed_perturb_data_dir(src, out, parsed, backend=backend, nj=nj, sample_rate=sample_rate)
    make_console(stderr=True).print(f"speed-perturb: wrote {count} utterances ({factors}) to {out}")


def make_aug_sources(
    out: Path = typer.Argument(..., help="Directory for noise/, music/ and rirs/ data directories."),
    num: int = typer.Option(4, help="Recordings per kind."),
    seed: int = typer.Option(0, help="Random seed."),
) -> None:
    """Synthetic stand-ins for MUSAN noise/music and RIRs (for the mini corpus and tests)."""
    if num < 1:
        raise MemsvError(f"--num must be >= 1, got {num}")
    dirs = make_synthetic_sources(out, num_noises=num, num_rirs=num, seed=seed)
    make_console(stderr=True).print(f"make-aug-sources: wrote {', '.join(str(p) for p in dirs.values())}")


def register(app: typer.Typer) -> None:
    app.command(name="augment-data")(augment_data)
    app.command(name="speed-perturb")(speed_perturb)
    app.command(name="make-aug-sources")(make_aug_sources)
