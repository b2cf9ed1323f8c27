"""``memsv score``: cosine / AS-norm scoring of trial lists, or metrics of an existing score file."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.table import Table

from memsv_cli.atomic import write_text_atomic
from memsv_cli.console import console as make_console
from memsv_cli.errors import MemsvError
from memsv_cli.scoring.score import TrialListResult, evaluate_score_file, score_trial_lists

#: what ``--out-dir`` writes beside the scores: the ``--json`` object
RESULTS_FILE = "results.json"


def _print_table(results: list[TrialListResult]) -> None:
    table = Table(title="Speaker verification results")
    for column in ("trials", "#trials", "#target", "EER (%)", "minDCF 0.01", "minDCF 0.05"):
        table.add_column(column, justify="left" if column == "trials" else "right")
    for r in results:
        m = r.metrics
        table.add_row(
            r.name,
            str(r.num_trials),
            "-" if r.num_target is None else str(r.num_target),
            "-" if m is None else f"{m.eer_percent:.3f}",
            "-" if m is None else f"{m.min_dcf_01:.4f}",
            "-" if m is None else f"{m.min_dcf_05:.4f}",
        )
    make_console().print(table)


def score(
    trials: list[Path] = typer.Option(
        None,
        "--trials",
        "-t",
        help="Trial list(s): Kaldi 'enroll test "
        "target|nontarget', VoxCeleb '1|0 enroll test' or 'enroll test'. "
        "Repeat the option or list several files after it.",
    ),
    more_trials: list[Path] = typer.Argument(None, metavar="T", help="More trial lists.", show_default=False),
    embeddings: Path = typer.Option(None, "--embeddings", "-e", help="xvector.scp with all trial keys."),
    mean_from: Path = typer.Option(
        None,
        "--mean-from",
        help="Subtract the mean embedding of this scp (e.g. the training set's xvector.scp) before scoring.",
    ),
    norm: str = typer.Option(None, "--norm", help="Score normalisation: asnorm or snorm (WeSpeaker)."),
    cohort: Path = typer.Option(
        None, "--cohort", help="Cohort scp for --norm (e.g. spk_xvector.scp of the training speakers)."
    ),
    top_n: int = typer.Option(300, "--top-n", help="AS-norm: number of top cohort scores kept."),
    transform: Path = typer.Option(
        None,
        "--transform",
        help="Kaldi matrix applied to every embedding first (memsv compute-lda's lda.mat); --mean-from's "
        "mean is then taken in its space.",
    ),
    out_dir: Path = typer.Option(
        None,
        "--out-dir",
        "-o",
        help="Write <trials>.score (and DET plots), thresholds.json and results.json (as --json) here.",
    ),
    det_plot: bool = typer.Option(
        False,
        "--det-plot",
        help="Write <trials>.det.png (with --out-dir; with --scores next to the score file).",
    ),
    skip_missing: bool = typer.Option(
        False,
        "--skip-missing",
        help="Score the trials that have both embeddings instead of failing; report how many were skipped.",
    ),
    scores: Path = typer.Option(
        None,
        "--scores",
        help="Compute the metrics of an existing score file "
        "('enroll test score target|nontarget' or 'score target|nontarget').",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout instead of a table."),
    qmf_train: Path = typer.Option(
        None,
        "--qmf-train",
        help="Optional QMF calibration (WeSpeaker): train it on this held-out labelled trial list, scored "
        "the same way, and add a '<trials>.qmf' result and score file per list.",
    ),
    qmf_durations: list[Path] = typer.Option(
        None,
        "--qmf-durations",
        help="utt2num_frames or utt2dur file(s) (one unit) for the QMF duration features; repeatable.",
    ),
    qmf_embeddings: Path = typer.Option(
        None,
        "--qmf-embeddings",
        help="xvector.scp with the --qmf-train keys, when not --embeddings (e.g. the training set's).",
    ),
) -> None:
    """Cosine scoring (optionally AS-norm / S-norm, QMF) with EER and minDCF (p_target 0.01 and 0.05).

    Trial keys match embedding keys modulo an audio extension (id10270/x6uYqmx31kE/00001.wav ==
    id10270/x6uYqmx31kE/00001). With --out-dir, the EER and minDCF thresholds of each labelled list go
    to thresholds.json there.
    """
    trial_paths = list(trials or [])
    if more_trials:
        if not trial_paths:
            raise MemsvError(f"unexpected argument {str(more_trials[0])!r} (trial lists follow --trials)")
        trial_paths += more_trials
    if scores is not None:
        if trial_paths or embeddings is not None or qmf_train is not None:
            raise MemsvError(
                "--scores evaluates an existing score file: do not combine it with --trials, --embeddings "
                "or --qmf-train"
            )
        plot = scores.with_name(f"{scores.name}.det.png") if det_plot else None
        results = [evaluate_score_file(scores, det_plot=plot)]
    else:
        if not trial_paths or embeddings is None:
            raise MemsvError("give --trials and --embeddings (or --scores FILE)")
        results = score_trial_lists(
            trial_paths,
            embeddings,
            mean_from=mean_from,
            norm=norm,
            cohort=cohort,
            top_n=top_n,
            transform=transform,
            out_dir=out_dir,
            det_plot=det_plot,
            skip_missing=skip_missing,
            qmf_train=qmf_train,
            qmf_durations=qmf_durations or (),
            qmf_embeddings=qmf_embeddings,
        )
    _report(results, out_dir, as_json)


def _report(results: list[TrialListResult], out_dir: Path | None, as_json: bool) -> None:
    """Notes on stderr; the table (or the JSON object) on stdout; ``results.json`` in ``out_dir``."""
    for r in results:
        if r.num_skipped and not r.qmf:  # the .qmf row has the same trials: say it once
            print(
                f"memsv score: {r.name}: skipped {r.num_skipped} trial(s) without embeddings", file=sys.stderr
            )
        if r.note and r.num_target is not None and not r.qmf:
            print(f"memsv score: {r.name}: {r.note}", file=sys.stderr)
        for note in r.notes:
            print(f"memsv score: {r.name}: {note}", file=sys.stderr)
    report = json.dumps({"results": [r.to_json() for r in results]})
    if out_dir is not None:  # the --json object beside the scores, so a recipe scores once
        write_text_atomic(out_dir / RESULTS_FILE, report + "\n")
    if as_json:
        print(report)
    else:
        _print_table(results)


def compute_lda(
    embeddings: Path = typer.Argument(
        ..., help="xvector.scp of the training set (memsv extract-embeddings)."
    ),
    utt2spk: Path = typer.Argument(..., help="utt2spk of the same set: the speaker of each embedding."),
    out: Path = typer.Argument(..., help="The transform to write, a Kaldi matrix (e.g. EXP/lda/lda.mat)."),
    dim: int = typer.Option(
        None, "--dim", help="Output dimension (default: speakers - 1, at most the embedding size)."
    ),
) -> None:
    """LDA back-end, as Kaldi's ivector-compute-lda: fit on the training speakers' embeddings (mean
    subtracted, Ledoit-Wolf-shrunk within-class scatter) and write the affine transform for
    `memsv score --transform`."""
    from memsv_cli.scoring.lda import compute_lda as run

    used, speakers, shape = run(embeddings, utt2spk, out, dim)
    make_console(stderr=True).print(
        f"compute-lda: {used} embeddings of {speakers} speakers, {shape[1] - 1} -> {shape[0]} dims -> {out}"
    )


def register(app: typer.Typer) -> None:
    """Add ``memsv score`` and ``memsv compute-lda`` to the app."""
    app.command(name="score")(score)
    app.command(name="compute-lda")(compute_lda)
