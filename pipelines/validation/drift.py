"""Distribution drift of key columns against a reference window of the previous days' partitions.

PSI (population stability index) for numeric columns (deciles of the reference) and categorical ones, or the
two-sample Kolmogorov-Smirnov statistic for numeric columns. Rules of thumb for PSI: < 0.1 stable, 0.1-0.25
moderate shift, > 0.25 a significant one.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from pipelines.lake import Lake
from pipelines.validation.report import CheckResult

NO_REFERENCE = "no reference yet"
# Empty bins would make PSI infinite: they get this share instead.
EPSILON = 1e-4


def psi_numeric(current: np.ndarray, reference: np.ndarray, bins: int = 10) -> float:
    """PSI over the reference's quantile bins (open-ended outer bins, so new extremes are counted)."""
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))
    ref_share = np.bincount(np.searchsorted(edges, reference, side="right"), minlength=len(edges) + 1)
    cur_share = np.bincount(np.searchsorted(edges, current, side="right"), minlength=len(edges) + 1)
    return _psi(cur_share / len(current), ref_share / len(reference))


def psi_categorical(current: pd.Series, reference: pd.Series) -> float:
    """PSI over the union of categories (nulls are a category of their own)."""
    cur = current.fillna("<null>").astype(str).value_counts(normalize=True)
    ref = reference.fillna("<null>").astype(str).value_counts(normalize=True)
    cats = cur.index.union(ref.index)
    return _psi(cur.reindex(cats, fill_value=0).to_numpy(), ref.reindex(cats, fill_value=0).to_numpy())


def ks_statistic(current: np.ndarray, reference: np.ndarray) -> float:
    """Largest distance between the two empirical CDFs."""
    grid = np.sort(np.concatenate([current, reference]))
    cdf_cur = np.searchsorted(np.sort(current), grid, side="right") / len(current)
    cdf_ref = np.searchsorted(np.sort(reference), grid, side="right") / len(reference)
    return float(np.max(np.abs(cdf_cur - cdf_ref)))


def _psi(cur: np.ndarray, ref: np.ndarray) -> float:
    cur, ref = np.clip(cur, EPSILON, None), np.clip(ref, EPSILON, None)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def reference_days(lake: Lake, table: str, ds: dt.date, window_days: int) -> list[dt.date]:
    """Previous days of ``table`` still published (quarantined days are not in the table any more)."""
    days = [ds - dt.timedelta(days=i) for i in range(1, window_days + 1)]
    return [d for d in days if lake.exists(table, d)]


def check_drift(lake: Lake, table: str, ds: dt.date, df: pd.DataFrame, rule) -> list[CheckResult]:
    """One check per drift column; without enough history or rows each passes with a note saying why."""
    columns = [c.column for c in rule.columns if c.column in df.columns]
    days = reference_days(lake, table, ds, rule.window_days)
    reference = pd.DataFrame()
    if len(days) >= rule.min_history and len(df) >= rule.min_rows and columns:
        reference = pd.concat([lake.read(table, day, columns=columns) for day in days], ignore_index=True)
    checks = []
    for col in rule.columns:
        result = CheckResult(
            expectation=f"expect_column_distribution_to_match_reference_{col.method}",
            column=col.column,
            success=True,
            severity=col.severity,
            expected={"threshold": col.threshold, "window_days": rule.window_days, "kind": col.kind},
        )
        if col.column not in df.columns:
            result.note = "column absent (reported by the column set check)"
        elif len(days) < rule.min_history:
            result.note = f"{NO_REFERENCE}: {len(days)} previous day(s) of {table}, {rule.min_history} needed"
        elif len(df) < rule.min_rows:
            result.note = f"too few rows to judge drift ({len(df)} < {rule.min_rows})"
        else:
            _judge(result, df[col.column], reference[col.column], col, rule.bins, days)
        checks.append(result)
    return checks


def _judge(result: CheckResult, current: pd.Series, reference: pd.Series, col, bins: int, days) -> None:
    if col.kind == "numeric":
        cur = pd.to_numeric(current, errors="coerce").dropna().to_numpy(dtype=float)
        ref = pd.to_numeric(reference, errors="coerce").dropna().to_numpy(dtype=float)
        if len(cur) == 0 or len(ref) == 0:
            result.note = "no numeric values to compare"
            return
        score = ks_statistic(cur, ref) if col.method == "ks" else psi_numeric(cur, ref, bins)
        summary = {"median": float(np.median(cur)), "reference_median": float(np.median(ref))}
    else:
        score = psi_categorical(current, reference)
        top = current.astype(str).value_counts(normalize=True).head(3).round(4).to_dict()
        summary = {"top_shares": top}
    result.success = score <= col.threshold
    result.observed = {
        col.method: round(score, 4),
        **summary,
        "reference": f"{len(days)} day(s) {days[-1].isoformat()}..{days[0].isoformat()}",
    }
    if not result.success:
        result.note = f"{col.method.upper()} {score:.3f} > {col.threshold}"
