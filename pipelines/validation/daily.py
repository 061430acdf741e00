"""Validate every table of a day, dimensions before the facts whose keys they hold."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from pipelines.lake import Lake, as_date
from pipelines.validation.quarantine import ValidationFailed, validate_partition

# Dependency order: a table comes after every table its references point to (see the suites' meta.references).
DAILY_TABLES = ("merchants", "users", "products", "follows", "events", "orders", "order_labels")
# The chain cannot run without these; the others are validated when the day has them.
REQUIRED_TABLES = ("events",)


def validate_day(lake: Lake, ds: dt.date | str, expectations_dir: Path) -> dict[str, dict[str, Any]]:
    """Validate each table of ``DAILY_TABLES`` that has a partition for ``ds``, in order.

    Stops at the first critical failure (that partition is quarantined, :class:`ValidationFailed` raised, the
    tables after it are left unvalidated); warnings are returned per table.
    """
    day = as_date(ds)
    results: dict[str, dict[str, Any]] = {}
    for table in DAILY_TABLES:
        if table not in REQUIRED_TABLES and not lake.exists(table, day):
            continue
        try:
            report = validate_partition(lake, table, day, expectations_dir)
        except ValidationFailed as exc:
            skipped = [t for t in DAILY_TABLES[DAILY_TABLES.index(table) + 1 :] if lake.exists(t, day)]
            if skipped:
                exc.args = (f"{exc.args[0]}\n  not validated because of this failure: {', '.join(skipped)}",)
            raise
        results[table] = {
            "rows": report.n_rows,
            "checks": len(report.checks),
            "warnings": [f"{c.target}: {c.expectation}: {c.describe()}" for c in report.warnings],
        }
    return results
