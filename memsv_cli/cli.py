"""The ``memsv`` command line: one sub-command per recipe stage.

Each stage lives in ``memsv_cli/commands/<stage>.py`` as a thin Typer adapter with a ``register(app)``
function; the work itself is one library function per stage. A stage is listed here only once it works.
"""

from __future__ import annotations

import importlib
import sys

import typer

from memsv_cli.errors import MemsvError

# Order is the order of the recipe; each module registers its command(s) on the app.
COMMAND_MODULES: tuple[str, ...] = (
    "data",
    "augment",
    "train",
    "embed",
    "score",
    "profile",
    "models",
)

app = typer.Typer(
    name="memsv",
    help="Memory-efficient speaker-embedding training and evaluation, Kaldi/WeSpeaker recipe style.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

for _name in COMMAND_MODULES:
    importlib.import_module(f"memsv_cli.commands.{_name}").register(app)


@app.callback()
def _root() -> None:
    """memsv: reversible ResNets/DF-ResNets and 8-bit optimizers for speaker verification."""


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: runs the app and turns :class:`MemsvError` into a one-line error."""
    command = next((a for a in (argv if argv is not None else sys.argv[1:]) if not a.startswith("-")), "")
    try:
        app(args=argv, prog_name="memsv", standalone_mode=False)
    except MemsvError as err:
        print(f"memsv {command}: error: {err}".replace("memsv : ", "memsv: "), file=sys.stderr)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        print(f"memsv {command}: interrupted", file=sys.stderr)
        sys.exit(130)
    except (typer.Exit, SystemExit) as exit_:
        code = getattr(exit_, "exit_code", getattr(exit_, "code", 0))
        sys.exit(code or 0)
    except Exception as err:  # click usage errors
        try:  # typer >= 0.2x vendors click as typer._click (click itself may not be installed)
            from typer import _click as click
        except ImportError:
            import click

        if isinstance(err, click.exceptions.ClickException):
            err.show()
            sys.exit(err.exit_code)
        if isinstance(err, click.exceptions.Abort):
            sys.exit(1)
        raise
