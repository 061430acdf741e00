"""Load a table's expectation suite (``expectations/<table>.json``, GX 1.x format) and build it for GX.

Day-dependent bounds are GX suite parameters, ``{"$PARAMETER": "ds_start"}``: one JSON suite serves every
day, and the parameter values for a partition come from :func:`day_parameters`.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.data.schemas import as_of, day_start

if TYPE_CHECKING:
    import great_expectations as gx

SEVERITIES = ("critical", "warning", "info")


class SuiteError(ValueError):
    """A suite file is missing or malformed; the message names the file and the offending expectation."""


def day_parameters(ds: dt.date, now: dt.datetime | None = None, zone: str = "UTC") -> dict[str, dt.datetime]:
    """Values of the suite parameters for partition ``ds``: the day is ``[ds_start, ds_end)``, from midnight to
    midnight in ``zone`` (the zone the lake's days are cut in, ``Lake.day_zone``); ``now`` (the validation's
    wall-clock time) bounds timestamps of today's partition, which cannot be in the future."""
    return {
        "ds_start": day_start(ds, zone),
        "ds_end": as_of(ds, zone),
        "now": now or dt.datetime.now(dt.UTC),
    }


PARAMETER_NAMES = frozenset(day_parameters(dt.date(2000, 1, 1)))


@dataclass(frozen=True)
class SuiteSpec:
    """A suite as read from JSON, checked, with each expectation's severity resolved."""

    table: str
    path: Path
    name: str
    id_column: str | None
    expectations: tuple[dict[str, Any], ...]


def suite_path(expectations_dir: Path, table: str) -> Path:
    return Path(expectations_dir) / f"{table}.json"


def load_suite_spec(expectations_dir: Path, table: str) -> SuiteSpec:
    """Read and check ``<expectations_dir>/<table>.json`` (structure, severities, parameter names).

    Severity is taken from ``meta.severity`` (the project's convention) or GX's own ``severity`` field; it
    defaults to ``critical`` and is copied to both so GX results carry it too.
    """
    path = suite_path(expectations_dir, table)
    if not path.is_file():
        known = sorted(p.stem for p in Path(expectations_dir).glob("*.json"))
        raise SuiteError(f"{path}: no expectation suite for table {table!r} (suites found: {known or 'none'})")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SuiteError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("expectations"), list):
        raise SuiteError(f'{path}: expected an object {{"name": ..., "expectations": [...]}} (GX 1.x suite format)')
    meta = raw.get("meta") or {}
    expectations = []
    for i, exp in enumerate(raw["expectations"]):
        where = f"{path}: expectation #{i}"
        if not isinstance(exp, dict):
            raise SuiteError(f"{where}: expected an object with 'type' and 'kwargs'")
        if "expectation_type" in exp:
            raise SuiteError(f"{where}: 'expectation_type' is the GX 0.x key; rename it to 'type'")
        if not isinstance(exp.get("type"), str):
            raise SuiteError(f"{where}: missing 'type' (e.g. 'expect_column_values_to_not_be_null')")
        kwargs = exp.get("kwargs") or {}
        if not isinstance(kwargs, dict):
            raise SuiteError(f"{where} ({exp['type']}): 'kwargs' must be an object")
        exp_meta = dict(exp.get("meta") or {})
        severity = str(exp_meta.get("severity") or exp.get("severity") or "critical").lower()
        if severity not in SEVERITIES:
            raise SuiteError(f"{where} ({exp['type']}): severity {severity!r} is not one of {', '.join(SEVERITIES)}")
        unknown = _parameter_names(kwargs) - PARAMETER_NAMES
        if unknown:
            raise SuiteError(
                f"{where} ({exp['type']}): unknown suite parameter(s) {sorted(unknown)}; "
                f"available: {sorted(PARAMETER_NAMES)}"
            )
        exp_meta["severity"] = severity
        expectations.append({**exp, "kwargs": kwargs, "meta": exp_meta, "severity": severity})
    return SuiteSpec(
        table=table,
        path=path,
        name=str(raw.get("name") or table),
        id_column=meta.get("id_column"),
        expectations=tuple(expectations),
    )


def build_suite(spec: SuiteSpec) -> gx.ExpectationSuite:
    """Turn a checked spec into a GX suite; an unknown expectation type or bad kwargs names file and index.

    Callers must have created a GX context first (GX requires one before suites are built).
    """
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    import great_expectations as gx
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    suite = gx.ExpectationSuite(name=spec.name, meta={"source": str(spec.path)})
    for i, exp in enumerate(spec.expectations):
        try:
            config = ExpectationConfiguration(
                type=exp["type"], kwargs=exp["kwargs"], meta=exp["meta"], severity=exp["severity"]
            )
            suite.add_expectation(config.to_domain_obj())
        except Exception as exc:  # GX raises its own and pydantic errors; re-raise one type naming the file
            raise SuiteError(f"{spec.path}: expectation #{i} ({exp['type']}): {exc}") from exc
    return suite


def _parameter_names(value: Any) -> set[str]:
    """Names used as ``{"$PARAMETER": name}`` anywhere inside ``value``."""
    if isinstance(value, dict):
        if set(value) == {"$PARAMETER"}:
            return {str(value["$PARAMETER"])}
        return set().union(*(_parameter_names(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(_parameter_names(v) for v in value)) if value else set()
    return set()
