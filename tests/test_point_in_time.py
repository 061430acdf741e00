"""The lake point-in-time join gives Feast's values for every feature service, and keeps the rows Feast drops."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from feature_repo.definitions import definitions
from feature_repo.parts import lake_table
from pipelines.data import schemas
from pipelines.features.point_in_time import StoredView, join_view
from pipelines.features.store import feature_store, historical_features
from pipelines.lake import Lake
from pipelines.settings import Settings

DAYS = [dt.date(2024, 6, 1) + dt.timedelta(days=i) for i in range(6)]
USERS = list(range(1, 9))  # user 8 has rows only from the fifth day on
LATE_USER = 8
PRODUCTS = list(range(100, 110))
CATEGORIES = [1, 2, 3]
ORDERS = [f"o-{i}" for i in range(36)]
KEY_VALUES = {"user_id": USERS, "product_id": PRODUCTS, "category_id": CATEGORIES}


TRAINING_SERVICES = ("purchase_intent", "order_fraud", "product_ranking")


def _as_of(day: dt.date) -> pd.Timestamp:
    return pd.Timestamp(schemas.as_of(day)).tz_convert("UTC")


def _order_time(order: str) -> pd.Timestamp:
    i = int(order.split("-")[1])
    return _as_of(DAYS[i % len(DAYS)]) - pd.Timedelta(hours=1 + i % 20, minutes=i)


def _view_rows(view, rng: np.random.Generator) -> dict[dt.date, pd.DataFrame]:
    """Random rows of a view per day: daily views stamp as_of(day) for ~70% of their keys, orders their time."""
    features = [f.name for f in view.features]
    parts = {}
    for day in DAYS:
        if view.join_keys == ["order_id"]:
            keys = pd.DataFrame({"order_id": [o for o in ORDERS if _order_time(o).date() == day]})
            stamps = keys["order_id"].map(_order_time)
        else:
            grid = pd.MultiIndex.from_product([KEY_VALUES[k] for k in view.join_keys], names=view.join_keys)
            keys = grid.to_frame(index=False)
            keys = keys[rng.random(len(keys)) < 0.7]
            if "user_id" in view.join_keys and day < DAYS[4]:
                keys = keys[keys["user_id"] != LATE_USER]
            stamps = pd.Series(_as_of(day), index=keys.index)
        frame = keys.reset_index(drop=True).assign(event_timestamp=stamps.dt.as_unit("us").to_numpy())
        values = rng.normal(size=(len(frame), len(features))).round(3)
        values[rng.random(values.shape) < 0.1] = np.nan
        parts[day] = pd.concat([frame, pd.DataFrame(values, columns=features)], axis=1)
    return parts


@pytest.fixture
def random_lake(settings: Settings, lake: Lake) -> Lake:
    rng = np.random.default_rng(7)
    tables = set()
    repo = definitions(settings)
    # The training services' views (serving-only views, e.g. the order histories checkout reads, are not joined).
    trained = {p.name for s in repo.services if s.name in TRAINING_SERVICES for p in s.feature_view_projections}
    for view in repo.views:
        if view.name not in trained or lake_table(view) in tables:
            continue
        tables.add(lake_table(view))
        for day, frame in _view_rows(view, rng).items():
            if view.name == "product_stats":
                frame.insert(1, "category_id", frame["product_id"] % 3 + 1)
            lake.write(lake_table(view), day, frame)
    return lake


def _stamps() -> list[pd.Timestamp]:
    """Exact daily stamps, between days, before any row, and beyond every ttl."""
    exact = [_as_of(d) for d in DAYS]
    return [
        *exact,
        exact[2] + pd.Timedelta(hours=7),
        exact[0] - pd.Timedelta(days=1),
        exact[-1] + pd.Timedelta(days=50),
    ]


def _feast_rows(settings: Settings, lake: Lake, entity: pd.DataFrame, features, view_name: str) -> pd.DataFrame:
    """Feast's answer for the entity rows whose keys have a row of ``view_name`` in the lake (Dask fails on a
    request without any)."""
    view = next(v for v in definitions(settings).views if v.name == view_name)
    stored = lake.read_range(lake_table(view), DAYS[0], DAYS[-1], columns=view.join_keys).drop_duplicates()
    known = entity.merge(stored, on=view.join_keys, how="inner").drop_duplicates(ignore_index=True)
    got = feature_store(settings).get_historical_features(entity_df=known, features=features).to_df()
    got["event_timestamp"] = pd.to_datetime(got["event_timestamp"], utc=True).dt.as_unit("ns")
    return got


def _assert_same_as_feast(
    ours: pd.DataFrame, feast: pd.DataFrame, on: list[str], columns: list[str], stored: list[str]
) -> None:
    """Feast's values on the rows it returns; NaN stored features on the rows it drops (both cases occur)."""
    ours = ours.assign(event_timestamp=pd.to_datetime(ours["event_timestamp"], utc=True).dt.as_unit("ns"))
    merged = ours[[*on, *columns]].merge(
        feast[[*on, *columns]].drop_duplicates(on), on=on, how="left", suffixes=("", "_feast"), indicator=True
    )
    returned = (merged["_merge"] == "both").to_numpy()
    assert returned.sum() > 10 and (~returned).sum() > 0, "the data must have rows Feast returns and drops"
    for column in columns:
        np.testing.assert_array_equal(
            merged.loc[returned, column].to_numpy(), merged.loc[returned, f"{column}_feast"].to_numpy(), column
        )
    assert merged.loc[~returned, stored].isna().all().all()
    assert ours[stored].notna().any().all(), "every feature must be found for some rows"


def test_purchase_intent_matches_feast_and_keeps_every_row(settings: Settings, random_lake: Lake):
    grid = pd.MultiIndex.from_product([[*USERS, 99], _stamps()], names=["user_id", "event_timestamp"])
    entity = grid.to_frame(index=False).assign(label=1)

    ours = historical_features(settings, entity, "purchase_intent")

    assert len(ours) == len(entity)
    pd.testing.assert_frame_equal(ours[entity.columns], entity)
    columns = [c for c in ours.columns if c not in entity.columns]
    feast = _feast_rows(
        settings,
        random_lake,
        entity[["user_id", "event_timestamp"]],
        _service(settings, "purchase_intent"),
        "user_behavior",
    )
    _assert_same_as_feast(ours, feast, ["user_id", "event_timestamp"], columns, columns)


def test_order_fraud_matches_feast_with_its_on_demand_features(settings: Settings, random_lake: Lake):
    times = pd.Series([_order_time(o) for o in ORDERS])
    entity = pd.DataFrame(
        {
            "order_id": [*ORDERS, *ORDERS, *ORDERS[:6], "o-unknown"],
            # at the order's time, a second before its row exists, and beyond the 2-day ttl
            "event_timestamp": [
                *times,
                *(times - pd.Timedelta(seconds=1)),
                *(times[:6] + pd.Timedelta(days=3)),
                times[0],
            ],
        }
    )
    entity["purchase_value"] = np.arange(len(entity)) * 3.5

    ours = historical_features(settings, entity, "order_fraud")

    assert len(ours) == len(entity)
    columns = [c for c in ours.columns if c not in entity.columns]
    stored = [c for c in columns if c not in {"log_purchase_value", "value_to_user_mean"}]
    feast = _feast_rows(settings, random_lake, entity, _service(settings, "order_fraud"), "order_risk")
    _assert_same_as_feast(ours, feast, ["order_id", "event_timestamp"], columns, stored)
    assert ours["log_purchase_value"].to_numpy() == pytest.approx(np.log1p(entity["purchase_value"].to_numpy()))


def test_product_ranking_matches_feast_view_by_view(settings: Settings, random_lake: Lake):
    rng = np.random.default_rng(11)
    stamps = _stamps()
    n = 600
    entity = pd.DataFrame(
        {
            "user_id": rng.choice([*USERS, 99], n),
            "product_id": rng.choice([*PRODUCTS, 999], n),
            "event_timestamp": [stamps[i] for i in rng.integers(0, len(stamps), n)],
        }
    )
    entity["category_id"] = entity["product_id"] % 3 + 1

    ours = historical_features(settings, entity, "product_ranking")

    assert len(ours) == len(entity)
    pd.testing.assert_frame_equal(ours[entity.columns], entity)
    # Feast drops a row lacking any one view, so each view of the service is asked alone on its own keys.
    served = {p.name for p in _service(settings, "product_ranking").feature_view_projections}
    for view in definitions(settings).views:
        if view.name not in served:
            continue
        on = [*view.join_keys, "event_timestamp"]
        columns = [f.name for f in view.features]
        feast = _feast_rows(settings, random_lake, entity[on], [f"{view.name}:{c}" for c in columns], view.name)
        _assert_same_as_feast(ours, feast, on, columns, columns)


def _service(settings: Settings, name: str):
    return feature_store(settings).get_feature_service(name)


def test_the_join_takes_the_newest_row_within_the_ttl_and_the_last_of_equal_stamps():
    view = StoredView("v", "t", ("k",), "ts", dt.timedelta(hours=2), ("x",), ("x",))
    t0 = pd.Timestamp("2024-01-01", tz="UTC")
    rows = pd.DataFrame(
        {
            "k": [1, 1, 1, 2],
            "ts": [t0, t0 + pd.Timedelta(hours=1), t0 + pd.Timedelta(hours=1), t0],
            "x": [1.0, 2.0, 3.0, 4.0],
        }
    )
    entity = pd.DataFrame(
        {
            "k": [2, 1, 1, 1, 3],
            "event_timestamp": [
                t0,
                t0 + pd.Timedelta(minutes=30),
                t0 + pd.Timedelta(hours=3),
                t0 - pd.Timedelta(1),
                t0,
            ],
        }
    )

    out = join_view(entity, rows, view)

    np.testing.assert_array_equal(out["x"].to_numpy(), [4.0, 1.0, 3.0, np.nan, np.nan])
