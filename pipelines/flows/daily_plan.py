"""What a daily features run may do: which days it schedules, whether a day may be processed, which feature
families the day's tables allow, and the record of what it skipped and why.

Cheap to import (no pandas until a lake is opened): the daily DAG file reads it when it is parsed, ``mlctl status``
reads the skip record.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from pipelines.specs import SpecError, load_spec
from pipelines.usecases import FAMILIES, families_for, use_case

if TYPE_CHECKING:
    from pipelines.lake import Lake
    from pipelines.settings import Settings


class FamilySkipped(Exception):  # noqa: N818 - an outcome, not an error: the DAG turns it into a skipped task
    """A feature family cannot be built for the day because its input tables are not there; ``reason`` says so."""

    def __init__(self, family: str, reason: str) -> None:
        super().__init__(f"feature family {family!r} skipped: {reason}")
        self.family = family
        self.reason = reason


class DayNotEnded(ValueError):
    """The day is still in progress where its data is recorded: a daily run processes complete days only."""


class NothingToProcess(RuntimeError):
    """The day holds no data any feature family can use: the run fails rather than count as done."""


class MissingIngestedDay(FileNotFoundError):
    """The data source is ``ingested`` and the day holds none of the tables the families or labels read."""


# Failures a retry cannot mend (the day is what it is): the DAG fails them at once instead of retrying.
NOT_RETRYABLE = (DayNotEnded, NothingToProcess, MissingIngestedDay)


def _parsable_specs(settings: Settings) -> list:
    """The model specs in ``settings.models_dir`` that parse.

    A malformed spec must not stop feature production for the other models: the training DAG file reports it
    (as a DAG import error), and so does ``mlctl validate-specs``.
    """
    specs = []
    for path in sorted(settings.models_dir.glob("*.yaml")):
        try:
            specs.append(load_spec(path))
        except SpecError:
            continue
    return specs


def feature_families(settings: Settings) -> list[str]:
    """The feature families the parsable model specs in ``settings.models_dir`` read."""
    return families_for(_parsable_specs(settings))


def label_only_tables(settings: Settings) -> tuple[str, ...]:
    """Raw tables the specs' labels read that no feature family reads (``order_labels``): a day holding only
    those still has work (validating labels that arrive after the last order), though no family runs."""
    inputs = {t for f in FAMILIES.values() for t in f.input_tables}
    tables = [t for spec in _parsable_specs(settings) for t in use_case(spec.entity).label_tables if t not in inputs]
    return tuple(dict.fromkeys(tables))


def skipped_key(day: dt.date) -> str:
    return f"runs/daily_features/ds={day.isoformat()}/skipped.json"


def skipped_families(lake: Lake, day: dt.date) -> dict[str, str]:
    """The families the daily run of ``day`` skipped, with the reason ({} when none was, or it never ran)."""
    return dict(lake.read_json(skipped_key(day)) or {})


def family_plan(lake: Lake, day: dt.date, families: Iterable[str]) -> dict[str, str]:
    """Which of ``families`` cannot run on ``day``, and why (a family runs when all its input tables are there)."""
    skipped = {}
    for name in families:
        inputs = FAMILIES[name].input_tables
        missing = [table for table in inputs if not lake.exists(table, day)]
        if missing:
            skipped[name] = (
                f"no {', '.join(missing)} partition for {day} in {lake.uri()} "
                f"(the family reads {', '.join(inputs)}); the source does not carry "
                f"{'this table' if len(missing) == 1 else 'these tables'} for that day"
            )
    return skipped


def record_plan(lake: Lake, day: dt.date, families: Iterable[str]) -> dict[str, str]:
    """Compute and keep the day's skip record (every family task writes the same record: no lost update)."""
    skipped = family_plan(lake, day, families)
    lake.write_json(skipped_key(day), skipped)
    return skipped


def day_end(day: dt.date, zone: str = "UTC") -> dt.datetime:
    """The instant a day ends in the zone its data was cut in (midnight after it)."""
    return dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=ZoneInfo(zone))


def ensure_day_ended(day: dt.date, now: dt.datetime | None = None, zone: str = "UTC") -> None:
    """Refuse a day that has not ended: its events would be a fraction of the day (the rest is in the future)."""
    now = now or dt.datetime.now(dt.UTC)
    end = day_end(day, zone)
    if now < end:
        raise DayNotEnded(
            f"{day} has not ended: it is {now.astimezone(dt.UTC):%Y-%m-%d %H:%M} UTC and the day ends at "
            f"{end.astimezone(dt.UTC):%Y-%m-%d %H:%M} UTC (days cut in {zone}); a daily run processes a complete "
            f"day: run {day - dt.timedelta(days=1)} now, or {day} after it ended"
        )


def landed_window(lake: Lake) -> tuple[dt.date, dt.date] | None:
    """First and last day ``mlctl ingest`` landed (over all tables), None before any ingest."""
    from pipelines.data.landed import landed_days

    return landed_days(lake)


def schedule_window(settings: Settings) -> tuple[dt.date, dt.date | None]:
    """The first and last logical date the daily DAG schedules.

    With ``data_source=ingested`` they follow the landed span (``mlctl ingest`` records it), so a backfill over
    the documented span runs every day; STOREFRONT_START_DATE / STOREFRONT_END_DATE win when set explicitly.
    """
    start, end = settings.start_date, settings.end_date
    if settings.data_source != "ingested":
        return start, end
    from pipelines.lake import Lake

    span = landed_window(Lake(settings))
    if span is None:
        return start, end
    return (start if settings.start_date_explicit else span[0]), (end if settings.end_date_explicit else span[1])
