"""Volume anomalies: a partition's row count against the previous days' (median +- k * MAD, and collapses)."""

from __future__ import annotations

import datetime as dt
import statistics

from pipelines.lake import Lake
from pipelines.validation.report import CheckResult, report_key

# MAD * 1.4826 estimates the standard deviation of normal data.
MAD_TO_SIGMA = 1.4826
NO_REFERENCE = "no reference yet"


def history_counts(lake: Lake, table: str, ds: dt.date, window_days: int) -> dict[str, int]:
    """Row counts of the previous ``window_days`` partitions that were published and not quarantined.

    A validated day's count comes from its report; otherwise from the parquet footer (no data read either way).
    """
    counts: dict[str, int] = {}
    for i in range(1, window_days + 1):
        day = ds - dt.timedelta(days=i)
        report = lake.read_json(report_key(table, day))
        if report is not None and report.get("success") and lake.exists(table, day):
            counts[day.isoformat()] = int(report["n_rows"])
        elif report is None and lake.exists(table, day):
            counts[day.isoformat()] = lake.row_count(table, day)
    return counts


def check_volume(lake: Lake, table: str, ds: dt.date, n_rows: int, rule) -> CheckResult:
    counts = history_counts(lake, table, ds, rule.window_days)
    result = CheckResult(
        expectation="expect_table_row_count_to_match_history",
        column=None,
        success=True,
        severity=rule.severity,
        observed=n_rows,
        expected={
            "window_days": rule.window_days,
            "mad_k": rule.mad_k,
            "min_relative_change": rule.min_relative_change,
            "collapse_drop": rule.collapse_drop,
            "collapse_severity": rule.collapse_severity,
        },
    )
    if len(counts) < rule.min_history:
        result.note = f"{NO_REFERENCE}: {len(counts)} previous day(s) of {table}, {rule.min_history} needed"
        return result
    return judge_volume(n_rows, list(counts.values()), rule, result)


def judge_volume(n_rows: int, history: list[int], rule, result: CheckResult) -> CheckResult:
    """Fill ``result`` with the verdict on ``n_rows`` given the previous days' counts."""
    median = statistics.median(history)
    mad = statistics.median(abs(c - median) for c in history)
    band = rule.mad_k * MAD_TO_SIGMA * mad
    low, high = median - band, median + band
    change = (n_rows - median) / median if median else (0.0 if n_rows == 0 else float("inf"))
    result.expected = {
        **result.expected,
        "median": median,
        "band": [round(max(low, 0.0), 1), round(high, 1)],
        "history_days": len(history),
    }
    result.observed = {"rows": n_rows, "change_vs_median": round(change, 4)}
    if median > 0 and (n_rows == 0 or n_rows < (1 - rule.collapse_drop) * median):
        result.success = False
        result.severity = rule.collapse_severity
        result.note = f"collapse: {n_rows} rows against a median of {median:g} (drop > {rule.collapse_drop:.0%})"
    elif not low <= n_rows <= high and abs(change) > rule.min_relative_change:
        result.success = False
        result.note = f"{n_rows} rows is outside {low:.0f}..{high:.0f} ({change:+.0%} vs median {median:g})"
    return result
