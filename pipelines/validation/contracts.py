"""The checks of a suite that Great Expectations cannot express per partition, read from the suite's ``meta``.

A suite's ``meta`` may hold ``column_types``, ``references``, ``volume`` and ``drift`` (see docs/data.md, "Data
contracts"). They need more than the partition itself (the dimension tables of the day, the previous days'
row counts and values), so they run with the lake at hand and append their CheckResults to the GX report.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines.validation.drift import check_drift
from pipelines.validation.referential import check_references
from pipelines.validation.report import CheckResult, ValidationReport
from pipelines.validation.runner import validate_frame
from pipelines.validation.suites import SEVERITIES, SuiteError, suite_path
from pipelines.validation.volume import check_volume


@dataclass(frozen=True)
class Reference:
    """``column`` of this table must hold keys of ``table.key`` (the dimension partition of the same day)."""

    column: str
    table: str
    key: str
    severity: str = "critical"
    # Keys may come from the previous ``window_days`` partitions too (labels of orders placed days before).
    window_days: int = 0
    max_orphan_fraction: float = 0.0


@dataclass(frozen=True)
class VolumeRule:
    """Today's row count against the previous ``window_days`` partitions: median +- ``mad_k`` * MAD."""

    window_days: int = 14
    min_history: int = 3
    mad_k: float = 5.0
    # Both must be exceeded: a robust outlier AND a relative change a human would care about.
    min_relative_change: float = 0.3
    severity: str = "warning"
    # A drop of more than this fraction (or zero rows) is a collapse, not an anomaly.
    collapse_drop: float = 0.9
    collapse_severity: str = "critical"


@dataclass(frozen=True)
class DriftColumn:
    column: str
    kind: str  # numeric | categorical
    method: str = "psi"  # psi | ks (numeric only)
    threshold: float = 0.25
    severity: str = "warning"


@dataclass(frozen=True)
class DriftRule:
    """Distribution of key columns against the previous ``window_days`` partitions."""

    columns: tuple[DriftColumn, ...]
    window_days: int = 7
    min_history: int = 1
    min_rows: int = 100
    bins: int = 10


@dataclass(frozen=True)
class Contract:
    """Everything a suite asks beyond its GX expectations."""

    table: str
    path: Path
    column_types: dict[str, str] = field(default_factory=dict)
    column_types_severity: str = "critical"
    references: tuple[Reference, ...] = ()
    volume: VolumeRule | None = None
    drift: DriftRule | None = None


COLUMN_KINDS = ("string", "int", "float", "bool", "timestamp")


def load_contract(expectations_dir: Path, suite: str) -> Contract:
    """Read the contract part of ``<expectations_dir>/<suite>.json``; malformed entries name file and key."""
    path = suite_path(expectations_dir, suite)
    if not path.is_file():
        raise SuiteError(f"{path}: no expectation suite {suite!r}")
    try:
        meta = json.loads(path.read_text()).get("meta") or {}
    except json.JSONDecodeError as exc:
        raise SuiteError(f"{path}: not valid JSON: {exc}") from exc
    where = f"{path}: meta"
    types = dict(meta.get("column_types") or {})
    for column, kind in types.items():
        if kind not in COLUMN_KINDS:
            raise SuiteError(f"{where}.column_types.{column}: {kind!r} is not one of {', '.join(COLUMN_KINDS)}")
    try:
        references = tuple(Reference(**_checked(r, f"{where}.references")) for r in meta.get("references") or [])
        volume = VolumeRule(**_checked(meta["volume"], f"{where}.volume")) if meta.get("volume") else None
        drift = None
        if meta.get("drift"):
            raw = dict(meta["drift"])
            columns = tuple(DriftColumn(**_checked(c, f"{where}.drift.columns")) for c in raw.pop("columns", []))
            drift = DriftRule(columns=columns, **raw)
    except TypeError as exc:  # an unknown or missing key in one of the dataclasses above
        raise SuiteError(f"{where}: {exc}") from exc
    for col in drift.columns if drift else ():
        if col.kind not in ("numeric", "categorical") or col.method not in ("psi", "ks"):
            raise SuiteError(f"{where}.drift.columns.{col.column}: kind numeric|categorical, method psi|ks")
        if col.method == "ks" and col.kind != "numeric":
            raise SuiteError(f"{where}.drift.columns.{col.column}: ks applies to numeric columns only")
    return Contract(
        table=suite,
        path=path,
        column_types=types,
        column_types_severity=str(meta.get("column_types_severity", "critical")),
        references=references,
        volume=volume,
        drift=drift,
    )


def _checked(entry: Any, where: str) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise SuiteError(f"{where}: expected an object, got {entry!r}")
    for key in ("severity", "collapse_severity"):
        if key in entry and entry[key] not in SEVERITIES:
            raise SuiteError(f"{where}: {key} {entry[key]!r} is not one of {', '.join(SEVERITIES)}")
    return entry


def check_column_types(df: pd.DataFrame, contract: Contract) -> list[CheckResult]:
    """One check: every declared column present in ``df`` has a dtype of its kind (missing columns are GX's)."""
    if not contract.column_types:
        return []
    wrong = {
        column: str(df[column].dtype)
        for column, kind in contract.column_types.items()
        if column in df.columns and not _is_kind(df[column], kind)
    }
    return [
        CheckResult(
            expectation="expect_column_types_to_match_contract",
            column=None,
            success=not wrong,
            severity=contract.column_types_severity,
            observed={"mismatched": wrong} if wrong else None,
            expected={"column_types": {c: contract.column_types[c] for c in wrong} or contract.column_types},
        )
    ]


def _is_kind(series: pd.Series, kind: str) -> bool:
    dtype = series.dtype
    if kind == "int":
        return pd.api.types.is_integer_dtype(dtype)
    if kind == "float":
        return pd.api.types.is_float_dtype(dtype) or pd.api.types.is_integer_dtype(dtype)
    if kind == "bool":
        return pd.api.types.is_bool_dtype(dtype)
    if kind == "timestamp":
        # Naive timestamps are refused: the lake's convention is UTC, and a naive time is ambiguous.
        return isinstance(dtype, pd.DatetimeTZDtype) and str(dtype.tz) == "UTC"
    if kind == "string":
        if pd.api.types.is_string_dtype(dtype) and not pd.api.types.is_object_dtype(dtype):
            return True
        if not pd.api.types.is_object_dtype(dtype):
            return False
        values = series.dropna()
        return bool(values.map(type).eq(str).all()) if len(values) else True
    return False


def run_contract_checks(lake, table: str, ds: dt.date, df: pd.DataFrame, contract: Contract) -> list[CheckResult]:
    """All of a contract's checks on partition ``ds`` of lake table ``table`` (``lake`` reads its history)."""
    checks = check_column_types(df, contract)
    checks += check_references(lake, ds, df, contract.references)
    if contract.volume:
        checks.append(check_volume(lake, table, ds, len(df), contract.volume))
    if contract.drift:
        checks += check_drift(lake, table, ds, df, contract.drift)
    return checks


def validate_with_contract(
    lake, df: pd.DataFrame, table: str, ds: dt.date, expectations_dir: Path, suite: str | None = None
) -> ValidationReport:
    """The suite's GX expectations on ``df`` plus its contract checks against the lake's other partitions."""
    report = validate_frame(df, table, ds, expectations_dir, suite=suite)
    started = time.perf_counter()
    report.checks += run_contract_checks(lake, table, ds, df, load_contract(expectations_dir, suite or table))
    report.success = not report.critical_failures
    report.duration_seconds = round(report.duration_seconds + time.perf_counter() - started, 4)
    return report
