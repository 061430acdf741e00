"""Dimension tables for a real source that comes without them (``mlctl ingest --derive-users``).

The features and the orders -> users reference need a ``users`` snapshot per day (who exists) and a ``follows``
snapshot (the social graph). A mapped event log or orders file has neither: every user seen up to a day becomes
a user of that day's snapshot, signed up at their first event (an event log) or at the signup time the orders
give (with sex and age when the mapping fills them); the follow graph is empty, so social features read zero.
"""

from __future__ import annotations

import datetime as dt

import pandas as pd

from pipelines.data import schemas
from pipelines.lake import Lake, date_range

# What each kind of source says about a user: the columns read from its partitions.
SOURCE_COLUMNS = {
    "events": ["user_id", "event_time"],
    "orders": ["user_id", "signup_time", "purchase_time", "sex", "age"],
}


def derive_users_and_follows(lake: Lake, days: list[dt.date], source_table: str = "events") -> dict[dt.date, int]:
    """Write ``users`` and ``follows`` for each of ``days`` and every later day of ``source_table``; returns
    users per day written.

    A snapshot holds everyone seen up to its day. Days without a partition of the source (a gap in the log) get
    the snapshot carried forward, so a user first seen before a gap is still a user after it. The snapshot the
    derivation starts from is the latest one before the first day needing one.
    """
    if source_table not in SOURCE_COLUMNS:
        raise ValueError(f"users derive from {' or '.join(SOURCE_COLUMNS)}, not {source_table}: pass one of those")
    if not days:
        return {}
    present = lake.partitions(source_table)
    snapshots = set(lake.partitions("users"))
    # Source days without a snapshot (landed without --derive-users) are derived too, or their users go missing.
    first = min([*days, *(d for d in present if d not in snapshots)])
    earlier = [d for d in snapshots if d < first]
    users = _users(lake.read("users", max(earlier)) if earlier else pd.DataFrame(columns=schemas.USERS.names))
    # Gap days after the base snapshot are filled, unless the base predates this source (another source's users,
    # carried along but not written for days this source never covered).
    start = max(earlier) + dt.timedelta(days=1) if earlier and present and max(earlier) >= present[0] else first
    last = max([*days, *present])
    # Each user once, with the day first seen (the base snapshot's users before all): a day's snapshot is then
    # one filter, instead of a growing frame concatenated day after day.
    found = [users.assign(first_day=start - dt.timedelta(days=1))]
    have = set(present)
    for day in date_range(start, last):
        if day in have:
            seen = _seen(lake.read(source_table, day, columns=SOURCE_COLUMNS[source_table]), source_table)
            found.append(_users(seen).assign(first_day=day))
    everyone = pd.concat(found, ignore_index=True).drop_duplicates("user_id", keep="first")
    everyone = everyone.sort_values("user_id", ignore_index=True)
    written: dict[dt.date, int] = {}
    for day in date_range(start, last):
        snapshot = everyone[everyone["first_day"] <= day].drop(columns="first_day").reset_index(drop=True)
        lake.write("users", day, snapshot, schema=schemas.USERS)
        lake.write("follows", day, _no_follows(), schema=schemas.FOLLOWS)
        written[day] = len(snapshot)
    return written


def _seen(rows: pd.DataFrame, source_table: str) -> pd.DataFrame:
    """One row per user of a day's partition, with what the source says of them (first occurrence wins)."""
    if source_table == "events":
        first = rows.groupby("user_id", as_index=False)["event_time"].min()
        return first.rename(columns={"event_time": "signup_time"})
    rows = rows.sort_values("purchase_time", kind="stable")
    # An orders file without signup times: the first purchase is the earliest the user is known to exist.
    rows = rows.assign(signup_time=rows["signup_time"].fillna(rows["purchase_time"]))
    return rows.drop_duplicates("user_id", keep="first")[["user_id", "signup_time", "sex", "age"]]


def _users(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with exactly the users columns, typed as the schema (missing attributes are null)."""
    frame, n = frame.reset_index(drop=True), len(frame)
    out = pd.DataFrame(
        {
            "user_id": frame["user_id"].astype("int64"),
            "signup_time": pd.to_datetime(frame["signup_time"], utc=True, cache=False).astype("datetime64[us, UTC]"),
            "country": frame["country"] if "country" in frame else pd.Series([None] * n, dtype=object),
            "age": (frame["age"] if "age" in frame else pd.Series([None] * n)).astype("Int32"),
            "sex": frame["sex"] if "sex" in frame else pd.Series([None] * n, dtype=object),
        }
    )
    return out


def _no_follows() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "follower_id": pd.array([], dtype="int64"),
            "followee_id": pd.array([], dtype="int64"),
            "created_at": pd.to_datetime([], utc=True, cache=False),
        }
    )
