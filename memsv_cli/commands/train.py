"""``memsv train`` and ``memsv average-model``: thin adapters over :mod:`memsv_cli.train`."""

from __future__ import annotations

from pathlib import Path

import typer

from memsv_cli.errors import MemsvError


def train_command(
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML config (e.g. conf/resnet34.yaml)."),
    data: Path | None = typer.Option(None, "--data", help="Training dir with feats.scp and utt2spk."),
    exp_dir: Path = typer.Option(..., "--exp-dir", help="Experiment dir (config.yaml, models/, logs)."),
    model: str | None = typer.Option(None, "--model", help="Model name (sets model.name)."),
    optimizer: str | None = typer.Option(
        None, "--optimizer", help="sgd|sgd8bit|adam|adam8bit|adamw|adamw8bit."
    ),
    epochs: int | None = typer.Option(None, "--epochs", help="Sets train.epochs."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Per process; sets train.batch_size."),
    precision: str | None = typer.Option(
        None, "--precision", help="fp32|bf16|fp16|auto (sets train.precision; auto: bf16 where native)."
    ),
    device: str | None = typer.Option(None, "--device", help="auto|cpu|cuda (sets train.device)."),
    num_workers: int | None = typer.Option(None, "--num-workers", help="DataLoader workers per process."),
    gpu_memory: str | None = typer.Option(
        None,
        "--gpu-memory",
        help="Card size, e.g. 11GiB: train with the cheapest exact memory plan that fits (sets "
        "train.gpu_memory; the plan table goes to train.log and config.yaml).",
    ),
    allow_micro_batch: bool = typer.Option(
        False,
        "--allow-micro-batch",
        help="--gpu-memory: the plan may use micro-batches smaller than train.batch_size (BatchNorm then "
        "normalises over the micro-batch).",
    ),
    allow_half_precision: bool = typer.Option(
        False,
        "--allow-half-precision",
        help="--gpu-memory: an fp32 recipe may train in bf16 (fp16 on cards without bf16).",
    ),
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Continue from the newest complete EXP/models/checkpoint_<step>.pt (mid-epoch).",
    ),
    overrides: list[str] = typer.Option(
        [], "--set", help="Override any config key: --set optimizer.args.weight_decay=1e-4 (value is YAML)."
    ),
) -> None:
    """Train a speaker-embedding model (AAM-softmax) on feats.scp + utt2spk; torchrun for many GPUs.

    Order of precedence: defaults < --config < the named flags < --set. With --resume and no --config
    the saved EXP/config.yaml is used. SIGTERM / SIGUSR1 (preemption) and Ctrl-C finish the current
    step, write a checkpoint and stop (exit 0, or 130 after Ctrl-C); --resume continues from it.
    """
    from memsv_cli.train.config import family_switch_warning, load_yaml, resolve_config
    from memsv_cli.train.trainer import train

    flags = {
        "model.name": model,
        "optimizer.name": optimizer,
        "train.epochs": epochs,
        "train.batch_size": batch_size,
        "train.precision": precision,
        "train.device": device,
        "train.num_workers": num_workers,
        "data.dir": str(data) if data is not None else None,
        "train.gpu_memory": gpu_memory,
        "train.plan_micro_batch": "true" if allow_micro_batch else None,
        "train.plan_half_precision": "true" if allow_half_precision else None,
    }
    sets = [f"{k}={v}" for k, v in flags.items() if v is not None] + list(overrides)
    base = None
    if resume and config is None:
        saved = exp_dir / "config.yaml"
        if not saved.is_file():
            raise MemsvError(f"--resume without --config needs {saved}")
        base = load_yaml(saved)
    elif config is None:
        raise MemsvError("--config is required (except with --resume, which reuses EXP/config.yaml)")
    resolved = resolve_config(config if base is None else None, sets, base=base)
    if base is None:
        warning = family_switch_warning(resolve_config(config), resolved, list(overrides))
        if warning:
            typer.echo(f"memsv train: warning: {warning}", err=True)
    result = train(resolved, exp_dir, resume=resume)
    _report(result, exp_dir)


def _report(result: object, exp_dir: Path) -> None:
    """One line on how the run ended; a stop signal exits 0 (preemption) or 130 (Ctrl-C)."""
    from memsv_cli.train.trainer import TrainResult

    assert isinstance(result, TrainResult)
    from memsv_cli.sizes import format_bytes

    disk = f"; experiment disk use {format_bytes(result.disk_bytes)}"
    if result.stopped_by is not None:
        if not result.is_main:  # one line per run, not per rank
            raise typer.Exit(result.exit_status)
        typer.echo(
            f"memsv train: stopped by {result.stopped_by} after step {result.step} (checkpoint "
            f"{result.checkpoint}); resume with: memsv train --exp-dir {exp_dir} --resume{disk}",
            err=True,
        )
        raise typer.Exit(result.exit_status)
    if result.history and result.is_main:
        last = result.history[-1]
        typer.echo(
            f"trained {result.epochs_done} epoch(s): loss {last['loss']:.4f}, "
            f"accuracy {100 * last['acc']:.2f}%"
            + (f"; averaged model {result.avg_model}" if result.avg_model else "")
            + disk
        )


def _num_avg(exp_dir: Path | None) -> int:
    """``train.num_avg`` of the experiment's config.yaml (what its run.sh stage 4 averages), else 10."""
    if exp_dir is not None and (exp_dir / "config.yaml").is_file():
        from memsv_cli.train.config import load_yaml

        value = (load_yaml(exp_dir / "config.yaml").get("train") or {}).get("num_avg")
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return value
    return 10


def average_model_command(
    exp_dir: Path | None = typer.Option(None, "--exp-dir", help="Experiment dir (uses EXP/models)."),
    src_path: Path | None = typer.Option(
        None, "--src-path", help="Folder of model_N.pt (default EXP/models)."
    ),
    dst_model: Path | None = typer.Option(
        None, "--dst-model", help="Output (default <models>/avg_model.pt)."
    ),
    num: int | None = typer.Option(
        None,
        "--num",
        help="Average the newest NUM per-epoch model_N.pt (default: train.num_avg of EXP/config.yaml, "
        "else 10).",
    ),
    min_epoch: int | None = typer.Option(None, "--min-epoch", help="Ignore epochs below this."),
    max_epoch: int | None = typer.Option(None, "--max-epoch", help="Ignore epochs above this."),
) -> None:
    """Average the last NUM per-epoch weights (model_N.pt) into one inference checkpoint (WeSpeaker style)."""
    from memsv_cli.train.averaging import average_checkpoints

    if src_path is None:
        if exp_dir is None:
            raise MemsvError("give --exp-dir or --src-path")
        src_path = exp_dir / "models"
    if num is None:
        num = _num_avg(exp_dir)
    dst, epochs = average_checkpoints(src_path, dst_model, num=num, min_epoch=min_epoch, max_epoch=max_epoch)
    typer.echo(f"averaged {len(epochs)} checkpoint(s) (epochs {epochs[0]}-{epochs[-1]}) into {dst}")


def register(app: typer.Typer) -> None:
    app.command(name="train")(train_command)
    app.command(name="average-model")(average_model_command)
