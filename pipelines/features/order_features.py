"""Per-order risk features: what the shop knew about an order's account, device and IP just before it was placed.

One row per order of day ``ds``, stamped ``event_timestamp = purchase_time``, computed from the orders of the
30 days before ``ds`` and the orders of ``ds`` placed strictly earlier (never the order itself, never a later
one), and from the chargebacks of those orders that had arrived before it (never its own label). Written to
``features/order_risk/ds=...``, which Feast's ``order_risk`` feature view reads.

Missing is missing: an order whose device (IP) is unknown (null or blank, e.g. a source mapped with
``ip_address: {constant: null}``) shares that key with nobody. It never counts towards another order's device
(IP) features, and its own device (IP) features are NaN, not 0. Zero would say "a device never seen before", which
is itself a strong fraud signal; NaN lets LightGBM learn a separate branch for "unknown" (and a source without any
IP gives an all-NaN column that the trees simply never split on, and no drift).
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow as pa

from pipelines.data.orders import BROWSERS, SOURCES
from pipelines.data.schemas import day_start as day_start_of
from pipelines.features.inputs import FeatureInputError, require_columns
from pipelines.lake import Lake, as_date
from pipelines.settings import Settings
from pipelines.validation.contracts import validate_with_contract
from pipelines.validation.quarantine import ValidationFailed, report_key

ORDER_FEATURES_TABLE = "features/order_risk"
SUITE = "order_risk"
ENTITY_COLUMN = "order_id"
TIMESTAMP_COLUMN = "event_timestamp"
HISTORY_DAYS = 30
NEW_ACCOUNT_HOURS = 24.0  # an order placed by an account younger than this counts as a new account's order
HISTORY_CAP_HOURS = float((HISTORY_DAYS + 1) * 24)  # "no earlier order within the history read"
# Accounts older than this look alike to a fraud model; the cap leaves LightGBM's histogram bins to the young
# accounts, where new-account and ring fraud sit (uncapped, a few bins would cover the first days).
ACCOUNT_AGE_CAP_HOURS = float(HISTORY_DAYS * 24)

_HOUR_US = 3_600 * 10**6
_DAY_US = 24 * _HOUR_US
_ONE_DAY = dt.timedelta(days=1)
# (name suffix, window) of the velocity counts; the "_30d" counts take the whole history read.
_WINDOWS: tuple[tuple[str, int], ...] = (("1h", _HOUR_US), ("24h", _DAY_US), ("7d", 7 * _DAY_US))

# A list, not a tuple: df[FEATURE_COLUMNS] selects columns. Never mutate.
FEATURE_COLUMNS: list[str] = [
    "account_age_hours",
    "customer_age",
    "hour_of_day",
    "source_code",
    "browser_code",
    "user_orders_1h",
    "user_orders_24h",
    "user_orders_7d",
    "user_orders_30d",
    "user_mean_value_30d",
    "user_device_orders_30d",
    "user_ip_orders_30d",
    "hours_since_user_last_order",
    "user_device_age_hours",
    "user_ip_age_hours",
    "device_orders_1h",
    "device_orders_24h",
    "device_orders_7d",
    "device_accounts_30d",
    "device_new_account_orders_30d",
    "ip_orders_1h",
    "ip_orders_24h",
    "ip_orders_7d",
    "ip_accounts_30d",
    "ip_new_account_orders_30d",
    "ip_new_device_orders_30d",
    "user_chargebacks_30d",
    "device_chargebacks_30d",
    "ip_chargebacks_30d",
]
# Features of the order's device / IP: NaN when the order's device / IP is unknown (see the module's docstring).
DEVICE_FEATURES = frozenset(
    {
        "user_device_orders_30d",
        "user_device_age_hours",
        "device_orders_1h",
        "device_orders_24h",
        "device_orders_7d",
        "device_accounts_30d",
        "device_new_account_orders_30d",
        "device_chargebacks_30d",
    }
)
IP_FEATURES = frozenset(
    {
        "user_ip_orders_30d",
        "user_ip_age_hours",
        "ip_orders_1h",
        "ip_orders_24h",
        "ip_orders_7d",
        "ip_accounts_30d",
        "ip_new_account_orders_30d",
        "ip_new_device_orders_30d",
        "ip_chargebacks_30d",
    }
)
# Features that are NaN when nothing is known (no earlier order of the user, an unknown device or IP): LightGBM
# reads NaN as "missing".
NULLABLE_FEATURES = frozenset({"user_mean_value_30d"}) | DEVICE_FEATURES | IP_FEATURES

ORDER_FEATURES_SCHEMA = pa.schema(
    [
        (ENTITY_COLUMN, pa.string()),
        (TIMESTAMP_COLUMN, pa.timestamp("us", tz="UTC")),
        *[(name, pa.float64()) for name in FEATURE_COLUMNS],
    ]
)

# The columns of ORDERS and ORDER_LABELS (pipelines/data/schemas.py) the features read.
ORDER_COLUMNS = [
    "order_id",
    "user_id",
    "signup_time",
    "purchase_time",
    "purchase_value",
    "device_id",
    "source",
    "browser",
    "age",
    "ip_address",
]
LABEL_COLUMNS = ["order_id", "is_fraud", "label_time"]


class OrderFeatureError(FeatureInputError):
    """The orders lack a column the order features need, or a feature frame breaks the table's rules."""


def _epoch_us(values: pd.Series) -> np.ndarray:
    return pd.to_datetime(values, utc=True, cache=False).dt.as_unit("us").astype("int64").to_numpy()


def _keys(values: pd.Series) -> np.ndarray:
    """Sharing keys (device, IP) as text; None where the key is unknown (null or blank)."""
    text = values.astype("string").str.strip()
    return text.where(text.notna() & (text != ""), None).astype(object).to_numpy()


def _known(frame: pd.DataFrame, by: list[str]) -> np.ndarray:
    """Rows whose every key in ``by`` is known."""
    return frame[by].notna().all(axis=1).to_numpy()


def _codes(values: pd.Series, vocabulary: np.ndarray) -> np.ndarray:
    """Position of each value in ``vocabulary``; -1 for a value outside it (a real log's own channel names)."""
    index = pd.Index(vocabulary)
    return index.get_indexer(values.astype(str)).astype("float64")


def _prior_sums(
    history: pd.DataFrame, targets: pd.DataFrame, by: list[str], weight: str, windows: list[int | None]
) -> dict[int | None, np.ndarray]:
    """For each target row, the sum of ``history[weight]`` over rows with the same ``by`` values and a time in
    ``[t - window, t)`` (``None``: every earlier row), per window. Strictly earlier: a row never counts itself.

    Rows with an unknown key in ``by`` share it with nobody: they are left out of the history, and a target row
    with one gets NaN. Cumulative sums per group, looked up with an as-of join just before ``t`` and just before
    ``t - window``.
    """
    hist = history.loc[_known(history, by), [*by, "t", weight]].sort_values("t", kind="stable")
    hist = hist.assign(cum=hist.groupby(by, sort=False)[weight].cumsum())[[*by, "t", "cum"]]
    hist = hist.drop_duplicates([*by, "t"], keep="last")  # rows at the same time: the sum after all of them
    rows = np.flatnonzero(_known(targets, by))

    def cum_before(times: np.ndarray) -> np.ndarray:
        asked = targets.iloc[rows][by].assign(t=times[rows], row=rows).sort_values("t", kind="stable")
        got = pd.merge_asof(asked, hist, on="t", by=by, allow_exact_matches=False, direction="backward")
        out = np.full(len(targets), np.nan)
        out[got["row"].to_numpy()] = got["cum"].fillna(0.0).to_numpy(dtype="float64")
        return out

    now = cum_before(targets["t"].to_numpy())
    sums: dict[int | None, np.ndarray] = {}
    for window in windows:
        sums[window] = now if window is None else now - cum_before(targets["t"].to_numpy() - window)
    return sums


def _first_occurrence(frame: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """1.0 for the earliest row of each combination of ``columns`` (ties broken by order id), else 0.0."""
    ordered = frame.sort_values(["t", "order_id"], kind="stable")
    first = ~ordered.duplicated(columns, keep="first")
    return first.reindex(frame.index).to_numpy(dtype="float64")


def _hours_since_last(history: pd.DataFrame, targets: pd.DataFrame, by: list[str]) -> np.ndarray:
    """Hours since the latest earlier row with the same ``by`` values (``HISTORY_CAP_HOURS`` when none)."""
    hist = history[[*by, "t"]].drop_duplicates().sort_values("t", kind="stable").assign(last=lambda f: f["t"])
    asked = targets[[*by, "t"]].assign(row=np.arange(len(targets))).sort_values("t", kind="stable")
    got = pd.merge_asof(asked, hist, on="t", by=by, allow_exact_matches=False, direction="backward")
    hours = np.full(len(targets), HISTORY_CAP_HOURS)
    found = got["last"].notna().to_numpy()
    rows = got["row"].to_numpy()[found]
    hours[rows] = (got["t"].to_numpy()[found] - got["last"].to_numpy()[found]) / _HOUR_US
    return hours


def _hours_since_first(history: pd.DataFrame, targets: pd.DataFrame, by: list[str]) -> np.ndarray:
    """Hours since the earliest earlier row with the same ``by`` values (0 when none: it is new now; NaN when a
    key of the target row is unknown)."""
    first = history[_known(history, by)].groupby(by, sort=False)["t"].min().rename("first").reset_index()
    got = targets[[*by, "t"]].merge(first, on=by, how="left")["first"].to_numpy(dtype="float64")
    t = targets["t"].to_numpy(dtype="float64")
    return np.where(_known(targets, by), np.where(got < t, (t - got) / _HOUR_US, 0.0), np.nan)


def compute_order_features(orders: pd.DataFrame, labels: pd.DataFrame, ds: dt.date, zone: str = "UTC") -> pd.DataFrame:
    """Features of every order placed on ``ds``, from ``orders`` holding that day and the days before it and the
    fraud ``labels`` (ORDER_LABELS) that arrived meanwhile. The day runs from midnight to midnight in ``zone``
    (the zone the lake's days are cut in), which also gives ``hour_of_day`` its local hour.

    Orders after ``ds`` (if any) are ignored; so are orders older than ``HISTORY_DAYS`` before ``ds``. A chargeback
    counts for an order only if it arrived strictly before the order was placed.
    """
    require_columns(orders, "orders", ORDER_COLUMNS, "order", OrderFeatureError)
    require_columns(labels, "order_labels", LABEL_COLUMNS, "order", OrderFeatureError)
    day_start, day_end = (int(v) for v in _epoch_us(pd.Series([day_start_of(d, zone) for d in (ds, ds + _ONE_DAY)])))
    t = _epoch_us(orders["purchase_time"])
    # The day ends at the next local midnight: 23 or 25 hours after its start when the zone changes its clocks.
    keep = (t >= day_start - HISTORY_DAYS * _DAY_US) & (t < day_end)
    frame = pd.DataFrame(
        {
            "order_id": orders["order_id"].astype(str).to_numpy()[keep],
            "user": orders["user_id"].astype("int64").to_numpy()[keep],
            "device": _keys(orders["device_id"])[keep],
            "ip": _keys(orders["ip_address"])[keep],
            "t": t[keep],
            "signup": _epoch_us(orders["signup_time"])[keep],
            "value": orders["purchase_value"].astype("float64").to_numpy()[keep],
            "source": orders["source"].astype(str).to_numpy()[keep],
            "browser": orders["browser"].astype(str).to_numpy()[keep],
            "age": orders["age"].astype("float64").to_numpy()[keep],
        }
    )
    frame["one"] = 1.0
    frame["new_account"] = ((frame["t"] - frame["signup"]) < NEW_ACCOUNT_HOURS * _HOUR_US).astype("float64")
    # Whether the order's device had not been used by its account before (within the history read); an unknown
    # device is not known to be new.
    frame["new_device"] = _first_occurrence(frame, ["user", "device"]) * _known(frame, ["device"])
    today = (frame["t"] >= day_start).to_numpy()
    targets = frame[today].reset_index(drop=True)

    out: dict[str, np.ndarray] = {}
    windows = [w for _, w in _WINDOWS]
    for entity, by in (("user", ["user"]), ("device", ["device"]), ("ip", ["ip"])):
        counts = _prior_sums(frame, targets, by, "one", [*windows, None])
        for suffix, window in _WINDOWS:
            out[f"{entity}_orders_{suffix}"] = counts[window]
        out[f"{entity}_orders_30d"] = counts[None]
    value_sum = _prior_sums(frame, targets, ["user"], "value", [None])[None]
    n_user = out["user_orders_30d"]
    out["user_mean_value_30d"] = np.divide(value_sum, n_user, out=np.full(len(targets), np.nan), where=n_user > 0)
    out["user_device_orders_30d"] = _prior_sums(frame, targets, ["user", "device"], "one", [None])[None]
    out["user_ip_orders_30d"] = _prior_sums(frame, targets, ["user", "ip"], "one", [None])[None]
    # Bursts: an account ordering again minutes later. Takeovers: an old account on a device (IP) it first used
    # only minutes ago, e.g. earlier in the same burst.
    out["hours_since_user_last_order"] = _hours_since_last(frame, targets, ["user"])
    out["user_device_age_hours"] = _hours_since_first(frame, targets, ["user", "device"])
    out["user_ip_age_hours"] = _hours_since_first(frame, targets, ["user", "ip"])

    # Distinct other accounts seen on the device / IP before the order: first appearances of (account, device).
    for entity in ("device", "ip"):
        pairs = frame.assign(first=_first_occurrence(frame, [entity, "user"]))
        accounts = _prior_sums(pairs, targets, [entity], "first", [None])[None]
        own = out[f"user_{entity}_orders_30d"] > 0  # the order's own account, if seen there before
        out[f"{entity}_accounts_30d"] = accounts - own
        out[f"{entity}_new_account_orders_30d"] = _prior_sums(frame, targets, [entity], "new_account", [None])[None]
    out["ip_new_device_orders_30d"] = _prior_sums(frame, targets, ["ip"], "new_device", [None])[None]

    # Chargebacks known before the order, by the account, device and IP of the charged-back order. Each one is
    # dated after its own order too, so an order can never count its own chargeback.
    charged = labels.loc[labels["is_fraud"].astype("int64") == 1, ["order_id", "label_time"]]
    charged = frame.merge(charged.assign(order_id=charged["order_id"].astype(str)), on="order_id", how="inner")
    charged["t"] = np.maximum(_epoch_us(charged["label_time"]), charged["t"].to_numpy() + 1)
    for entity in ("user", "device", "ip"):
        out[f"{entity}_chargebacks_30d"] = _prior_sums(charged, targets, [entity], "one", [None])[None]

    age = np.maximum(targets["t"] - targets["signup"], 0).to_numpy() / _HOUR_US
    out["account_age_hours"] = np.minimum(age, ACCOUNT_AGE_CAP_HOURS)
    out["customer_age"] = targets["age"].to_numpy()
    local = pd.to_datetime(targets["t"].to_numpy(), unit="us", utc=True, cache=False).tz_convert(zone)
    out["hour_of_day"] = local.hour.to_numpy(dtype="float64")  # the wall clock's hour, DST days included
    out["source_code"] = _codes(targets["source"], SOURCES)
    out["browser_code"] = _codes(targets["browser"], BROWSERS)

    result = pd.DataFrame({ENTITY_COLUMN: targets["order_id"].to_numpy()})
    result[TIMESTAMP_COLUMN] = pd.to_datetime(targets["t"].to_numpy(), unit="us", utc=True, cache=False).as_unit("us")
    for name in FEATURE_COLUMNS:
        result[name] = np.asarray(out[name], dtype="float64")
    return result.sort_values([TIMESTAMP_COLUMN, ENTITY_COLUMN], kind="stable", ignore_index=True)


def build_order_features(lake: Lake, ds: dt.date) -> pd.DataFrame:
    """Read the orders of ``ds`` and of the ``HISTORY_DAYS`` days before it, and the labels that arrived in
    those days; compute the day's features.

    The day's own orders partition must exist (raises ``PartitionNotFound`` otherwise); older days that are
    missing simply contribute no history, missing label days no chargebacks.
    """
    today = lake.read("orders", ds)
    require_columns(today, "orders", ORDER_COLUMNS, "order", OrderFeatureError)
    today = today[ORDER_COLUMNS]
    earlier = lake.read_range(
        "orders", ds - dt.timedelta(days=HISTORY_DAYS), ds - dt.timedelta(days=1), columns=ORDER_COLUMNS
    )
    orders = pd.concat([earlier, today], ignore_index=True) if len(earlier) else today
    labels = lake.read_range("order_labels", ds - dt.timedelta(days=HISTORY_DAYS), ds, columns=LABEL_COLUMNS)
    return compute_order_features(orders, labels, ds, lake.day_zone)


def write_order_features(lake: Lake, ds: dt.date, df: pd.DataFrame) -> str:
    """Publish the day's features as partition ``features/order_risk/ds=...`` (atomic; reruns replace)."""
    columns = [f.name for f in ORDER_FEATURES_SCHEMA]
    require_columns(df, ORDER_FEATURES_TABLE, columns, "order", OrderFeatureError)
    stamps = pd.to_datetime(df[TIMESTAMP_COLUMN], utc=True, cache=False)
    zone = lake.day_zone
    start, end = pd.Timestamp(day_start_of(ds, zone)), pd.Timestamp(day_start_of(ds + dt.timedelta(days=1), zone))
    if len(df) and not ((stamps >= start) & (stamps < end)).all():
        raise OrderFeatureError(f"{ORDER_FEATURES_TABLE} ds={ds}: every {TIMESTAMP_COLUMN} must fall on {ds} ({zone})")
    if df[ENTITY_COLUMN].duplicated().any():
        raise OrderFeatureError(f"{ORDER_FEATURES_TABLE} ds={ds}: duplicate {ENTITY_COLUMN} values")
    return lake.write(ORDER_FEATURES_TABLE, ds, df[columns], schema=ORDER_FEATURES_SCHEMA)


def build_and_write_order_features(settings: Settings, ds: str | dt.date) -> dict:
    """The daily step: compute the day's order features, check them with the ``order_risk`` suite, publish.

    A critical failure leaves the previous partition (if any) in place and raises ``ValidationFailed``.
    """
    lake, day = Lake(settings), as_date(ds)
    frame = build_order_features(lake, day)
    report = validate_with_contract(lake, frame, ORDER_FEATURES_TABLE, day, settings.expectations_dir, suite=SUITE)
    lake.write_json(report_key(ORDER_FEATURES_TABLE, day), report.to_dict())
    if report.critical_failures:
        raise ValidationFailed(report)
    uri = write_order_features(lake, day, frame)
    return {"rows": len(frame), "uri": uri, "warnings": [c.describe() for c in report.warnings]}
