"""Terminal output shared by the CLI and the demo: progress bars and run tables."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table


def progress_bar(out: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=out
    )


def runs_table(title: str, rows: list[tuple[str, str]]) -> Table:
    table = Table(title=title)
    table.add_column("logical date")
    table.add_column("state")
    for day, state in rows:
        colour = {"success": "green", "failed": "red"}.get(state, "yellow")
        table.add_row(day, f"[{colour}]{state}[/{colour}]")
    return table
