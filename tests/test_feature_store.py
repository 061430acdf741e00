"""Feast store: materialize into SQLite and Redis, exact online reads, freshness, point-in-time joins."""

from __future__ import annotations

import datetime as dt
import uuid

import numpy as np
import pandas as pd
import pytest

from pipelines.data import schemas
from pipelines.features.store import (
    FeatureStoreError,
    MissingOnlineFeatures,
    feature_store,
    historical_features,
    materialize_day,
    online_features,
    online_freshness,
)
from pipelines.features.user_features import FEATURE_COLUMNS, write_user_features
from pipelines.lake import Lake
from pipelines.settings import Settings, get_settings
from tests.conftest import service_unavailable

D1, D2, D3 = dt.date(2024, 6, 1), dt.date(2024, 6, 2), dt.date(2024, 6, 3)
USERS = [1, 2, 3]


def _day_features(ds: dt.date, users: list[int]) -> pd.DataFrame:
    """Feature rows whose values encode (day, user, column): day-of-month * 1000 + user * 10 + column."""
    df = pd.DataFrame({"user_id": pd.Series(users, dtype="int64")})
    df["event_timestamp"] = pd.Timestamp(schemas.as_of(ds))
    for i, column in enumerate(FEATURE_COLUMNS):
        df[column] = ds.day * 1000.0 + df["user_id"] * 10.0 + i
    return df


def _expected(ds: dt.date, user: int) -> list[float]:
    return [ds.day * 1000.0 + user * 10.0 + i for i in range(len(FEATURE_COLUMNS))]


@pytest.fixture
def feature_lake(lake: Lake) -> Lake:
    write_user_features(lake, D1, _day_features(D1, [1, 2]))  # user 3 appears from D2 on
    write_user_features(lake, D2, _day_features(D2, USERS))
    write_user_features(lake, D3, _day_features(D3, USERS))
    return lake


def test_materialized_day_reads_back_exactly_and_a_rerun_changes_nothing(settings: Settings, feature_lake):
    assert materialize_day(settings, D2) == 3

    first = online_features(settings, "purchase_intent", [2, 1, 3])

    assert list(first.columns) == ["user_id", *FEATURE_COLUMNS]
    assert first["user_id"].tolist() == [2, 1, 3]
    for row, user in zip(first.itertuples(index=False), [2, 1, 3], strict=True):
        assert list(row[1:]) == _expected(D2, user)

    assert materialize_day(settings, D2) == 3
    pd.testing.assert_frame_equal(online_features(settings, "purchase_intent", [2, 1, 3]), first)


def test_a_newer_day_replaces_online_values_and_an_older_one_is_skipped(settings: Settings, feature_lake):
    materialize_day(settings, D2)
    materialize_day(settings, D3)

    assert materialize_day(settings, D1) == 0, "backfilling an old day must not overwrite newer features"
    values = online_features(settings, "purchase_intent", [1])
    assert values.iloc[0, 1:].tolist() == _expected(D3, 1)


def test_unknown_users_get_nan_features_or_a_clear_error(settings: Settings, feature_lake):
    materialize_day(settings, D3)

    values = online_features(settings, "purchase_intent", [1, 424242])
    assert values.loc[0, FEATURE_COLUMNS].notna().all()
    assert values.loc[1, FEATURE_COLUMNS].isna().all()

    with pytest.raises(MissingOnlineFeatures, match="424242"):
        online_features(settings, "purchase_intent", [1, 424242], missing="raise")
    with pytest.raises(FeatureStoreError, match="no_such_service"):
        online_features(settings, "no_such_service", [1])


def test_materializing_a_day_without_features_fails_with_what_to_do(settings: Settings, feature_lake):
    with pytest.raises(FeatureStoreError, match="ds=2024-06-09.*build the day.s features first"):
        materialize_day(settings, dt.date(2024, 6, 9))


def test_freshness_compares_the_newest_online_timestamp_with_max_age(settings: Settings, feature_lake):
    before = online_freshness(settings, "purchase_intent", USERS, dt.timedelta(hours=48), dt.datetime.now(dt.UTC))
    assert not before.fresh and before.checked == 0 and "materialize" in before.message

    materialize_day(settings, D3)
    as_of = schemas.as_of(D3)

    fresh = online_freshness(
        settings, "purchase_intent", [*USERS, 999], dt.timedelta(hours=48), as_of + dt.timedelta(hours=30)
    )
    assert fresh.fresh and fresh.newest_event_timestamp == as_of and fresh.checked == 3

    stale = online_freshness(settings, "purchase_intent", USERS, dt.timedelta(hours=48), as_of + dt.timedelta(days=3))
    assert not stale.fresh and "STALE" in stale.message


def test_freshness_without_a_sample_checks_users_of_the_newest_feature_day(settings: Settings, feature_lake):
    materialize_day(settings, D3)

    report = online_freshness(settings, "purchase_intent", max_age=dt.timedelta(hours=48))

    assert report.checked == 3 and report.newest_event_timestamp == schemas.as_of(D3)
    assert report.fresh == (dt.datetime.now(dt.UTC) - schemas.as_of(D3) <= dt.timedelta(hours=48))


def test_historical_features_are_point_in_time_correct_and_keep_every_row(settings: Settings, feature_lake):
    as_of = {d: pd.Timestamp(schemas.as_of(d)) for d in (D1, D2, D3)}
    entity_df = pd.DataFrame(
        {
            "user_id": [1, 1, 3, 3, 2, 1, 2],
            "event_timestamp": [
                as_of[D2],  # exactly day D2's stamp: D2's values, not D3's
                as_of[D2] + pd.Timedelta(hours=12),  # between days: still D2
                as_of[D1],  # user 3 has rows only later: Feast drops this row, we keep it (NaN)
                as_of[D3],
                as_of[D3] + pd.Timedelta(days=10),  # beyond the ttl: NaN
                as_of[D2],  # a duplicate request row is kept
                as_of[D1] - pd.Timedelta(days=1),  # before any feature row
            ],
            "label": [1, 0, 1, 0, 1, 1, 0],
        },
        index=[10, 11, 12, 13, 14, 15, 16],
    )

    out = historical_features(settings, entity_df, "purchase_intent")

    assert len(out) == len(entity_df)
    pd.testing.assert_frame_equal(out[entity_df.columns], entity_df)
    assert out.loc[10, FEATURE_COLUMNS].tolist() == _expected(D2, 1)
    assert out.loc[11, FEATURE_COLUMNS].tolist() == _expected(D2, 1)
    assert out.loc[15, FEATURE_COLUMNS].tolist() == _expected(D2, 1)
    assert out.loc[13, FEATURE_COLUMNS].tolist() == _expected(D3, 3)
    assert out.loc[[12, 14, 16], FEATURE_COLUMNS].isna().all().all()


def test_applying_the_definitions_again_is_a_no_op(settings: Settings, feature_lake):
    store = feature_store(settings)
    version = store.registry.get_feature_view("user_behavior", settings.feast_project).last_updated_timestamp

    again = feature_store(settings)

    assert again.registry.get_feature_view("user_behavior", settings.feast_project).last_updated_timestamp == version
    assert {"purchase_intent", "order_fraud"} <= {s.name for s in again.list_feature_services()}


def test_materialize_into_redis(tmp_path):
    redis = pytest.importorskip("redis")
    client = redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.exceptions.ConnectionError as exc:
        service_unavailable("Redis at 127.0.0.1:6379", str(exc))
    project = f"test_{uuid.uuid4().hex[:12]}"
    settings = get_settings(
        home=tmp_path / ".storefront",
        num_threads=1,
        feast_project=project,
        feast_online_store="redis",
        redis_url="127.0.0.1:6379",
    )
    lake = Lake(settings)
    write_user_features(lake, D2, _day_features(D2, USERS))
    try:
        assert materialize_day(settings, D2) == 3
        assert materialize_day(settings, D2) == 3

        values = online_features(settings, "purchase_intent", [3, 1, 777])

        assert values.iloc[0, 1:].tolist() == _expected(D2, 3)
        assert values.iloc[1, 1:].tolist() == _expected(D2, 1)
        assert np.isnan(values.iloc[2, 1:].to_numpy(dtype=float)).all()
        assert len(list(client.scan_iter(match=f"*{project}"))) == 3
    finally:
        keys = list(client.scan_iter(match=f"*{project}"))
        if keys:
            client.delete(*keys)
