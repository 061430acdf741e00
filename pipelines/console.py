"""Terminal output shared by the CLI and the demo: progress bars and run tables."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

if TYPE_CHECKING:
    from pipelines.stack.supervisor import StackStatus
    from pipelines.training.readiness import Readiness


def progress_bar(out: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=out
    )


def runs_table(title: str, rows: list[tuple[str, str]], outcomes: list[str] | None = None) -> Table:
    """Runs by logical date with their state and, when given, each run's outcome in a line."""
    table = Table(title=title)
    table.add_column("logical date")
    table.add_column("state")
    if outcomes is not None:
        table.add_column("outcome")
    for i, (day, state) in enumerate(rows):
        colour = {"success": "green", "failed": "red", "rejected": "red"}.get(state, "yellow")
        cells = [day, f"[{colour}]{state}[/{colour}]"]
        if outcomes is not None:
            cells.append(escape(outcomes[i]))  # error messages hold [brackets] that are not markup
        table.add_row(*cells)
    return table


def stack_table(status: StackStatus) -> Table:
    table = Table(title=f"stack (pid {status.pid}, {status.memory_mb:.0f} MB resident, logs in {status.logs})")
    table.add_column("service")
    table.add_column("health")
    table.add_column("url")
    for service in status.services:
        health = "[green]healthy[/green]" if service.healthy else f"[red]{service.detail}[/red]"
        table.add_row(service.name, health, service.url)
    return table


def validation_table(summary: dict) -> Table:
    """Per table: validated days passed / with warnings / critical, and partitions still in quarantine."""
    days = summary.get("days") or []
    span = f"{days[0]} .. {days[-1]}" if days else "no validated days"
    table = Table(title=f"data contracts ({span})")
    for column in ("table", "passed", "warnings", "critical", "quarantined"):
        table.add_column(column)
    for name, row in summary.get("tables", {}).items():
        warn = f"[yellow]{row['warnings']}[/yellow] {' '.join(row['warnings_days'])}" if row["warnings"] else "0"
        crit = f"[red]{row['critical']}[/red] {' '.join(row['critical_days'])}" if row["critical"] else "0"
        quarantined = f"[red]{', '.join(row['quarantined'])}[/red]" if row["quarantined"] else ""
        table.add_row(name, str(row["passed"]), warn, crit, quarantined)
    return table


def readiness_table(result: Readiness) -> Table:
    """`mlctl check`: each need of the spec, what the lake holds, and what to do about a gap."""
    table = Table(title=f"{result.model} for logical date {result.logical_date}")
    for column in ("needs", "spec", "lake", "", "what to do"):
        table.add_column(column)
    for need in result.needs:
        mark = "[green]ok[/green]" if need.ok else "[red]no[/red]"
        table.add_row(need.what, need.needed, need.found, mark, need.hint)
    return table


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def model_table(name: str, summary: dict) -> Table:
    """`mlctl status`: one model's champion, its main metric against the best achievable and the baseline, its
    approval record and what is waiting."""
    table = Table(title=name, show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value")
    champ = summary.get("champion")
    metric = summary.get("main_metric", "")
    if champ:
        table.add_row("champion", f"version {champ['version']}")
        against = [f"best achievable {_number(champ['best_achievable'])}" if champ.get("best_achievable") else ""]
        against.append(f"baseline {_number(champ['baseline'])}" if champ.get("baseline") is not None else "")
        context = ", ".join(a for a in against if a)
        table.add_row(metric, _number(champ.get("value")) + (f" ({context})" if context else ""))
        approved = f"{champ.get('approved_by') or '?'} at {champ.get('approved_at') or '?'}"
        table.add_row("approved by", approved + (f": {champ['comment']!r}" if champ.get("comment") else ""))
    else:
        table.add_row("champion", "[yellow]none[/yellow]")
    waiting = summary.get("waiting")
    table.add_row("waiting", escape(waiting) if waiting else "nothing")
    return table


def dag_runs_table(dags: dict[str, list[dict]]) -> Table:
    """`mlctl status`: the last runs of each DAG on one line, with the feature families a daily run skipped."""
    table = Table(title="last runs (newest first)")
    for column in ("DAG", "runs", "skipped families"):
        table.add_column(column)
    for dag_id, runs in dags.items():
        cells = []
        for r in runs:
            colour = {"success": "green", "failed": "red"}.get(r["state"], "yellow")
            cells.append(f"{r['logical_date'] or '(asset)'} [{colour}]{r['state']}[/{colour}]")
        skipped = sorted(
            {f"{family} ({r['logical_date']}: {why})" for r in runs for family, why in (r.get("skipped") or {}).items()}
        )
        table.add_row(dag_id, ", ".join(cells) or "no runs yet", escape("; ".join(skipped)))
    return table
