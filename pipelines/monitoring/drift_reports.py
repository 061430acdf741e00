"""The published drift reports: one JSON document a model and day at
``monitoring/drift/<model>/ds=YYYY-MM-DD/drift.json`` (written by the daily watch, :mod:`pipelines.monitoring.watch`),
read by ``mlctl status``, ``mlctl monitor`` and the monitoring page without importing what computes them.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

import pyarrow.fs as pafs

from pipelines.lake import Lake, as_date

if TYPE_CHECKING:
    from pipelines.monitoring.drift import DriftReport

DRIFT_PREFIX = "monitoring/drift"


def drift_key(model: str, day: dt.date | str) -> str:
    return f"{DRIFT_PREFIX}/{model}/ds={as_date(day).isoformat()}/drift.json"


def publish_drift(lake: Lake, report: DriftReport) -> str:
    """Write ``report`` to the lake, atomically replacing the day's previous one (a rerun changes nothing else)."""
    return lake.write_json(drift_key(report.model, report.day), report.to_dict())


def read_drift(lake: Lake, model: str, day: dt.date | str) -> dict[str, Any] | None:
    """The published drift report of ``model`` on ``day``, or None."""
    return lake.read_json(drift_key(model, day))


def drift_days(lake: Lake, model: str) -> list[dt.date]:
    """Days with a published drift report of ``model``, oldest first."""
    selector = pafs.FileSelector(f"{lake.root}/{DRIFT_PREFIX}/{model}", allow_not_found=True)
    return sorted(
        as_date(info.base_name[3:])
        for info in lake.fs.get_file_info(selector)
        if info.type == pafs.FileType.Directory and info.base_name.startswith("ds=")
    )


def drift_history(lake: Lake, model: str, days: int | None = None) -> list[dict[str, Any]]:
    """The newest ``days`` published reports of ``model`` (None: all), oldest first."""
    chosen = drift_days(lake, model)
    reports = [read_drift(lake, model, d) for d in (chosen[-days:] if days else chosen)]
    return [r for r in reports if r is not None]


def drifting_since(history: list[dict[str, Any]]) -> str | None:
    """The first day of the newest unbroken run of drifting reports, or None when the newest is not drifting."""
    since = None
    for report in reversed(history):
        if not report["drifting"]:
            break
        since = report["day"]
    return since


def monitoring_line(lake: Lake, model: str) -> str:
    """One line for ``mlctl status``: the newest report's verdict (and since when it drifts)."""
    history = drift_history(lake, model, days=30)
    if not history:
        return "drift: no monitoring report yet (the daily monitor task writes one a day once there is a champion)"
    newest, since = history[-1], drifting_since(history)
    started = f" since {since}" if since and since != newest["day"] else ""
    return f"drift on {newest['day']} (v{newest['version']}): {newest['summary']}{started}; mlctl monitor {model}"
