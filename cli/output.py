"""What every command prints through: the consoles, and the one way a command fails."""

from __future__ import annotations

import os
from typing import NoReturn

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True, soft_wrap=True)  # error lines stay whole for grep and logs


def print_error(message: str) -> None:
    err_console.print(f"[red]error:[/red] {message}")


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one line saying what went wrong, and exit with `code` (1: it failed; 2: the arguments are wrong)."""
    print_error(message)
    raise typer.Exit(code)


def quiet_progress_bars() -> None:
    """Services log JSON lines only: no tqdm bars (sentence-transformers draws some while saving a model).
    tqdm reads TQDM_DISABLE when it is imported, so this runs before the ML imports."""
    os.environ.setdefault("TQDM_DISABLE", "1")
