"""User behaviour features: exact values on a hand-made day, every known user, lake round trip, speed."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from pipelines.data import schemas
from pipelines.features.user_features import (
    FEATURE_COLUMNS,
    USER_FEATURES_TABLE,
    build_user_features,
    compute_user_features,
    write_user_features,
)
from pipelines.lake import Lake, PartitionNotFound

DS = dt.date(2024, 5, 10)
DAY = pd.Timestamp(DS, tz="UTC")  # start of ds; as_of(ds) is DAY + 1 day


def _events(rows: list[tuple]) -> pd.DataFrame:
    """rows: (time, user_id, session_id, event_type, product_id, price)."""
    df = pd.DataFrame(rows, columns=["event_time", "user_id", "session_id", "event_type", "product_id", "price"])
    df["event_time"] = pd.to_datetime(df["event_time"], utc=True)
    df.insert(0, "event_id", [f"e{i}" for i in range(len(df))])
    df["category_id"] = 1
    df["brand"] = "acme"
    df["merchant_id"] = 1
    return df[[f.name for f in schemas.EVENTS]]


def _users(signups: dict[int, pd.Timestamp]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": list(signups),
            "signup_time": pd.to_datetime(list(signups.values()), utc=True),
            "country": "DE",
            "age": np.int32(30),
            "sex": "f",
        }
    )


def _follows(edges: list[tuple[int, int, pd.Timestamp]]) -> pd.DataFrame:
    df = pd.DataFrame(edges, columns=["follower_id", "followee_id", "created_at"])
    df["created_at"] = pd.to_datetime(df["created_at"], utc=True)
    return df


@pytest.fixture
def day_tables() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    h = pd.Timedelta(hours=1)
    d = pd.Timedelta(days=1)
    events = _events(
        [
            # user 1: two views yesterday, a cart today (never bought)
            (DAY - d + 10 * h, 1, "s1", "view", 7, 10.0),
            (DAY - d + 12 * h, 1, "s1", "view", 8, 30.0),
            (DAY + 18 * h, 1, "s2", "cart", 7, 10.0),
            # user 2: carts and buys product 9; another purchase 3 days ago; an old purchase 10 days ago
            (DAY + 6 * h, 2, "s3", "cart", 9, 50.0),
            (DAY + 12 * h, 2, "s3", "purchase", 9, 50.0),
            (DAY - 3 * d, 2, "s4", "purchase", 5, 20.0),
            (DAY - 10 * d, 2, "s5", "purchase", 5, 20.0),
            # outside the window: after as_of(ds), and 31 days before it
            (DAY + d + h, 1, "s9", "view", 7, 10.0),
            (DAY - 30 * d, 1, "s9", "purchase", 7, 10.0),
            # a user not in the users snapshot is ignored
            (DAY + h, 999, "s8", "view", 7, 10.0),
        ]
    )
    users = _users(
        {
            1: DAY - 60 * d,
            2: DAY - 60 * d,
            3: DAY + 20 * h,  # signed up today, no events
            4: DAY + d + h,  # signs up after ds: not known yet
        }
    )
    follows = _follows(
        [
            (1, 2, DAY - 5 * d),
            (1, 2, DAY - 4 * d),  # the same edge twice counts once
            (3, 2, DAY + 21 * h),
            (2, 1, DAY + d + h),  # created after as_of(ds): not yet
        ]
    )
    return events, users, follows


def test_hand_made_day_gives_exact_counts_recencies_and_social_signals(day_tables):
    events, users, follows = day_tables

    features = compute_user_features(events, users, follows, DS).set_index("user_id")

    assert list(features.index) == [1, 2, 3], "every user known by the end of ds, nobody else"
    u1, u2, u3 = features.loc[1], features.loc[2], features.loc[3]
    assert (u1.views_1d, u1.views_7d, u1.views_30d) == (0, 2, 2)
    assert (u1.carts_1d, u1.carts_7d, u1.purchases_30d) == (1, 1, 0)
    assert u1.days_since_last_event == pytest.approx(0.25)  # cart at 18:00, as_of is midnight
    assert u1.days_since_last_cart == pytest.approx(0.25)
    assert u1.days_since_last_purchase == 30.0  # none within the window
    assert u1.cart_abandonment_7d == 1.0
    assert u1.avg_price_viewed_30d == pytest.approx(20.0)
    assert u1.sessions_7d == 2
    assert (u1.followee_count, u1.follower_count) == (1, 0)
    assert u1.followee_purchases_7d == 2  # user 2 bought twice in the last 7 days

    assert (u2.purchases_7d, u2.purchases_30d) == (2, 3)
    assert u2.cart_abandonment_7d == 0.0
    assert u2.days_since_last_purchase == pytest.approx(0.5)
    assert (u2.follower_count, u2.followee_count, u2.followee_purchases_7d) == (2, 0, 0)
    assert u2.avg_price_viewed_30d == 0.0

    behaviour = [c for c in FEATURE_COLUMNS if not c.startswith(("days_since", "follow"))]
    assert (u3[behaviour] == 0).all()
    assert (u3[["days_since_last_event", "days_since_last_purchase", "days_since_last_cart"]] == 30.0).all()
    assert u3.followee_count == 1 and u3.followee_purchases_7d == 2


def test_output_schema_is_float_features_int_ids_and_as_of_timestamps(day_tables):
    features = compute_user_features(*day_tables, DS)

    assert list(features.columns) == ["user_id", "event_timestamp", *FEATURE_COLUMNS]
    assert features["user_id"].dtype == "int64"
    assert all(features[c].dtype == "float64" for c in FEATURE_COLUMNS)
    assert not features[list(FEATURE_COLUMNS)].isna().any().any()
    assert (features["event_timestamp"] == pd.Timestamp(schemas.as_of(DS))).all()


def test_build_reads_the_lake_and_a_rerun_replaces_the_partition(lake: Lake, day_tables):
    events, users, follows = day_tables
    in_window = events["event_time"] < pd.Timestamp(schemas.as_of(DS))
    for day, part in events[in_window].groupby(events["event_time"].dt.date):
        lake.write("events", day, part, schema=schemas.EVENTS)
    lake.write("users", DS, users, schema=schemas.USERS)
    lake.write("follows", DS, follows, schema=schemas.FOLLOWS)

    built = build_user_features(lake, DS)
    write_user_features(lake, DS, built)
    write_user_features(lake, DS, build_user_features(lake, DS))

    stored = lake.read(USER_FEATURES_TABLE, DS)
    assert len(stored) == 3
    pd.testing.assert_frame_equal(stored, built, check_dtype=False)
    assert stored.set_index("user_id").loc[1, "views_7d"] == 2


def test_build_fails_clearly_when_the_days_events_are_missing(lake: Lake, day_tables):
    _, users, follows = day_tables
    lake.write("users", DS, users, schema=schemas.USERS)
    lake.write("follows", DS, follows, schema=schemas.FOLLOWS)

    with pytest.raises(PartitionNotFound, match="events.*2024-05-10"):
        build_user_features(lake, DS)


def test_five_thousand_users_over_thirty_days_count_every_event_once():
    """At demo scale every user gets a row and every view is counted once (speed: bench/bench_features.py)."""
    rng = np.random.default_rng(7)
    n_users, n_events = 5_000, 15_000 * 30
    start = pd.Timestamp(DS - dt.timedelta(days=29), tz="UTC")
    events = pd.DataFrame(
        {
            "event_time": start + pd.to_timedelta(rng.integers(0, 30 * 86_400, n_events), unit="s"),
            "user_id": rng.integers(1, n_users + 1, n_events),
            "session_id": rng.integers(0, 100_000, n_events).astype(str),
            "event_type": rng.choice(list(schemas.EVENT_TYPES), n_events, p=[0.7, 0.15, 0.05, 0.05, 0.05]),
            "product_id": rng.integers(1, 2_000, n_events),
            "price": rng.uniform(1, 100, n_events),
        }
    )
    users = _users(dict.fromkeys(range(1, n_users + 1), start - pd.Timedelta(days=1)))
    follows = _follows([(int(a), int(b), start) for a, b in rng.integers(1, n_users + 1, size=(20_000, 2))])

    features = compute_user_features(events, users, follows, DS)

    assert len(features) == n_users
    assert features["views_30d"].sum() == (events["event_type"] == "view").sum()
