"""Missing is missing (issue 10 item 8): an order without a device or IP shares that key with nobody.

A source mapped with ``ip_address: {constant: null}`` once gave every order ~6,500 "accounts on the same IP" and
PSI 5.1 drift warnings; the order's device / IP features are now NaN and count no other order.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from pipelines.data import schemas
from pipelines.features.order_features import (
    DEVICE_FEATURES,
    FEATURE_COLUMNS,
    IP_FEATURES,
    ORDER_FEATURES_TABLE,
    build_and_write_order_features,
    compute_order_features,
)
from pipelines.lake import Lake
from pipelines.settings import Settings
from pipelines.validation.report import report_key

DS = dt.date(2024, 5, 10)
DAY = pd.Timestamp(DS, tz="UTC")
H = pd.Timedelta(hours=1)
OLD = DAY - pd.Timedelta(days=400)
NO_LABELS = pd.DataFrame(
    {
        "order_id": pd.Series([], dtype=str),
        "is_fraud": pd.Series([], dtype="int8"),
        "label_time": pd.Series([], dtype="datetime64[us, UTC]"),
    }
)


def _orders(rows: list[tuple]) -> pd.DataFrame:
    """rows: (order_id, user_id, purchase_time, device_id, ip_address); None is an unknown key."""
    df = pd.DataFrame(rows, columns=["order_id", "user_id", "purchase_time", "device_id", "ip_address"])
    df["purchase_time"] = pd.to_datetime(df["purchase_time"], utc=True).dt.as_unit("us")
    df["signup_time"] = pd.Timestamp(OLD).as_unit("us")
    df["user_id"] = df["user_id"].astype("int64")
    df["device_id"] = df["device_id"].astype("string")
    df["ip_address"] = df["ip_address"].astype("string")
    df["purchase_value"] = 50.0
    df["source"], df["browser"], df["sex"] = "Ads", "Safari", "F"
    df["age"] = np.int32(30)
    df["merchant_id"] = np.int64(1)
    return df[[f.name for f in schemas.ORDERS]]


def _by_id(features: pd.DataFrame) -> pd.DataFrame:
    return features.set_index("order_id")


def test_orders_without_ip_get_no_shared_ip_counts() -> None:
    """issue 10 item 8: a source with no IP at all (mapped to {constant: null})."""
    orders = _orders([(f"o{i}", i, DAY + i * H, f"d{i}", None) for i in range(1, 8)])

    features = _by_id(compute_order_features(orders, NO_LABELS, DS))

    ip = sorted(IP_FEATURES)
    assert features[ip].isna().all().all(), "an unknown IP is missing, never a shared value"
    device = sorted(DEVICE_FEATURES)
    assert features[device].notna().all().all(), "the devices are known: their features are computed"
    assert (features["device_accounts_30d"] == 0).all()


def test_null_and_blank_keys_mixed_with_known_ones_count_only_the_known_ones() -> None:
    """issue 10 item 8: in a source where some orders lack an IP or device, those orders neither share a key with
    each other nor add to the counts of the orders whose key is known."""
    orders = _orders(
        [
            ("a1", 1, DAY - 2 * H, "d1", "1.1.1.1"),
            ("a2", 2, DAY + 1 * H, "d2", None),
            ("a3", 3, DAY + 2 * H, None, "  "),  # blank is unknown too
            ("a4", 4, DAY + 3 * H, "d1", "1.1.1.1"),  # shares device and IP with account 1 only
            ("a5", 5, DAY + 4 * H, None, None),
            ("a6", 1, DAY + 5 * H, "d1", None),
        ]
    )

    features = _by_id(compute_order_features(orders, NO_LABELS, DS))

    a4 = features.loc["a4"]
    assert (a4.ip_accounts_30d, a4.device_accounts_30d, a4.ip_orders_24h, a4.device_orders_24h) == (1, 1, 1, 1)
    for order in ("a2", "a3", "a5", "a6"):
        assert features.loc[order, sorted(IP_FEATURES)].isna().all(), order
    for order in ("a3", "a5"):
        assert features.loc[order, sorted(DEVICE_FEATURES)].isna().all(), order
    a6 = features.loc["a6"]
    assert (a6.device_accounts_30d, a6.user_device_orders_30d, a6.user_orders_30d) == (1, 1, 1)
    a2 = features.loc["a2"]
    assert (a2.device_accounts_30d, a2.device_orders_24h) == (0, 0), "d2 is new; null-IP orders are not its history"
    # Features that do not depend on a device or IP are computed for every order.
    others = [c for c in FEATURE_COLUMNS if c not in DEVICE_FEATURES | IP_FEATURES | {"user_mean_value_30d"}]
    assert features[others].notna().all().all()


@pytest.fixture
def ipless_lake(settings: Settings) -> Lake:
    """Nine days of orders from a source without IP addresses: 150 orders a day over 60 accounts."""
    lake = Lake(settings)
    rng = np.random.default_rng(0)
    for back in range(8, -1, -1):
        day = DS - dt.timedelta(days=back)
        start = pd.Timestamp(day, tz="UTC")
        rows = [
            (
                f"{day}-{i}",
                int(rng.integers(1, 60)),
                start + pd.Timedelta(minutes=int(m)),
                f"d{rng.integers(1, 80)}",
                None,
            )
            for i, m in enumerate(np.sort(rng.integers(0, 24 * 60, 150)))
        ]
        lake.write("orders", day, _orders(rows), schema=schemas.ORDERS)
    return lake


def test_a_source_without_ip_publishes_order_features_without_ip_drift_warnings(
    settings: Settings, ipless_lake: Lake
) -> None:
    """issue 10 item 8: the whole chain of the order features, nine days of a source without IPs: every day
    validates, and the last one (with seven days of history, enough for the drift checks) has no drift warning
    on the IP features."""
    for back in range(8, -1, -1):
        result = build_and_write_order_features(settings, DS - dt.timedelta(days=back))

    report = ipless_lake.read_json(report_key(ORDER_FEATURES_TABLE, DS))
    assert report["success"], report["summary"]
    ip_checks = [c for c in report["checks"] if c["column"] == "ip_accounts_30d"]
    drift = [c for c in ip_checks if c["expectation"].startswith("expect_column_distribution")]
    assert drift and all(c["success"] for c in drift), drift
    assert not any("ip_" in w for w in result["warnings"]), result["warnings"]
    published = ipless_lake.read(ORDER_FEATURES_TABLE, DS)
    assert published["ip_accounts_30d"].isna().all() and published["device_accounts_30d"].notna().all()
