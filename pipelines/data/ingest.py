"""Ingest: land a real file as daily partitions of the lake, through a mapping (``mlctl ingest``).

The whole file is read, mapped and checked before the first partition is written, so a bad file changes
nothing. Each day the file covers replaces that day's partition (atomically, via ``Lake.write``); days it does
not cover are left alone. The same file and mapping always produce the same partitions, byte for byte. Days are
cut at midnight in the mapping's ``day_timezone`` (UTC by default). After the partitions, the landed span
(``ingest/span.json``) and any contract overrides are written, each atomically (see ``pipelines.data.landed``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa

from pipelines.data.adapters import Drop, MappingError, adapt, load_mapping
from pipelines.data.adapters.mapping import Mapping
from pipelines.data.adapters.source import Progress
from pipelines.data.adapters.targets import table_rules, target_schema
from pipelines.data.adapters.transform import LINE
from pipelines.data.derived_dimensions import derive_users_and_follows
from pipelines.data.landed import read_span, record_landing
from pipelines.lake import Lake
from pipelines.settings import Settings

# Tables a --derive-users writes from each kind of source.
DERIVED_TABLES = ("users", "follows")


@dataclass
class IngestReport:
    """What an ingest wrote (rows per table and day), which days it replaced, and what it dropped and why."""

    source: str
    mapping: str
    table: str
    rows_read: int
    day_timezone: str = "UTC"
    days: dict[str, dict[dt.date, int]] = field(default_factory=dict)
    replaced: dict[str, list[dt.date]] = field(default_factory=dict)
    uris: dict[str, dict[dt.date, str]] = field(default_factory=dict)
    derived_users: dict[dt.date, int] = field(default_factory=dict)  # users per day of --derive-users
    label_delay_days: dict[str, float] | None = None
    span: dict = field(default_factory=dict)
    drops: list[Drop] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def rows_written(self) -> int:
        """Rows written over every table: a file that fills orders and order_labels counts each row twice."""
        return sum(sum(days.values()) for days in self.days.values())

    def rows_of(self, table: str) -> int:
        return sum(self.days.get(table, {}).values())

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "mapping": self.mapping,
            "table": self.table,
            "rows_read": self.rows_read,
            "rows_written": self.rows_written,
            "rows_per_table": {t: self.rows_of(t) for t in self.days},
            "day_timezone": self.day_timezone,
            "days": {t: {d.isoformat(): n for d, n in days.items()} for t, days in self.days.items()},
            "replaced": {t: [d.isoformat() for d in days] for t, days in self.replaced.items()},
            "derived_users": {d.isoformat(): n for d, n in self.derived_users.items()},
            "label_delay_days": self.label_delay_days,
            "drops": [{"line": d.line, "reason": d.reason} for d in self.drops],
            "notes": self.notes,
        }


def ingest(
    settings: Settings,
    source: Path,
    mapping: Path,
    table: str,
    *,
    derive_users: bool = False,
    now: dt.datetime | None = None,
    on_progress: Progress | None = None,
) -> IngestReport:
    """Map ``source`` with ``mapping`` and publish every day of every table the mapping fills.

    ``table`` is the table the caller expects (``events``, ``orders``); a mapping may fill companion tables
    too (``orders`` with ``order_labels``). With ``derive_users`` the ``users`` and ``follows`` snapshots are
    derived from ``table`` for every day of its span (a source that comes without them). Raises an
    ``IngestError`` subclass, writing nothing, when the file or the mapping is bad.
    """
    declared = load_mapping(mapping)
    if table not in declared.tables:
        raise MappingError(
            mapping,
            f"the mapping fills table(s) {', '.join(declared.tables)}, not {table}",
            "pass --table with one of those, or use a mapping written for that table",
        )
    lake = Lake(settings)
    _check_same_day_zone(lake, declared, mapping)
    adapted = adapt(source, mapping, now=now, on_progress=on_progress)
    zone = declared.day_timezone
    partitions = {name: _by_day(name, frame, mapping, zone) for name, frame in adapted.tables.items()}
    delays = _label_delays(adapted.tables)

    report = IngestReport(
        source=str(source),
        mapping=str(mapping),
        table=table,
        rows_read=adapted.rows_read,
        day_timezone=zone,
        label_delay_days=_delay_summary(delays) if delays is not None else None,
        drops=sorted(adapted.drops, key=lambda d: d.line),
        notes=adapted.notes,
    )
    lineage = {
        "source": str(Path(source).resolve()),
        "sha256": _sha256(Path(source)),
        "mapping": str(mapping),
        "day_timezone": zone,
    }
    total = sum(len(days) for days in partitions.values())
    done = 0
    for name, days in partitions.items():
        report.days[name], report.uris[name] = {}, {}
        report.replaced[name] = [d for d in days if lake.exists(name, d)]
        for day, (frame, schema) in days.items():
            report.uris[name][day] = lake.write(name, day, frame, schema=schema)
            report.days[name][day] = len(frame)
            extra = _day_delay(delays, frame) if name == "order_labels" and delays is not None else {}
            lake.write_json(f"ingest/{name}/ds={day.isoformat()}/lineage.json", lineage | {"rows": len(frame)} | extra)
            done += 1
            if on_progress:
                on_progress("write", done, total)
    if derive_users:
        report.derived_users = derive_users_and_follows(lake, sorted(report.days[table]), source_table=table)
    landed = [*partitions, *(DERIVED_TABLES if derive_users else ())]
    report.span = record_landing(lake, landed, zone, report.label_delay_days, declared.contracts or None)
    return report


def _check_same_day_zone(lake: Lake, declared: Mapping, mapping: Path) -> None:
    """Days of one lake are cut in one zone: a file cut in another would shift every day bound it shares."""
    span = read_span(lake)
    if span is not None:
        current = str(span.get("day_timezone") or "UTC")
        where = "ingest/span.json"
    elif declared.day_timezone != "UTC" and any(lake.partitions(t) for t in declared.tables):
        current, where = "UTC", "partitions written before any ingest (the simulator's)"
    else:
        return
    if current != declared.day_timezone:
        raise MappingError(
            mapping,
            f"key 'day_timezone': the lake's days are cut in {current} ({where}), this mapping cuts them in "
            f"{declared.day_timezone}",
            "use one day_timezone for every file of a lake, or ingest into a fresh one (STOREFRONT_HOME)",
        )


def _by_day(table: str, frame: pd.DataFrame, mapping: Path, zone: str) -> dict[dt.date, tuple[pd.DataFrame, pa.Schema]]:
    """Split by the local day (in ``zone``) of the table's time column; each day is converted to arrow once
    here, so a type problem shows before the first write rather than halfway through."""
    schema = target_schema(table, where=mapping)
    days = frame[table_rules(table).time_column].dt.tz_convert(zone).dt.date
    out: dict[dt.date, tuple[pd.DataFrame, pa.Schema]] = {}
    for day, rows in frame.groupby(days, sort=True):
        rows = rows.drop(columns=[LINE]).reset_index(drop=True)
        pa.Table.from_pandas(rows, schema=schema, preserve_index=False)
        out[day] = (rows, schema)
    return out


def _label_delays(tables: dict[str, pd.DataFrame]) -> pd.Series | None:
    """Per labelled order of the file, label_time - purchase_time in days (index: order_id); None when the
    file has no labels for its orders."""
    if "orders" not in tables or "order_labels" not in tables:
        return None
    labels = tables["order_labels"][["order_id", "label_time"]]
    joined = labels.merge(tables["orders"][["order_id", "purchase_time"]], on="order_id", how="inner")
    if joined.empty:
        return None
    delay = (joined["label_time"] - joined["purchase_time"]).dt.total_seconds() / 86_400
    return pd.Series(delay.to_numpy(), index=joined["order_id"].to_numpy())


def _delay_summary(delays: pd.Series) -> dict[str, float]:
    return {"max": round(float(delays.max()), 3), "median": round(float(delays.median()), 3)}


def _day_delay(delays: pd.Series, labels_of_day: pd.DataFrame) -> dict:
    """The label delay of one order_labels partition's rows, for its lineage."""
    of_day = delays.reindex(labels_of_day["order_id"].to_numpy()).dropna()
    return {"label_delay_days": _delay_summary(of_day) if len(of_day) else None}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as src:
        for block in iter(lambda: src.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def summary_lines(report: IngestReport) -> list[str]:
    """One line per table written, each counted on its own against the file's rows (a file that fills orders
    and order_labels lands each source row once in each), then what was derived and what the lake now spans."""
    dropped = f" ({len(report.drops):,} dropped)" if report.drops else ""
    lines = []
    for name, per_day in report.days.items():
        if not per_day:
            continue
        days = sorted(per_day)
        lines.append(
            f"{name}: {report.rows_of(name):,} rows over {len(days):,} {_days(len(days))} "
            f"({days[0]} .. {days[-1]}) from {report.rows_read:,} source rows{dropped}"
        )
    if report.derived_users:
        days = sorted(report.derived_users)
        lines.append(
            f"users derived from the {report.table}: {report.derived_users[days[-1]]:,} users by {days[-1]}, "
            f"one snapshot per day over {len(days):,} {_days(len(days))} ({days[0]} .. {days[-1]}); "
            "follows: empty graph"
        )
    if report.day_timezone != "UTC":
        lines.append(f"days are cut at midnight {report.day_timezone} (the mapping's day_timezone)")
    if report.label_delay_days:
        delay = report.label_delay_days
        lines.append(
            f"labels arrive {delay['median']:g} days after purchase (median; longest {delay['max']:g}): "
            "a spec's label.delay_days must cover it"
        )
    held = [
        f"{name} {row['first']} .. {row['last']} ({row['days']:,} {_days(row['days'])})"
        for name, row in (report.span.get("tables") or {}).items()
    ]
    if held:
        lines.append(f"the lake now holds (ingest/span.json): {'; '.join(held)}")
    return lines


def _days(n: int) -> str:
    return "day" if n == 1 else "days"
