"""Referential checks: a fact's foreign keys must exist in the dimension partition of the same day."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

import pandas as pd

from pipelines.lake import Lake
from pipelines.validation.report import CheckResult, json_safe

N_EXAMPLES = 5
# When the dimension has no partition for the day (a fact ingested alone), the latest one this recent is used.
FALLBACK_DAYS = 7


def check_references(lake: Lake, ds: dt.date, df: pd.DataFrame, references: Iterable) -> list[CheckResult]:
    return [check_reference(lake, ds, df, ref) for ref in references]


def check_reference(lake: Lake, ds: dt.date, df: pd.DataFrame, ref) -> CheckResult:
    """Values of ``ref.column`` missing from ``ref.table.ref.key``; nulls are the null checks' business."""
    result = CheckResult(
        expectation="expect_column_values_to_exist_in_table",
        column=ref.column,
        success=True,
        severity=ref.severity,
        expected={"table": ref.table, "key": ref.key, "max_orphan_fraction": ref.max_orphan_fraction},
    )
    if ref.column not in df.columns:
        result.note = "column absent (reported by the column set check)"
        return result
    if ref.window_days and not _window_covered(lake, ds, ref):
        result.note = (
            f"no reference yet: {ref.table} does not cover the {ref.window_days} days before ds={ds.isoformat()}"
        )
        return result
    keys, source = _keys(lake, ds, ref)
    if keys is None:
        result.note = f"no {ref.table} partition on or before ds={ds.isoformat()}: not checked"
        return result
    values = df[ref.column].dropna()
    orphans = values[~values.isin(keys)]
    fraction = len(orphans) / len(values) if len(values) else 0.0
    result.success = fraction <= ref.max_orphan_fraction
    result.unexpected_count = len(orphans)
    result.unexpected_percent = round(100 * fraction, 4)
    result.examples = json_safe(pd.unique(orphans)[:N_EXAMPLES].tolist())
    result.observed = {"reference": source, "orphan_keys": int(orphans.nunique())}
    return result


def _keys(lake: Lake, ds: dt.date, ref) -> tuple[pd.Series | None, str | None]:
    """The reference keys and a description of where they came from, or (None, None) if there are none."""
    days = [ds - dt.timedelta(days=i) for i in range(ref.window_days + 1)]
    present = [d for d in days if lake.exists(ref.table, d)]
    if not present:
        fallback = [ds - dt.timedelta(days=i) for i in range(1, FALLBACK_DAYS + 1)]
        present = next(([d] for d in fallback if lake.exists(ref.table, d)), [])
    if not present:
        return None, None
    keys = pd.concat([lake.read(ref.table, d, columns=[ref.key])[ref.key] for d in present], ignore_index=True)
    span = present[0].isoformat() if len(present) == 1 else f"{present[-1].isoformat()}..{present[0].isoformat()}"
    return keys.drop_duplicates(), f"{ref.table} ds={span}"


def _window_covered(lake: Lake, ds: dt.date, ref) -> bool:
    """Whether the referenced table's history reaches back over the whole window (labels of orders placed
    before the lake's first day would otherwise all look orphaned)."""
    days = lake.partitions(ref.table)
    return bool(days) and days[0] <= ds - dt.timedelta(days=ref.window_days)
