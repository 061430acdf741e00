"""Ranking candidates: which products are scored for a user at an as-of time.

A request is one user at ``as_of(ds)``; its candidates are the most popular products of the user's most viewed
categories, the overall most popular products and the products the user carted recently (``CandidateSpec`` says
how many of each). Only events before the as-of time are read, so the same function serves training (past days)
and serving (the newest day). Training asks for the users who had a session on the day: they are the ones a shop would
rank for, and keep the volume of rows small. Serving reads each day's lists from the online store
(``candidate_lists``, written by the daily ranking family): every user with an event in the candidate window gets
their own, everyone else the overall popular products stored under ``POPULAR_USER_ID``.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from pipelines.data import schemas
from pipelines.lake import Lake
from pipelines.specs import CandidateSpec

KEYS = ["user_id", "product_id"]
COLUMNS = ["user_id", "product_id", "category_id"]
EVENT_COLUMNS = ["event_time", "user_id", "event_type", "product_id", "category_id"]
# One row per user: the candidates' product and category ids, in generation order.
PRODUCT_LIST = "candidate_product_ids"
CATEGORY_LIST = "candidate_category_ids"
LIST_COLUMNS = [PRODUCT_LIST, CATEGORY_LIST]
# The key of the candidates of a user without events in the window (the overall popular products): no request
# can send it (request ids are >= 0; -1 is the serving canary's).
POPULAR_USER_ID = -2


class CandidateError(ValueError):
    """The events cannot give candidates (missing columns, no events before the as-of time)."""


def history_days(spec: CandidateSpec) -> int:
    """Days of events (ending with the as-of day) candidate generation reads."""
    return max(spec.recent_days, spec.popularity_days)


def _window(events: pd.DataFrame, ds: dt.date, days: int, zone: str = "UTC") -> pd.DataFrame:
    """Events of the ``days`` days ending with ``ds`` (``[as_of(ds) - days, as_of(ds))``, days of ``zone``)."""
    end = pd.Timestamp(schemas.as_of(ds, zone))
    t = pd.to_datetime(events["event_time"], utc=True, cache=False)
    return events[(t >= end - pd.Timedelta(days=days)) & (t < end)]


def popular_products(events: pd.DataFrame, ds: dt.date, days: int, zone: str = "UTC") -> pd.DataFrame:
    """Products by views in the ``days`` days ending with ``ds``, most viewed first (ties: lower id first):
    product_id, category_id, views."""
    views = _window(events, ds, days, zone)
    views = views[views["event_type"] == "view"]
    counts = views.groupby(["product_id", "category_id"], sort=False).size().rename("views").reset_index()
    counts = counts.sort_values(["views", "product_id"], ascending=[False, True], kind="stable", ignore_index=True)
    return counts.astype({"product_id": "int64", "category_id": "int64", "views": "int64"})


def request_users(events: pd.DataFrame, ds: dt.date, zone: str = "UTC") -> np.ndarray:
    """Users with a session (any event) on day ``ds`` (a day of ``zone``), sorted."""
    return np.sort(_window(events, ds, 1, zone)["user_id"].astype("int64").unique())


def _top_per_group(frame: pd.DataFrame, group: str, k: int) -> pd.DataFrame:
    """The first ``k`` rows of each ``group`` in the frame's order."""
    return frame[frame.groupby(group, sort=False).cumcount() < k]


def generate_candidates(
    events: pd.DataFrame, spec: CandidateSpec, ds: dt.date, user_ids: np.ndarray | list[int], zone: str = "UTC"
) -> pd.DataFrame:
    """Candidates of each user in ``user_ids`` at ``as_of(ds)`` (``zone``: the lake's day zone): user_id,
    product_id, category_id.

    ``events`` must hold (at least) the ``history_days(spec)`` days ending with ``ds``; later events are
    ignored. Each (user, product) appears once, in the order: recently carted, recent categories' popular
    products (the user's most viewed category first), overall popular products. A user without recent views
    gets the overall popular products (and their carts).
    """
    missing = [c for c in EVENT_COLUMNS if c not in events.columns]
    if missing:
        raise CandidateError(f"events lack column(s) {missing} needed for candidates; see pipelines/data/schemas.py")
    users = pd.Index(np.unique(np.asarray(user_ids, dtype="int64")), name="user_id")
    # A real log may miss a product's category: such events cannot place a product in a category.
    events = events.dropna(subset=["product_id", "category_id"])
    if users.empty:
        return pd.DataFrame({c: pd.Series(dtype="int64") for c in COLUMNS})
    recent = _window(events, ds, spec.recent_days, zone)
    recent = recent[recent["user_id"].astype("int64").isin(users)]
    popular = popular_products(events, ds, spec.popularity_days, zone)

    carted = recent.loc[recent["event_type"] == "cart", ["user_id", "product_id", "category_id", "event_time"]]
    carted = carted.sort_values(["user_id", "event_time"], ascending=[True, False], kind="stable")[COLUMNS]

    viewed = recent[recent["event_type"] == "view"]
    by_category = viewed.groupby(["user_id", "category_id"], sort=False).size().rename("n").reset_index()
    by_category = by_category.sort_values(["user_id", "n", "category_id"], ascending=[True, False, True])
    top_categories = _top_per_group(by_category, "user_id", spec.categories)
    top_categories = top_categories.assign(rank=top_categories.groupby("user_id").cumcount())
    per_category = _top_per_group(popular, "category_id", spec.per_category)[["category_id", "product_id"]]
    per_category = per_category.assign(position=np.arange(len(per_category)))
    from_categories = top_categories.merge(per_category, on="category_id")
    from_categories = from_categories.sort_values(["user_id", "rank", "position"], kind="stable")[COLUMNS]

    overall = popular.head(spec.popular)[["product_id", "category_id"]]
    from_popular = pd.DataFrame(
        {
            "user_id": np.repeat(users.to_numpy(), len(overall)),
            "product_id": np.tile(overall["product_id"].to_numpy(), len(users)),
            "category_id": np.tile(overall["category_id"].to_numpy(), len(users)),
        }
    )
    out = pd.concat([carted, from_categories, from_popular], ignore_index=True).astype("int64")
    out = out.drop_duplicates(KEYS, keep="first")
    # Stable per user: the source order above is kept within each user.
    return out.sort_values("user_id", kind="stable", ignore_index=True)


def lake_candidates(
    lake: Lake, spec: CandidateSpec, user_ids: list[int] | np.ndarray, ds: dt.date | None = None
) -> pd.DataFrame:
    """Candidates at ``as_of(ds)`` read from the lake's events (``ds`` defaults to the newest events day): what
    serving ranks when a request names no products, there read from the online store (``candidate_lists``)."""
    days = lake.partitions("events")
    if not days:
        raise CandidateError(f"{lake.uri('events')}: no events partition to draw candidates from")
    ds = ds or days[-1]
    events = lake.read_range("events", ds - dt.timedelta(days=history_days(spec) - 1), ds, columns=EVENT_COLUMNS)
    if events.empty:
        raise CandidateError(f"{lake.uri('events')}: no events in the {history_days(spec)} days up to {ds}")
    return generate_candidates(events, spec, ds, user_ids, lake.day_zone)


def window_users(events: pd.DataFrame, spec: CandidateSpec, ds: dt.date, zone: str = "UTC") -> np.ndarray:
    """Users with an event in the ``spec.recent_days`` days ending with ``ds``, sorted: the only users whose
    candidates differ from the overall popular products (carts and viewed categories come from those days)."""
    users = _window(events, ds, spec.recent_days, zone)["user_id"].dropna()
    return np.sort(users.astype("int64").unique())


def candidate_lists(events: pd.DataFrame, spec: CandidateSpec, ds: dt.date, zone: str = "UTC") -> pd.DataFrame:
    """The candidates of ``ds`` as serving reads them: one row per user of ``window_users`` and one for
    ``POPULAR_USER_ID`` (a user without events: the overall popular products), with the lists ``PRODUCT_LIST``
    and ``CATEGORY_LIST`` in ``generate_candidates``' order; sorted by user_id."""
    users = np.unique(np.append(window_users(events, spec, ds, zone), POPULAR_USER_ID))
    rows = generate_candidates(events, spec, ds, users, zone)
    # generate_candidates sorts its rows by user, keeping each user's order: a user's rows are one slice.
    owners = rows["user_id"].to_numpy()
    starts, ends = np.searchsorted(owners, users, "left"), np.searchsorted(owners, users, "right")
    products, categories = rows["product_id"].to_numpy(), rows["category_id"].to_numpy()
    return pd.DataFrame(
        {
            "user_id": users,
            PRODUCT_LIST: [products[a:b] for a, b in zip(starts, ends, strict=True)],
            CATEGORY_LIST: [categories[a:b] for a, b in zip(starts, ends, strict=True)],
        }
    )
