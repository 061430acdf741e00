"""Per-user behaviour features of one day: counts, recencies, social signals over 30 days to ``as_of(ds)``.

One row per known user (signed up by the end of ``ds``), stamped ``event_timestamp = as_of(ds)``; written to
the lake partition ``features/user_behavior/ds=...`` that Feast's ``user_behavior`` feature view reads.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow as pa

from pipelines.data import schemas
from pipelines.features.inputs import FeatureInputError, require_columns
from pipelines.lake import Lake

USER_FEATURES_TABLE = "features/user_behavior"
ENTITY_COLUMN = "user_id"
TIMESTAMP_COLUMN = "event_timestamp"
WINDOW_DAYS = 30
RECENCY_CAP_DAYS = float(WINDOW_DAYS)  # "no such event within the window"

# A list, not a tuple: df[FEATURE_COLUMNS] and df.loc[:, FEATURE_COLUMNS] then select columns. Never mutate.
FEATURE_COLUMNS: list[str] = [
    "views_1d",
    "views_7d",
    "views_30d",
    "carts_1d",
    "carts_7d",
    "carts_30d",
    "purchases_7d",
    "purchases_30d",
    "wishlist_7d",
    "remove_from_cart_7d",
    "sessions_7d",
    "days_since_last_event",
    "days_since_last_purchase",
    "days_since_last_cart",
    "cart_abandonment_7d",
    "avg_price_viewed_30d",
    "followee_purchases_7d",
    "follower_count",
    "followee_count",
]

# (feature, event type, window in days): plain event counts.
_COUNTS: tuple[tuple[str, str, int], ...] = (
    ("views_1d", "view", 1),
    ("views_7d", "view", 7),
    ("views_30d", "view", 30),
    ("carts_1d", "cart", 1),
    ("carts_7d", "cart", 7),
    ("carts_30d", "cart", 30),
    ("purchases_7d", "purchase", 7),
    ("purchases_30d", "purchase", 30),
    ("wishlist_7d", "wishlist", 7),
    ("remove_from_cart_7d", "remove_from_cart", 7),
)

USER_FEATURES_SCHEMA = pa.schema(
    [
        (ENTITY_COLUMN, pa.int64()),
        (TIMESTAMP_COLUMN, pa.timestamp("us", tz="UTC")),
        *[(name, pa.float64()) for name in FEATURE_COLUMNS],
    ]
)

_EVENT_COLUMNS = ["event_time", "user_id", "session_id", "event_type", "product_id", "price"]


def compute_user_features(
    events: pd.DataFrame, users: pd.DataFrame, follows: pd.DataFrame, ds: dt.date, zone: str = "UTC"
) -> pd.DataFrame:
    """Features of every user known at ``as_of(ds)`` from in-memory tables (the pure core of the step); ``zone``
    is the lake's day zone (``Lake.day_zone``), where day ``ds`` ends."""
    require_columns(events, "events", _EVENT_COLUMNS, "user")
    require_columns(users, "users", ["user_id", "signup_time"], "user")
    require_columns(follows, "follows", ["follower_id", "followee_id", "created_at"], "user")
    as_of = pd.Timestamp(schemas.as_of(ds, zone))

    known = users.loc[pd.to_datetime(users["signup_time"], utc=True, cache=False) < as_of, "user_id"]
    user_ids = pd.Index(np.sort(known.astype("int64").unique()), name=ENTITY_COLUMN)
    n = len(user_ids)

    # Position of each event's user among the known users; events of unknown users are ignored.
    age = (as_of - pd.to_datetime(events["event_time"], utc=True, cache=False)) / pd.Timedelta(days=1)
    age = age.to_numpy(dtype="float64")
    uidx = user_ids.get_indexer(events["user_id"].astype("int64"))
    keep = (uidx >= 0) & (age > 0) & (age <= WINDOW_DAYS)
    ev = pd.DataFrame(
        {
            "u": uidx[keep],
            "age": age[keep],
            "type": events["event_type"].to_numpy()[keep],
            "session": events["session_id"].to_numpy()[keep],
            "product": events["product_id"].to_numpy()[keep],
            "price": events["price"].to_numpy(dtype="float64")[keep],
        }
    )
    u, ev_age, ev_type = ev["u"].to_numpy(), ev["age"].to_numpy(), ev["type"].to_numpy()
    within = {days: ev_age <= days for days in (1, 7, 30)}
    is_type = {t: ev_type == t for t in schemas.EVENT_TYPES}

    def count(mask: np.ndarray) -> np.ndarray:
        return np.bincount(u[mask], minlength=n).astype("float64")

    out: dict[str, np.ndarray] = {name: count(is_type[t] & within[d]) for name, t, d in _COUNTS}

    last7 = ev[within[7]]
    out["sessions_7d"] = np.bincount(last7.drop_duplicates(["u", "session"])["u"].to_numpy(), minlength=n).astype(
        "float64"
    )

    def days_since(mask: np.ndarray) -> np.ndarray:
        newest = np.full(n, RECENCY_CAP_DAYS)
        if mask.any():
            smallest = pd.Series(ev_age[mask]).groupby(u[mask]).min()
            newest[smallest.index.to_numpy()] = np.minimum(smallest.to_numpy(), RECENCY_CAP_DAYS)
        return newest

    out["days_since_last_event"] = days_since(np.ones(len(ev), dtype=bool))
    out["days_since_last_purchase"] = days_since(is_type["purchase"])
    out["days_since_last_cart"] = days_since(is_type["cart"])

    # Share of distinct products carted in the last 7 days that the user did not purchase in those 7 days.
    carted = last7.loc[last7["type"] == "cart", ["u", "product"]].drop_duplicates()
    bought = last7.loc[last7["type"] == "purchase", ["u", "product"]].drop_duplicates()
    carted = carted.merge(bought.assign(bought=True), on=["u", "product"], how="left")
    n_carted = np.bincount(carted["u"].to_numpy(), minlength=n)
    n_abandoned = np.bincount(carted.loc[carted["bought"].isna(), "u"].to_numpy(), minlength=n)
    out["cart_abandonment_7d"] = np.divide(n_abandoned, n_carted, out=np.zeros(n, dtype="float64"), where=n_carted > 0)

    viewed = is_type["view"] & within[30] & ~np.isnan(ev["price"].to_numpy())
    price_sum = np.bincount(u[viewed], weights=ev["price"].to_numpy()[viewed], minlength=n)
    n_viewed = np.bincount(u[viewed], minlength=n)
    out["avg_price_viewed_30d"] = np.divide(price_sum, n_viewed, out=np.zeros(n, dtype="float64"), where=n_viewed > 0)

    # Social graph as of the end of the day: each edge counted once, a user following themself ignored.
    edges = follows.loc[
        (pd.to_datetime(follows["created_at"], utc=True, cache=False) < as_of)
        & (follows["follower_id"] != follows["followee_id"]),
        ["follower_id", "followee_id"],
    ].drop_duplicates()
    follower = user_ids.get_indexer(edges["follower_id"].astype("int64"))
    followee = user_ids.get_indexer(edges["followee_id"].astype("int64"))
    out["followee_count"] = np.bincount(follower[follower >= 0], minlength=n).astype("float64")
    out["follower_count"] = np.bincount(followee[followee >= 0], minlength=n).astype("float64")
    both = (follower >= 0) & (followee >= 0)
    out["followee_purchases_7d"] = np.bincount(
        follower[both], weights=out["purchases_7d"][followee[both]], minlength=n
    ).astype("float64")

    frame = pd.DataFrame({ENTITY_COLUMN: user_ids.to_numpy(dtype="int64")})
    frame[TIMESTAMP_COLUMN] = pd.Series(as_of, index=frame.index).astype("datetime64[us, UTC]")
    for name in FEATURE_COLUMNS:
        frame[name] = out[name]
    return frame


def build_user_features(lake: Lake, ds: dt.date) -> pd.DataFrame:
    """Read 30 days of events up to ``ds`` and the ``users``/``follows`` snapshots of ``ds``; compute.

    The day's own events partition must exist (raises ``PartitionNotFound`` otherwise); older days that are
    missing simply contribute no events.
    """
    events_today = lake.read("events", ds, columns=_EVENT_COLUMNS)
    earlier = lake.read_range(
        "events", ds - dt.timedelta(days=WINDOW_DAYS - 1), ds - dt.timedelta(days=1), columns=_EVENT_COLUMNS
    )
    frames = [f for f in (earlier, events_today) if len(f)]
    events = pd.concat(frames, ignore_index=True) if frames else events_today
    users = lake.read("users", ds, columns=["user_id", "signup_time"])
    follows = lake.read("follows", ds, columns=["follower_id", "followee_id", "created_at"])
    return compute_user_features(events, users, follows, ds, lake.day_zone)


def write_user_features(lake: Lake, ds: dt.date, df: pd.DataFrame) -> str:
    """Publish the day's features as partition ``features/user_behavior/ds=...`` (atomic; reruns replace)."""
    require_columns(df, USER_FEATURES_TABLE, [f.name for f in USER_FEATURES_SCHEMA], "user")
    stamps = pd.to_datetime(df[TIMESTAMP_COLUMN], utc=True, cache=False)
    as_of = schemas.as_of(ds, lake.day_zone)
    if len(df) and not (stamps == pd.Timestamp(as_of)).all():
        raise FeatureInputError(f"{USER_FEATURES_TABLE} ds={ds}: every {TIMESTAMP_COLUMN} must be as_of(ds)={as_of}")
    if df[ENTITY_COLUMN].duplicated().any():
        raise FeatureInputError(f"{USER_FEATURES_TABLE} ds={ds}: duplicate {ENTITY_COLUMN} values")
    columns = [f.name for f in USER_FEATURES_SCHEMA]
    return lake.write(USER_FEATURES_TABLE, ds, df[columns], schema=USER_FEATURES_SCHEMA)
