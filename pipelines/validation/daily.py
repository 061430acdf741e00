"""Validate every table a day has, dimensions before the facts whose keys they hold."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from pipelines.lake import Lake, PartitionNotFound, as_date
from pipelines.validation.quarantine import ValidationFailed, validate_partition

# Dependency order: a table comes after every table its references point to (see the suites' meta.references).
DAILY_TABLES = ("merchants", "users", "products", "follows", "events", "orders", "order_labels")


class NoTablesForDay(PartitionNotFound):
    """The day has a partition of none of the daily tables: nothing was ingested (or extracted) for it."""


def validate_day(lake: Lake, ds: dt.date | str, expectations_dir: Path) -> dict[str, dict[str, Any]]:
    """Validate each table of ``DAILY_TABLES`` that has a partition for ``ds``, in order; any subset will do (a
    behaviour log lands events, an orders file orders and labels, each with the dimensions it derives).

    Stops at the first critical failure (that partition is quarantined, :class:`ValidationFailed` raised, the
    tables after it are left unvalidated); warnings are returned per table. A day with none of the tables raises
    :class:`NoTablesForDay`.
    """
    day = as_date(ds)
    present = [table for table in DAILY_TABLES if lake.exists(table, day)]
    if not present:
        raise NoTablesForDay(
            f"ds={day.isoformat()}: the lake at {lake.uri()} holds no partition of any daily table "
            f"({', '.join(DAILY_TABLES)}) for that day; ingest the day first (`mlctl ingest`), or check that the "
            "run's date lies within the landed span (`mlctl status`)"
        )
    results: dict[str, dict[str, Any]] = {}
    for table in present:
        try:
            report = validate_partition(lake, table, day, expectations_dir)
        except ValidationFailed as exc:
            skipped = present[present.index(table) + 1 :]
            if skipped:
                exc.args = (f"{exc.args[0]}\n  not validated because of this failure: {', '.join(skipped)}",)
            raise
        results[table] = {
            "rows": report.n_rows,
            "checks": len(report.checks),
            "warnings": [f"{c.target}: {c.expectation}: {c.describe()}" for c in report.warnings],
        }
    return results
