"""``memsv profile-memory``: where one training step's memory goes, and what rev models / 8-bit save."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from memsv_cli.atomic import write_text_atomic
from memsv_cli.console import console as make_console
from memsv_cli.errors import MemsvError

# The profiler imports torch (~2 s): imported where used, so that every other memsv command (the CLI
# registers them all at start-up) starts without it
if TYPE_CHECKING:
    from memsv_cli.profile.plan import PlanResult, Recipe
    from memsv_cli.profile.report import ProfileReport
    from memsv_cli.profile.step import StepSetup

#: options an experiment's setup fills (``--exp``) unless they are given on the command line
FROM_EXPERIMENT = (
    "model",
    "batch_size",
    "accum_steps",
    "frames",
    "feat_dim",
    "num_speakers",
    "embed_dim",
    "base_width",
    "optimizer",
    "precision",
    "recompute_chunks",
    "checkpoint_blocks",
)


def _from_experiment(ctx: typer.Context, values: dict[str, Any], trained: Recipe) -> dict[str, Any]:
    """``values`` with every option of :data:`FROM_EXPERIMENT` not given on the command line replaced by
    the experiment's (:func:`memsv_cli.profile.experiment.read_recipe`)."""
    from memsv_cli.profile.experiment import experiment_setup

    setup = dataclasses.asdict(experiment_setup(trained))
    given = {k for k in FROM_EXPERIMENT if getattr(ctx.get_parameter_source(k), "name", "") == "COMMANDLINE"}
    return {k: (v if k in given or k not in setup else setup[k]) for k, v in values.items()}


def _resolve(ctx: typer.Context, values: dict[str, Any], exp: Path | None) -> tuple[Recipe, StepSetup]:
    """The recipe and its step setup from the options, filled from ``exp`` if given."""
    from memsv_cli.profile.experiment import read_recipe
    from memsv_cli.profile.plan import Recipe
    from memsv_cli.profile.step import OPTIMIZER_KWARGS, StepSetup, full_precision_optimizer

    trained = None
    if exp is not None:
        trained = read_recipe(exp)
        values = _from_experiment(ctx, values, trained)
    if values["model"] is None:
        raise MemsvError("profile-memory needs --model or --exp")
    fields = {f.name for f in dataclasses.fields(StepSetup)}
    setup = StepSetup(**{k: v for k, v in values.items() if k in fields})
    # the experiment's optimizer arguments (which states exist) unless the optimizer was overridden
    if trained is not None and trained.optimizer == setup.optimizer:
        optimizer_args = trained.optimizer_args
    else:
        optimizer_args = dict(OPTIMIZER_KWARGS[full_precision_optimizer(setup.optimizer)])
    recipe = Recipe(
        model=values["model"],
        model_args={
            "feat_dim": setup.feat_dim,
            "embed_dim": setup.embed_dim,
            "base_width": values["base_width"],
        },
        batch_size=setup.batch_size,
        accum_steps=setup.accum_steps,
        frames=setup.frames,
        num_classes=setup.num_speakers,
        optimizer=setup.optimizer,
        optimizer_args=optimizer_args,
        precision=setup.precision,
        recompute_chunks=values["recompute_chunks"],
        checkpoint_blocks=values["checkpoint_blocks"],
    )
    return recipe, setup


def _plans(recipe: Recipe, budget: int, micro_batch: bool, half_precision_: bool, every: bool) -> PlanResult:
    """The memory plans of ``recipe`` for a CUDA card of ``budget`` bytes (what train --gpu-memory does)."""
    from memsv_cli.profile.plan import CUDA_RESERVE_BYTES, choose_plan, half_precision

    half = half_precision("cuda") if half_precision_ else None
    return choose_plan(
        recipe,
        budget,
        reserve=CUDA_RESERVE_BYTES,
        allow_micro_batch=micro_batch,
        half=half,
        predict_all=every,
    )


def _print_plan(result: PlanResult) -> None:
    from memsv_cli.profile.plan import plan_table

    console = make_console()
    for line in plan_table(result):
        console.print(line, soft_wrap=True, highlight=False, markup=False)
    console.print(result.message, soft_wrap=True, highlight=False, markup=False)


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
        None,
        "--gpu-memory",
        help="Card size (e.g. 11GiB): the memory plans of this setup for the card (the table memsv train "
        "--gpu-memory chooses from) and the largest batch that fits.",
    ),
    allow_micro_batch: bool = typer.Option(
        False,
        "--allow-micro-batch",
        help="--gpu-memory: plans may use micro-batches smaller than --batch-size (same gradient; "
        "BatchNorm then normalises over the micro-batch).",
    ),
    allow_half_precision: bool = typer.Option(
        False,
        "--allow-half-precision",
        help="--gpu-memory: fp32 setups may also plan bf16 (fp16 without bf16).",
    ),
    all_plans: bool = typer.Option(
        False, "--all-plans", help="--gpu-memory: predict every plan, not only up to the cheapest that fits."
    ),
    accum_steps: int = typer.Option(
        1, "--accum-steps", help="Micro-batches of --batch-size per optimizer step (gradient accumulation)."
    ),
    checkpoint_blocks: bool = typer.Option(
        False,
        "--checkpoint-blocks",
        help="Vanilla models: activation checkpointing around each residual unit (torch.utils.checkpoint).",
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
    out: Path = typer.Option(None, "--out", help="Also write the --json object to this file (atomically)."),
) -> None:
    """Profile one training step's peak memory by component (parameters, gradients, optimizer states,
    activations, other) against the vanilla 32-bit baseline."""
    values = {k: v for k, v in locals().items() if k in FROM_EXPERIMENT}
    from memsv_cli.profile.fit import parse_size
    from memsv_cli.profile.report import profile_memory

    recipe, setup = _resolve(ctx, values, exp)
    budget = parse_size(gpu_memory) if gpu_memory is not None else None
    width = int(recipe.model_args["base_width"])
    report = profile_memory(
        recipe.model, setup, device, compare, budget, width, recipe.recompute_chunks, recipe.checkpoint_blocks
    )
    plans = None
    if budget is not None:
        plans = _plans(recipe, budget, allow_micro_batch, allow_half_precision, all_plans)
    _emit(report, plans, as_json, out)


def _emit(report: ProfileReport, plans: PlanResult | None, as_json: bool, out: Path | None) -> None:
    """The table (and plan table) or the JSON object on stdout; the JSON object also in ``out``."""
    from memsv_cli.profile.report import render

    result = report.to_json()
    if plans is not None:
        result["memory_plan"] = plans.to_json()
    if out is not None:
        write_text_atomic(out, json.dumps(result) + "\n")
    if as_json:
        typer.echo(json.dumps(result))
    else:
        render(report, make_console())
        if plans is not None:
            _print_plan(plans)


def register(app: typer.Typer) -> None:
    """Add ``profile-memory`` to the ``memsv`` app."""
    app.command(name="profile-memory")(profile_memory_command)
