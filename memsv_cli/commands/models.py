"""``memsv list-models``: the model zoo with parameter counts (what ``--model`` accepts)."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from memsv_cli.console import console as make_console

_TYPES = {
    "vanilla": "vanilla",
    "rev": "Type I (partially reversible)",
    "fullrev": "Type II (fully reversible)",
}


def list_models_command(
    feat_dim: int = typer.Option(80, "--feat-dim", help="Input fbank dimensions."),
    embed_dim: int = typer.Option(256, "--embed-dim", help="Embedding size."),
    base_width: int = typer.Option(32, "--base-width", help="Width of the first stage (32 = WeSpeaker)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout instead of a table."),
) -> None:
    """List every model name with its type and parameter count (classifier head excluded)."""
    import torch  # here, not at start-up: every memsv command registers at start-up

    from memsv_cli.models import list_models, model_summary

    rows = []
    with torch.device("meta"):  # counting only: no memory, no initialisation
        for name in list_models():
            rows.append(model_summary(name, feat_dim=feat_dim, embed_dim=embed_dim, base_width=base_width))
    if as_json:
        print(json.dumps({"models": rows}))
        return
    table = Table(title=f"memsv models (feat_dim {feat_dim}, embed_dim {embed_dim}, base_width {base_width})")
    for column in ("model", "type", "params (M)"):
        table.add_column(column, justify="right" if column.startswith("params") else "left")
    for row in rows:
        table.add_row(row["name"], _TYPES[row["variant"]], f"{row['params'] / 1e6:.2f}")
    make_console().print(table)


def register(app: typer.Typer) -> None:
    app.command(name="list-models")(list_models_command)
