"""How every ``octogate`` command reports a user error: one red line on stderr, no traceback, exit 1."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console

err_console = Console(stderr=True)


def out_console() -> Console:
    """Where a command prints its result: long lines (paths) are never wrapped into the middle of a value."""
    return Console(soft_wrap=True)


def fail(problem: object) -> NoReturn:
    """Print a user error (a bad file, option or input) without a traceback, and exit 1."""
    err_console.print(f"[bold red]error:[/] {problem}", highlight=False)
    raise typer.Exit(1) from None
