"""Append-only audit log of registry decisions: one JSON file per event in the lake's ``audit/<model>/``."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pyarrow.fs as pafs

from pipelines.lake import Lake


def audit_key(model: str, action: str, version: str, at: dt.datetime) -> str:
    stamp = at.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    return f"audit/{model}/{stamp}-{action}-v{version}.json"


def write_audit(
    lake: Lake, model: str, action: str, version: str, record: dict[str, Any], now: dt.datetime | None = None
) -> str:
    """Write one audit event; never overwrites an earlier one (a clash moves the stamp by a microsecond)."""
    at = now or dt.datetime.now(dt.UTC)
    while lake.read_json(audit_key(model, action, version, at)) is not None:
        at += dt.timedelta(microseconds=1)
    payload = {"model": model, "action": action, "version": str(version), "at": at.isoformat(), **record}
    return lake.write_json(audit_key(model, action, version, at), payload)


def read_audit(lake: Lake, model: str) -> list[dict[str, Any]]:
    """Every audit event of ``model``, oldest first."""
    selector = pafs.FileSelector(f"{lake.root}/audit/{model}", allow_not_found=True)
    names = sorted(
        info.base_name
        for info in lake.fs.get_file_info(selector)
        if info.type == pafs.FileType.File and info.base_name.endswith(".json")
    )
    return [doc for name in names if (doc := lake.read_json(f"audit/{model}/{name}")) is not None]
