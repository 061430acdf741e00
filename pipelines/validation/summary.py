"""A summary of the validation reports kept with the partitions, for `mlctl status`."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pyarrow.fs as pafs

from pipelines.lake import Lake, as_date
from pipelines.validation.daily import DAILY_TABLES

# Every feature table whose family validates it before publishing (pipelines/features/*): a warning there (e.g. a
# volume collapse after a burst, a warning since it is derived) shows in `mlctl status` like a raw table's.
FEATURE_TABLES = (
    "features/user_behavior",
    "features/order_risk",
    "features/product_stats",
    "features/user_category",
    "features/user_product",
    "features/user_candidates",
)


def validation_summary(lake: Lake, days: int = 7, tables: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Per table, over the latest ``days`` validated days: passed / warnings / critical counts, the days with
    warnings or critical failures, and the partitions still in quarantine (not published again since)."""
    tables = tables or (*DAILY_TABLES, *FEATURE_TABLES)
    reported = {table: _days_under(lake, f"validation/{table}") for table in tables}
    latest = sorted({d for found in reported.values() for d in found})[-days:]
    summary: dict[str, Any] = {"days": [d.isoformat() for d in latest], "tables": {}}
    for table in tables:
        counts = {"passed": 0, "warnings": 0, "critical": 0}
        flagged: dict[str, list[str]] = {"warnings": [], "critical": []}
        for day in (d for d in latest if d in reported[table]):
            report = lake.read_json(f"validation/{table}/ds={day.isoformat()}/report.json") or {}
            failed = [c for c in report.get("checks", []) if not c.get("success")]
            if not report.get("success", False):
                outcome = "critical"
            elif failed:
                outcome = "warnings"
            else:
                outcome = "passed"
            counts[outcome] += 1
            if outcome != "passed":
                flagged[outcome].append(day.isoformat())
        quarantined = [
            d.isoformat()
            for d in _days_under(lake, f"quarantine/{table}")
            if lake.is_quarantined(table, d) and not lake.exists(table, d)
        ]
        if any(counts.values()) or quarantined:
            summary["tables"][table] = {
                **counts,
                **{f"{k}_days": v for k, v in flagged.items()},
                "quarantined": quarantined,
            }
    return summary


def _days_under(lake: Lake, prefix: str) -> list[dt.date]:
    """Days ``ds=...`` found directly under ``<lake>/<prefix>``, sorted."""
    selector = pafs.FileSelector(f"{lake.root}/{prefix}", allow_not_found=True)
    days = []
    for info in lake.fs.get_file_info(selector):
        if info.type == pafs.FileType.Directory and info.base_name.startswith("ds="):
            try:
                days.append(as_date(info.base_name[3:]))
            except ValueError:
                continue
    return sorted(days)
