"""Daily features of the ranking family: products, a user's affinity to a category, a user's ties to a product,
and the candidates serving ranks.

Four tables per day ``ds``, every row stamped ``event_timestamp = as_of(ds)`` and computed from the events before
it (the 30 days up to the end of ``ds``):

- ``features/product_stats`` (product_id): the catalogue's products with their views/carts/purchases over 1/7/30
  days, price and share of their category's views (popularity within the category);
- ``features/user_category`` (user_id, category_id): a user's views, carts, purchases in a category and its
  share of the user's views, for every pair with an event in the last ``AFFINITY_DAYS + 1`` days;
- ``features/user_product`` (user_id, product_id): a user's views, carts, removals, purchases of a product over
  ``INTERACTION_DAYS`` days and whether it sits in the user's open cart, for every pair carted, removed or bought
  in the last ``INTERACTION_DAYS + 1`` days;
- ``features/user_candidates`` (user_id): the candidates of each user with an event in the ranking spec's
  candidate window and the overall popular ones under ``POPULAR_USER_ID`` (``candidates.candidate_lists``, the
  generator training uses), as lists of product and category ids: serving reads them from the online store.

The sparse tables keep a pair one day after its last event, with zero counts: the online store keeps a key's last
row until it is overwritten, so that last row must say "nothing recent" rather than freeze the previous values.
"""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pyarrow as pa

from pipelines.data import schemas
from pipelines.features.candidates import (
    CATEGORY_LIST,
    LIST_COLUMNS,
    POPULAR_USER_ID,
    PRODUCT_LIST,
    candidate_lists,
    history_days,
)
from pipelines.features.inputs import FeatureInputError, require_columns
from pipelines.lake import Lake, as_date
from pipelines.settings import Settings
from pipelines.specs import CandidateSpec, load_specs
from pipelines.validation.contracts import validate_with_contract
from pipelines.validation.quarantine import ValidationFailed, report_key

PRODUCT_STATS_TABLE = "features/product_stats"
USER_CATEGORY_TABLE = "features/user_category"
USER_PRODUCT_TABLE = "features/user_product"
USER_CANDIDATES_TABLE = "features/user_candidates"
TIMESTAMP_COLUMN = "event_timestamp"
HISTORY_DAYS = 30  # events read per day: the longest window below
AFFINITY_DAYS = 30
INTERACTION_DAYS = 7
# A carted item is open for this many days unless removed or bought (the shop's cart expiry).
OPEN_CART_DAYS = 7
RECENCY_CAP_DAYS = float(INTERACTION_DAYS + 1)  # "not carted within the window"

PRODUCT_KEYS = ["product_id"]
USER_CATEGORY_KEYS = ["user_id", "category_id"]
USER_PRODUCT_KEYS = ["user_id", "product_id"]
USER_KEYS = ["user_id"]

# Lists, not tuples: df[COLUMNS] selects columns. Never mutate.
PRODUCT_FEATURES: list[str] = [
    "product_views_1d",
    "product_views_7d",
    "product_views_30d",
    "product_carts_7d",
    "product_carts_30d",
    "product_purchases_7d",
    "product_purchases_30d",
    "product_price",
    "product_category_share_7d",
    "product_category_share_30d",
    "product_category_rank_7d",
]
USER_CATEGORY_FEATURES: list[str] = [
    "user_category_views_7d",
    "user_category_views_30d",
    "user_category_carts_30d",
    "user_category_purchases_30d",
    "user_category_view_share_30d",
    "user_category_rank_30d",
]
USER_PRODUCT_FEATURES: list[str] = [
    "user_product_views_7d",
    "user_product_carts_7d",
    "user_product_removes_7d",
    "user_product_purchases_7d",
    "user_product_in_open_cart",
    "user_product_open_cart_rank",
    "user_product_days_since_cart",
    "user_open_cart_items",
]

# table -> (its GX suite in expectations/, key columns, feature columns)
TABLES: dict[str, tuple[str, list[str], list[str]]] = {
    PRODUCT_STATS_TABLE: ("product_stats", PRODUCT_KEYS, PRODUCT_FEATURES),
    USER_CATEGORY_TABLE: ("user_category", USER_CATEGORY_KEYS, USER_CATEGORY_FEATURES),
    USER_PRODUCT_TABLE: ("user_product", USER_PRODUCT_KEYS, USER_PRODUCT_FEATURES),
    USER_CANDIDATES_TABLE: ("user_candidates", USER_KEYS, LIST_COLUMNS),
}
# The arrow type of a table's feature columns when not float64.
FEATURE_TYPES: dict[str, pa.DataType] = {USER_CANDIDATES_TABLE: pa.list_(pa.int64())}

# Pairs the user x product table keeps: products a user put in the cart, took out or bought. Merely viewed
# products are left out: they are most of the pairs (~4 per cart pair) and the online store writes one row per
# pair and day (SQLite: ~8 s a day for 5,000 users), while the candidates hardly ever include them.
CART_EVENTS = ("cart", "remove_from_cart", "purchase")
# Columns a table carries besides keys and features: a product's category, so that serving can find the
# category of any product it is asked to rank (the product_catalogue view reads it; not a model feature).
EXTRA_COLUMNS: dict[str, list[str]] = {PRODUCT_STATS_TABLE: ["category_id"]}

EVENT_COLUMNS = ["event_time", "user_id", "event_type", "product_id", "category_id"]
PRODUCT_COLUMNS = ["product_id", "category_id", "price"]


class RankingFeatureError(FeatureInputError):
    """An input lacks a column the ranking features need, or a feature frame breaks its table's rules."""


def table_schema(table: str) -> pa.Schema:
    _, keys, features = TABLES[table]
    kind = FEATURE_TYPES.get(table, pa.float64())
    return pa.schema(
        [
            *[(k, pa.int64()) for k in keys],
            *[(c, pa.int64()) for c in EXTRA_COLUMNS.get(table, [])],
            (TIMESTAMP_COLUMN, pa.timestamp("us", tz="UTC")),
            *[(name, kind) for name in features],
        ]
    )


def _stamped(frame: pd.DataFrame, as_of: pd.Timestamp, keys: list[str], features: list[str]) -> pd.DataFrame:
    """Keys (and extra id columns) as int64, the as-of stamp, the features as float64, sorted by keys."""
    out = frame[keys].astype("int64").reset_index(drop=True)
    out[TIMESTAMP_COLUMN] = pd.Series(as_of, index=out.index).astype("datetime64[us, UTC]")
    for name in features:
        out[name] = frame[name].to_numpy(dtype="float64")
    return out.sort_values(keys, kind="stable", ignore_index=True)


def _ages(events: pd.DataFrame, as_of: pd.Timestamp) -> pd.DataFrame:
    """Events before ``as_of`` with their age in days, 0 < age <= HISTORY_DAYS + 1 (the extra day finds the pairs
    whose last event just left the windows)."""
    age = ((as_of - pd.to_datetime(events["event_time"], utc=True, cache=False)) / pd.Timedelta(days=1)).to_numpy(
        "float64"
    )
    keep = (age > 0) & (age <= HISTORY_DAYS + 1)
    ev = events.loc[keep, EVENT_COLUMNS].copy()
    ev["age"] = age[keep]
    ev = ev.dropna(subset=["user_id", "product_id"])
    return ev.astype({"user_id": "int64", "product_id": "int64"})


def _count(ev: pd.DataFrame, keys: list[str], event_type: str, days: int, name: str) -> pd.Series:
    hit = ev[(ev["event_type"] == event_type) & (ev["age"] <= days)]
    return hit.groupby(keys, sort=False).size().rename(name)


def compute_product_stats(ev: pd.DataFrame, products: pd.DataFrame, as_of: pd.Timestamp) -> pd.DataFrame:
    """One row per catalogue product: popularity counts, price and popularity within its category."""
    require_columns(products, "products", PRODUCT_COLUMNS, "ranking", RankingFeatureError)
    frame = products[PRODUCT_COLUMNS].drop_duplicates("product_id").set_index("product_id")
    for name, event_type, days in (
        ("product_views_1d", "view", 1),
        ("product_views_7d", "view", 7),
        ("product_views_30d", "view", 30),
        ("product_carts_7d", "cart", 7),
        ("product_carts_30d", "cart", 30),
        ("product_purchases_7d", "purchase", 7),
        ("product_purchases_30d", "purchase", 30),
    ):
        frame[name] = _count(ev, ["product_id"], event_type, days, name).reindex(frame.index).fillna(0.0)
    frame["product_price"] = frame["price"].astype("float64")
    for days in (7, 30):
        views = frame[f"product_views_{days}d"]
        total = views.groupby(frame["category_id"]).transform("sum")
        frame[f"product_category_share_{days}d"] = (views / total.where(total > 0)).fillna(0.0)
    frame["product_category_rank_7d"] = frame.groupby("category_id")["product_views_7d"].rank(
        method="min", ascending=False
    )
    return _stamped(frame.reset_index(), as_of, [*PRODUCT_KEYS, "category_id"], PRODUCT_FEATURES)


def compute_user_category(ev: pd.DataFrame, as_of: pd.Timestamp) -> pd.DataFrame:
    """One row per (user, category) with an event in the last AFFINITY_DAYS + 1 days."""
    ev = ev.dropna(subset=["category_id"]).astype({"category_id": "int64"})
    keys = USER_CATEGORY_KEYS
    pairs = ev.loc[ev["age"] <= AFFINITY_DAYS + 1, keys].drop_duplicates().set_index(keys)
    for name, event_type, days in (
        ("user_category_views_7d", "view", 7),
        ("user_category_views_30d", "view", AFFINITY_DAYS),
        ("user_category_carts_30d", "cart", AFFINITY_DAYS),
        ("user_category_purchases_30d", "purchase", AFFINITY_DAYS),
    ):
        pairs[name] = _count(ev, keys, event_type, days, name).reindex(pairs.index).fillna(0.0)
    frame = pairs.reset_index()
    views = frame["user_category_views_30d"]
    total = views.groupby(frame["user_id"]).transform("sum")
    frame["user_category_view_share_30d"] = (views / total.where(total > 0)).fillna(0.0)
    frame["user_category_rank_30d"] = views.groupby(frame["user_id"]).rank(method="min", ascending=False)
    return _stamped(frame, as_of, keys, USER_CATEGORY_FEATURES)


def _open_cart(ev: pd.DataFrame) -> pd.DataFrame:
    """Pairs whose newest cart of the last OPEN_CART_DAYS days was not followed by a removal or a purchase of the
    same product: user_id, product_id, cart_age (days since that cart), open_cart_rank (1: newest in the cart)."""
    keys = USER_PRODUCT_KEYS
    carts = ev[(ev["event_type"] == "cart") & (ev["age"] <= OPEN_CART_DAYS)]
    newest_cart = carts.groupby(keys, sort=False)["age"].min().rename("cart_age")
    closing = ev[ev["event_type"].isin(["remove_from_cart", "purchase"])]
    newest_close = closing.groupby(keys, sort=False)["age"].min().rename("close_age")
    pairs = newest_cart.to_frame().join(newest_close, how="left")
    # Ages count back from the as-of time: a close after the cart has a smaller age.
    pairs = pairs[~(pairs["close_age"] < pairs["cart_age"])].reset_index()
    pairs["open_cart_rank"] = pairs.groupby("user_id")["cart_age"].rank(method="first")
    return pairs[[*keys, "cart_age", "open_cart_rank"]]


def compute_user_product(ev: pd.DataFrame, as_of: pd.Timestamp) -> pd.DataFrame:
    """One row per (user, product) carted, removed or bought in the last INTERACTION_DAYS + 1 days."""
    keys = USER_PRODUCT_KEYS
    recent = ev[ev["age"] <= INTERACTION_DAYS + 1]
    pairs = recent.loc[recent["event_type"].isin(CART_EVENTS), keys].drop_duplicates().set_index(keys)
    for name, event_type in (
        ("user_product_views_7d", "view"),
        ("user_product_carts_7d", "cart"),
        ("user_product_removes_7d", "remove_from_cart"),
        ("user_product_purchases_7d", "purchase"),
    ):
        pairs[name] = _count(recent, keys, event_type, INTERACTION_DAYS, name).reindex(pairs.index).fillna(0.0)
    carts = recent[(recent["event_type"] == "cart") & (recent["age"] <= INTERACTION_DAYS)]
    last_cart = carts.groupby(keys, sort=False)["age"].min().reindex(pairs.index)
    pairs["user_product_days_since_cart"] = last_cart.fillna(RECENCY_CAP_DAYS).clip(upper=RECENCY_CAP_DAYS)
    frame = pairs.reset_index()
    open_cart = _open_cart(recent)
    frame = frame.merge(open_cart, on=keys, how="left")
    frame["user_product_in_open_cart"] = frame["cart_age"].notna().astype("float64")
    frame["user_product_open_cart_rank"] = frame["open_cart_rank"].fillna(0.0)
    n_open = open_cart.groupby("user_id").size()
    frame["user_open_cart_items"] = frame["user_id"].map(n_open).fillna(0.0)
    return _stamped(frame, as_of, keys, USER_PRODUCT_FEATURES)


def compute_user_candidates(
    events: pd.DataFrame, candidates: CandidateSpec, ds: dt.date, as_of: pd.Timestamp, zone: str = "UTC"
) -> pd.DataFrame:
    """One row per user with an event in the candidate window, and the popular products' row."""
    lists = candidate_lists(events, candidates, ds, zone)
    out = lists[USER_KEYS].astype("int64")
    out[TIMESTAMP_COLUMN] = pd.Series(as_of, index=out.index).astype("datetime64[us, UTC]")
    for name in LIST_COLUMNS:
        out[name] = lists[name]
    return out


def compute_ranking_features(
    events: pd.DataFrame, products: pd.DataFrame, ds: dt.date, zone: str = "UTC", *, candidates: CandidateSpec
) -> dict[str, pd.DataFrame]:
    """The four tables of ``ds`` from in-memory events (at least the HISTORY_DAYS days up to ``ds``, and the
    ``history_days(candidates)``) and the catalogue; events at or after ``as_of(ds)`` (the end of ``ds`` in the
    lake's day ``zone``) are ignored (the pure core of the daily step). ``candidates``: the ranking spec's
    candidate generation."""
    require_columns(events, "events", EVENT_COLUMNS, "ranking", RankingFeatureError)
    as_of = pd.Timestamp(schemas.as_of(ds, zone))
    ev = _ages(events, as_of)
    return {
        PRODUCT_STATS_TABLE: compute_product_stats(ev, products, as_of),
        USER_CATEGORY_TABLE: compute_user_category(ev, as_of),
        USER_PRODUCT_TABLE: compute_user_product(ev, as_of),
        USER_CANDIDATES_TABLE: compute_user_candidates(events, candidates, ds, as_of, zone),
    }


def catalogue_from_events(events: pd.DataFrame) -> pd.DataFrame:
    """Products as the events show them (category and price of each product's newest event): the catalogue of a
    real log that comes without a products table."""
    require_columns(events, "events", [*EVENT_COLUMNS, "price"], "ranking", RankingFeatureError)
    newest = events.sort_values("event_time", kind="stable").drop_duplicates("product_id", keep="last")
    newest = newest.dropna(subset=["product_id", "category_id"])
    return newest[PRODUCT_COLUMNS].astype({"product_id": "int64", "category_id": "int64", "price": "float64"})


def build_ranking_features(lake: Lake, ds: dt.date, candidates: CandidateSpec) -> dict[str, pd.DataFrame]:
    """Read the events of ``ds`` and the HISTORY_DAYS days before it (more if ``candidates`` looks further back)
    and the catalogue of ``ds``; compute.

    The day's own events partition must exist (``PartitionNotFound`` otherwise); older missing days simply
    contribute no events. Without a products partition (a real log) the catalogue is what the events show.
    """
    columns = [*EVENT_COLUMNS, "price"]
    days = max(HISTORY_DAYS, history_days(candidates) - 1)
    today = lake.read("events", ds, columns=columns)
    earlier = lake.read_range("events", ds - dt.timedelta(days=days), ds - dt.timedelta(days=1), columns)
    events = pd.concat([earlier, today], ignore_index=True) if len(earlier) else today
    products = lake.read("products", ds) if lake.exists("products", ds) else catalogue_from_events(events)
    return compute_ranking_features(events, products, ds, lake.day_zone, candidates=candidates)


def candidate_spec(settings: Settings) -> CandidateSpec:
    """How the ranking specs of ``settings.models_dir`` generate candidates: one table of lists serves them all,
    so they must agree."""
    specs = {name: spec.candidates for name, spec in load_specs(settings.models_dir).items() if spec.candidates}
    distinct = {c.model_dump_json(): c for c in specs.values()}
    if len(distinct) != 1:
        raise RankingFeatureError(
            f"{settings.models_dir}: the ranking family writes one candidate list per user, so exactly one "
            f"'candidates:' setting is needed; found {len(distinct)} ({sorted(specs)}): give the ranking specs the "
            "same 'candidates:'"
        )
    return next(iter(distinct.values()))


def _check_lists(ds: dt.date, df: pd.DataFrame) -> None:
    """Candidate lists: a category per product, and the popular products' row that serving falls back to."""
    uneven = df[df[PRODUCT_LIST].map(len) != df[CATEGORY_LIST].map(len)]
    if len(uneven):
        raise RankingFeatureError(
            f"{USER_CANDIDATES_TABLE} ds={ds}: {PRODUCT_LIST} and {CATEGORY_LIST} differ in length for user_id "
            f"{uneven['user_id'].head(5).tolist()}"
        )
    if not (df["user_id"] == POPULAR_USER_ID).any():
        raise RankingFeatureError(
            f"{USER_CANDIDATES_TABLE} ds={ds}: no row user_id={POPULAR_USER_ID} (the popular products serving falls "
            "back to); build it with pipelines.features.candidates.candidate_lists"
        )


def check_table(table: str, ds: dt.date, df: pd.DataFrame, zone: str = "UTC") -> None:
    """The rules every partition of a ranking table meets before it is written (columns, stamps, unique keys)."""
    _, keys, _ = TABLES[table]
    require_columns(df, table, [f.name for f in table_schema(table)], "ranking", RankingFeatureError)
    stamps = pd.to_datetime(df[TIMESTAMP_COLUMN], utc=True, cache=False)
    as_of = schemas.as_of(ds, zone)
    if len(df) and not (stamps == pd.Timestamp(as_of)).all():
        raise RankingFeatureError(f"{table} ds={ds}: every {TIMESTAMP_COLUMN} must be as_of(ds)={as_of}")
    if df.duplicated(keys).any():
        raise RankingFeatureError(f"{table} ds={ds}: duplicate {keys} rows")
    if table == USER_CANDIDATES_TABLE:
        _check_lists(ds, df)


def write_ranking_features(lake: Lake, ds: dt.date, tables: dict[str, pd.DataFrame]) -> dict[str, str]:
    """Publish each table's partition of ``ds`` (each write atomic; reruns replace). Checks all tables first, so
    a broken one leaves every table of the day as it was."""
    for table, df in tables.items():
        check_table(table, ds, df, lake.day_zone)
    return {
        table: lake.write(table, ds, df[[f.name for f in table_schema(table)]], schema=table_schema(table))
        for table, df in tables.items()
    }


def build_and_write_ranking_features(settings: Settings, ds: str | dt.date) -> dict:
    """The daily step: compute the day's four tables (candidates as the ranking specs generate them), check each
    with its suite, and publish them only when none fails critically (a failure leaves every previous partition in
    place and raises ``ValidationFailed``)."""
    lake, day = Lake(settings), as_date(ds)
    tables = build_ranking_features(lake, day, candidate_spec(settings))
    reports = {}
    for table, frame in tables.items():
        suite = TABLES[table][0]
        report = validate_with_contract(lake, frame, table, day, settings.expectations_dir, suite=suite)
        lake.write_json(report_key(table, day), report.to_dict())
        reports[table] = report
    for report in reports.values():
        if report.critical_failures:
            raise ValidationFailed(report)
    uris = write_ranking_features(lake, day, tables)
    return {
        table: {
            "rows": len(tables[table]),
            "uri": uris[table],
            "warnings": [c.describe() for c in reports[table].warnings],
        }
        for table in tables
    }
