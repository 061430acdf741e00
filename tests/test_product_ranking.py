"""Product ranking: candidates, point-in-time ranking features, graded labels, the training rows' contract, the
simulator's expected relevance, and the ranking route ordering candidates by the champion's score."""

from __future__ import annotations

import datetime as dt

import lightgbm as lgb
import mlflow
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from mlflow.models import infer_signature

from pipelines.data import schemas
from pipelines.data.simulator import SimulationConfig
from pipelines.features.candidates import CATEGORY_LIST, POPULAR_USER_ID, PRODUCT_LIST, generate_candidates
from pipelines.features.product_features import (
    PRODUCT_FEATURES,
    PRODUCT_STATS_TABLE,
    USER_CANDIDATES_TABLE,
    USER_CATEGORY_FEATURES,
    USER_CATEGORY_TABLE,
    USER_PRODUCT_FEATURES,
    USER_PRODUCT_TABLE,
    build_and_write_ranking_features,
    build_ranking_features,
    compute_ranking_features,
    write_ranking_features,
)
from pipelines.features.user_features import FEATURE_COLUMNS as USER_FEATURES
from pipelines.features.user_features import build_user_features, write_user_features
from pipelines.lake import Lake
from pipelines.registry.registry import ensure_experiment
from pipelines.serving.app import create_app
from pipelines.settings import PROJECT_ROOT, Settings
from pipelines.specs import CandidateSpec, WindowSpec, load_spec
from pipelines.training.dataset import GROUP_COLUMN, LABEL_COLUMN, SPLIT_COLUMN, TIMESTAMP_COLUMN, split_days
from pipelines.training.ranking_truth import expected_gain
from pipelines.training.rows_ranking import build_frame, oracle_scores, relevance_labels
from pipelines.validation.quarantine import ValidationFailed
from tests.audit_support import audit_promotion

D0 = dt.date(2024, 3, 1)
H = pd.Timedelta(hours=1)
# Three categories of four products: 1-4 in category 1, 5-8 in 2, 9-12 in 3; the first of each is the most viewed.
CATEGORY = {p: (p - 1) // 4 + 1 for p in range(1, 13)}
SPEC = CandidateSpec(recent_days=7, categories=1, per_category=2, popular=2, popularity_days=7)


def _events(rows: list[tuple]) -> pd.DataFrame:
    """Events from (time, user, type, product) tuples, in the EVENTS schema."""
    frame = pd.DataFrame(rows, columns=["event_time", "user_id", "event_type", "product_id"])
    return pd.DataFrame(
        {
            "event_id": [f"e{i}" for i in range(len(frame))],
            "event_time": pd.to_datetime(frame["event_time"], utc=True).dt.as_unit("us"),
            "user_id": frame["user_id"].astype("int64"),
            "session_id": [f"{u}-{t:%Y%m%d}" for u, t in zip(frame["user_id"], frame["event_time"], strict=True)],
            "event_type": frame["event_type"],
            "product_id": frame["product_id"].astype("int64"),
            "category_id": frame["product_id"].map(CATEGORY).astype("int64"),
            "brand": "b",
            "price": 10.0 * frame["product_id"],
            "merchant_id": np.int64(1),
        }
    )


def _at(day: dt.date, hours: float) -> pd.Timestamp:
    return pd.Timestamp(day, tz="UTC") + hours * H


def _catalogue() -> pd.DataFrame:
    ids = np.arange(1, 13, dtype="int64")
    return pd.DataFrame(
        {
            "product_id": ids,
            "category_id": [CATEGORY[p] for p in ids],
            "brand": "b",
            "price": 10.0 * ids,
            "merchant_id": np.int64(1),
        }
    )


# -- candidates ----------------------------------------------------------------------------------------------
def test_candidates_hold_recent_categories_popular_products_and_carts_once():
    day = D0 + dt.timedelta(days=3)
    rows = [(_at(D0, h), 50, "view", p) for h, p in enumerate([1, 1, 1, 2, 2, 5, 5, 5, 5, 6, 9])]
    rows += [
        (_at(day, 1), 7, "view", 6),  # user 7 browses category 2 ...
        (_at(day, 2), 7, "view", 7),
        (_at(day, 3), 7, "view", 9),
        (_at(day, 4), 7, "cart", 12),  # ... and carted a product of category 3
        (_at(day, 30), 7, "view", 10),  # tomorrow: after the as-of time, never seen
        (_at(day, 30), 7, "cart", 11),
    ]
    events = _events(rows)

    got = generate_candidates(events, SPEC, day, [7, 8])

    user7 = got[got["user_id"] == 7]
    # carts first, then the user's most viewed category's most viewed products (5, 6), then overall popular (5, 1)
    assert user7["product_id"].tolist() == [12, 5, 6, 1]
    assert user7["category_id"].tolist() == [3, 2, 2, 1]
    assert not got.duplicated(["user_id", "product_id"]).any()
    # a user without recent events still gets the popular products
    assert got.loc[got["user_id"] == 8, "product_id"].tolist() == [5, 1]


# -- features ------------------------------------------------------------------------------------------------
def test_features_of_a_day_use_only_events_before_its_as_of_time():
    day = D0 + dt.timedelta(days=10)
    before = [
        (_at(day - dt.timedelta(days=2), 9), 1, "view", 2),
        (_at(day - dt.timedelta(days=2), 9.1), 1, "cart", 2),
        (_at(day, 10), 1, "view", 3),
        (_at(day, 10.1), 1, "cart", 3),
        (_at(day, 11), 1, "purchase", 3),
        (_at(day - dt.timedelta(days=9), 8), 2, "cart", 4),  # older than the open-cart days
        (_at(day, 23.9), 2, "view", 4),
    ]
    after = [
        (schemas.as_of(day), 1, "remove_from_cart", 2),  # exactly at the as-of time: already the next day
        (_at(day, 30), 1, "view", 2),
        (_at(day, 30), 2, "purchase", 4),
    ]
    products = _catalogue()

    tables = compute_ranking_features(_events(before), products, day, candidates=SPEC)
    with_future = compute_ranking_features(_events(before + after), products, day, candidates=SPEC)

    for name, table in tables.items():
        pd.testing.assert_frame_equal(table, with_future[name], obj=name)
    pairs = tables[USER_PRODUCT_TABLE].set_index(["user_id", "product_id"])
    # 2 was carted and is still in the cart; 3 was carted and bought; 4 was carted 9 days ago (no row: too old)
    assert pairs.loc[(1, 2), "user_product_in_open_cart"] == 1.0
    assert pairs.loc[(1, 2), "user_product_open_cart_rank"] == 1.0
    assert pairs.loc[(1, 3), "user_product_in_open_cart"] == 0.0
    assert pairs.loc[(1, 3), "user_product_purchases_7d"] == 1.0
    assert pairs.loc[(1, 2), "user_open_cart_items"] == 1.0
    assert (2, 4) not in pairs.index
    stats = tables[PRODUCT_STATS_TABLE].set_index("product_id")
    assert stats.loc[4, "product_views_1d"] == 1.0 and stats.loc[2, "product_views_7d"] == 1.0
    # 2, 3 and 4 (category 1) were viewed once each in the 7 days
    assert stats.loc[3, "product_category_share_7d"] == pytest.approx(1 / 3)
    affinity = tables[USER_CATEGORY_TABLE].set_index(["user_id", "category_id"])
    assert affinity.loc[(1, 1), "user_category_view_share_30d"] == 1.0
    assert (tables[PRODUCT_STATS_TABLE][TIMESTAMP_COLUMN] == pd.Timestamp(schemas.as_of(day))).all()


def test_a_pair_is_kept_one_day_after_its_last_event_with_zero_counts():
    last = D0 + dt.timedelta(days=2)
    events = _events([(_at(last, 12), 1, "view", 5), (_at(last, 12.1), 1, "cart", 5)])
    products = _catalogue()

    def pairs(days_on: int) -> pd.DataFrame:
        day = last + dt.timedelta(days=days_on)
        return compute_ranking_features(events, products, day, candidates=SPEC)[USER_PRODUCT_TABLE]

    # The cart is 6.5 days old at the as-of time 6 days on, 7.5 days old 7 days on (out of the 7-day window).
    in_window, tombstone, gone = pairs(6), pairs(7), pairs(8)

    assert in_window["user_product_carts_7d"].tolist() == [1.0]
    assert tombstone[["user_product_views_7d", "user_product_carts_7d", "user_product_in_open_cart"]].sum().sum() == 0
    assert gone.empty


def test_the_daily_step_publishes_every_table_only_when_all_pass(settings: Settings, lake: Lake):
    day = D0 + dt.timedelta(days=1)
    lake.write("events", day, _events([(_at(day, 9), 1, "view", 1), (_at(day, 9.5), 1, "cart", 1)]))
    lake.write("products", day, _catalogue(), schema=schemas.PRODUCTS)

    result = build_and_write_ranking_features(settings, day)

    assert {t: r["rows"] for t, r in result.items()} == {
        PRODUCT_STATS_TABLE: 12,
        USER_CATEGORY_TABLE: 1,
        USER_PRODUCT_TABLE: 1,
        USER_CANDIDATES_TABLE: 2,  # user 1 and the popular products
    }
    lists = lake.read(USER_CANDIDATES_TABLE, day).set_index("user_id")
    # The shipped spec's candidates: user 1's cart, its category's and the overall most viewed: all product 1
    assert lists.loc[1, PRODUCT_LIST].tolist() == [1] and lists.loc[1, CATEGORY_LIST].tolist() == [1]
    assert lists.loc[POPULAR_USER_ID, PRODUCT_LIST].tolist() == [1]
    broken = day + dt.timedelta(days=1)
    lake.write("events", broken, _events([(_at(broken, 9), 1, "view", 1)]))
    lake.write("products", broken, _catalogue().assign(price=-1.0), schema=schemas.PRODUCTS)
    with pytest.raises(ValidationFailed, match="product_price"):
        build_and_write_ranking_features(settings, broken)
    assert not any(lake.exists(t, broken) for t in result)


# -- labels --------------------------------------------------------------------------------------------------
def test_labels_take_the_best_graded_event_in_the_window():
    start = pd.Timestamp(schemas.as_of(D0))
    rows = pd.DataFrame(
        {
            "user_id": [1, 1, 1, 1, 1, 2],
            "product_id": [1, 2, 3, 4, 5, 1],
            TIMESTAMP_COLUMN: start,
        }
    )
    events = _events(
        [
            (start + H, 1, "cart", 1),
            (start + 30 * H, 1, "purchase", 1),  # purchase beats the cart
            (start + 2 * H, 1, "cart", 2),
            (start + 3 * H, 1, "view", 3),  # a view has no grade
            (start - H, 1, "purchase", 4),  # before the request
            (start + 48 * H, 1, "cart", 5),  # after the 2-day window
            (start + H, 3, "purchase", 1),  # another user
        ]
    )

    labels = relevance_labels(events, rows, window_days=2, gains={"cart": 1, "purchase": 2})

    assert labels.tolist() == [2, 1, 0, 0, 0, 0]
    assert labels.dtype == "int64"


# -- training rows -------------------------------------------------------------------------------------------
DAYS = [D0 + dt.timedelta(days=i) for i in range(10)]


@pytest.fixture
def ranking_spec():
    spec = load_spec(PROJECT_ROOT / "models" / "product_ranking.yaml")
    label = spec.label.model_copy(update={"window_days": 2})
    return spec.model_copy(
        update={
            "label": label,
            "windows": WindowSpec(train_days=3, validation_days=1, test_days=1),
            "candidates": SPEC,
        }
    )


@pytest.fixture
def ranking_lake(lake: Lake) -> Lake:
    """Users 1-3 prefer categories 1-3, view its two first products daily, cart the first one every other day and
    buy it on the days between; user 4 only views. Features of every day are built and written."""
    users = pd.DataFrame(
        {
            "user_id": np.arange(1, 5, dtype="int64"),
            "signup_time": pd.Timestamp(D0, tz="UTC") - pd.to_timedelta([400, 10, 3, 100], unit="D"),
            "country": "DE",
            "age": np.int32(30),
            "sex": "F",
        }
    )
    follows = pd.DataFrame(
        {"follower_id": [1], "followee_id": [2], "created_at": [pd.Timestamp("2023-01-01", tz="UTC")]}
    )
    for i, day in enumerate(DAYS):
        rows = []
        for user in (1, 2, 3, 4):
            top = 4 * ((user - 1) % 3) + 1
            rows += [(_at(day, 8 + user), user, "view", top), (_at(day, 8.2 + user), user, "view", top + 1)]
            if user != 4:
                rows.append((_at(day, 8.4 + user), user, "cart" if i % 2 == 0 else "purchase", top))
        lake.write("events", day, _events(rows), schema=schemas.EVENTS)
        lake.write("users", day, users, schema=schemas.USERS)
        lake.write("follows", day, follows, schema=schemas.FOLLOWS)
        lake.write("products", day, _catalogue(), schema=schemas.PRODUCTS)
        write_user_features(lake, day, build_user_features(lake, day))
        write_ranking_features(lake, day, build_ranking_features(lake, day, SPEC))
    return lake


def test_training_rows_meet_the_frame_contract(settings: Settings, ranking_lake: Lake, ranking_spec):
    logical = DAYS[-1]
    splits = split_days(ranking_spec, logical)
    assert splits.days[-1] == logical - dt.timedelta(days=2), "the newest request's label window ends at L"

    frame = build_frame(settings, ranking_lake, ranking_spec, splits, logical)

    head = ["user_id", "product_id", TIMESTAMP_COLUMN, LABEL_COLUMN, SPLIT_COLUMN, GROUP_COLUMN]
    context = ["ctx_days_since_signup", "ctx_top_category", "ctx_views_7d"]
    features = [*USER_FEATURES, *PRODUCT_FEATURES, *USER_CATEGORY_FEATURES, *USER_PRODUCT_FEATURES]
    assert frame.columns.tolist() == [*head, *context, *features]
    assert (frame[["user_id", "product_id", LABEL_COLUMN, GROUP_COLUMN]].dtypes == "int64").all()
    assert (frame[features].dtypes == "float64").all()
    # One query per user and request time, its rows contiguous, numbered in order; each holds a relevant row.
    queries = frame.groupby(GROUP_COLUMN)
    assert (queries["user_id"].nunique() == 1).all() and (queries[TIMESTAMP_COLUMN].nunique() == 1).all()
    assert (np.diff(frame[GROUP_COLUMN].to_numpy()) >= 0).all()
    assert (queries[LABEL_COLUMN].max() > 0).all()
    assert set(frame["user_id"]) == {1, 2, 3}, "user 4 never carts: no relevant candidate, no query"
    assert not frame.duplicated(["user_id", "product_id", TIMESTAMP_COLUMN]).any()
    # the user's first product is bought or carted in every window: relevance 2 (purchase)
    tops = frame[frame["product_id"] == 4 * ((frame["user_id"] - 1) % 3) + 1]
    assert (tops[LABEL_COLUMN] == 2).all()
    by_day = frame.groupby((frame[TIMESTAMP_COLUMN] - pd.Timedelta(days=1)).dt.date)[SPLIT_COLUMN].unique()
    assert by_day.map(list).to_dict() == {
        d: [s] for d, s in zip(splits.days, ["train"] * 3 + ["validation", "test"], strict=True)
    }
    # Every candidate is a catalogue product of a known user: product and user features on every row, even where
    # the user never touched the product (no user x product row).
    assert frame[["product_views_7d", "views_7d"]].notna().all().all()
    assert frame["user_product_in_open_cart"].isna().any()
    assert (frame["ctx_top_category"] == ((frame["user_id"] - 1) % 3 + 1).astype(str)).all()

    real = settings.model_copy(update={"data_source": "ingested"})
    assert oracle_scores(real, ranking_lake, ranking_spec, frame) is None


# -- the simulator's expected relevance ----------------------------------------------------------------------
def test_expected_relevance_puts_open_cart_items_and_the_preferred_categories_first():
    from pipelines.data import simulator as sim

    config = SimulationConfig(seed=3, n_users=60, n_products=40, n_categories=4, start=D0)
    day = D0 + dt.timedelta(days=6)
    world = sim._world(config)
    world.record(config.day_index(day))
    static = world.static
    newest = int(np.argmax(world.item_day))  # an item carted on the day (older ones expire sooner)
    holder, in_cart = int(world.item_user[newest]), int(world.item_product[newest])
    favourite = np.flatnonzero(static.products["category_id"].to_numpy() - 1 == static.primary[holder])
    elsewhere = np.flatnonzero(
        ~np.isin(static.products["category_id"].to_numpy() - 1, [static.primary[holder], static.secondary[holder]])
    )
    products = [in_cart, *favourite[:3], *elsewhere[:3]]
    requests = pd.DataFrame({"user_id": holder + 1, "product_id": np.asarray(products) + 1, "ds": day})

    gains = expected_gain(config, requests, window_days=7, gains={"cart": 1, "purchase": 2}, replicas=100)

    assert (gains >= 0).all() and (gains <= 3).all()
    assert gains[0] == gains.max(), "an open cart item is the likeliest to be bought"
    assert gains[1:4].mean() > gains[4:].mean(), "the preferred category's products beat other categories'"


# -- serving -------------------------------------------------------------------------------------------------
RANKING_FEATURES = ["product_views_7d", "user_product_in_open_cart"]
ONLINE = {  # product -> its online features for user 1 (product 3 is unknown to the online store)
    1: {"product_views_7d": 50.0, "user_product_in_open_cart": 0.0},
    2: {"product_views_7d": 5.0, "user_product_in_open_cart": 1.0},
    4: {"product_views_7d": 1.0, "user_product_in_open_cart": 0.0},
    5: {"product_views_7d": 45.0, "user_product_in_open_cart": 0.0},
}


def ranking_reader(settings: Settings, feature_service: str, entities: pd.DataFrame) -> pd.DataFrame:
    """Online rows from a dict, in request order, with the join keys (as store.online_features returns them)."""
    assert feature_service == "product_ranking"
    assert list(entities.columns) == ["user_id", "product_id", "category_id"]
    empty = dict.fromkeys(RANKING_FEATURES, np.nan)
    rows = [
        ONLINE.get(p, empty) if u == 1 else empty
        for u, p in zip(entities["user_id"], entities["product_id"], strict=True)
    ]
    return pd.concat([entities.reset_index(drop=True), pd.DataFrame(rows, columns=RANKING_FEATURES)], axis=1)


def register_ranker(settings: Settings) -> str:
    """A tiny lambdarank booster preferring cart items, then popular products; registered as champion."""
    rng = np.random.default_rng(0)
    x = pd.DataFrame(
        {"product_views_7d": rng.integers(0, 60, 400), "user_product_in_open_cart": rng.integers(0, 2, 400)}
    )
    y = np.where(x["user_product_in_open_cart"] == 1, 2, (x["product_views_7d"] > 30).astype(int))
    params = {"objective": "lambdarank", "num_threads": 1, "verbose": -1, "min_data_in_leaf": 5, "num_leaves": 4}
    booster = lgb.train(params, lgb.Dataset(x, y, group=[20] * 20), num_boost_round=20)
    mlflow.set_experiment(experiment_id=ensure_experiment(settings, "product_ranking"))
    with mlflow.start_run():
        info = mlflow.lightgbm.log_model(
            booster,
            name="model",
            signature=infer_signature(x, booster.predict(x, num_threads=1)),
            registered_model_name="product_ranking",
            pip_requirements=["lightgbm"],
        )
    version = str(info.registered_model_version)
    audit_promotion(settings, "product_ranking", version)
    return version


def catalogue_candidates(settings: Settings, spec, user_id: int, product_ids: list[int] | None) -> pd.DataFrame:
    """Named products with their CATEGORY (-1 unknown); without products, the popular 5 and 1 (a stand-in for
    the online candidates: tests/test_rank_online.py)."""
    products = product_ids if product_ids is not None else [5, 1]
    categories = [CATEGORY.get(p, -1) for p in products]
    return pd.DataFrame({"user_id": user_id, "product_id": products, "category_id": categories}, dtype="int64")


def test_the_ranking_route_orders_the_candidates_by_the_champions_score(
    mlflow_settings: Settings, ranking_spec, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("MLFLOW_UV_AUTO_DETECT", "false")
    version = register_ranker(mlflow_settings)
    specs = {"product_ranking": ranking_spec.model_copy(update={"candidates": SPEC})}
    app = create_app(mlflow_settings, feature_reader=ranking_reader, specs=specs, candidate_source=catalogue_candidates)
    with TestClient(app) as client:
        named = client.post("/v1/models/product_ranking/rank", json={"user_id": 1, "product_ids": [4, 1, 3, 2, 5]})
        generated = client.post("/v1/models/product_ranking/rank", json={"user_id": 1})
        binary = client.post("/v1/models/product_ranking/predict", json={"user_ids": [1]})

    assert named.status_code == 200, named.text
    body = named.json()
    assert body["version"] == version and body["candidates"] == "request"
    ranked = body["products"]
    order = [p["product_id"] for p in ranked]
    assert order[0] == 2 and set(order[1:3]) == {1, 5}, "the cart item, then the popular products"
    assert sorted(p["product_id"] for p in ranked) == [1, 2, 3, 4, 5]
    assert [p["score"] for p in ranked] == sorted((p["score"] for p in ranked), reverse=True)
    # A reader of frames cannot tell the service's views apart: one flag for the candidate's row.
    assert {p["product_id"]: p["features_found"] for p in ranked}[3] == {"any": False}
    assert {p["product_id"]: p["features_found"] for p in ranked}[2] == {"any": True}
    # Without products, the candidate source's products are ranked.
    assert generated.status_code == 200, generated.text
    assert generated.json()["candidates"] == "generated"
    assert sorted(p["product_id"] for p in generated.json()["products"]) == [1, 5]
    assert binary.status_code == 404
