"""Run a table's expectation suite on a dataframe with Great Expectations and return a ValidationReport.

GX is imported lazily so that importing this module (e.g. from a DAG file) costs nothing at parse time.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from pipelines.validation.report import CheckResult, ValidationReport, json_safe
from pipelines.validation.suites import SuiteSpec, build_suite, day_parameters, load_suite_spec, suite_path

if TYPE_CHECKING:
    from great_expectations.core.batch_definition import BatchDefinition
    from great_expectations.core.expectation_suite import ExpectationSuite
    from great_expectations.core.expectation_validation_result import ExpectationValidationResult

__all__ = ["CheckResult", "ValidationReport", "validate_frame"]

N_EXAMPLES = 5
# Expectation kwargs that say nothing about what was expected.
_PLUMBING_KWARGS = {"batch_id", "column", "result_format", "catch_exceptions", "include_config", "meta"}


def validate_frame(
    df: pd.DataFrame, table: str, ds: dt.date, expectations_dir: Path, suite: str | None = None, zone: str = "UTC"
) -> ValidationReport:
    """Validate ``df``, the partition ``ds`` of ``table``, with ``<expectations_dir>/<suite or table>.json``.

    ``suite`` names the suite when it differs from the lake table (``features/user_behavior`` ->
    ``user_features``); ``zone`` is the zone the lake's days are cut in (the day bounds of the suite parameters).
    """
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"validate_frame({table!r}) needs a pandas DataFrame, got {type(df).__name__}")
    path = suite_path(expectations_dir, suite or table).resolve()
    spec, batch_definition, gx_suite = _prepared(path, *_file_stamp(path))
    # BASIC carries everything a CheckResult keeps (counts, percents, a few unexpected values, observed values);
    # SUMMARY would add value counts and row indexes, extra metrics per expectation (~30% slower on a day's
    # partitions). The offending rows' ids are looked up in pandas, only for failed checks.
    result_format = {"result_format": "BASIC", "partial_unexpected_count": N_EXAMPLES}
    id_column = spec.id_column if spec.id_column in df.columns else None

    started = time.perf_counter()
    # Batch.validate, not a ValidationDefinition's run: that also serializes every result into the context's
    # results store (~10% of a run), which nothing here reads.
    with _configurations_built_once():
        result = batch_definition.get_batch(batch_parameters={"dataframe": df}).validate(
            gx_suite, result_format=result_format, expectation_parameters=day_parameters(ds, zone=zone)
        )
    checks = [_check_result(r, df, id_column) for r in result.results]
    return ValidationReport(
        table=table,
        ds=ds,
        success=not any(c.severity == "critical" and not c.success for c in checks),
        n_rows=len(df),
        suite=str(spec.path),
        checks=checks,
        duration_seconds=round(time.perf_counter() - started, 4),
    )


class _BuiltOnce:
    """While a batch is validated, GX asks each expectation for its ``configuration`` about fifty times as it builds
    the metric graph, and the property rebuilds it every time (a pydantic ``dict()`` and a new
    ``ExpectationConfiguration``): about 40% of validating a day's small partition. Nothing changes an expectation
    while it is validated, so inside ``_configurations_built_once()`` each expectation object builds it once. The
    object is kept with its configuration until the outermost block ends, so no other object can take its id."""

    lock = threading.Lock()
    depth = 0
    kept: dict[int, tuple[Any, Any]] = {}
    original: Any = None

    @classmethod
    def configuration(cls, expectation: Any) -> Any:
        entry = cls.kept.get(id(expectation))
        if entry is None:
            entry = cls.kept[id(expectation)] = (expectation, cls.original.fget(expectation))
        return entry[1]


@contextlib.contextmanager
def _configurations_built_once() -> Iterator[None]:
    from great_expectations.expectations.expectation import Expectation

    with _BuiltOnce.lock:
        if _BuiltOnce.depth == 0:
            _BuiltOnce.original = Expectation.__dict__["configuration"]
            Expectation.configuration = property(_BuiltOnce.configuration)  # type: ignore[method-assign, assignment]
        _BuiltOnce.depth += 1
    try:
        yield
    finally:
        with _BuiltOnce.lock:
            _BuiltOnce.depth -= 1
            if _BuiltOnce.depth == 0:
                Expectation.configuration = _BuiltOnce.original  # type: ignore[method-assign]
                _BuiltOnce.kept.clear()


def _file_stamp(path: Path) -> tuple[int, int]:
    """(mtime, size) of the suite file, so an edited suite is rebuilt; a missing one fails in the loader."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return (0, -1)
    return (stat.st_mtime_ns, stat.st_size)


# Building a context, data source and suite takes longer than validating a small partition: keep them per suite
# file and process. The cache holds no data; dataframes pass through get_batch().
@functools.lru_cache(maxsize=32)
def _prepared(path: Path, mtime_ns: int, size: int) -> tuple[SuiteSpec, BatchDefinition, ExpectationSuite]:
    spec = load_suite_spec(path.parent, path.stem)
    context = _ephemeral_context()
    batch_definition = (
        context.data_sources.add_pandas(name=f"{spec.table}_frames")
        .add_dataframe_asset(name=spec.table)
        .add_batch_definition_whole_dataframe(name="whole_partition")
    )
    return spec, batch_definition, context.suites.add(build_suite(spec))


def _ephemeral_context():  # -> EphemeralDataContext (GX types are imported lazily)
    """An in-memory GX context without analytics or progress bars."""
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
    )
    return gx.get_context(project_config=config, mode="ephemeral")


def _check_result(r: ExpectationValidationResult, df: pd.DataFrame, id_column: str | None) -> CheckResult:
    config = r.expectation_config
    kwargs = config.kwargs or {}
    column = kwargs.get("column")
    res = r.result or {}
    severity = (config.meta or {}).get("severity") or getattr(config.severity, "value", str(config.severity))
    raw_examples = res.get("partial_unexpected_list") or []
    example_ids: list[Any] = []
    if not r.success and raw_examples and id_column and column in df.columns and column != id_column:
        example_ids = _ids_of_rows(df, column, id_column, config.type, raw_examples)
    observed = (res.get("details") or {}).get("mismatched") or res.get("observed_value")
    return CheckResult(
        expectation=config.type,
        column=column,
        success=bool(r.success),
        severity=str(severity),
        unexpected_count=json_safe(res.get("unexpected_count")),
        unexpected_percent=json_safe(res.get("unexpected_percent")),
        examples=_unique(json_safe(raw_examples))[:N_EXAMPLES],
        example_ids=example_ids,
        observed=json_safe(observed),
        expected=json_safe({k: v for k, v in kwargs.items() if k not in _PLUMBING_KWARGS}),
        error=_exception_message(r.exception_info),
    )


def _ids_of_rows(df: pd.DataFrame, column: str, id_column: str, expectation: str, examples: list) -> list[Any]:
    """Ids of a few rows holding the offending values (column-map expectations judge each value alone)."""
    values = df[column]
    if expectation == "expect_column_values_to_not_be_null":
        mask = values.isna()
    else:
        try:
            mask = values.isin([v for v in examples if pd.api.types.is_scalar(v) and not pd.isna(v)])
        except (TypeError, ValueError):  # unhashable or incomparable values: examples alone must do
            return []
    return _unique(json_safe(df.loc[mask, id_column].head(N_EXAMPLES).tolist()))


def _exception_message(info: dict | None) -> str | None:
    """GX reports exceptions either flat or keyed by metric id; return the first message, if any."""
    if not info:
        return None
    entries = [info] if "raised_exception" in info else [v for v in info.values() if isinstance(v, dict)]
    for entry in entries:
        if entry.get("raised_exception"):
            return str(entry.get("exception_message") or "unknown error").removeprefix("Error: ")
    return None


def _unique(values: list[Any]) -> list[Any]:
    seen: list[Any] = []
    for v in values:
        if v not in seen:
            seen.append(v)
    return seen
