"""Order risk features at checkout equal the point-in-time training features of the same order, computed from
per-key histories built at the day's start and updated with each order and chargeback as they happen."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import numpy as np
import pandas as pd
import pytest

from pipelines.data import orders as simulated
from pipelines.data.orders import FraudConfig
from pipelines.data.simulator import SimulationConfig
from pipelines.features.checkout import (
    HISTORY_LISTS,
    KEY_COLUMNS,
    CheckoutFeatureError,
    CheckoutOrder,
    KeyHistories,
    add_chargeback,
    append_order,
    build_histories,
    checkout_features,
    checkout_orders,
    checkout_state,
    history_rows,
)
from pipelines.features.order_features import (
    DEVICE_FEATURES,
    FEATURE_COLUMNS,
    IP_FEATURES,
    compute_order_features,
)

# Starts so that the days replayed below include 2025-03-09, when New York's day has 23 hours.
CONFIG = SimulationConfig(n_users=2000, n_products=300, n_merchants=10, start=dt.date(2025, 2, 25))
# Five to twenty times the default fraud volume: ring bursts on shared devices, new accounts, takeovers in a small
# world, and chargebacks of all three arriving during the replayed days.
DENSE = FraudConfig(ring_bursts_per_1k_orders=30, new_account_fraudsters_per_1k_orders=20, takeovers_per_1k_orders=10)
N_DAYS = 16
DAYS = [CONFIG.start + dt.timedelta(days=i) for i in range(N_DAYS)]
TOLERANCE = 1e-9


@pytest.fixture(scope="module")
def world() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Orders and labels of N_DAYS simulated days; some devices and IPs unreported (null or blank), and two
    chargebacks on the day of their own order (one dated before it)."""
    orders = pd.concat([simulated.simulate_orders(CONFIG, d, DENSE) for d in DAYS], ignore_index=True)
    labels = pd.concat([simulated.order_labels(CONFIG, d, DENSE) for d in DAYS], ignore_index=True)
    rng = np.random.default_rng(12)
    orders["device_id"] = orders["device_id"].astype(object)
    orders.loc[rng.random(len(orders)) < 0.04, "device_id"] = None
    orders.loc[rng.random(len(orders)) < 0.03, "device_id"] = "  "
    orders.loc[rng.random(len(orders)) < 0.04, "ip_address"] = None
    orders.loc[rng.random(len(orders)) < 0.03, "ip_address"] = ""
    on_day = orders[orders["purchase_time"].dt.date == DAYS[11]].iloc[[3, 20]]
    placed = on_day["purchase_time"]
    same_day = pd.DataFrame(
        {
            "order_id": on_day["order_id"].to_numpy(),
            "is_fraud": np.array([1, 1], dtype="int8"),
            "label_time": [placed.iat[0] + pd.Timedelta(hours=2), placed.iat[1] - pd.Timedelta(hours=1)],
        }
    )
    labels = pd.concat([labels, same_day], ignore_index=True)
    return orders, labels


def _day_bounds(ds: dt.date, zone: str) -> tuple[pd.Timestamp, pd.Timestamp]:
    # Local midnight to local midnight: 23 or 25 hours when the zone changes its clocks.
    start, end = (pd.Timestamp(d).tz_localize(zone).tz_convert("UTC") for d in (ds, ds + dt.timedelta(days=1)))
    return start, end


def _chargebacks(orders: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """Chargebacks with their order's keys and time, as the chain would find them in the order log."""
    charged = labels[labels["is_fraud"] == 1].merge(orders, on="order_id", how="inner")
    return charged[["order_id", "label_time", "purchase_time", "user_id", "device_id", "ip_address"]]


def _write(rows: dict[str, dict[Any, dict]], written: KeyHistories) -> None:
    for entity, row in zip(("user", "device", "ip"), written, strict=True):
        if row is not None:
            rows[entity][row[KEY_COLUMNS[entity]]] = row


def _replay(
    orders: pd.DataFrame, labels: pd.DataFrame, ds: dt.date, zone: str, rows: dict[str, dict[Any, dict]]
) -> tuple[pd.DataFrame, list[float]]:
    """Score every order of ``ds`` at checkout in time order, appending each after it is scored and adding each
    chargeback when it arrives; the features per order id and the time checkout_features took per order."""
    start, end = _day_bounds(ds, zone)
    day = orders[(orders["purchase_time"] >= start) & (orders["purchase_time"] < end)]
    day = day.sort_values(["purchase_time", "order_id"], kind="stable")
    charged = _chargebacks(orders, labels)
    charged = charged.assign(at=np.maximum(charged["label_time"], charged["purchase_time"] + pd.Timedelta("1us")))
    charged = charged[(charged["at"] >= start) & (charged["at"] < end)]
    events = [
        (t, 0, oid, order)
        for t, oid, order in zip(day["purchase_time"], day["order_id"], checkout_orders(day), strict=True)
    ]
    events += [(row.at, 1, row.order_id, row) for row in charged.itertuples()]
    got, seconds = {}, []
    for _, kind, order_id, event in sorted(events, key=lambda e: e[:3]):
        if kind == 0:
            state = checkout_state(rows, event.user_id, event.device_id, event.ip_address)
            began = time.perf_counter()
            got[order_id] = checkout_features(event, *state, ds, zone)
            seconds.append(time.perf_counter() - began)
            _write(rows, append_order(state, event))
        else:
            state = checkout_state(rows, event.user_id, event.device_id, event.ip_address)
            _write(rows, add_chargeback(state, event.purchase_time, event.label_time))
    frame = pd.DataFrame.from_dict(got, orient="index", columns=FEATURE_COLUMNS)
    return frame, seconds


def _built_rows(orders: pd.DataFrame, labels: pd.DataFrame, ds: dt.date, zone: str) -> dict[str, dict[Any, dict]]:
    return {entity: history_rows(frame) for entity, frame in build_histories(orders, labels, ds, zone).items()}


def _assert_same(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    expected = expected.set_index("order_id")[FEATURE_COLUMNS]
    assert sorted(got.index) == sorted(expected.index), "every order of the day is scored, and only those"
    got = got.loc[expected.index]
    same_nan = got.isna() == expected.isna()
    diff = (got - expected).abs().fillna(0.0)
    bad = ~same_nan | (diff > TOLERANCE)
    assert not bad.any().any(), (
        f"checkout features differ from the training row for {int(bad.any(axis=1).sum())} of {len(got)} orders; "
        f"features: {sorted(bad.columns[bad.any()])}, max |diff| {diff.max()[bad.any()].to_dict()}"
    )


def _print_timing(capsys: pytest.CaptureFixture, label: str, seconds: list[float]) -> None:
    us = np.array(seconds) * 1e6
    with capsys.disabled():
        print(
            f"\n{label}: checkout_features over {len(us)} orders: mean {us.mean():.0f} us, "
            f"p50 {np.percentile(us, 50):.0f} us, p99 {np.percentile(us, 99):.0f} us, max {us.max():.0f} us"
        )


@pytest.mark.parametrize("ds", [DAYS[9], DAYS[11], DAYS[13]])
def test_every_order_of_a_day_scores_exactly_its_training_row(world, ds, capsys):
    orders, labels = world
    rows = _built_rows(orders, labels, ds, "UTC")

    got, seconds = _replay(orders, labels, ds, "UTC", rows)

    expected = compute_order_features(orders, labels, ds)
    _assert_same(got, expected)
    _print_timing(capsys, f"{ds} UTC", seconds)
    # The day really exercises what the features are about (not a world of zeros).
    assert (expected["device_orders_1h"] > 0).any() and (expected["user_orders_1h"] > 0).any(), "bursts"
    assert (expected["device_accounts_30d"] > 0).any() and (expected["ip_accounts_30d"] > 0).any(), "shared keys"
    assert expected["device_orders_1h"].isna().any() and expected["ip_orders_1h"].isna().any(), "unknown keys"
    assert (expected["ip_new_device_orders_30d"] > 0).any() and (expected["device_new_account_orders_30d"] > 0).any()
    assert (expected[["device_chargebacks_30d", "ip_chargebacks_30d"]] > 0).any().all(), "chargebacks"


def test_a_chargeback_arriving_during_the_day_counts_from_its_arrival_on(world):
    orders, labels = world
    ds = DAYS[11]
    start, end = _day_bounds(ds, "UTC")
    arrival = _chargebacks(orders, labels)["label_time"]
    assert ((arrival >= start) & (arrival < end)).sum() >= 2, "chargebacks arrive during the replayed day"

    got, _ = _replay(orders, labels, ds, "UTC", _built_rows(orders, labels, ds, "UTC"))
    without, _ = _replay(
        orders, labels[labels["label_time"] < start], ds, "UTC", _built_rows(orders, labels, ds, "UTC")
    )

    _assert_same(got, compute_order_features(orders, labels, ds))
    changed = (got["user_chargebacks_30d"] != without["user_chargebacks_30d"]) | (
        got["device_chargebacks_30d"].fillna(-1) != without["device_chargebacks_30d"].fillna(-1)
    )
    assert changed.any(), "the day's own chargebacks reach later orders of the same day"


def test_a_lake_cut_in_another_zone_including_a_23_hour_day(world, capsys):
    orders, labels = world
    zone = "America/New_York"
    for ds in (DAYS[10], DAYS[12]):  # 2025-03-07 (UTC-5); 2025-03-09, the day clocks go forward
        got, seconds = _replay(orders, labels, ds, zone, _built_rows(orders, labels, ds, zone))

        expected = compute_order_features(orders, labels, ds, zone)
        _assert_same(got, expected)
        _print_timing(capsys, f"{ds} {zone}", seconds)
    local = pd.Timestamp(orders["purchase_time"].iat[-1]).tz_convert(zone)
    assert local.utcoffset() == pd.Timedelta(hours=-4), "the replayed days cross the change to daylight time"


def test_a_state_kept_up_to_date_through_the_day_stays_exact_the_next_day(world):
    """If the next day's build is late, yesterday's state (built at its start, updated through it) still serves
    exact features: the window is applied when reading, and the "new device" flag holds for any window."""
    orders, labels = world
    ds = DAYS[12]
    rows = _built_rows(orders, labels, ds, "UTC")
    _replay(orders, labels, ds, "UTC", rows)

    got, _ = _replay(orders, labels, ds + dt.timedelta(days=1), "UTC", rows)

    _assert_same(got, compute_order_features(orders, labels, ds + dt.timedelta(days=1)))
    rebuilt = _built_rows(orders, labels, ds + dt.timedelta(days=1), "UTC")
    assert set(rebuilt["user"]) <= set(rows["user"])


def test_histories_are_one_row_per_key_with_parallel_lists_in_time_order(world):
    orders, labels = world
    histories = build_histories(orders, labels, DAYS[14], "UTC")

    for entity, frame in histories.items():
        key = KEY_COLUMNS[entity]
        assert list(frame.columns) == [key, "event_timestamp", *HISTORY_LISTS]
        assert frame[key].is_unique and len(frame) > 0
        assert (frame["event_timestamp"] == pd.Timestamp(DAYS[14], tz="UTC")).all()
        lengths = frame["order_time_us"].map(len)
        for name in HISTORY_LISTS[:7]:
            assert (frame[name].map(len) == lengths).all(), f"{entity}.{name} parallel to order_time_us"
        assert frame["order_time_us"].map(lambda t: t == sorted(t)).all()
        assert (frame["chargeback_order_time_us"].map(len) == frame["chargeback_time_us"].map(len)).all()
    assert "" not in set(histories["device"]["device_id"]) and None not in set(histories["ip"]["ip_address"])
    assert histories["user"]["user_id"].map(type).eq(int).all()
    first = histories["user"].iloc[0]
    assert {type(v) for v in first["order_value"]} == {float} and {type(v) for v in first["order_new_account"]} == {
        bool
    }


def test_an_unknown_device_or_ip_gives_nan_for_its_features_only():
    day = pd.Timestamp("2025-03-01", tz="UTC")
    order = CheckoutOrder(7, day - pd.Timedelta(days=10), day + pd.Timedelta(hours=9), 50.0, " ", None, "Ads", "IE", 33)

    features = pd.Series(checkout_features(order, None, None, None, day.date()), index=FEATURE_COLUMNS)

    assert features[sorted(DEVICE_FEATURES | IP_FEATURES)].isna().all()
    assert features.drop(sorted(DEVICE_FEATURES | IP_FEATURES)).isna().to_dict() == {
        name: name == "user_mean_value_30d" for name in FEATURE_COLUMNS if name not in DEVICE_FEATURES | IP_FEATURES
    }, "no earlier order of the account: its mean order value is unknown too"
    assert (features["hour_of_day"], features["browser_code"], features["user_orders_30d"]) == (9.0, 3.0, 0.0)
    assert features["hours_since_user_last_order"] == 31 * 24 and features["account_age_hours"] == 10 * 24 + 9


def test_entries_older_than_any_window_to_come_are_dropped_on_append():
    day = pd.Timestamp("2025-03-01", tz="UTC")
    old, recent = day - pd.Timedelta(days=33), day - pd.Timedelta(days=3)

    def placed(at: pd.Timestamp) -> CheckoutOrder:
        return CheckoutOrder(7, day - pd.Timedelta(days=400), at, 20.0, "d1", "10.0.0.1", "SEO", "Chrome", 40)

    state = KeyHistories(None, None, None)
    for at in (old, recent):
        state = append_order(state, placed(at))
    state = add_chargeback(state, old, old + pd.Timedelta(days=9))
    assert len(state.user["order_time_us"]) == 2 and len(state.device["chargeback_time_us"]) == 1

    before = checkout_features(placed(day + pd.Timedelta(hours=1)), *state, day.date())
    after_append = append_order(state, placed(day))

    assert [len(row["order_time_us"]) for row in after_append] == [2, 2, 2], "the 33-day-old order is gone"
    assert [len(row["chargeback_time_us"]) for row in after_append] == [0, 0, 0]
    now = checkout_features(placed(day + pd.Timedelta(hours=1)), *after_append, day.date())
    assert now[FEATURE_COLUMNS.index("user_orders_30d")] == before[FEATURE_COLUMNS.index("user_orders_30d")] + 1
    assert now[FEATURE_COLUMNS.index("user_chargebacks_30d")] == 0


def test_orders_that_are_not_on_the_day_or_have_naive_times_are_refused():
    day = pd.Timestamp("2025-03-01", tz="UTC")
    order = CheckoutOrder(7, day, day + pd.Timedelta(days=1), 10.0, "d", "ip", "SEO", "Chrome", 30)
    with pytest.raises(CheckoutFeatureError, match="is not on 2025-03-01"):
        checkout_features(order, None, None, None, day.date())
    with pytest.raises(CheckoutFeatureError, match="'purchase_time' must be a timezone-aware datetime"):
        CheckoutOrder(7, day, dt.datetime(2025, 3, 1, 9), 10.0, "d", "ip", "SEO", "Chrome", 30)
    with pytest.raises(CheckoutFeatureError, match="device_id history row lacks list"):
        append_order(KeyHistories(None, {"device_id": "d"}, None), order)


@pytest.mark.parametrize(
    ("ds", "hours"),
    [(dt.date(2025, 3, 9), 23), (dt.date(2025, 11, 2), 25)],  # New York's clocks go forward, then back
)
def test_a_day_with_a_clock_change_holds_exactly_its_own_orders_with_wall_clock_hours(world, ds, hours):
    orders, labels = world
    zone = "America/New_York"
    start = pd.Timestamp(ds, tz=zone)
    # An order every 30 minutes from an hour before the local day to an hour after it (shifted copies of real ones).
    times = pd.date_range(start - pd.Timedelta(hours=1), start + pd.Timedelta(hours=hours + 1), freq="30min")
    shifted = orders.iloc[: len(times)].copy()
    shifted["purchase_time"] = times.tz_convert("UTC").as_unit(orders["purchase_time"].dt.unit)
    shifted["order_id"] = [f"dst-{i}" for i in range(len(times))]

    features = compute_order_features(shifted, labels.iloc[:0], ds, zone)

    on_day = times[(times >= start) & (times < pd.Timestamp(ds + dt.timedelta(days=1), tz=zone))]
    assert len(features) == len(on_day) == 2 * hours  # none of the next day's first hour, none of the last lost
    assert sorted(features["hour_of_day"].astype(int)) == sorted(on_day.hour)
    order = shifted.iloc[len(times) // 2]
    row = features.set_index("order_id").loc[order["order_id"]]
    assert row["hour_of_day"] == pd.Timestamp(order["purchase_time"]).tz_convert(zone).hour
