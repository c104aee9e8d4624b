"""The stderr console: progress, notices, warnings. stdout is for results only."""

from rich.console import Console

console = Console(stderr=True, highlight=False)


def notice(message: str) -> None:
    console.print(f"[dim]{message}[/dim]")


def warn(message: str) -> None:
    console.print(f"[yellow]warning:[/yellow] {message}")
