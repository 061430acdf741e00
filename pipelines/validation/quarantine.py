"""Validate a lake partition, keep its report next to the data, quarantine it on a critical failure."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from pipelines.lake import Lake, PartitionNotFound, as_date
from pipelines.validation.contracts import validate_with_contract
from pipelines.validation.report import ValidationReport, report_key

__all__ = ["ValidationFailed", "report_key", "validate_partition"]  # report_key: kept importable from here


class ValidationFailed(Exception):
    """A partition failed a critical expectation and was quarantined. ``str()`` is the report summary."""

    def __init__(self, report: ValidationReport) -> None:
        super().__init__(report.summary())
        self.report = report


def validate_partition(
    lake: Lake, table: str, ds: dt.date, expectations_dir: Path, suite: str | None = None
) -> ValidationReport:
    """Validate the partition ``ds`` of ``table`` with suite ``suite`` (default: the table's name), its GX
    expectations and its contract checks (types, references, volume, drift; they read other partitions of the
    lake), and write its report at :func:`report_key`.

    On a critical failure the partition is moved to ``quarantine/<table>/ds=...`` (with the report) and
    :class:`ValidationFailed` is raised; warning-level failures only appear in the report.
    """
    ds = as_date(ds)
    try:
        df = lake.read(table, ds)
    except PartitionNotFound as exc:
        where = lake.partition_uri(table, ds)
        if lake.is_quarantined(table, ds):
            hint = (
                f"it is in quarantine ({_quarantine_uri(lake, table, ds)}, see report.json there): "
                "fix the source and publish the day again"
            )
        else:
            hint = "publish (ingest) that day first"
        raise PartitionNotFound(
            f"cannot validate {table} ds={ds.isoformat()}: no partition at {where}; {hint}"
        ) from exc

    report = validate_with_contract(lake, df, table, ds, expectations_dir, suite=suite)
    if not report.success:
        # Move the data first so nothing downstream can read it; both reports say where it went.
        report.quarantined_to = _quarantine_uri(lake, table, ds)
        try:
            report.quarantined_to = lake.quarantine(table, ds, report.to_dict())
        finally:
            lake.write_json(report_key(table, ds), report.to_dict())
        raise ValidationFailed(report)
    lake.write_json(report_key(table, ds), report.to_dict())
    return report


def _quarantine_uri(lake: Lake, table: str, ds: dt.date) -> str:
    return lake.uri("quarantine", table, f"ds={ds.isoformat()}")
