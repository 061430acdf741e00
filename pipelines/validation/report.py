"""The result of validating one partition: plain, JSON-serialisable, with a human summary of what failed."""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pipelines.lake import as_date


def report_key(table: str, ds: dt.date | str) -> str:
    """Where the validation report of ``table`` / ``ds`` lives inside the lake (next to nothing else: the data
    may be quarantined, the report stays)."""
    return f"validation/{table}/ds={as_date(ds).isoformat()}/report.json"


@dataclass
class CheckResult:
    """One expectation's outcome: ``examples`` are offending values, ``example_ids`` those rows' ids."""

    expectation: str
    column: str | None
    success: bool
    severity: str
    unexpected_count: int | None = None
    unexpected_percent: float | None = None
    examples: list[Any] = field(default_factory=list)
    example_ids: list[Any] = field(default_factory=list)
    observed: Any = None
    expected: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    # Why a check passed without judging (e.g. "no reference yet" on the first days of a table).
    note: str | None = None

    @property
    def target(self) -> str:
        return f"column {self.column!r}" if self.column else "table"

    def describe(self) -> str:
        """What went wrong, in one line, with a few offending values."""
        if self.error:
            return f"could not be evaluated: {self.error}"
        if self.note and not self.success:
            return f"{self.note}; observed {_short(self.observed, 160)}"
        expected = ", ".join(f"{k}={_short(v)}" for k, v in self.expected.items())
        if self.unexpected_count is not None:
            pct = f" ({self.unexpected_percent:.3g}%)" if self.unexpected_percent is not None else ""
            text = f"{self.unexpected_count} unexpected value(s){pct}"
            if self.examples:
                text += f", e.g. {', '.join(_short(v) for v in self.examples)}"
            if self.example_ids:
                text += f" (rows {', '.join(_short(v) for v in self.example_ids)})"
            return f"{text}; expected {expected}" if expected else text
        if isinstance(self.observed, dict) and "mismatched" in self.observed:
            return f"column types {self.observed['mismatched']}; expected {expected}"
        if isinstance(self.observed, dict) and ("missing" in self.observed or "unexpected" in self.observed):
            parts = [f"{k} columns {self.observed[k]}" for k in ("missing", "unexpected") if self.observed.get(k)]
            return "; ".join(parts)
        return f"observed {_short(self.observed)}; expected {expected}"


@dataclass
class ValidationReport:
    """Outcome of one suite on one partition. ``success`` means no *critical* check failed."""

    table: str
    ds: dt.date
    success: bool
    n_rows: int
    suite: str
    checks: list[CheckResult]
    duration_seconds: float = 0.0
    quarantined_to: str | None = None

    @property
    def failed(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.success]

    @property
    def critical_failures(self) -> list[CheckResult]:
        return [c for c in self.failed if c.severity == "critical"]

    @property
    def warnings(self) -> list[CheckResult]:
        return [c for c in self.failed if c.severity != "critical"]

    def summary(self) -> str:
        """Headline plus one line per failed check: table, column, expectation, severity, examples."""
        head = f"{self.table} ds={self.ds.isoformat()}"
        counts = f"{len(self.checks)} checks on {self.n_rows:,} rows, suite {self.suite}"
        if self.success and not self.failed:
            return f"{head}: validation passed ({counts})"
        verdict = "validation FAILED" if not self.success else "validation passed with warnings"
        n_critical, n_warning = len(self.critical_failures), len(self.warnings)
        lines = [f"{head}: {verdict}: {n_critical} critical, {n_warning} warning ({counts})"]
        # Critical first; table-level problems (missing columns, no rows) before the column checks they cause.
        for check in sorted(self.failed, key=lambda c: (c.severity != "critical", c.column is not None)):
            lines.append(f"  [{check.severity}] {self.table} {check.target}: {check.expectation}: {check.describe()}")
        if self.quarantined_to:
            lines.append(f"  partition moved to quarantine: {self.quarantined_to}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ds"] = self.ds.isoformat()
        data["summary"] = self.summary()
        return data


def json_safe(value: Any) -> Any:
    """Convert numpy/pandas scalars, timestamps and NaN/NaT to plain JSON values (None for missing)."""
    if value is None or value is pd.NA or isinstance(value, bool | str):
        return None if value is pd.NA else value
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [json_safe(v) for v in value]
    if isinstance(value, np.datetime64):
        value = pd.Timestamp(value)
    if isinstance(value, dt.datetime | dt.date):
        return None if pd.isna(value) else value.isoformat()
    if hasattr(value, "item"):  # numpy scalar
        value = value.item()
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, int):
        return value
    return str(value)


def _short(value: Any, limit: int = 80) -> str:
    text = "null" if value is None else repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
