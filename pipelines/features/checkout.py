"""Order risk features at checkout: the 29 ``order_risk`` features of an order that does not exist yet, from small
per-key histories (account, device, IP) kept in the online store, equal to ``compute_order_features``' row.

A key's history is its orders since the history window's start, as parallel lists, plus the chargebacks of those
orders known so far. The daily chain builds the histories as of the start of a day (``build_histories``); each
scored order is appended (``append_order``) and each chargeback that arrives during the day is added
(``add_chargeback``), so the online state always holds everything before the next order. Nothing here reads the
lake: ``checkout_features`` is pure arithmetic on three rows.

The one window-dependent flag, "the account's first order on this device within the history read" (which feeds
``ip_new_device_orders_30d``), is kept as the time of the account's previous order on the same device: the flag
is then known for any window start, so a state built for day D and updated through D stays exact on D + 1 (until
the next build replaces it), and entries older than any window still to come are dropped on append.
"""

from __future__ import annotations

import bisect
import datetime as dt
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pyarrow as pa

from pipelines.data.orders import BROWSERS, SOURCES
from pipelines.data.schemas import day_start as day_start_of
from pipelines.features.inputs import FeatureInputError, require_columns
from pipelines.features.order_features import (
    ACCOUNT_AGE_CAP_HOURS,
    FEATURE_COLUMNS,
    HISTORY_CAP_HOURS,
    HISTORY_DAYS,
    LABEL_COLUMNS,
    NEW_ACCOUNT_HOURS,
    ORDER_COLUMNS,
)
from pipelines.lake import Lake

_HOUR_US = 3_600 * 10**6
_DAY_US = 24 * _HOUR_US
_WINDOWS_US = (_HOUR_US, _DAY_US, 7 * _DAY_US)  # 1h, 24h, 7d velocity counts
# Older entries can never fall in the window of an order placed at or after the newest appended one.
_RETAIN_US = (HISTORY_DAYS + 1) * _DAY_US
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROSECOND = dt.timedelta(microseconds=1)

NO_PREVIOUS = -(2**63)  # order_prev_device_time_us of an order with no earlier order of its account on its device
UNKNOWN_KEY = ""  # a device or IP the order did not report (lists hold no nulls: Feast list features reject them)
TIMESTAMP_COLUMN = "event_timestamp"  # the as-of instant of a built history (the start of its day)
KEY_COLUMNS: dict[str, str] = {"user": "user_id", "device": "device_id", "ip": "ip_address"}
# The list columns of every history row, parallel per order, then per chargeback; sorted by order time.
ORDER_LISTS: list[str] = [
    "order_time_us",  # int: purchase time, epoch microseconds
    "order_user_id",  # int
    "order_device_id",  # str: UNKNOWN_KEY when unknown
    "order_ip_address",  # str: UNKNOWN_KEY when unknown
    "order_value",  # float: purchase value
    "order_new_account",  # bool: placed less than NEW_ACCOUNT_HOURS after the account's signup
    "order_prev_device_time_us",  # int: the account's previous order on the same device, NO_PREVIOUS if none
]
CHARGEBACK_LISTS: list[str] = [
    "chargeback_order_time_us",  # int: purchase time of the charged-back order
    "chargeback_time_us",  # int: when the chargeback counts (its arrival, and always after its order)
]
HISTORY_LISTS: list[str] = [*ORDER_LISTS, *CHARGEBACK_LISTS]
_INT_LISTS = frozenset({"order_time_us", "order_user_id", "order_prev_device_time_us", *CHARGEBACK_LISTS})

HistoryRow = Mapping[str, Any]  # a key's history: its KEY_COLUMNS column and the HISTORY_LISTS lists


class CheckoutFeatureError(FeatureInputError):
    """An order or a history row cannot be turned into checkout features (wrong time, missing field, bad row)."""


def _us(value: dt.datetime, name: str) -> int:
    """Epoch microseconds of a timezone-aware datetime (pd.Timestamp included)."""
    if not isinstance(value, dt.datetime) or value.tzinfo is None:
        raise CheckoutFeatureError(f"order field '{name}' must be a timezone-aware datetime, got {value!r}")
    return (value - _EPOCH) // _MICROSECOND


def _key(value: object) -> str | None:
    """A sharing key as order_features reads it: stripped text; None when null or blank."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    return text or None


@dataclass(frozen=True)
class CheckoutOrder:
    """The fields of an order at checkout, before it exists (no order id, no label).

    ``device_id`` and ``ip_address`` are normalised like order_features' keys: stripped, blank or null -> None.
    """

    user_id: int
    signup_time: dt.datetime
    purchase_time: dt.datetime
    purchase_value: float
    device_id: str | None
    ip_address: str | None
    source: str
    browser: str
    age: float
    purchase_us: int = field(init=False, repr=False)
    signup_us: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "purchase_us", _us(self.purchase_time, "purchase_time"))
        object.__setattr__(self, "signup_us", _us(self.signup_time, "signup_time"))
        object.__setattr__(self, "device_id", _key(self.device_id))
        object.__setattr__(self, "ip_address", _key(self.ip_address))

    @property
    def new_account(self) -> bool:
        return (self.purchase_us - self.signup_us) < NEW_ACCOUNT_HOURS * _HOUR_US


def checkout_orders(orders: pd.DataFrame) -> list[CheckoutOrder]:
    """The rows of an ORDERS frame as checkout orders, in the frame's order (replays, parity checks)."""
    require_columns(orders, "orders", ORDER_COLUMNS, "checkout", CheckoutFeatureError)
    signup = pd.to_datetime(orders["signup_time"], utc=True, cache=False)
    purchase = pd.to_datetime(orders["purchase_time"], utc=True, cache=False)
    return [
        CheckoutOrder(
            user_id=int(user),
            signup_time=s,
            purchase_time=p,
            purchase_value=float(value),
            device_id=device,
            ip_address=ip,
            source=str(source),
            browser=str(browser),
            age=float(age),
        )
        for user, s, p, value, device, ip, source, browser, age in zip(
            orders["user_id"],
            signup,
            purchase,
            orders["purchase_value"],
            orders["device_id"],
            orders["ip_address"],
            orders["source"],
            orders["browser"],
            orders["age"],
            strict=True,
        )
    ]


class KeyHistories(NamedTuple):
    """The history rows of one order's account, device and IP (None: no history, or the key is unknown)."""

    user: HistoryRow | None
    device: HistoryRow | None
    ip: HistoryRow | None


@lru_cache(maxsize=16)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


@lru_cache(maxsize=64)
def _day_start_us(ds: dt.date, zone: str) -> int:
    return _us(day_start_of(ds, zone), "day start")


def _window_start_us(ds: dt.date, zone: str) -> int:
    return _day_start_us(ds, zone) - HISTORY_DAYS * _DAY_US


# -- the daily build ------------------------------------------------------------------------------------------


def _epoch_us(values: pd.Series) -> np.ndarray:
    return pd.to_datetime(values, utc=True, cache=False).dt.as_unit("us").astype("int64").to_numpy()


def _text_keys(values: pd.Series) -> np.ndarray:
    text = values.astype("string").str.strip()
    return text.where(text.notna() & (text != ""), UNKNOWN_KEY).astype(object).to_numpy()


def build_histories(
    orders: pd.DataFrame, labels: pd.DataFrame, ds: dt.date, zone: str = "UTC"
) -> dict[str, pd.DataFrame]:
    """Histories as of the start of ``ds`` (00:00 in ``zone``), one frame per entity ("user", "device", "ip").

    Each frame has one row per key with an order in the history window of ``ds`` (``HISTORY_DAYS`` days of 24 h
    before the day's start, as compute_order_features reads it): the key column (KEY_COLUMNS), the as-of
    ``event_timestamp`` and the HISTORY_LISTS lists, in purchase time order (ties by order id). Chargebacks
    (``labels`` with is_fraud 1) count for the key of the charged-back order once they arrived before the day's
    start. ``orders`` (ORDERS) and ``labels`` (ORDER_LABELS) may hold more than that; the rest is ignored.
    """
    require_columns(orders, "orders", ORDER_COLUMNS, "checkout", CheckoutFeatureError)
    require_columns(labels, "order_labels", LABEL_COLUMNS, "checkout", CheckoutFeatureError)
    start = _day_start_us(ds, zone)
    t = _epoch_us(orders["purchase_time"])
    keep = (t >= start - HISTORY_DAYS * _DAY_US) & (t < start)
    frame = pd.DataFrame(
        {
            "order_id": orders["order_id"].astype(str).to_numpy()[keep],
            "order_time_us": t[keep],
            "order_user_id": orders["user_id"].astype("int64").to_numpy()[keep],
            "order_device_id": _text_keys(orders["device_id"])[keep],
            "order_ip_address": _text_keys(orders["ip_address"])[keep],
            "order_value": orders["purchase_value"].astype("float64").to_numpy()[keep],
            "signup": _epoch_us(orders["signup_time"])[keep],
        }
    ).sort_values(["order_time_us", "order_id"], kind="stable", ignore_index=True)
    frame["order_new_account"] = (frame["order_time_us"] - frame["signup"]) < NEW_ACCOUNT_HOURS * _HOUR_US
    frame["order_prev_device_time_us"] = frame.groupby(["order_user_id", "order_device_id"], sort=False)[
        "order_time_us"
    ].shift(1, fill_value=NO_PREVIOUS)
    frame.loc[frame["order_device_id"] == UNKNOWN_KEY, "order_prev_device_time_us"] = NO_PREVIOUS

    charged = labels.loc[labels["is_fraud"].astype("int64") == 1, ["order_id", "label_time"]]
    charged = frame.merge(charged.assign(order_id=charged["order_id"].astype(str)), on="order_id", how="inner")
    arrival = np.maximum(_epoch_us(charged["label_time"]), charged["order_time_us"].to_numpy() + 1)
    charged = charged.assign(chargeback_order_time_us=charged["order_time_us"], chargeback_time_us=arrival)
    charged = charged[charged["chargeback_time_us"] < start].sort_values(["chargeback_time_us", "order_id"])

    as_of = pd.Timestamp(start, unit="us", tz="UTC")
    out: dict[str, pd.DataFrame] = {}
    for entity, key_column in KEY_COLUMNS.items():
        by = f"order_{key_column}"
        keys = np.unique(frame.loc[frame[by] != UNKNOWN_KEY, by].to_numpy())
        lists = {
            **_lists_by_key(frame, by, keys, ORDER_LISTS),
            **_lists_by_key(charged, by, keys, CHARGEBACK_LISTS),
        }
        out[entity] = pd.DataFrame({key_column: keys, TIMESTAMP_COLUMN: as_of, **lists})
    return out


def _lists_by_key(frame: pd.DataFrame, by: str, keys: np.ndarray, columns: list[str]) -> dict[str, list[list]]:
    """For each of ``keys``, the values of ``columns`` in its rows of ``frame`` (in the frame's order) as a list."""
    codes = pd.Index(keys).get_indexer(frame[by].to_numpy())  # -1: a key not in keys (unknown)
    rows = np.flatnonzero(codes >= 0)
    rows = rows[np.argsort(codes[rows], kind="stable")]
    offsets = pa.array(np.concatenate([[0], np.cumsum(np.bincount(codes[codes >= 0], minlength=len(keys)))]))
    return {
        name: pa.LargeListArray.from_arrays(offsets, pa.array(frame[name].to_numpy()[rows])).to_pylist()
        for name in columns
    }


def history_rows(histories: pd.DataFrame) -> dict[Any, dict[str, Any]]:
    """The rows of one entity's built histories by key, as checkout_features and append_order take them."""
    key_column = next((c for c in KEY_COLUMNS.values() if c in histories.columns), None)
    if key_column is None:
        raise CheckoutFeatureError(f"histories frame lacks a key column (one of {list(KEY_COLUMNS.values())})")
    records = histories[[key_column, *HISTORY_LISTS]].to_dict("records")
    return {record[key_column]: record for record in records}


# -- updates during the day -----------------------------------------------------------------------------------


def _empty_row(key_column: str, key: object) -> dict[str, Any]:
    return {key_column: key, **{name: [] for name in HISTORY_LISTS}}


def _lists(row: HistoryRow, key_column: str, names: list[str]) -> dict[str, list]:
    try:
        return {name: list(row[name]) for name in names}
    except KeyError as missing:
        raise CheckoutFeatureError(
            f"{key_column} history row lacks list {missing}; rows need {HISTORY_LISTS} (pipelines/features/checkout.py)"
        ) from None


def _with_order(
    row: HistoryRow | None, key_column: str, key: object, order: CheckoutOrder, prev_us: int
) -> dict[str, Any]:
    """``row`` with ``order`` inserted at its time (after equal times), entries too old for it dropped."""
    if row is None:
        row = _empty_row(key_column, key)
    orders = _lists(row, key_column, ORDER_LISTS)
    chargebacks = _lists(row, key_column, CHARGEBACK_LISTS)
    t = order.purchase_us
    cut = bisect.bisect_left(orders["order_time_us"], t - _RETAIN_US)
    at = bisect.bisect_right(orders["order_time_us"], t)
    entry = {
        "order_time_us": t,
        "order_user_id": order.user_id,
        "order_device_id": order.device_id or UNKNOWN_KEY,
        "order_ip_address": order.ip_address or UNKNOWN_KEY,
        "order_value": float(order.purchase_value),
        "order_new_account": order.new_account,
        "order_prev_device_time_us": prev_us,
    }
    out: dict[str, Any] = {key_column: key}
    for name, values in orders.items():
        out[name] = [*values[cut:at], entry[name], *values[at:]]
    keep = [i for i, order_us in enumerate(chargebacks["chargeback_order_time_us"]) if order_us >= t - _RETAIN_US]
    for name, values in chargebacks.items():
        out[name] = [values[i] for i in keep]
    return out


def _previous_on_device(user: HistoryRow | None, order: CheckoutOrder) -> int:
    """Time of the account's latest order on the order's device at or before it (NO_PREVIOUS if none)."""
    if user is None or order.device_id is None:
        return NO_PREVIOUS
    times, devices = user["order_time_us"], user["order_device_id"]
    at = bisect.bisect_right(times, order.purchase_us)
    for i in range(at - 1, -1, -1):
        if devices[i] == order.device_id:
            return int(times[i])
    return NO_PREVIOUS


def append_order(state: KeyHistories, order: CheckoutOrder) -> KeyHistories:
    """The rows to write once ``order`` is placed: ``state`` (its account's, device's and IP's rows) with the order
    added. A row is created for a key seen for the first time; device / IP are None when the order's is unknown.

    Append the orders of a day in time order (same-microsecond orders in order id order, as compute_order_features
    breaks ties). An order appended late is still inserted at its time, so counts stay exact; only the "new
    device" flag of a later order of the same account and device, already written, is not revised (the next
    build recomputes it).
    """
    prev = _previous_on_device(state.user, order)
    user = _with_order(state.user, KEY_COLUMNS["user"], order.user_id, order, prev)
    device = ip = None
    if order.device_id is not None:
        device = _with_order(state.device, KEY_COLUMNS["device"], order.device_id, order, prev)
    if order.ip_address is not None:
        ip = _with_order(state.ip, KEY_COLUMNS["ip"], order.ip_address, order, prev)
    return KeyHistories(user, device, ip)


def add_chargeback(state: KeyHistories, order_time: dt.datetime, label_time: dt.datetime) -> KeyHistories:
    """The rows to write when a chargeback arrives for an order placed at ``order_time``: ``state`` holds that
    order's account, device and IP rows (None for an unknown key or a key without history, left as None).

    It counts for orders placed after max(label_time, order_time + 1 us), like compute_order_features. The
    caller finds the charged-back order's keys and time from the order log (off the request path).
    """
    order_us, label_us = _us(order_time, "order_time"), _us(label_time, "label_time")
    arrival = max(label_us, order_us + 1)

    def added(row: HistoryRow | None, key_column: str) -> dict[str, Any] | None:
        if row is None:
            return None
        out = {key_column: row.get(key_column), **_lists(row, key_column, HISTORY_LISTS)}
        out["chargeback_order_time_us"].append(order_us)
        out["chargeback_time_us"].append(arrival)
        return out

    return KeyHistories(
        added(state.user, KEY_COLUMNS["user"]),
        added(state.device, KEY_COLUMNS["device"]),
        added(state.ip, KEY_COLUMNS["ip"]),
    )


# -- the features ---------------------------------------------------------------------------------------------


class _Orders(NamedTuple):
    """A key's orders in [window start, t), as sequences (slices of the row's lists). Plain Python: an order is
    scored alone, on lists of a few dozen entries, where each numpy call would cost more than the loop (0.6-0.8 ms
    an order with numpy, measured in a serving worker's profile, against ~0.1 ms)."""

    t: Sequence[int]
    user: Sequence[int]
    device: Sequence[str]
    ip: Sequence[str]
    value: Sequence[float]
    new_account: Sequence[bool]
    prev_device: Sequence[int]
    chargebacks: int  # chargebacks of the key's orders in the window, arrived before t


_NONE = _Orders((), (), (), (), (), (), (), 0)


def _orders_before(row: HistoryRow | None, since: int, t: int, key_column: str) -> _Orders:
    if row is None:
        return _NONE
    try:
        times = row["order_time_us"]
        lo, hi = bisect.bisect_left(times, since), bisect.bisect_left(times, t)
        chargebacks = sum(
            1
            for order_us, arrival_us in zip(row["chargeback_order_time_us"], row["chargeback_time_us"], strict=True)
            if order_us >= since and arrival_us < t
        )
        lists = [row[name][lo:hi] for name in ORDER_LISTS[1:]]
        if any(len(values) != hi - lo for values in lists):
            raise ValueError("its order lists differ in length")
        return _Orders(times[lo:hi], *lists, chargebacks)
    except (KeyError, TypeError, ValueError) as error:
        raise CheckoutFeatureError(
            f"{key_column} history row is not a checkout history ({error}); rows need {HISTORY_LISTS} "
            "as built by pipelines.features.checkout.build_histories"
        ) from None


def _velocity(times: Sequence[int], t: int) -> list[float]:
    """Orders in [t - w, t) per velocity window, ``times`` being sorted and all before t."""
    return [float(len(times) - bisect.bisect_left(times, t - w)) for w in _WINDOWS_US]


def _age_hours(times: Sequence[int], t: int) -> float:
    return (t - int(times[0])) / _HOUR_US if len(times) else 0.0


def _count(flags: Iterable[object]) -> float:
    return float(sum(1 for flag in flags if flag))


_CODES = {name: float(i) for i, name in enumerate(SOURCES.tolist())}
_BROWSER_CODES = {name: float(i) for i, name in enumerate(BROWSERS.tolist())}
_NAN = float("nan")


def checkout_features(
    order: CheckoutOrder,
    user: HistoryRow | None,
    device: HistoryRow | None,
    ip: HistoryRow | None,
    ds: dt.date,
    zone: str = "UTC",
) -> np.ndarray:
    """The order's FEATURE_COLUMNS (float64, in that order), equal to compute_order_features' row for it on ``ds``
    (the day it is placed, cut in ``zone``). ``user``, ``device`` and ``ip`` are the keys' history rows (None:
    unknown key or no history); they may hold orders and chargebacks before the window or after the order, which
    are ignored. Unknown device (IP): its features are NaN (order_features.DEVICE_FEATURES, IP_FEATURES).
    """
    start = _day_start_us(ds, zone)
    t = order.purchase_us
    if not start <= t < _day_start_us(ds + dt.timedelta(days=1), zone):  # 23 or 25 hours on DST days
        raise CheckoutFeatureError(
            f"order purchase_time {order.purchase_time.isoformat()} is not on {ds} ({zone}); "
            "pass the day the order is placed"
        )
    since = start - HISTORY_DAYS * _DAY_US
    u = _orders_before(user, since, t, KEY_COLUMNS["user"])
    out: dict[str, float] = {}

    n_user = len(u.t)
    out["user_orders_1h"], out["user_orders_24h"], out["user_orders_7d"] = _velocity(u.t, t)
    out["user_orders_30d"] = float(n_user)
    # A running sum in time order, as compute_order_features' cumulative sums add them.
    total = 0.0
    for value in u.value:
        total += float(value)
    out["user_mean_value_30d"] = total / n_user if n_user else _NAN
    out["hours_since_user_last_order"] = (t - int(u.t[-1])) / _HOUR_US if n_user else HISTORY_CAP_HOURS
    out["user_chargebacks_30d"] = float(u.chargebacks)

    for entity, key, row in (("device", order.device_id, device), ("ip", order.ip_address, ip)):
        if key is None:
            for name in (
                f"user_{entity}_orders_30d",
                f"user_{entity}_age_hours",
                f"{entity}_orders_1h",
                f"{entity}_orders_24h",
                f"{entity}_orders_7d",
                f"{entity}_accounts_30d",
                f"{entity}_new_account_orders_30d",
                f"{entity}_chargebacks_30d",
            ):
                out[name] = _NAN
            if entity == "ip":
                out["ip_new_device_orders_30d"] = _NAN
            continue
        mine = [at for at, used in zip(u.t, u.device if entity == "device" else u.ip, strict=True) if used == key]
        out[f"user_{entity}_orders_30d"] = float(len(mine))
        out[f"user_{entity}_age_hours"] = _age_hours(mine, t)
        k = _orders_before(row, since, t, KEY_COLUMNS[entity])
        out[f"{entity}_orders_1h"], out[f"{entity}_orders_24h"], out[f"{entity}_orders_7d"] = _velocity(k.t, t)
        own = len(mine) > 0  # the order's account seen on the key before (compute_order_features' "own")
        out[f"{entity}_accounts_30d"] = float(len({int(user) for user in k.user}) - own)
        out[f"{entity}_new_account_orders_30d"] = _count(k.new_account)
        out[f"{entity}_chargebacks_30d"] = float(k.chargebacks)
        if entity == "ip":
            new_device = (d != UNKNOWN_KEY and p < since for d, p in zip(k.device, k.prev_device, strict=True))
            out["ip_new_device_orders_30d"] = _count(new_device)

    out["account_age_hours"] = min(max(t - order.signup_us, 0) / _HOUR_US, ACCOUNT_AGE_CAP_HOURS)
    out["customer_age"] = float(order.age)
    out["hour_of_day"] = float(dt.datetime.fromtimestamp(t // 1_000_000, _zone(zone)).hour)  # wall-clock hour
    out["source_code"] = _CODES.get(str(order.source), -1.0)
    out["browser_code"] = _BROWSER_CODES.get(str(order.browser), -1.0)
    return np.array([out[name] for name in FEATURE_COLUMNS], dtype="float64")


def checkout_state(
    rows: Mapping[str, Mapping[Any, HistoryRow]], user_id: int, device_id: object, ip_address: object
) -> KeyHistories:
    """The rows of an account, device and IP from in-memory rows by entity (``history_rows`` of each frame);
    device and IP keys normalised like CheckoutOrder's (blank or null: unknown, None)."""
    device, ip = _key(device_id), _key(ip_address)
    return KeyHistories(
        rows["user"].get(user_id),
        rows["device"].get(device) if device is not None else None,
        rows["ip"].get(ip) if ip is not None else None,
    )


# -- the daily build ---------------------------------------------------------------------------------------------
HISTORY_TABLE_PREFIX = "features/order_history_"


def history_table(entity: str) -> str:
    """The lake table of one entity's histories (``entity``: user, device, ip)."""
    return f"{HISTORY_TABLE_PREFIX}{entity}"


def history_schema(entity: str) -> pa.Schema:
    key = KEY_COLUMNS[entity]
    kinds = {
        **{name: pa.list_(pa.int64()) for name in _INT_LISTS},
        "order_device_id": pa.list_(pa.string()),
        "order_ip_address": pa.list_(pa.string()),
        "order_value": pa.list_(pa.float64()),
        "order_new_account": pa.list_(pa.bool_()),
    }
    return pa.schema(
        [
            (key, pa.int64() if entity == "user" else pa.string()),
            (TIMESTAMP_COLUMN, pa.timestamp("us", tz="UTC")),
            *[(name, kinds[name]) for name in HISTORY_LISTS],
        ]
    )


def build_and_write_histories(lake: Lake, ds: dt.date) -> dict[str, int]:
    """The daily step after day ``ds``: the histories checkout scoring starts day ``ds + 1`` from (orders of the
    window up to and including ``ds``, chargebacks arrived by then), published as partition ``ds`` of each entity's
    table (stamped at the start of ``ds + 1``, the end of ``ds``: what the day's materialization loads). Returns
    rows per entity."""
    start = ds - dt.timedelta(days=HISTORY_DAYS)
    orders = lake.read_range("orders", start, ds, columns=ORDER_COLUMNS)
    labels = lake.read_range("order_labels", start, ds, columns=LABEL_COLUMNS)
    if orders.empty:
        orders = pd.DataFrame({c: pd.Series(dtype="object") for c in ORDER_COLUMNS})
    if labels.empty:
        labels = pd.DataFrame({c: pd.Series(dtype="object") for c in LABEL_COLUMNS})
    built = build_histories(orders, labels, ds + dt.timedelta(days=1), lake.day_zone)
    for entity, frame in built.items():
        lake.write(history_table(entity), ds, frame, schema=history_schema(entity))
    return {entity: len(frame) for entity, frame in built.items()}
