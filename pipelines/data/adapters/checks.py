"""Rules every mapped row must meet before anything is written: ids present and unique, values in range,
times neither implausibly old nor in the future, and inside the day a partitioned source path claims.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.data.adapters.errors import SourceRuleError
from pipelines.data.adapters.mapping import Mapping
from pipelines.data.adapters.targets import table_rules
from pipelines.data.adapters.transform import LINE

OLDEST = pd.Timestamp("2000-01-01", tz="UTC")  # older times mean a wrong unit or format, not old data
FUTURE_SLACK = pd.Timedelta(minutes=5)  # clocks of exporting systems drift a little
_DAY_IN_PATH = re.compile(r"(?:^|/)ds=(\d{4}-\d{2}-\d{2})(?:/|$)")


def check_table(
    frame: pd.DataFrame, table: str, mapping: Mapping, path: Path, now: dt.datetime, locator: str = "line"
) -> None:
    """Raise SourceRuleError on the first broken rule, naming the source column and line."""
    rules = table_rules(table)
    columns = mapping.tables[table]

    def fail(bad: np.ndarray, column: str, problem: str, hint: str) -> SourceRuleError:
        first = int(np.flatnonzero(bad)[0])
        spec = columns[column]
        named = spec.source if spec.source is not None else f"{column} (derived)"
        count = int(bad.sum())
        more = f"; {count} rows like it" if count > 1 else ""
        return SourceRuleError(
            path, f"{problem}{more}", hint, column=named, line=int(frame[LINE].iloc[first]), locator=locator
        )

    for column in rules.required:
        bad = frame[column].isna().to_numpy()
        if bad.any():
            raise fail(bad, column, f"{table}.{column} is empty", "every row needs it: fill it at the source")
    for column in rules.non_negative:
        bad = (frame[column] < 0).fillna(False).to_numpy(dtype=bool)
        if bad.any():
            value = frame[column].iloc[int(np.flatnonzero(bad)[0])]
            raise fail(bad, column, f"{table}.{column} is negative ({value})", "refunds and corrections go elsewhere")
    for column, allowed in rules.allowed.items():
        bad = (frame[column].notna() & ~frame[column].isin(allowed)).to_numpy()
        if bad.any():
            value = frame[column].iloc[int(np.flatnonzero(bad)[0])]
            raise fail(
                bad,
                column,
                f"{value!r} is not a {table}.{column} ({', '.join(allowed)})",
                f"map it with values: under tables.{table}.{column} in mapping {mapping.name!r}",
            )
    if rules.id_column:
        ids = frame[rules.id_column]
        bad = ids.duplicated(keep="first").to_numpy()
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            earlier = int(frame[LINE].iloc[int(np.flatnonzero((ids == ids.iloc[first]).to_numpy())[0])])
            raise fail(
                bad,
                rules.id_column,
                f"{table}.{rules.id_column} {ids.iloc[first]!r} repeats {locator} {earlier} with other values",
                "ids must be unique: fix the source, or derive the id from more columns (hash: [...])",
            )
    _check_times(frame, rules.time_column, now, fail, path, mapping.day_timezone)


def _check_times(
    frame: pd.DataFrame,
    column: str,
    now: dt.datetime,
    fail: Callable[..., SourceRuleError],
    path: Path,
    zone: str,
) -> None:
    times = frame[column]
    old = (times < OLDEST).fillna(False).to_numpy(dtype=bool)
    if old.any():
        raise fail(old, column, f"{times[old].iloc[0]} is before {OLDEST.date()}", "check the timestamp unit/format")
    future = (times > pd.Timestamp(now) + FUTURE_SLACK).fillna(False).to_numpy(dtype=bool)
    if future.any():
        raise fail(
            future,
            column,
            f"{times[future].iloc[0]} is in the future (now {pd.Timestamp(now).floor('s')})",
            "check the time zone and clock of the exporting system; future rows are never ingested",
        )
    claimed = _DAY_IN_PATH.findall(path.resolve().as_posix())
    if claimed:
        day = dt.date.fromisoformat(claimed[-1])
        # The path's day is a day of the source's own calendar (the mapping's day_timezone), as partitions are.
        local = times.dt.tz_convert(zone).dt.date
        other = (local != day).to_numpy()
        if other.any():
            raise fail(
                other,
                column,
                f"the path claims ds={day} but this row is from {local[other].iloc[0]} ({zone})",
                "the file holds another day's rows: find the right file, or rename it if the path is wrong",
            )
