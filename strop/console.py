"""What every command shares: the two consoles, help examples, and errors shown as cause + fix."""

from __future__ import annotations

import functools
from collections.abc import Callable

import typer
from rich.console import Console
from rich.markup import escape

from strop.errors import StropError

err = Console(stderr=True)  # progress, events, errors
out = Console()  # answers and machine-readable output


def examples(*lines: str) -> str:
    """A command's help epilog; blank lines keep rich from joining the examples."""
    return "Examples:\n\n" + "\n\n".join(f"  {line}" for line in lines)


def friendly_errors(fn: Callable) -> Callable:
    """Print a StropError as cause + fix (no traceback) and exit non-zero."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except StropError as exc:
            err.print(f"[bold red]Error:[/] {escape(exc.message)}", highlight=False)
            if exc.fix:
                err.print(f"[bold]Fix:[/] {escape(exc.fix)}", highlight=False)
            if exc.detail:
                err.print(exc.detail, markup=False, highlight=False)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err.print("[yellow]Interrupted.[/]")
            raise typer.Exit(130) from None

    return wrapper
