"""Training/serving skew: logged online features equal to the offline point-in-time ones give zero skew; a feature
served wrong is the only one flagged, with its share of rows and its mean gap."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from pipelines.data import schemas
from pipelines.features import order_features, user_features
from pipelines.features.store import historical_features
from pipelines.lake import Lake
from pipelines.monitoring.skew import (
    NoPredictionLog,
    compare_features,
    latest_skew,
    publish_skew,
    read_skew,
    training_serving_skew,
)
from pipelines.serving.prediction_log import PredictionLog
from pipelines.settings import PROJECT_ROOT, Settings
from pipelines.specs import ModelSpec, load_spec

DAYS = [dt.date(2024, 6, 1) + dt.timedelta(days=i) for i in range(3)]
LOG_DAY = DAYS[-1]
USERS = list(range(1, 9))
UNKNOWN_USER = 99  # never has features: missing online and offline alike, which is not skew
ORDERS = [f"o-{i}" for i in range(12)]


def _spec(name: str) -> ModelSpec:
    return load_spec(PROJECT_ROOT / "models" / f"{name}.yaml")


def _as_of(day: dt.date) -> pd.Timestamp:
    return pd.Timestamp(schemas.as_of(day)).tz_convert("UTC")


def _order_time(order: str) -> pd.Timestamp:
    return pd.Timestamp(dt.datetime.combine(LOG_DAY, dt.time(1), tzinfo=dt.UTC)) + pd.Timedelta(
        hours=int(order.split("-")[1])
    )


@pytest.fixture
def world(settings: Settings, lake: Lake) -> Lake:
    """Daily user behaviour rows (stamped as_of(day), some values missing) and per-order risk rows of LOG_DAY."""
    rng = np.random.default_rng(11)
    for day in DAYS:
        values = rng.normal(size=(len(USERS), len(user_features.FEATURE_COLUMNS))).round(4)
        values[rng.random(values.shape) < 0.1] = np.nan
        frame = pd.DataFrame(values, columns=user_features.FEATURE_COLUMNS)
        frame.insert(0, "user_id", pd.Series(USERS, dtype="int64"))
        frame.insert(1, "event_timestamp", _as_of(day))
        lake.write(user_features.USER_FEATURES_TABLE, day, frame)
    values = np.abs(rng.normal(size=(len(ORDERS), len(order_features.FEATURE_COLUMNS)))) * 50
    orders = pd.DataFrame(values, columns=order_features.FEATURE_COLUMNS)
    orders.insert(0, "order_id", ORDERS)
    orders.insert(1, "event_timestamp", [_order_time(o) for o in ORDERS])
    lake.write(order_features.ORDER_FEATURES_TABLE, LOG_DAY, orders)
    return lake


def _served_users() -> pd.DataFrame:
    """Requests of LOG_DAY: every user a few times, and one user the store does not know."""
    times = [pd.Timestamp(dt.datetime.combine(LOG_DAY, dt.time(h, 17), tzinfo=dt.UTC)) for h in (0, 9, 23)]
    grid = pd.MultiIndex.from_product([[*USERS, UNKNOWN_USER], times], names=["user_id", "event_timestamp"])
    return grid.to_frame(index=False)


def _log(
    lake: Lake, model: str, rows: pd.DataFrame, keys: list[str], features: list[str], flush_rows: int = 10_000
) -> None:
    """Log ``rows`` as the server would: their keys as the entity, their feature values, at their times."""
    with PredictionLog(lake, flush_seconds=600, flush_rows=flush_rows) as plog:
        for i, row in enumerate(rows.to_dict("records")):
            if i and i % flush_rows == 0:
                plog.flush()  # one part per flush_rows rows, deterministically
            entity = {k: row[k] for k in keys}
            served = {f: row[f] for f in features}
            assert plog.append(model, "5", f"req-{i}", entity, 0.5, served, at=row["event_timestamp"].to_pydatetime())


def test_features_served_as_training_sees_them_have_no_skew(settings: Settings, world: Lake):
    served = historical_features(settings, _served_users(), "purchase_intent")  # the training join
    _log(world, "purchase_intent", served, ["user_id"], user_features.FEATURE_COLUMNS)

    report = training_serving_skew(settings, _spec("purchase_intent"), LOG_DAY)

    assert report.rows == len(served) and report.versions == ["5"]
    assert (report.parts_read, report.parts_total, report.sampled) == (1, 1, False)
    assert [f.feature for f in report.features] == user_features.FEATURE_COLUMNS
    assert report.flagged == []
    for skew in report.features:
        assert skew.differ_share == 0.0 and skew.mean_abs_diff in (0.0, None), skew
        assert skew.missing_online_share == skew.missing_offline_share > 0  # the unknown user, some NaN values
    assert report.not_compared == {}


def test_one_feature_served_wrong_is_the_only_one_flagged(settings: Settings, world: Lake):
    served = historical_features(settings, _served_users(), "purchase_intent")
    wrong = "views_7d"
    present = served.index[served[wrong].notna()]
    shifted, lost = present[::2], present[1:6:2]
    served.loc[shifted, wrong] += 0.25  # e.g. served from a stale or differently computed window
    served.loc[lost, wrong] = np.nan  # missing online where training has a value
    _log(world, "purchase_intent", served, ["user_id"], user_features.FEATURE_COLUMNS)

    report = training_serving_skew(settings, _spec("purchase_intent"), LOG_DAY)

    assert report.flagged == [wrong]
    skew = report.feature(wrong)
    assert skew.differ_share == pytest.approx((len(shifted) + len(lost)) / len(served))
    both_present = len(present) - len(lost)
    assert skew.mean_abs_diff == pytest.approx(0.25 * len(shifted) / both_present)
    assert skew.missing_online_share == pytest.approx(skew.missing_offline_share + len(lost) / len(served))
    assert all(f.differ_share == 0.0 for f in report.features if f.feature != wrong)


def _orders_at_checkout() -> pd.DataFrame:
    value = [19.0 + 7 * i for i in range(len(ORDERS))]
    return pd.DataFrame(
        {"order_id": ORDERS, "event_timestamp": [_order_time(o) for o in ORDERS], "purchase_value": value}
    )


def test_order_fraud_on_demand_features_are_recomputed_from_logged_request_fields(settings: Settings, world: Lake):
    spec = _spec("order_fraud")
    served = historical_features(settings, _orders_at_checkout(), spec.feature_service)
    features = [c for c in served.columns if c not in ("order_id", "event_timestamp", "purchase_value")]
    assert {"log_purchase_value", "value_to_user_mean"} <= set(features)
    served.loc[served.index[:3], "value_to_user_mean"] *= 2  # the app computed the ratio its own way
    _log(world, "order_fraud", served, ["order_id", "purchase_value"], features)

    report = training_serving_skew(settings, spec, LOG_DAY)

    assert report.flagged == ["value_to_user_mean"]
    assert report.feature("value_to_user_mean").differ_share == pytest.approx(3 / len(ORDERS))
    assert report.feature("log_purchase_value").differ_share == 0.0
    assert report.not_compared == {}


def test_without_logged_request_fields_on_demand_features_are_not_compared(settings: Settings, world: Lake):
    spec = _spec("order_fraud")
    served = historical_features(settings, _orders_at_checkout(), spec.feature_service)
    stored = order_features.FEATURE_COLUMNS
    _log(world, "order_fraud", served, ["order_id"], [*stored, "log_purchase_value", "value_to_user_mean"])

    report = training_serving_skew(settings, spec, LOG_DAY)

    assert [f.feature for f in report.features] == stored and report.flagged == []
    assert set(report.not_compared) == {"log_purchase_value", "value_to_user_mean"}
    assert "['purchase_value'] are not in the prediction log" in report.not_compared["log_purchase_value"]


def test_a_large_day_is_compared_on_a_sample_of_whole_parts(settings: Settings, world: Lake):
    served = historical_features(settings, _served_users(), "purchase_intent")
    _log(world, "purchase_intent", served, ["user_id"], user_features.FEATURE_COLUMNS, flush_rows=3)

    report = training_serving_skew(settings, _spec("purchase_intent"), LOG_DAY, max_rows=7)

    assert (report.parts_total, report.parts_read, report.sampled) == (9, 3, True)
    assert report.rows == 9 and report.to_dict()["sampled"] is True
    assert report.flagged == []


def test_a_day_without_a_prediction_log_is_a_clear_error(settings: Settings, world: Lake):
    served = historical_features(settings, _served_users(), "purchase_intent")
    _log(world, "purchase_intent", served, ["user_id"], user_features.FEATURE_COLUMNS)

    with pytest.raises(
        NoPredictionLog, match=r"model 'purchase_intent': no prediction log for 2024-06-01 .*2024-06-03"
    ):
        training_serving_skew(settings, _spec("purchase_intent"), DAYS[0])


def test_published_report_reads_back(settings: Settings, world: Lake):
    served = historical_features(settings, _served_users(), "purchase_intent")
    _log(world, "purchase_intent", served, ["user_id"], user_features.FEATURE_COLUMNS)
    report = training_serving_skew(settings, _spec("purchase_intent"), LOG_DAY)

    uri = publish_skew(settings, report)

    assert uri.endswith("monitoring/skew/purchase_intent/ds=2024-06-03/skew.json")
    stored = read_skew(settings, "purchase_intent", LOG_DAY)
    assert stored == report.to_dict()
    assert stored["day"] == "2024-06-03" and stored["flagged"] == [] and len(stored["features"]) == len(report.features)
    assert latest_skew(settings, "purchase_intent") == stored
    assert latest_skew(settings, "order_fraud") is None and read_skew(settings, "purchase_intent", DAYS[0]) is None


def test_compare_features_counts_one_sided_missing_values_as_differences():
    online = pd.DataFrame({"a": [1.0, np.nan, 3.0, np.nan], "b": [0.0, 0.0, 0.0, 0.0]})
    offline = pd.DataFrame({"a": [1.0, 2.0, 3.5, np.nan], "b": [0.0, 0.0, 0.0, 1e-12], "c": [1.0, 1.0, 1.0, 1.0]})

    a, b, c = compare_features(online, offline, ["a", "b", "c"])

    assert (a.differ_share, a.mean_abs_diff, a.missing_online_share, a.missing_offline_share) == (0.5, 0.25, 0.5, 0.25)
    assert (b.differ_share, b.missing_online_share) == (0.0, 0.0)  # within the tolerance
    assert (c.differ_share, c.mean_abs_diff, c.missing_online_share) == (1.0, None, 1.0)  # never logged


def test_daily_skew_step_publishes_every_served_model_and_passes_quiet_days(settings: Settings, world: Lake):
    from pipelines.flows import daily_features

    served = historical_features(settings, _served_users(), "purchase_intent")
    served.loc[served["user_id"] == 3, "views_7d"] += 1.0  # one value served wrong
    _log(world, "purchase_intent", served, ["user_id"], user_features.FEATURE_COLUMNS)

    result = daily_features.skew(settings, LOG_DAY)

    assert result == {"models": {"purchase_intent": {"rows": len(served), "flagged": ["views_7d"]}}, "aliases": {}}
    assert latest_skew(settings, "purchase_intent")["flagged"] == ["views_7d"]
    assert daily_features.skew(settings, DAYS[0]) == {"models": {}, "aliases": {}}  # nothing served: nothing to compare


def test_status_line_names_the_features_that_differ(settings: Settings, world: Lake):
    from pipelines.status import skew_line

    assert skew_line(None) == "training/serving skew: no served predictions compared yet"
    served = historical_features(settings, _served_users(), "purchase_intent")
    _log(world, "purchase_intent", served, ["user_id"], user_features.FEATURE_COLUMNS)
    publish_skew(settings, training_serving_skew(settings, _spec("purchase_intent"), LOG_DAY))
    line = skew_line(latest_skew(settings, "purchase_intent"))
    assert line.startswith(f"training/serving skew on {LOG_DAY} ({len(served)} logged rows): none")

    served.loc[served["user_id"] == 3, "views_7d"] += 1.0
    _log(world, "purchase_intent", served, ["user_id"], user_features.FEATURE_COLUMNS)  # a second part, same day
    publish_skew(settings, training_serving_skew(settings, _spec("purchase_intent"), LOG_DAY))
    line = skew_line(latest_skew(settings, "purchase_intent"))
    assert "views_7d differs in" in line and "of rows" in line
