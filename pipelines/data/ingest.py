"""Ingest: land a real file as daily partitions of the lake, through a mapping (``mlctl ingest``).

The whole file is read, mapped and checked before the first partition is written, so a bad file changes
nothing. Each day the file covers replaces that day's partition (atomically, via ``Lake.write``); days it does
not cover are left alone. The same file and mapping always produce the same partitions, byte for byte.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa

from pipelines.data.adapters import Drop, MappingError, adapt, load_mapping
from pipelines.data.adapters.source import Progress
from pipelines.data.adapters.targets import table_rules, target_schema
from pipelines.data.adapters.transform import LINE
from pipelines.lake import Lake
from pipelines.settings import Settings


@dataclass
class IngestReport:
    """What an ingest wrote (rows per table and day), which days it replaced, and what it dropped and why."""

    source: str
    mapping: str
    table: str
    rows_read: int
    days: dict[str, dict[dt.date, int]] = field(default_factory=dict)
    replaced: dict[str, list[dt.date]] = field(default_factory=dict)
    uris: dict[str, dict[dt.date, str]] = field(default_factory=dict)
    drops: list[Drop] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def rows_written(self) -> int:
        return sum(sum(days.values()) for days in self.days.values())

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "mapping": self.mapping,
            "table": self.table,
            "rows_read": self.rows_read,
            "rows_written": self.rows_written,
            "days": {t: {d.isoformat(): n for d, n in days.items()} for t, days in self.days.items()},
            "replaced": {t: [d.isoformat() for d in days] for t, days in self.replaced.items()},
            "drops": [{"line": d.line, "reason": d.reason} for d in self.drops],
            "notes": self.notes,
        }


def ingest(
    settings: Settings,
    source: Path,
    mapping: Path,
    table: str,
    *,
    now: dt.datetime | None = None,
    on_progress: Progress | None = None,
) -> IngestReport:
    """Map ``source`` with ``mapping`` and publish every day of every table the mapping fills.

    ``table`` is the table the caller expects (``events``, ``orders``); a mapping may fill companion tables
    too (``orders`` with ``order_labels``). Raises an ``IngestError`` subclass, writing nothing, when the file
    or the mapping is bad.
    """
    declared = load_mapping(mapping)
    if table not in declared.tables:
        raise MappingError(
            mapping,
            f"the mapping fills table(s) {', '.join(declared.tables)}, not {table}",
            "pass --table with one of those, or use a mapping written for that table",
        )
    adapted = adapt(source, mapping, now=now, on_progress=on_progress)
    partitions = {name: _by_day(name, frame, mapping) for name, frame in adapted.tables.items()}

    report = IngestReport(
        source=str(source),
        mapping=str(mapping),
        table=table,
        rows_read=adapted.rows_read,
        drops=sorted(adapted.drops, key=lambda d: d.line),
        notes=adapted.notes,
    )
    lake = Lake(settings)
    lineage = {"source": str(Path(source).resolve()), "sha256": _sha256(Path(source)), "mapping": str(mapping)}
    total = sum(len(days) for days in partitions.values())
    done = 0
    for name, days in partitions.items():
        report.days[name], report.uris[name] = {}, {}
        report.replaced[name] = [d for d in days if lake.exists(name, d)]
        for day, (frame, schema) in days.items():
            report.uris[name][day] = lake.write(name, day, frame, schema=schema)
            report.days[name][day] = len(frame)
            lake.write_json(f"ingest/{name}/ds={day.isoformat()}/lineage.json", lineage | {"rows": len(frame)})
            done += 1
            if on_progress:
                on_progress("write", done, total)
    return report


def _by_day(table: str, frame: pd.DataFrame, mapping: Path) -> dict[dt.date, tuple[pd.DataFrame, pa.Schema]]:
    """Split by the UTC day of the table's time column; each day is converted to arrow once here, so a type
    problem shows before the first write rather than halfway through."""
    schema = target_schema(table, where=mapping)
    days = frame[table_rules(table).time_column].dt.date
    out: dict[dt.date, tuple[pd.DataFrame, pa.Schema]] = {}
    for day, rows in frame.groupby(days, sort=True):
        rows = rows.drop(columns=[LINE]).reset_index(drop=True)
        pa.Table.from_pandas(rows, schema=schema, preserve_index=False)
        out[day] = (rows, schema)
    return out


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as src:
        for block in iter(lambda: src.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
