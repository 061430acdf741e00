"""Canonical tables of the lake (see DESIGN.md, "Data") and the platform's time conventions.

Time convention: the partition ``ds=D`` holds what happened during day D (UTC, or the zone an ingest cut the
days in: ``Lake.day_zone``). Features computed from it are stamped ``as_of(D)``, 00:00 of D+1 in that zone; a
purchase-intent label for that as-of time asks whether the user purchased during ``[as_of(D), as_of(D) + 7 days)``.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo

import pyarrow as pa

EVENT_TYPES = ("view", "cart", "remove_from_cart", "wishlist", "purchase")

EVENTS = pa.schema(
    [
        ("event_id", pa.string()),
        ("event_time", pa.timestamp("us", tz="UTC")),
        ("user_id", pa.int64()),
        ("session_id", pa.string()),
        ("event_type", pa.string()),
        ("product_id", pa.int64()),
        ("category_id", pa.int64()),
        ("brand", pa.string()),
        ("price", pa.float64()),
        ("merchant_id", pa.int64()),
    ]
)

USERS = pa.schema(
    [
        ("user_id", pa.int64()),
        ("signup_time", pa.timestamp("us", tz="UTC")),
        ("country", pa.string()),
        ("age", pa.int32()),
        ("sex", pa.string()),
    ]
)

PRODUCTS = pa.schema(
    [
        ("product_id", pa.int64()),
        ("category_id", pa.int64()),
        ("brand", pa.string()),
        ("price", pa.float64()),
        ("merchant_id", pa.int64()),
    ]
)

MERCHANTS = pa.schema([("merchant_id", pa.int64()), ("name", pa.string())])

FOLLOWS = pa.schema(
    [
        ("follower_id", pa.int64()),
        ("followee_id", pa.int64()),
        ("created_at", pa.timestamp("us", tz="UTC")),
    ]
)

# Ground truth kept by the simulator: for the as-of time of ``ds``, the probability that the user purchases
# in the following 7 days, given everything the world knew at that time.
PURCHASE_TRUTH = pa.schema(
    [
        ("user_id", pa.int64()),
        ("as_of", pa.timestamp("us", tz="UTC")),
        ("p_purchase_7d", pa.float64()),
    ]
)

# Orders for fraud models (DESIGN.md): partitioned by the day of purchase_time.
ORDERS = pa.schema(
    [
        ("order_id", pa.string()),
        ("user_id", pa.int64()),
        ("signup_time", pa.timestamp("us", tz="UTC")),
        ("purchase_time", pa.timestamp("us", tz="UTC")),
        ("purchase_value", pa.float64()),
        ("device_id", pa.string()),
        ("source", pa.string()),
        ("browser", pa.string()),
        ("sex", pa.string()),
        ("age", pa.int32()),
        ("ip_address", pa.string()),
        ("merchant_id", pa.int64()),
    ]
)

# Fraud labels arrive late (chargebacks): partitioned by the day of label_time, i.e. the day they arrived.
ORDER_LABELS = pa.schema(
    [
        ("order_id", pa.string()),
        ("is_fraud", pa.int8()),
        ("label_time", pa.timestamp("us", tz="UTC")),
    ]
)

# Ground truth kept by the simulator: each order's true probability of being fraud (partitioned like orders).
ORDER_FRAUD_TRUTH = pa.schema([("order_id", pa.string()), ("p_fraud", pa.float64())])

TABLES: dict[str, pa.Schema] = {
    "events": EVENTS,
    "users": USERS,
    "products": PRODUCTS,
    "merchants": MERCHANTS,
    "follows": FOLLOWS,
    "truth_purchase_intent": PURCHASE_TRUTH,
    "orders": ORDERS,
    "order_labels": ORDER_LABELS,
    "truth_order_fraud": ORDER_FRAUD_TRUTH,
}

LABEL_WINDOW = dt.timedelta(days=7)


def day_start(ds: dt.date, zone: str = "UTC") -> dt.datetime:
    """The instant day ``ds`` begins: 00:00 local time in ``zone`` (the lake's ``Lake.day_zone``), in UTC.

    Every day bound of the platform goes through here, so a source whose days are cut in its own zone (a mapping's
    ``day_timezone:``) is read with the same bounds it was partitioned with."""
    if zone == "UTC":
        return dt.datetime.combine(ds, dt.time(), tzinfo=dt.UTC)
    local = dt.datetime.combine(ds, dt.time(), tzinfo=zoneinfo.ZoneInfo(zone))
    return local.astimezone(dt.UTC)


def as_of(ds: dt.date, zone: str = "UTC") -> dt.datetime:
    """The as-of time of day ``ds``: the end of that day, i.e. the start of the next one (00:00 UTC by default)."""
    return day_start(ds + dt.timedelta(days=1), zone)
