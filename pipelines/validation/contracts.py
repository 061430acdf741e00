"""The checks of a suite that Great Expectations cannot express per partition, read from the suite's ``meta``.

A suite's ``meta`` may hold ``column_types``, ``references``, ``volume`` and ``drift`` (see docs/data.md, "Data
contracts"). They need more than the partition itself (the dimension tables of the day, the previous days'
row counts and values), so they run with the lake at hand and append their CheckResults to the GX report.

A source tunes the ``volume`` and ``drift`` thresholds of a table without editing the suite: ``mlctl ingest`` writes
a mapping's ``contracts:`` key to the lake as ``contracts/overrides.json``,
``{"<table>": {"volume": {...}, "drift": {..., "columns": [{"column": ..., ...}]}}}`` (keys as in the suite's
meta), and every validation merges it over the suite's meta (:func:`load_contract_overrides`,
:func:`apply_overrides`). ``<table>`` is the suite's name (``order_risk``) or the lake table's
(``features/order_risk``).
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines.data.landed import OVERRIDES_KEY
from pipelines.lake import Lake
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
Overrides = dict[str, dict[str, dict[str, Any]]]  # table -> section (volume | drift) -> key -> value
# What a source may tune: the fields of each rule (the drift columns by name, one DriftColumn each).
TUNABLE: dict[str, dict[str, Any]] = {
    "volume": {f.name: f.default for f in dataclasses.fields(VolumeRule)},
    "drift": {f.name: f.default for f in dataclasses.fields(DriftRule) if f.name != "columns"},
}
TUNABLE_COLUMN = {f.name: f.default for f in dataclasses.fields(DriftColumn) if f.name not in ("column", "kind")}


class ContractOverrideError(SuiteError):
    """``contracts/overrides.json`` names a section, key or drift column that the table's contract does not have."""


def load_contract_overrides(lake: Lake) -> Overrides:
    """The per-table volume/drift overrides of the source (``contracts/overrides.json``); ``{}`` when none.

    Only the shape is checked here; each table's keys are checked against its suite by :func:`apply_overrides`.
    """
    raw = lake.read_json(OVERRIDES_KEY)
    if raw is None:
        return {}
    where = lake.uri(OVERRIDES_KEY)
    if not isinstance(raw, dict):
        raise ContractOverrideError(f"{where}: expected {{table: {{volume: {{...}}, drift: {{...}}}}}}, got {raw!r}")
    for table, sections in raw.items():
        if not isinstance(sections, dict) or not all(isinstance(v, dict) for v in sections.values()):
            raise ContractOverrideError(
                f"{where}: table {table!r}: expected {{volume: {{...}}, drift: {{...}}}}, got {sections!r}; "
                "fix the mapping's 'contracts:' key and ingest again"
            )
    return raw


def apply_overrides(meta: dict[str, Any], overrides: Overrides, table: str) -> dict[str, Any]:
    """A copy of a suite's ``meta`` with ``overrides[table]`` merged into its ``volume`` and ``drift`` sections.

    Keys not named keep the suite's value. An unknown section, key or drift column, a section the suite does
    not declare, or a value of the wrong type raises :class:`ContractOverrideError` naming the table and key.
    """
    out = copy.deepcopy(meta)
    for section, keys in (overrides.get(table) or {}).items():
        where = f"{OVERRIDES_KEY}: {table}.{section}"
        if section not in TUNABLE:
            raise ContractOverrideError(f"{where}: not a contract section; a source can tune {' and '.join(TUNABLE)}")
        base = out.get(section)
        if not base:
            raise ContractOverrideError(
                f"{where}: the suite of {table!r} declares no {section} contract to tune; remove the key from the "
                f"mapping's 'contracts:' or add meta.{section} to the suite"
            )
        for key, value in keys.items():
            if section == "drift" and key == "columns":
                base["columns"] = _merged_columns(base.get("columns") or [], value, f"{where}.columns")
                continue
            if key not in TUNABLE[section]:
                raise ContractOverrideError(
                    f"{where}.{key}: unknown key; the keys of a {section} contract are "
                    f"{', '.join(sorted([*TUNABLE[section], *(['columns'] if section == 'drift' else [])]))}"
                )
            base[key] = _typed(value, TUNABLE[section][key], f"{where}.{key}")
    return out


def _merged_columns(declared: list[dict[str, Any]], value: Any, where: str) -> list[dict[str, Any]]:
    by_name = {c.get("column"): dict(c) for c in declared}
    if not isinstance(value, list):
        raise ContractOverrideError(f"{where}: expected a list of {{column: NAME, threshold: ...}}, got {value!r}")
    for entry in value:
        name = entry.get("column") if isinstance(entry, dict) else None
        if name not in by_name:
            raise ContractOverrideError(
                f"{where}: {entry!r} names no drift column of the suite; its drift columns are "
                f"{', '.join(str(n) for n in by_name) or 'none'}"
            )
        for key, item in entry.items():
            if key == "column":
                continue
            if key not in TUNABLE_COLUMN:
                raise ContractOverrideError(
                    f"{where}.{name}.{key}: unknown key; a drift column can tune {', '.join(sorted(TUNABLE_COLUMN))}"
                )
            by_name[name][key] = _typed(item, TUNABLE_COLUMN[key], f"{where}.{name}.{key}")
    return list(by_name.values())


def _typed(value: Any, default: Any, where: str) -> Any:
    """``value`` if it has the type of the rule's default (text, or a number), else a ContractOverrideError."""
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ContractOverrideError(f"{where}: expected text (e.g. {default!r}), got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ContractOverrideError(f"{where}: expected a number >= 0 (e.g. {default!r}), got {value!r}")
    return value


def load_contract(
    expectations_dir: Path, suite: str, overrides: Overrides | None = None, table: str | None = None
) -> Contract:
    """Read the contract part of ``<expectations_dir>/<suite>.json``, with the source's ``overrides`` for the
    suite's name and then the lake table's name (``table``) merged in; malformed entries name file and key."""
    path = suite_path(expectations_dir, suite)
    if not path.is_file():
        raise SuiteError(f"{path}: no expectation suite {suite!r}")
    try:
        meta = json.loads(path.read_text()).get("meta") or {}
    except json.JSONDecodeError as exc:
        raise SuiteError(f"{path}: not valid JSON: {exc}") from exc
    for name in dict.fromkeys([suite, table or suite]):
        meta = apply_overrides(meta, overrides or {}, name)
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


def run_contract_checks(lake: Lake, table: str, ds: dt.date, df: pd.DataFrame, contract: Contract) -> list[CheckResult]:
    """All of a contract's checks on partition ``ds`` of lake table ``table`` (``lake`` reads its history)."""
    checks = check_column_types(df, contract)
    checks += check_references(lake, ds, df, contract.references)
    if contract.volume:
        checks.append(check_volume(lake, table, ds, len(df), contract.volume))
    if contract.drift:
        checks += check_drift(lake, table, ds, df, contract.drift)
    return checks


def validate_with_contract(
    lake: Lake, df: pd.DataFrame, table: str, ds: dt.date, expectations_dir: Path, suite: str | None = None
) -> ValidationReport:
    """The suite's GX expectations on ``df`` plus its contract checks against the lake's other partitions, with
    the source's contract overrides (``contracts/overrides.json``) applied."""
    report = validate_frame(df, table, ds, expectations_dir, suite=suite, zone=lake.day_zone)
    started = time.perf_counter()
    contract = load_contract(expectations_dir, suite or table, load_contract_overrides(lake), table)
    report.checks += run_contract_checks(lake, table, ds, df, contract)
    report.success = not report.critical_failures
    report.duration_seconds = round(report.duration_seconds + time.perf_counter() - started, 4)
    return report
