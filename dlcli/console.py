"""The stderr console: progress, notices, warnings. stdout is for results only."""

from rich.console import Console

# soft_wrap: a message stays one line (the terminal wraps it; a log or grep sees it whole)
console = Console(stderr=True, highlight=False, soft_wrap=True)


def notice(message: str) -> None:
    console.print(f"[dim]{message}[/dim]")


def warn(message: str) -> None:
    console.print(f"[yellow]warning:[/yellow] {message}")
