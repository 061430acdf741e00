"""What ``mlctl ingest`` landed: the span of days per table, the zone days are cut in, the source's label delay.

Kept in the lake as one small JSON document (``ingest/span.json``) so the DAGs can read it when they are parsed
(one read, no pandas) and schedule over the days that exist; ``mlctl check`` compares the source's label delay
with a spec's. Contract overrides from a mapping's ``contracts:`` key live next to it (``contracts/overrides.json``).
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipelines.lake import Lake

SPAN_KEY = "ingest/span.json"
OVERRIDES_KEY = "contracts/overrides.json"
DEFAULT_ZONE = "UTC"


def read_span(lake: Lake) -> dict[str, Any] | None:
    """The raw ``ingest/span.json`` document, or None when nothing was ever ingested."""
    return lake.read_json(SPAN_KEY)


def landed_span(lake: Lake) -> dict[str, tuple[dt.date, dt.date]] | None:
    """Per ingested table, its first and last landed day; None if nothing was ingested."""
    span = read_span(lake)
    tables = (span or {}).get("tables") or {}
    if not tables:
        return None
    return {
        name: (dt.date.fromisoformat(row["first"]), dt.date.fromisoformat(row["last"]))
        for name, row in sorted(tables.items())
    }


def landed_days(lake: Lake) -> tuple[dt.date, dt.date] | None:
    """The first and last landed day over all ingested tables (None if nothing was ingested)."""
    span = landed_span(lake)
    if not span:
        return None
    return min(first for first, _ in span.values()), max(last for _, last in span.values())


def source_label_delay_days(lake: Lake) -> dict[str, float] | None:
    """``{"max": ..., "median": ...}`` of label_time - purchase_time (days) over the ingested labelled orders;
    None when no ingested source carried labels."""
    span = read_span(lake)
    delay = (span or {}).get("label_delay_days")
    return dict(delay) if delay else None


def day_timezone(lake: Lake) -> str:
    """The IANA zone in which the lake's days were cut by the ingest; "UTC" unless an ingest said otherwise."""
    span = read_span(lake)
    return str((span or {}).get("day_timezone") or DEFAULT_ZONE)


def contract_overrides(lake: Lake) -> dict[str, dict[str, dict[str, Any]]]:
    """Per table, the ``volume``/``drift`` keys a mapping's ``contracts:`` set (``{}`` when none did)."""
    return dict(lake.read_json(OVERRIDES_KEY) or {})


def merged_span(
    previous: dict[str, Any] | None,
    present: dict[str, list[dt.date]],
    zone: str,
    label_delay: dict[str, float] | None,
) -> dict[str, Any]:
    """The new span document: ``present`` (table -> the partitions now in the lake) replaces those tables' rows,
    other tables keep theirs. A source's label delay keeps the longest maximum seen, and the median of the
    latest file that carried labels (medians of two files do not combine)."""
    tables = dict((previous or {}).get("tables") or {})
    for name, days in present.items():
        if days:
            tables[name] = {"first": days[0].isoformat(), "last": days[-1].isoformat(), "days": len(days)}
    delay = (previous or {}).get("label_delay_days")
    if label_delay:
        longest = max(label_delay["max"], delay["max"]) if delay else label_delay["max"]
        delay = {"max": longest, "median": label_delay["median"]}
    return {"tables": dict(sorted(tables.items())), "day_timezone": zone, "label_delay_days": delay}


def merged_overrides(
    previous: dict[str, dict[str, dict[str, Any]]], new: dict[str, dict[str, dict[str, Any]]]
) -> dict[str, dict[str, dict[str, Any]]]:
    """Overrides merged per table and section: a later mapping's keys win, keys it does not name are kept."""
    out = {table: {section: dict(keys) for section, keys in sections.items()} for table, sections in previous.items()}
    for table, sections in new.items():
        for section, keys in sections.items():
            out.setdefault(table, {}).setdefault(section, {}).update(keys)
    return out


def record_landing(
    lake: Lake,
    tables: list[str],
    zone: str,
    label_delay: dict[str, float] | None,
    overrides: dict[str, dict[str, dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """Write ``ingest/span.json`` (and the contract overrides) after the partitions of ``tables`` are published.

    The span is read back from the partitions actually present, so it widens with every file and never claims a
    day that is not there. Each document is written atomically (``Lake.write_json``)."""
    present = {name: lake.partitions(name) for name in tables}
    span = merged_span(read_span(lake), present, zone, label_delay)
    if overrides:
        lake.write_json(OVERRIDES_KEY, merged_overrides(contract_overrides(lake), overrides))
    lake.write_json(SPAN_KEY, span)
    lake.__dict__.pop("day_zone", None)  # Lake caches the zone: this lake just changed it
    return span
