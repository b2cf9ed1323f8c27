"""``memsv prepare-data``, ``memsv extract-fbank`` and ``memsv make-shards``: thin adapters over the
data-stage library.

Each holds its output directory (:mod:`memsv_cli.lock`) so that a second run into it stops with one line
naming the first; ``extract-fbank`` and ``make-shards`` take the lock inside the library function itself.
Notices (resuming an unfinished run, utterances skipped with ``--skip-bad``) are single lines on stderr.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from memsv_cli.console import console as make_console
from memsv_cli.errors import MemsvError
from memsv_cli.lock import hold_directory

if TYPE_CHECKING:
    from memsv_cli.data.fbank import FbankConfig

_console = make_console(stderr=True)


class Corpus(str, Enum):
    voxceleb = "voxceleb"
    mini = "mini"
    hnm = "hnm"


class Backend(str, Enum):
    kaldi_native = "kaldi-native"
    torchaudio = "torchaudio"


def _notifier(command: str) -> Callable[[str], None]:
    """One-line notices of a stage (resuming, skipped utterances) on stderr, as ``memsv <command>: ...``."""

    def notify(message: str) -> None:
        print(f"memsv {command}: {' '.join(message.split())}", file=sys.stderr, flush=True)

    return notify


@contextlib.contextmanager
def _progress_bar(command: str) -> Iterator[Callable[[int, int], None]]:
    """A ``progress(done, total)`` (utterances) that drives a rich bar, shown on a terminal only: in logs
    (recipes redirect stderr) a bar is noise and the summary table remains."""
    columns = (TextColumn(command), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=_console, transient=True, disable=not _console.is_terminal) as bar:
        task = bar.add_task("utterances", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield progress


def _with_resumed(count: int, resumed: int) -> str:
    """``12`` or ``12 (5 resumed)``: units done now and units kept from an unfinished earlier run."""
    return f"{count} ({resumed} resumed)" if resumed else f"{count}"


def _print_summary(
    command: str, rows: list[tuple[str, str]], num_bad: int, out_dir: Path, notify: Callable[[str], None]
) -> None:
    """The one-line skipped-utterances notice (``--skip-bad``), then the summary table."""
    if num_bad:
        notify(f"skipped {num_bad} unreadable utterance(s), listed in {out_dir / 'bad_utts'}")
        rows = [*rows, ("skipped (bad_utts)", f"{num_bad}")]
    _console.print(_summary_table(command, rows))


def _summary_table(title: str, rows: list[tuple[str, str]]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    for key, value in rows:
        table.add_row(key, value)
    return table


def prepare_data(
    corpus: Corpus = typer.Option(
        ..., "--corpus", help="voxceleb: a VoxCeleb-style tree; mini, hnm: synthesise a built-in corpus."
    ),
    out: Path = typer.Option(
        ..., "--out", help="voxceleb: the data dir to write; mini: the root for the corpus and its data dirs."
    ),
    root: Path | None = typer.Option(None, "--root", help="voxceleb: tree holding <spk>/<video>/<utt>.*"),
    trials: list[Path] = typer.Option(
        [], "--trials", help="voxceleb: trial list (VoxCeleb or Kaldi format), repeatable."
    ),
    num_speakers: int = typer.Option(40, "--num-speakers", help="mini: training speakers."),
    utts_per_speaker: int = typer.Option(
        16, "--utts-per-speaker", help="mini: utterances per training speaker."
    ),
    num_test_speakers: int = typer.Option(20, "--num-test-speakers", help="mini: test speakers (disjoint)."),
    test_utts_per_speaker: int = typer.Option(8, "--test-utts-per-speaker", help="mini: per test speaker."),
    seed: int = typer.Option(777, "--seed", help="mini: random seed (the corpus is a function of it)."),
    nj: int = typer.Option(
        1, "--nj", help="mini: worker processes for synthesis (same audio for any value)."
    ),
) -> None:
    """Make Kaldi data dirs (wav.scp, utt2spk, spk2utt, trials/*.kaldi) from a corpus."""
    if corpus is Corpus.voxceleb:
        from memsv_cli.data.prepare import prepare_voxceleb

        if root is None:
            raise MemsvError("--corpus voxceleb needs --root (the corpus tree)")
        with hold_directory(out, "output directory"):  # one run per data dir; removed again if left empty
            summary = prepare_voxceleb(root, out, trials)
        rows = [
            ("data dir", str(summary.out_dir)),
            ("utterances", f"{summary.num_utts}"),
            ("speakers", f"{summary.num_speakers}"),
            ("m4a via ffmpeg pipe", f"{summary.num_m4a}"),
        ]
        rows += [(f"trials/{name}.kaldi", f"{n}") for name, n in summary.trials.items()]
        _console.print(_summary_table("prepare-data voxceleb", rows))
        return
    from memsv_cli.data.prepare import prepare_synthetic

    name = corpus.value
    if root is not None or trials:
        raise MemsvError(f"--corpus {name} takes no --root or --trials (it writes its own under --out)")
    with hold_directory(out, "output directory"), _console.status(f"synthesising the {name} corpus"):
        summary = prepare_synthetic(
            name,
            out,
            num_speakers=num_speakers,
            utts_per_speaker=utts_per_speaker,
            num_test_speakers=num_test_speakers,
            test_utts_per_speaker=test_utts_per_speaker,
            seed=seed,
            nj=nj,
        )
    _console.print(
        _summary_table(
            f"prepare-data {name}",
            [
                ("train data dir", str(summary.root / f"{name}_train")),
                ("test data dir", str(summary.root / f"{name}_test")),
                ("train / test utterances", f"{summary.train_utts} / {summary.test_utts}"),
                ("trials (target)", f"{summary.num_trials} ({summary.num_target_trials})"),
                ("audio", f"{summary.audio_seconds / 60:.1f} min"),
            ],
        )
    )


def extract_fbank(
    data_dir: Path = typer.Argument(..., help="Kaldi data dir with wav.scp and utt2spk."),
    out_dir: Path = typer.Argument(..., help="Output dir: feats.ark/scp, utt2num_frames, utt2spk, trials/."),
    num_mel_bins: int | None = typer.Option(None, "--num-mel-bins", help="Mel bins [default: 80]."),
    frame_length: float | None = typer.Option(
        None, "--frame-length", help="Frame length (ms) [default: 25]."
    ),
    frame_shift: float | None = typer.Option(None, "--frame-shift", help="Frame shift (ms) [default: 10]."),
    train_config: Path | None = typer.Option(
        None,
        "--train-config",
        help="The three options above from a memsv training config's data.fbank_args: the features its "
        "model computes online (raw, shard).",
    ),
    dither: float = typer.Option(0.0, "--dither", help="Dither (int16 units); 0 is deterministic."),
    sample_rate: int = typer.Option(16000, "--sample-rate", help="Required input sample rate (Hz)."),
    nj: int = typer.Option(
        1, "--nj", help="Worker processes (one feats.JOB.ark each); a rerun with the same --nj resumes."
    ),
    backend: Backend = typer.Option(Backend.kaldi_native, "--backend", help="Fbank implementation."),
    skip_bad: bool = typer.Option(
        False, "--skip-bad", help="Leave out unreadable utterances, listed in OUT_DIR/bad_utts."
    ),
) -> None:
    """Kaldi-compatible log-Mel fbank for every utterance of a data dir.

    A failed or interrupted run keeps its complete jobs: rerun the same command to finish the others.
    """
    from memsv_cli.data.fbank import extract_fbank as run

    given = {"num_mel_bins": num_mel_bins, "frame_length_ms": frame_length, "frame_shift_ms": frame_shift}
    cfg = replace(_fbank_options(given, train_config), dither=dither, sample_rate=sample_rate)
    notify = _notifier("extract-fbank")
    with _progress_bar("extract-fbank") as progress:
        summary = run(
            data_dir,
            out_dir,
            cfg,
            nj=nj,
            backend=backend.value,
            skip_bad=skip_bad,
            progress=progress,
            notify=notify,
        )
    rows = [
        ("feats.scp", str(summary.out_dir / "feats.scp")),
        ("utterances", f"{summary.num_utts}"),
        ("frames", f"{summary.num_frames}"),
        ("audio", f"{summary.audio_seconds / 3600:.2f} h"),
        ("jobs", _with_resumed(summary.num_jobs, summary.num_reused_jobs)),
    ]
    _print_summary("extract-fbank", rows, summary.num_bad, summary.out_dir, notify)


def _fbank_options(given: dict[str, float | None], train_config: Path | None) -> FbankConfig:
    """Bins and frame lengths: the options given, else ``train_config``'s ``data.fbank_args``, else
    Kaldi's / WeSpeaker's defaults; an option that contradicts the config is an error."""
    from memsv_cli.data.fbank import FbankConfig
    from memsv_cli.train.config import resolve_config
    from memsv_cli.train.settings import Settings

    if train_config is None:
        return FbankConfig(**{k: v for k, v in given.items() if v is not None})
    online = Settings.from_config(resolve_config(train_config)).data.fbank()
    flags = {
        "num_mel_bins": "--num-mel-bins",
        "frame_length_ms": "--frame-length",
        "frame_shift_ms": "--frame-shift",
    }
    for key, value in given.items():
        if value is not None and value != getattr(online, key):
            raise MemsvError(
                f"{flags[key]} {value:g} contradicts {train_config} (data.fbank_args: "
                f"{getattr(online, key):g}); give one or the other"
            )
    return online


def make_shards(
    data_dir: Path = typer.Argument(..., help="Kaldi data dir with wav.scp (paths or pipes) and utt2spk."),
    out_dir: Path = typer.Argument(
        ..., help="Output dir: shards/*.tar, shard.list, utt2spk, utt2num_samples."
    ),
    utts_per_shard: int = typer.Option(1000, "--utts-per-shard", help="Utterances per tar shard."),
    nj: int = typer.Option(1, "--nj", help="Worker processes (any value gives the same shards)."),
    seed: int = typer.Option(777, "--seed", help="Seed of the global shuffle before the cut into shards."),
    skip_bad: bool = typer.Option(
        False, "--skip-bad", help="Leave out unreadable utterances, listed in OUT_DIR/bad_utts."
    ),
    sample_rate: int = typer.Option(16000, "--sample-rate", help="Required input sample rate (Hz)."),
) -> None:
    """Raw audio into WeSpeaker-style tar shards (<key>.wav + <key>.spk) for data.type shard.

    A failed or interrupted run keeps its complete shards: rerun the same command to write the others.
    """
    from memsv_cli.data.shards import make_shards as run

    notify = _notifier("make-shards")
    with _progress_bar("make-shards") as progress:
        summary = run(
            data_dir,
            out_dir,
            utts_per_shard=utts_per_shard,
            nj=nj,
            seed=seed,
            skip_bad=skip_bad,
            sample_rate=sample_rate,
            progress=progress,
            notify=notify,
        )
    rows = [
        ("shard.list", str(summary.shard_list)),
        ("shards", _with_resumed(summary.num_shards, summary.num_reused_shards)),
        ("utterances", f"{summary.num_utts}"),
        ("audio", f"{summary.audio_seconds / 3600:.2f} h"),
        ("jobs", f"{summary.num_jobs}"),
    ]
    _print_summary("make-shards", rows, summary.num_bad, summary.out_dir, notify)


def register(app: typer.Typer) -> None:
    """Add the data-stage commands to the ``memsv`` app."""
    app.command(name="prepare-data")(prepare_data)
    app.command(name="extract-fbank")(extract_fbank)
    app.command(name="make-shards")(make_shards)
