"""User behaviour features on ``dask.dataframe``: the lake's event partitions are hashed by user into partitions
and each one is computed by the pandas core ``compute_user_features``, so both engines give the same rows.

A user's features read only their own events, except ``followee_purchases_7d``: each partition therefore also
receives the purchase events, signups and follow edges of its users' followees (and the edges pointing at its
users), and keeps only the rows of its own users.
"""

from __future__ import annotations

import datetime as dt

import dask.dataframe as dd
import pandas as pd
from distributed import Client

from pipelines.compute.partitions import PART, by_partition, lake_frame, partition_of, with_part
from pipelines.features.user_features import (
    _EVENT_COLUMNS,
    ENTITY_COLUMN,
    USER_FEATURES_SCHEMA,
    WINDOW_DAYS,
    compute_user_features,
)
from pipelines.lake import Lake, PartitionNotFound, date_range

_OWN = "_own"
_USER_COLUMNS = ["user_id", "signup_time"]
_FOLLOW_COLUMNS = ["follower_id", "followee_id", "created_at"]


def _followee_pairs(follows: pd.DataFrame, parts: int) -> pd.DataFrame:
    """(followee ``user_id``, ``_part`` of a follower) for the edges whose ends live in different partitions."""
    pairs = pd.DataFrame(
        {"user_id": follows["followee_id"].to_numpy(), PART: partition_of(follows["follower_id"], parts)}
    )
    return pairs[pairs[PART].to_numpy() != partition_of(pairs["user_id"], parts)]


def _both_ends(follows: pd.DataFrame, parts: int) -> pd.DataFrame:
    """Each edge keyed by its follower's partition, and also by its followee's when that differs."""
    a, b = partition_of(follows["follower_id"], parts), partition_of(follows["followee_id"], parts)
    other = a != b
    return pd.concat([follows.assign(**{PART: a}), follows[other].assign(**{PART: b[other]})], ignore_index=True)


def _route(
    events: dd.DataFrame, users: dd.DataFrame, follows: dd.DataFrame, parts: int
) -> tuple[dd.DataFrame, dd.DataFrame, dd.DataFrame]:
    """The three inputs, each row keyed by every partition that needs it, aligned by partition."""
    pairs = follows.map_partitions(_followee_pairs, parts).drop_duplicates()
    followee_purchases = events[events["event_type"] == "purchase"].merge(pairs, on="user_id")
    events = dd.concat(
        [events.map_partitions(with_part, "user_id", parts), followee_purchases[[*_EVENT_COLUMNS, PART]]]
    )
    users = dd.concat(
        [
            users.map_partitions(with_part, "user_id", parts).assign(**{_OWN: True}),
            users.merge(pairs, on="user_id").assign(**{_OWN: False}),
        ]
    )
    follows = follows.map_partitions(_both_ends, parts)
    return by_partition(events, parts), by_partition(users, parts), by_partition(follows, parts)


def _compute_part(
    events: pd.DataFrame, users: pd.DataFrame, follows: pd.DataFrame, ds: dt.date, zone: str
) -> pd.DataFrame:
    features = compute_user_features(
        events.reset_index(drop=True), users.reset_index(drop=True), follows.reset_index(drop=True), ds, zone
    )
    own = users.loc[users[_OWN].astype(bool), "user_id"].astype("int64")
    return features[features[ENTITY_COLUMN].isin(own)].reset_index(drop=True)


def user_features_dask(client: Client, lake: Lake, ds: dt.date, parts: int) -> pd.DataFrame:
    """The same frame as ``build_user_features(lake, ds)``, computed on the cluster of ``client``."""
    if not lake.exists("events", ds):
        raise PartitionNotFound(f"{lake.uri('events')}: no partition for ds={ds}")
    days = [d for d in date_range(ds - dt.timedelta(days=WINDOW_DAYS - 1), ds) if lake.exists("events", d)]
    events = lake_frame(lake, "events", days, _EVENT_COLUMNS)
    users = lake_frame(lake, "users", [ds], _USER_COLUMNS)
    follows = lake_frame(lake, "follows", [ds], _FOLLOW_COLUMNS)
    ev, us, fo = _route(events, users, follows, parts)
    meta = USER_FEATURES_SCHEMA.empty_table().to_pandas()
    frame = dd.map_partitions(_compute_part, ev, us, fo, ds, lake.day_zone, meta=meta)
    out = client.compute(frame).result()
    return out.sort_values(ENTITY_COLUMN, kind="stable").reset_index(drop=True)
