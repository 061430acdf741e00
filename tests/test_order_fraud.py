"""Order fraud: point-in-time order features, chargeback labels known by the logical date, the training rows'
contract, and the on-demand value features computed alike offline and online."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from pipelines.data import schemas
from pipelines.features.order_features import (
    FEATURE_COLUMNS,
    ORDER_FEATURES_TABLE,
    build_and_write_order_features,
    build_order_features,
    compute_order_features,
    write_order_features,
)
from pipelines.lake import Lake
from pipelines.settings import PROJECT_ROOT, Settings
from pipelines.specs import WindowSpec, load_spec
from pipelines.training.dataset import LABEL_COLUMN, SPLIT_COLUMN, TIMESTAMP_COLUMN, split_days
from pipelines.training.rows_order import build_frame, chargeback_labels, oracle_scores
from pipelines.validation.quarantine import report_key

DS = dt.date(2024, 5, 10)
DAY = pd.Timestamp(DS, tz="UTC")
H = pd.Timedelta(hours=1)
OLD = DAY - pd.Timedelta(days=400)  # an established account's signup


def _orders(rows: list[tuple]) -> pd.DataFrame:
    """rows: (order_id, user_id, signup_time, purchase_time, purchase_value, device_id, ip_address)."""
    columns = ["order_id", "user_id", "signup_time", "purchase_time", "purchase_value", "device_id", "ip_address"]
    df = pd.DataFrame(rows, columns=columns)
    df["signup_time"] = pd.to_datetime(df["signup_time"], utc=True).dt.as_unit("us")
    df["purchase_time"] = pd.to_datetime(df["purchase_time"], utc=True).dt.as_unit("us")
    df["user_id"] = df["user_id"].astype("int64")
    df["purchase_value"] = df["purchase_value"].astype("float64")
    df["source"] = "Ads"
    df["browser"] = "Safari"
    df["sex"] = "F"
    df["age"] = np.int32(30)
    df["merchant_id"] = np.int64(1)
    return df[[f.name for f in schemas.ORDERS]]


def _labels(rows: list[tuple]) -> pd.DataFrame:
    """rows: (order_id, is_fraud, label_time)."""
    df = pd.DataFrame(rows, columns=["order_id", "is_fraud", "label_time"])
    df["is_fraud"] = df["is_fraud"].astype("int8")
    df["label_time"] = pd.to_datetime(df["label_time"], utc=True).dt.as_unit("us")
    return df


NO_LABELS = _labels([])


@pytest.fixture
def history() -> pd.DataFrame:
    """A shared device used by three accounts, a home IP, a burst and a new account buying minutes after signup."""
    return _orders(
        [
            # account 1: regular customer on device d1 / home IP 10.0.0.1
            ("o1", 1, OLD, DAY - pd.Timedelta(days=20), 40.0, "d1", "10.0.0.1"),
            ("o2", 1, OLD, DAY - pd.Timedelta(days=3), 60.0, "d1", "10.0.0.1"),
            # device "ring" shared by accounts 2, 3 and 4; IP 6.6.6.6 shared too
            ("o3", 2, OLD, DAY - pd.Timedelta(days=2), 100.0, "ring", "6.6.6.6"),
            ("o4", 3, OLD, DAY + 1 * H, 200.0, "ring", "6.6.6.6"),
            ("o5", 4, DAY + 1.5 * H, DAY + 2 * H, 300.0, "ring", "6.6.6.6"),
            ("o6", 4, DAY + 1.5 * H, DAY + 2.5 * H, 300.0, "ring", "6.6.6.6"),
            # account 1 again today, from a new device on the same home IP
            ("o7", 1, OLD, DAY + 10 * H, 90.0, "d9", "10.0.0.1"),
        ]
    )


def _row(features: pd.DataFrame, order_id: str) -> pd.Series:
    return features.set_index("order_id").loc[order_id]


def test_velocity_shared_devices_and_account_history_are_counted_exactly(history):
    features = compute_order_features(history, NO_LABELS, DS)

    assert list(features.columns) == ["order_id", "event_timestamp", *FEATURE_COLUMNS]
    assert features["order_id"].tolist() == ["o4", "o5", "o6", "o7"], "only the orders of ds, in time order"
    o4, o5, o6, o7 = (_row(features, o) for o in ("o4", "o5", "o6", "o7"))
    # o4: the ring device saw one other account (2) two days ago, nothing in the last 24 hours
    assert (o4.device_accounts_30d, o4.device_orders_24h, o4.device_orders_7d) == (1, 0, 1)
    assert (o4.user_orders_30d, o4.hours_since_user_last_order) == (0, 31 * 24)
    # o5: account 4 signed up 30 minutes before; device and IP used by accounts 2 and 3, o4 one hour before
    assert o5.account_age_hours == pytest.approx(0.5)
    assert (o5.device_accounts_30d, o5.ip_accounts_30d, o5.device_orders_1h, o5.device_orders_24h) == (2, 2, 1, 1)
    assert o5.device_new_account_orders_30d == 0
    # o6: account 4 again 30 minutes later; its first order counts for the account, not as another account
    assert (o6.user_orders_1h, o6.device_accounts_30d, o6.device_orders_1h, o6.device_orders_24h) == (1, 2, 1, 2)
    assert o6.hours_since_user_last_order == pytest.approx(0.5)
    assert (o6.user_device_age_hours, o6.device_new_account_orders_30d) == (pytest.approx(0.5), 1)
    # o7: account 1 on a device it never used, from its usual IP
    assert (o7.user_orders_30d, o7.user_orders_7d, o7.user_device_orders_30d, o7.user_ip_orders_30d) == (2, 1, 0, 2)
    assert (o7.user_device_age_hours, o7.user_ip_age_hours) == (0, pytest.approx(20 * 24 + 10))
    assert o7.user_mean_value_30d == pytest.approx(50.0)
    assert o7.ip_accounts_30d == 0 and o7.ip_new_device_orders_30d == 1  # o1 (first in the history read)
    assert np.isnan(o4.user_mean_value_30d), "no earlier order of the account: unknown, not 0"


def test_an_order_never_sees_itself_nor_later_orders(history):
    before = compute_order_features(history, NO_LABELS, DS)
    later = _orders(
        [
            ("o8", 3, OLD, DAY + 2.2 * H, 500.0, "ring", "6.6.6.6"),  # between o5 and o6
            ("o9", 1, OLD, DAY + 23 * H, 10.0, "d1", "10.0.0.1"),
            ("o10", 5, OLD, DAY + pd.Timedelta(days=1, hours=1), 10.0, "ring", "6.6.6.6"),  # next day
        ]
    )
    after = compute_order_features(pd.concat([history, later], ignore_index=True), NO_LABELS, DS)

    earlier = ["o4", "o5", "o7"]  # o6 comes after o8 and rightly changes
    pd.testing.assert_frame_equal(
        after.set_index("order_id").loc[earlier],
        before.set_index("order_id").loc[earlier],
    )
    assert "o10" not in set(after["order_id"]), "orders of the next day belong to the next partition"
    assert _row(after, "o6").device_orders_1h == 2 and _row(before, "o6").device_orders_1h == 1


def test_chargebacks_count_only_once_they_have_arrived(history):
    labels = _labels(
        [
            ("o3", 1, DAY + 1.5 * H),  # known to o5 and o6, not to o4
            ("o1", 0, DAY),  # a confirmation is not a chargeback
            ("o2", 1, DAY + 12 * H),  # arrives after o7
        ]
    )
    features = compute_order_features(history, labels, DS)

    assert _row(features, "o4").device_chargebacks_30d == 0
    assert _row(features, "o5").device_chargebacks_30d == 1 and _row(features, "o5").ip_chargebacks_30d == 1
    assert _row(features, "o7").user_chargebacks_30d == 0


def test_the_features_of_a_day_round_trip_through_the_lake(lake: Lake, history):
    lake.write("orders", DS - dt.timedelta(days=3), history.iloc[:3].reset_index(drop=True), schema=schemas.ORDERS)
    lake.write("orders", DS, history.iloc[3:].reset_index(drop=True), schema=schemas.ORDERS)
    lake.write("order_labels", DS, _labels([("o3", 1, DAY + 1.5 * H)]), schema=schemas.ORDER_LABELS)

    built = build_order_features(lake, DS)
    write_order_features(lake, DS, built)

    pd.testing.assert_frame_equal(lake.read(ORDER_FEATURES_TABLE, DS), built)
    assert _row(built, "o5").device_chargebacks_30d == 1 and _row(built, "o7").user_orders_30d == 2


# -- training rows -------------------------------------------------------------------------------------------
D0 = dt.date(2024, 6, 1)
DAYS = [D0 + dt.timedelta(days=i) for i in range(4)]


def _day_orders(day: dt.date, n: int = 4) -> pd.DataFrame:
    """n accounts ordering once a day, each on its own device, from one shared IP."""
    start = pd.Timestamp(day, tz="UTC")
    old = start - pd.Timedelta(days=200)
    rows = []
    for i in range(n):
        rows.append((f"{day:%m%d}-{i}", 100 + i, old, start + (i + 1) * H, 10.0 * (i + 1), f"d{i}", "1.2.3.4"))
    return _orders(rows)


@pytest.fixture
def order_spec():
    spec = load_spec(PROJECT_ROOT / "models" / "order_fraud.yaml")
    return spec.model_copy(update={"windows": WindowSpec(train_days=2, validation_days=1, test_days=1)})


@pytest.fixture
def order_lake(lake: Lake, order_spec) -> Lake:
    """Four order days with their features; chargebacks arriving before, on and after the logical date."""
    logical = DAYS[-1] + dt.timedelta(days=order_spec.label.delay_days)
    for day in DAYS:
        lake.write("orders", day, _day_orders(day), schema=schemas.ORDERS)
        lake.write("truth_order_fraud", day, pd.DataFrame({"order_id": _day_orders(day)["order_id"], "p_fraud": 0.25}))
    arrivals = {
        DAYS[0] + dt.timedelta(days=2): [(f"{DAYS[0]:%m%d}-1", 1), (f"{DAYS[0]:%m%d}-2", 0)],
        logical: [(f"{DAYS[3]:%m%d}-0", 1), (f"{DAYS[2]:%m%d}-3", 1)],
        logical + dt.timedelta(days=1): [(f"{DAYS[1]:%m%d}-0", 1)],  # too late for this run
    }
    for day, rows in arrivals.items():
        at = pd.Timestamp(day, tz="UTC") + 20 * H
        lake.write("order_labels", day, _labels([(o, f, at) for o, f in rows]), schema=schemas.ORDER_LABELS)
    for day in DAYS:
        write_order_features(lake, day, build_order_features(lake, day))
    return lake


def test_labels_are_the_chargebacks_arrived_by_the_logical_date(order_lake: Lake, order_spec):
    logical = DAYS[-1] + dt.timedelta(days=order_spec.label.delay_days)
    rows = pd.concat([_day_orders(d) for d in DAYS], ignore_index=True)
    rows = pd.DataFrame({"order_id": rows["order_id"], TIMESTAMP_COLUMN: rows["purchase_time"]})

    labels = chargeback_labels(order_lake, rows, DAYS[0], logical)

    charged = set(labels.loc[labels[LABEL_COLUMN] == 1, "order_id"])
    assert charged == {f"{DAYS[0]:%m%d}-1", f"{DAYS[3]:%m%d}-0", f"{DAYS[2]:%m%d}-3"}
    assert labels[LABEL_COLUMN].dtype == "int64" and len(labels) == len(rows)


def test_training_rows_meet_the_frame_contract(settings: Settings, order_lake: Lake, order_spec):
    logical = DAYS[-1] + dt.timedelta(days=order_spec.label.delay_days)
    splits = split_days(order_spec, logical)
    assert splits.days == DAYS, "the newest order day is delay_days before the logical date"

    frame = build_frame(settings, order_lake, order_spec, splits, logical)

    assert len(frame) == 4 * len(DAYS)
    assert list(frame.columns[:4]) == ["order_id", TIMESTAMP_COLUMN, LABEL_COLUMN, SPLIT_COLUMN]
    context = [c for c in frame.columns if c.startswith("ctx_")]
    assert context == ["ctx_source", "ctx_browser", "ctx_account_age_days", "ctx_purchase_value"]
    features = frame.columns[4 + len(context) :].tolist()
    assert features == [*FEATURE_COLUMNS, "log_purchase_value", "value_to_user_mean"]
    assert (frame[features].dtypes == "float64").all() and "purchase_value" not in frame.columns
    assert frame[TIMESTAMP_COLUMN].dt.tz is not None and frame["order_id"].map(type).eq(str).all()
    by_day = frame.groupby(frame[TIMESTAMP_COLUMN].dt.date)[SPLIT_COLUMN].unique().map(list).to_dict()
    assert by_day == {DAYS[0]: ["train"], DAYS[1]: ["train"], DAYS[2]: ["validation"], DAYS[3]: ["test"]}
    assert frame[LABEL_COLUMN].sum() == 3
    assert frame["log_purchase_value"].to_numpy() == pytest.approx(np.log1p(frame["ctx_purchase_value"].to_numpy()))

    assert oracle_scores(settings, order_lake, order_spec, frame).tolist() == [0.25] * len(frame)
    real = settings.model_copy(update={"data_source": "ingested"})
    assert oracle_scores(real, order_lake, order_spec, frame) is None


def test_on_demand_value_features_are_the_same_offline_and_online(settings: Settings, order_lake: Lake):
    from pipelines.features.store import historical_features, materialize_day, online_features

    day = DAYS[-1]
    materialize_day(settings, day)
    orders = order_lake.read("orders", day)
    request = pd.DataFrame({"order_id": orders["order_id"], "purchase_value": [35.0, 5.0, 80.0, 0.0]})

    online = online_features(settings, "order_fraud", request)
    offline = historical_features(settings, request.assign(event_timestamp=orders["purchase_time"]), "order_fraud")

    columns = [*FEATURE_COLUMNS, "log_purchase_value", "value_to_user_mean"]
    assert online["order_id"].tolist() == request["order_id"].tolist()
    pd.testing.assert_frame_equal(online[columns], offline[columns])
    assert online["log_purchase_value"].tolist() == pytest.approx(np.log1p(request["purchase_value"]).tolist())
    # every account orders once a day on its own device: the mean of its previous order (10 * (i + 1))
    expected = request["purchase_value"] / (10.0 * np.arange(1, 5))
    assert online["value_to_user_mean"].tolist() == pytest.approx(expected.tolist())


def test_the_daily_step_checks_the_features_before_publishing_them(settings: Settings, lake: Lake, history):
    lake.write("orders", DS, history.iloc[3:].reset_index(drop=True), schema=schemas.ORDERS)

    result = build_and_write_order_features(settings, DS.isoformat())

    assert result["rows"] == 4 and lake.exists(ORDER_FEATURES_TABLE, DS)
    report = lake.read_json(report_key(ORDER_FEATURES_TABLE, DS))
    assert report["success"] and report["suite"].endswith("order_risk.json")
