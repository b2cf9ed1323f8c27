"""``memsv profile-memory``: where one training step's memory goes, and what rev models / 8-bit save."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import typer

from memsv_cli.console import console as make_console
from memsv_cli.errors import MemsvError
from memsv_cli.profile.experiment import read_experiment
from memsv_cli.profile.fit import parse_size
from memsv_cli.profile.report import profile_memory, render
from memsv_cli.profile.step import StepSetup

#: options an experiment's setup fills (``--exp``) unless they are given on the command line
FROM_EXPERIMENT = (
    "model",
    "batch_size",
    "frames",
    "feat_dim",
    "num_speakers",
    "embed_dim",
    "base_width",
    "optimizer",
    "precision",
    "recompute_chunks",
)


def _from_experiment(ctx: typer.Context, values: dict[str, Any], exp: Path) -> dict[str, Any]:
    """``values`` with every option of :data:`FROM_EXPERIMENT` not given on the command line replaced by
    the experiment's (:func:`memsv_cli.profile.experiment.read_experiment`)."""
    setup = dataclasses.asdict(read_experiment(exp))
    given = {k for k in FROM_EXPERIMENT if getattr(ctx.get_parameter_source(k), "name", "") == "COMMANDLINE"}
    return {k: (v if k in given or k not in setup else setup[k]) for k, v in values.items()}


def _resolve(ctx: typer.Context, values: dict[str, Any], exp: Path | None) -> tuple[str, StepSetup, int, int]:
    """(model, step setup, base width, recompute chunks) from the options, filled from ``exp`` if given."""
    if exp is not None:
        values = _from_experiment(ctx, values, exp)
    if values["model"] is None:
        raise MemsvError("profile-memory needs --model or --exp")
    fields = {f.name for f in dataclasses.fields(StepSetup)}
    setup = StepSetup(**{k: v for k, v in values.items() if k in fields})
    return values["model"], setup, values["base_width"], values["recompute_chunks"]


def profile_memory_command(
    ctx: typer.Context,
    model: str = typer.Option(
        None, "--model", help="Model name, e.g. resnet34, rev_resnet34, fullrev_resnet293 (or --exp)."
    ),
    batch_size: int = typer.Option(128, "--batch-size", help="Utterances per training step."),
    frames: int = typer.Option(200, "--frames", help="Chunk length in frames (10 ms)."),
    feat_dim: int = typer.Option(80, "--feat-dim", help="Fbank bins."),
    num_speakers: int = typer.Option(5994, "--num-speakers", help="Classes of the AAM-softmax head."),
    embed_dim: int = typer.Option(256, "--embed-dim", help="Embedding size."),
    base_width: int = typer.Option(32, "--base-width", help="Channels of the first stage."),
    optimizer: str = typer.Option("sgd", "--optimizer", help="sgd|sgd8bit|adam|adam8bit|adamw|adamw8bit."),
    precision: str = typer.Option(
        "fp32", "--precision", help="fp32|bf16|fp16 (autocast, fp32 weights; fp16 with the loss scaler)."
    ),
    device: str = typer.Option(
        "auto", "--device", help="auto (cuda if present, else meta) | cpu (measure) | cuda (measure) | meta."
    ),
    compare: str = typer.Option(
        "auto",
        "--compare",
        help="Baseline model (with the 32-bit optimizer); auto: the vanilla model of a rev_/fullrev_ model "
        "or the 32-bit optimizer of an 8-bit one; checkpoint: the vanilla model with activation "
        "checkpointing around each residual block; none: no baseline.",
    ),
    gpu_memory: str = typer.Option(
        None, "--gpu-memory", help="Card size (e.g. 11GiB): report the largest batch that fits."
    ),
    recompute_chunks: int = typer.Option(
        1,
        "--recompute-chunks",
        help="rev_/fullrev_ models: recompute the layers with the largest feature maps over K "
        "micro-batches in backward, smaller maps over fewer (exact gradients, lower peak, more time); "
        "1 = off. The baseline is unaffected.",
    ),
    exp: Path = typer.Option(
        None,
        "--exp",
        help="Experiment dir of memsv train: profile exactly its setup (config.yaml; classes from its "
        "head); options given on the command line override it.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print exactly one JSON object instead of the table."),
) -> None:
    """Profile one training step's peak memory by component (parameters, gradients, optimizer states,
    activations, other) against the vanilla 32-bit baseline."""
    values = {k: v for k, v in locals().items() if k in FROM_EXPERIMENT}
    model, setup, base_width, chunks = _resolve(ctx, values, exp)
    budget = parse_size(gpu_memory) if gpu_memory is not None else None
    report = profile_memory(model, setup, device, compare, budget, base_width, chunks)
    if as_json:
        typer.echo(json.dumps(report.to_json()))
    else:
        render(report, make_console())


def register(app: typer.Typer) -> None:
    """Add ``profile-memory`` to the ``memsv`` app."""
    app.command(name="profile-memory")(profile_memory_command)
