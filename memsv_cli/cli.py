"""The ``memsv`` command line: one sub-command per recipe stage.

Each stage lives in ``memsv_cli/commands/<stage>.py`` as a thin Typer adapter with a ``register(app)``
function; the work itself is one library function per stage. A stage is listed here only once it works.
"""

from __future__ import annotations

import functools
import importlib
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import typer

from memsv_cli.errors import MemsvError, os_error_message

# Order is the order of the recipe; each module registers its command(s) on the app.
COMMAND_MODULES: tuple[str, ...] = (
    "data",
    "augment",
    "train",
    "embed",
    "score",
    "deploy",
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


class _Interrupted(Exception):
    """A KeyboardInterrupt that escaped a command, carried past typer/click to :func:`main`.

    An ``Exception``, not a KeyboardInterrupt: typer/click catch the latter and turn it into ``Exit(130)``
    (returned, not raised, with ``standalone_mode=False``) or ``Abort``, depending on the version, and
    then it no longer differs from a command that stopped itself with ``typer.Exit(130)`` after printing
    its own line (``memsv train`` after a graceful Ctrl-C stop).
    """


def _report_interrupts(callback: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a command so that Ctrl-C inside it reaches :func:`main` as :class:`_Interrupted`.

    Clean-up inside the command (``finally``, ``except BaseException``) still sees the KeyboardInterrupt.
    ``functools.wraps`` keeps the signature, annotations and docstring typer builds the command from.
    """

    @functools.wraps(callback)
    def command(*args: Any, **kwargs: Any) -> Any:
        try:
            return callback(*args, **kwargs)
        except KeyboardInterrupt as err:
            raise _Interrupted() from err

    return command


for _info in app.registered_commands:
    if _info.callback is not None:
        _info.callback = _report_interrupts(_info.callback)


@app.callback()
def _root() -> None:
    """memsv: reversible ResNets/DF-ResNets and 8-bit optimizers for speaker verification."""


def _is_a(err: BaseException, class_name: str) -> bool:
    """``isinstance`` by class name: click's and typer's exception classes move between versions."""
    return any(cls.__name__ == class_name for cls in type(err).__mro__)


def _exit_interrupted(prefix: str) -> NoReturn:
    print(f"{prefix}: interrupted", file=sys.stderr)
    sys.exit(130)


def _exit_click(err: Exception, prefix: str) -> None:
    """Exit for click's/typer's own exceptions (usage errors, Exit, Abort); return for anything else.

    Duck-typed by class name and ``getattr``: typer >= 0.2x vendors click as ``typer._click`` (with
    ``Exit``/``Abort`` in ``typer.exceptions``), older versions use click itself.
    """
    if _is_a(err, "Exit"):
        sys.exit(getattr(err, "exit_code", 0))
    if _is_a(err, "Abort"):  # click < 8.2-style typer: Ctrl-C (or EOF at a prompt) becomes Abort
        if isinstance(err.__cause__ or err.__context__, KeyboardInterrupt):
            _exit_interrupted(prefix)
        print(f"{prefix}: aborted", file=sys.stderr)
        sys.exit(1)
    if _is_a(err, "ClickException") and callable(getattr(err, "show", None)):
        err.show()
        sys.exit(getattr(err, "exit_code", 1))


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: returns on success, else exits (``sys.exit``) after at most one line:

    * :class:`MemsvError` -> ``memsv <command>: error: <message>``, its exit code (1);
    * ``OSError`` anywhere (disk full, permission denied, a file where a directory belongs) ->
      ``memsv <command>: error: <path>: <problem>``, 1;
    * Ctrl-C (a KeyboardInterrupt out of the command, see :class:`_Interrupted`; or click < 8.2's
      ``Abort`` chained to one) -> ``memsv <command>: interrupted``, 130;
    * ``typer.Exit(n)`` -> status ``n``, silently: the command has said what it had to. With
      ``standalone_mode=False`` typer/click *return* its code instead of raising, and the old ``main()``
      dropped it: Ctrl-C (typer's ``Exit(130)``) exited 0 without a word;
    * click usage errors as click shows them (exit 2); anything else keeps its traceback (a bug).
    """
    args = list(argv) if argv is not None else sys.argv[1:]
    command = next((a for a in args if not a.startswith("-")), "")
    prefix = f"memsv {command}" if command else "memsv"
    try:
        status = app(args=args, prog_name="memsv", standalone_mode=False)
    except MemsvError as err:
        print(f"{prefix}: error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except OSError as err:
        print(f"{prefix}: error: {os_error_message(err)}", file=sys.stderr)
        sys.exit(1)
    except (_Interrupted, KeyboardInterrupt):
        _exit_interrupted(prefix)
    except Exception as err:
        _exit_click(err, prefix)
        raise
    # Non-standalone typer/click return an Exit's code (a Ctrl-C outside any command, e.g. while parsing,
    # comes back as a silent 130); on success the command's own return value (None), and tests rely on
    # main() returning then.
    if isinstance(status, int) and not isinstance(status, bool) and status != 0:
        sys.exit(status)
