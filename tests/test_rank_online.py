"""``/rank`` never reads the lake: the daily ranking family writes each day's candidate lists (and the catalogue's
categories are in product_stats), materialization puts them in the online store, and serving reads them there,
answering with the candidates training's generator gives and which entities had stored features."""

from __future__ import annotations

import datetime as dt
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from pipelines.data import schemas
from pipelines.features.candidates import (
    CATEGORY_LIST,
    EVENT_COLUMNS,
    POPULAR_USER_ID,
    PRODUCT_LIST,
    generate_candidates,
    lake_candidates,
)
from pipelines.features.product_features import (
    TIMESTAMP_COLUMN,
    USER_CANDIDATES_TABLE,
    build_ranking_features,
    write_ranking_features,
)
from pipelines.features.store import feature_store, materialize_day
from pipelines.features.user_features import build_user_features, write_user_features
from pipelines.lake import Lake
from pipelines.serving.app import create_app
from pipelines.serving.candidates import OnlineCandidates
from pipelines.settings import PROJECT_ROOT, Settings
from pipelines.specs import WindowSpec, load_spec
from tests.conftest import service_unavailable
from tests.test_product_ranking import CATEGORY, D0, SPEC, _at, _catalogue, _events, register_ranker

DAYS = [D0 + dt.timedelta(days=i) for i in range(10)]
LAST = DAYS[-1]
GONE_USER = 5  # active on the first two days only: out of the 7-day candidate window on the last day
UNKNOWN_USER = 999


@pytest.fixture
def spec():
    base = load_spec(PROJECT_ROOT / "models" / "product_ranking.yaml")
    return base.model_copy(
        update={"candidates": SPEC, "windows": WindowSpec(train_days=3, validation_days=1, test_days=1)}
    )


@pytest.fixture
def world(lake: Lake) -> Lake:
    """Users 1-3 prefer categories 1-3 (view its two first products daily, cart or buy the first); user 4 only
    views; user 5 views on the first two days only. Every day's user and ranking features are written."""
    users = pd.DataFrame(
        {
            "user_id": np.arange(1, 6, dtype="int64"),
            "signup_time": pd.Timestamp(D0, tz="UTC") - pd.to_timedelta([400, 10, 3, 100, 50], unit="D"),
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
        if i < 2:
            rows += [(_at(day, 15), GONE_USER, "view", 12), (_at(day, 15.5), GONE_USER, "cart", 11)]
        lake.write("events", day, _events(rows), schema=schemas.EVENTS)
        lake.write("users", day, users, schema=schemas.USERS)
        lake.write("follows", day, follows, schema=schemas.FOLLOWS)
        lake.write("products", day, _catalogue(), schema=schemas.PRODUCTS)
        write_user_features(lake, day, build_user_features(lake, day))
        write_ranking_features(lake, day, build_ranking_features(lake, day, SPEC))
    return lake


@pytest.fixture
def online(settings: Settings, world: Lake):
    """The second day (user 5's last row) and the last day materialized into the online store."""
    store = feature_store(settings)
    for day in (DAYS[1], LAST):
        materialize_day(settings, day, store=store)
    return store


def test_the_family_writes_generate_candidates_of_the_window_users_and_the_popular_row(world: Lake):
    events = world.read_range("events", DAYS[0], LAST, columns=EVENT_COLUMNS)

    table = world.read(USER_CANDIDATES_TABLE, LAST)

    # Users with an event in the 7 days up to the as-of time, and the popular products' row.
    assert table["user_id"].tolist() == [POPULAR_USER_ID, 1, 2, 3, 4]
    assert (table[TIMESTAMP_COLUMN] == pd.Timestamp(schemas.as_of(LAST))).all()
    for row in table.itertuples():
        user = UNKNOWN_USER if row.user_id == POPULAR_USER_ID else row.user_id  # no events: popular only
        expected = generate_candidates(events, SPEC, LAST, [user])
        assert getattr(row, PRODUCT_LIST).tolist() == expected["product_id"].tolist(), row.user_id
        assert getattr(row, CATEGORY_LIST).tolist() == expected["category_id"].tolist(), row.user_id
    first_day = world.read(USER_CANDIDATES_TABLE, DAYS[1]).set_index("user_id")
    assert first_day.loc[GONE_USER, PRODUCT_LIST].tolist()[:1] == [11], "user 5's cart leads its list"


def test_online_candidates_are_the_lakes_candidates_of_the_newest_day(settings: Settings, world: Lake, online, spec):
    candidates = OnlineCandidates(store=online)

    for user in (1, 2, 3, 4, GONE_USER, UNKNOWN_USER):
        got = candidates(settings, spec, user, None)
        pd.testing.assert_frame_equal(got, lake_candidates(world, SPEC, [user]), obj=f"user {user}")
    # User 5's row of the second day is still online (lists as Feast reads them), but older than the popular row:
    # the popular products win.
    stored = online.get_online_features(
        features=[f"user_candidates:{PRODUCT_LIST}"], entity_rows=[{"user_id": GONE_USER}]
    ).to_dict()
    assert stored[PRODUCT_LIST][0][:1] == [11]
    popular = candidates(settings, spec, UNKNOWN_USER, None)
    assert candidates(settings, spec, GONE_USER, None)["product_id"].tolist() == popular["product_id"].tolist()
    assert 11 not in popular["product_id"].tolist()

    named = candidates(settings, spec, 1, [4, 99, 9, 4])

    assert named["product_id"].tolist() == [4, 99, 9, 4]
    assert named["category_id"].tolist() == [CATEGORY[4], -1, CATEGORY[9], CATEGORY[4]], "99: not in the catalogue"
    assert (named["user_id"] == 1).all()


@pytest.fixture
def redis_settings(settings: Settings) -> Iterator[Settings]:
    """``settings`` with a Redis online store of its own project (its keys deleted afterwards)."""
    redis = pytest.importorskip("redis")
    client = redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.exceptions.ConnectionError as exc:
        service_unavailable("Redis at 127.0.0.1:6379", str(exc))
    project = f"rank_{uuid.uuid4().hex[:10]}"
    yield settings.model_copy(
        update={
            "feast_online_store": "redis",
            "redis_url": "127.0.0.1:6379",
            "feast_project": project,
            "feast_registry": str(settings.home / "feast" / f"{project}.db"),
        }
    )
    keys = list(client.scan_iter(match=f"*{project}", count=1_000))
    if keys:
        client.delete(*keys)


def test_online_candidates_on_redis_are_the_lakes_candidates(redis_settings: Settings, world: Lake, spec):
    store = feature_store(redis_settings)
    for day in (DAYS[1], LAST):
        materialize_day(redis_settings, day, store=store)
    candidates = OnlineCandidates(store=store)

    for user in (1, 4, GONE_USER, UNKNOWN_USER):
        got = candidates(redis_settings, spec, user, None)
        pd.testing.assert_frame_equal(got, lake_candidates(world, SPEC, [user]), obj=f"user {user}")
    assert candidates(redis_settings, spec, 1, [9, 99])["category_id"].tolist() == [CATEGORY[9], -1]


def test_without_a_materialized_day_generated_candidates_fail_saying_what_to_do(settings: Settings, spec):
    from pipelines.features.candidates import CandidateError

    with pytest.raises(CandidateError, match="materialize"):
        OnlineCandidates()(settings, spec, 1, None)


def test_the_rank_route_answers_with_the_lake_gone(
    mlflow_settings: Settings, world: Lake, online, spec, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("MLFLOW_UV_AUTO_DETECT", "false")
    register_ranker(mlflow_settings)
    expected = {u: lake_candidates(world, SPEC, [u])["product_id"].tolist() for u in (1, UNKNOWN_USER)}
    lake_dir = Path(mlflow_settings.lake_uri)
    settings = mlflow_settings.model_copy(update={"serving_log_predictions": False})

    with TestClient(create_app(settings, specs={"product_ranking": spec})) as client:
        # Loading the champion checks it against the audit log in the lake; answering must not read the lake.
        shutil.rmtree(lake_dir)  # any lake read on the request path would now fail
        generated = client.post("/v1/models/product_ranking/rank", json={"user_id": 1})
        unknown = client.post("/v1/models/product_ranking/rank", json={"user_id": UNKNOWN_USER})
        named = client.post("/v1/models/product_ranking/rank", json={"user_id": 1, "product_ids": [1, 5, 99]})

    for response in (generated, unknown, named):
        assert response.status_code == 200, response.text
    assert not lake_dir.exists(), "serving wrote to the lake"
    assert sorted(p["product_id"] for p in generated.json()["products"]) == sorted(expected[1])
    assert sorted(p["product_id"] for p in unknown.json()["products"]) == sorted(expected[UNKNOWN_USER])
    # Which entities had stored features, per candidate: user 1 views category 1 and carts or buys product 1.
    found = {p["product_id"]: p["features_found"] for p in named.json()["products"]}
    assert found[1] == {"user": True, "product": True, "user_category": True, "user_product": True}
    assert found[5] == {"user": True, "product": True, "user_category": False, "user_product": False}
    assert found[99] == {"user": True, "product": False, "user_category": False, "user_product": False}
    unknown_found = [p["features_found"] for p in unknown.json()["products"]]
    assert unknown_found and all(not f["user"] and f["product"] for f in unknown_found)


def test_health_says_which_online_views_are_behind_their_lake(
    mlflow_settings: Settings, world: Lake, spec, monkeypatch: pytest.MonkeyPatch
):
    # The lake holds the last day, the online store only an earlier one (a materialization that did not run or
    # stopped): /health lists every view with how far it is materialized and is degraded until it is caught up.
    monkeypatch.setenv("MLFLOW_UV_AUTO_DETECT", "false")
    register_ranker(mlflow_settings)
    settings = mlflow_settings.model_copy(update={"serving_log_predictions": False})
    store = feature_store(settings)
    materialize_day(settings, DAYS[1], store=store)
    online_views = {v.name for v in store.list_feature_views() if v.online}

    with TestClient(create_app(settings, specs={"product_ranking": spec})) as client:
        behind = client.get("/health").json()
    materialize_day(settings, LAST, store=store)
    with TestClient(create_app(settings, specs={"product_ranking": spec})) as client:
        caught_up = client.get("/health").json()

    assert behind["status"] == "degraded"
    assert {v["view"] for v in behind["online_views"]} == online_views
    built = [v for v in behind["online_views"] if v["built"]]  # this world has no order tables
    assert {v["view"] for v in built} >= {"user_behavior", "user_candidates", "product_catalogue"}
    assert all(v["behind"] and v["built"] == str(LAST) and v["materialized_through"] == str(DAYS[1]) for v in built)
    assert caught_up["status"] == "ok", caught_up
    assert not any(v["behind"] for v in caught_up["online_views"]) and caught_up["online_error"] is None
