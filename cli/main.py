"""The `xling` command line: one Typer app over the launch, client and offline commands, one error-exit path."""

from __future__ import annotations

import sys
from typing import Annotated

import httpx
import typer

from xling.cli import client, launch, offline
from xling.cli.output import print_error

# No pretty tracebacks: a failing command prints one line saying what went wrong (`--debug` for the traceback).
cli = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="xling: multilingual search that tunes itself.",
)

_debug = False


@cli.callback()
def _options(
    debug: Annotated[bool, typer.Option("--debug", help="print the full traceback when a command fails")] = False,
) -> None:
    global _debug
    _debug = debug


def _one_line(exc: BaseException) -> str:
    """What went wrong and what to do, for the errors users meet; the exception itself otherwise."""
    if isinstance(exc, httpx.ConnectError):
        return f"cannot reach the xling service ({exc}); is `xling serve` running? Point --url or XLING_URL at it"
    if isinstance(exc, httpx.TimeoutException):
        return f"the xling service did not answer in time ({type(exc).__name__}); it may be busy, try again"
    if isinstance(exc, httpx.HTTPError):
        return f"talking to the xling service failed: {type(exc).__name__}: {exc}"
    return f"{type(exc).__name__}: {exc}"


cli.command()(launch.serve)
cli.command()(launch.worker)
cli.command("index")(client.index_file)
cli.command()(client.search)
cli.command()(offline.finetune)
cli.command()(offline.evaluate)
cli.command()(offline.experiment)
models_cli = typer.Typer(no_args_is_help=True, help="The model registry under DATA_DIR/models.")
models_cli.command("list")(offline.models_list)
models_cli.command("import-e5")(offline.models_import_e5)
cli.add_typer(models_cli, name="models")


def main() -> None:
    try:
        cli()
    except Exception as exc:  # the commands' own failures exit through typer.Exit with their message
        if _debug:
            raise
        print_error(f"{_one_line(exc)} (run with --debug for the traceback)")
        sys.exit(1)
