"""A mapping's ``contracts:`` key: per-table volume/drift thresholds for one source, checked against the suites.

The keys allowed are those the table's suite already declares in ``expectations/<table>.json`` (``meta.volume``,
``meta.drift``), with values of the same type, so a typo is refused at ingest instead of silently ignored by the
validation that applies the overrides (``contracts/overrides.json`` in the lake).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipelines.data.adapters.errors import MappingError
from pipelines.settings import PROJECT_ROOT

EXPECTATIONS_DIR = PROJECT_ROOT / "expectations"
SECTIONS = ("volume", "drift")
_SEVERITIES = ("critical", "warning", "info")


def check_contract_overrides(path: Path, contracts: dict[str, dict[str, dict[str, Any]]], suites: Path) -> None:
    """Raise MappingError naming the first key of ``contracts`` that its table's suite does not declare."""
    for table, sections in contracts.items():
        suite = _suite_meta(path, table, suites)
        for section, keys in sections.items():
            where = f"contracts.{table}.{section}"
            if section not in SECTIONS:
                raise MappingError(
                    path, f"key 'contracts.{table}.{section}': not a contract section", "use volume or drift"
                )
            declared = suite.get(section)
            if not declared:
                raise MappingError(
                    path,
                    f"key '{where}': expectations/{table}.json declares no {section} contract to tune",
                    f"remove it, or add meta.{section} to expectations/{table}.json",
                )
            for key, value in keys.items():
                if key == "columns" and section == "drift":
                    _check_drift_columns(path, where, value, declared.get("columns") or [])
                    continue
                _check_value(path, f"{where}.{key}", value, declared)


def _suite_meta(path: Path, table: str, suites: Path) -> dict[str, Any]:
    suite = suites / f"{table}.json"
    if not suite.is_file():
        known = ", ".join(sorted(p.stem for p in suites.glob("*.json")))
        raise MappingError(path, f"key 'contracts.{table}': no expectation suite of that name", f"use one of {known}")
    return json.loads(suite.read_text()).get("meta") or {}


def _check_value(path: Path, key: str, value: Any, declared: dict[str, Any]) -> None:
    name = key.rsplit(".", 1)[-1]
    if name not in declared:
        allowed = ", ".join(k for k in declared if k != "columns")
        raise MappingError(path, f"key '{key}': not a key of that contract", f"the keys allowed there are {allowed}")
    expected = declared[name]
    if isinstance(expected, str):
        if name.endswith("severity") and value not in _SEVERITIES:
            raise MappingError(
                path, f"key '{key}': {value!r} is not a severity", f"use one of {', '.join(_SEVERITIES)}"
            )
        if not isinstance(value, str):
            raise MappingError(path, f"key '{key}': expected text, got {value!r}", f"e.g. {name}: {expected}")
        return
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not number or (isinstance(expected, int) and not isinstance(expected, bool) and value != int(value)):
        kind = "a whole number" if isinstance(expected, int) else "a number"
        raise MappingError(path, f"key '{key}': expected {kind}, got {value!r}", f"e.g. {name}: {expected}")
    if value < 0:
        raise MappingError(path, f"key '{key}': {value} is negative", f"e.g. {name}: {expected}")


def _check_drift_columns(path: Path, where: str, value: Any, declared: list[dict[str, Any]]) -> None:
    by_name = {c["column"]: c for c in declared}
    if not isinstance(value, list):
        raise MappingError(
            path, f"key '{where}.columns': expected a list", "e.g. columns: [{column: price, threshold: 0.5}]"
        )
    for i, entry in enumerate(value):
        here = f"{where}.columns.{i}"
        if not isinstance(entry, dict) or entry.get("column") not in by_name:
            raise MappingError(
                path,
                f"key '{here}': expected {{column: NAME, ...}} naming a drift column of the suite",
                f"the drift columns are {', '.join(by_name) or 'none'}",
            )
        # A column's kind is what it is, not a threshold: only how it is judged can be tuned.
        tunable = {k: v for k, v in by_name[entry["column"]].items() if k not in ("column", "kind")}
        for key, item in entry.items():
            if key != "column":
                _check_value(path, f"{here}.{key}", item, tunable)
