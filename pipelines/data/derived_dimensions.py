"""Dimension tables for a real event log that comes without them.

The features need a ``users`` snapshot per day (who exists) and a ``follows`` snapshot (the social graph). A
mapped event log has neither: every id seen up to a day becomes a user signed up at its first event (country,
age and sex unknown), and the follow graph is empty, so social features read zero.
"""

from __future__ import annotations

import datetime as dt

import pandas as pd

from pipelines.data import schemas
from pipelines.lake import Lake, PartitionNotFound


def derive_users_and_follows(lake: Lake, days: list[dt.date]) -> dict[dt.date, int]:
    """Write ``users`` and ``follows`` for each of ``days`` (oldest first) from the lake's events; users of a day
    are those of the previous day's snapshot plus the ids first seen that day. Returns users per day."""
    written: dict[dt.date, int] = {}
    for day in sorted(days):
        events = lake.read("events", day, columns=["user_id", "event_time"])
        seen = events.groupby("user_id", as_index=False)["event_time"].min()
        seen = seen.rename(columns={"event_time": "signup_time"})
        try:
            before = lake.read("users", day - dt.timedelta(days=1), columns=["user_id", "signup_time"])
        except PartitionNotFound:
            before = seen.iloc[0:0]
        users = pd.concat([before, seen[~seen["user_id"].isin(before["user_id"])]], ignore_index=True)
        users = users.sort_values("user_id", ignore_index=True).assign(
            country=None, age=pd.array([None] * len(users), dtype="Int32"), sex=None
        )
        lake.write("users", day, users, schema=schemas.USERS)
        follows = pd.DataFrame(
            {"follower_id": pd.array([], dtype="int64"), "followee_id": pd.array([], dtype="int64")}
        ).assign(created_at=pd.to_datetime([], utc=True))
        lake.write("follows", day, follows, schema=schemas.FOLLOWS)
        written[day] = len(users)
    return written
