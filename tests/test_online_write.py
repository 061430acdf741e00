"""The fast online writer stores exactly what Feast's own ``materialize`` stores, on SQLite and on Redis.

For every feature view of the repo, the same lake days go into project A through ``FeatureStore.materialize`` and
into project B through ``materialize_day``; the stored bytes, Feast's online reads (values, missing values, event
times), the registry's materialization intervals and the Redis key ttl must then be identical.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import uuid
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest
from feast import Entity, FeatureStore, FeatureView, Field, FileSource, ValueType
from feast.types import Array, Bool, Float32, Int64, String

from feature_repo.definitions import definitions
from feature_repo.parts import lake_table
from pipelines.data import schemas
from pipelines.features import online_write
from pipelines.features.online_write import (
    SQLITE_PAGE_SIZE,
    OnlineWriteError,
    create_sqlite_online_db,
    online_writer,
    write_view,
)
from pipelines.features.store import materialize_day, online_freshness, online_lag, repo_config
from pipelines.lake import Lake
from pipelines.settings import Settings, get_settings
from tests.conftest import service_unavailable

D1, D2 = dt.date(2025, 4, 1), dt.date(2025, 4, 2)
KEY_TTL = 3_600
REDIS = "127.0.0.1:6379"


def _keys(view, day: dt.date, rng: np.random.Generator) -> pd.DataFrame:
    """Keys of one day: day 2 keeps most of day 1's keys, drops some and adds new ones."""
    offset = 0 if day == D1 else 5
    n = 24
    keys = {}
    for column in view.join_keys:
        if column == "order_id":
            # Orders are per event; non-ASCII ids check the key's UTF-8 encoding.
            keys[column] = [f"{day:%Y%m%d}-ordé-{i}" for i in range(n)]
        elif column in ("device_id", "ip_address"):  # string keys of the order histories
            keys[column] = [f"{column}-{i + offset}" for i in range(n)]
        else:
            keys[column] = (np.arange(n) + offset + 1) * (1 if column == "user_id" else 7)
    return pd.DataFrame(keys)


def _view_frame(view, day: dt.date, zone: str) -> pd.DataFrame:
    rng = np.random.default_rng(day.toordinal() + len(view.name))
    frame = _keys(view, day, rng)
    n = len(frame)
    if view.name == "order_risk":
        # Per-event rows: times within the day, with microseconds.
        offsets = pd.to_timedelta(rng.integers(0, 86_400_000_000, n), unit="us")
        frame["event_timestamp"] = pd.Timestamp(schemas.day_start(day, zone)) + offsets
    else:
        frame["event_timestamp"] = pd.Timestamp(schemas.as_of(day, zone))
    frame["event_timestamp"] = frame["event_timestamp"].dt.as_unit("us")
    for i, feature in enumerate(view.features):
        if isinstance(feature.dtype, Array):  # the order histories' lists, of 0 to 3 items
            frame[feature.name] = [_list_of(feature.dtype, rng, j % 4) for j in range(n)]
            continue
        if feature.dtype == Int64:  # a product's category: ids, some unknown
            ids = rng.integers(-1, 50, n)
            frame[feature.name] = pd.array(np.where(rng.random(n) < 0.2, None, ids), dtype="Int64")
            continue
        values = rng.normal(0, 100, n).round(i % 4)
        values[rng.random(n) < 0.2] = np.nan  # missing values are part of the layout
        values[0] = [0.0, -0.0, 1e17, 1 / 3][i % 4]
        frame[feature.name] = values
    frame.loc[1, [f.name for f in view.features]] = np.nan  # a row with nothing known
    if view.name == "user_product":  # an older duplicate of a key: the newest row of the window wins
        older = frame.iloc[[2]].assign(event_timestamp=pd.Timestamp(schemas.day_start(day, zone)).as_unit("us"))
        frame = pd.concat([frame, older.assign(**{f.name: -1.0 for f in view.features})], ignore_index=True)
    return frame


def _list_of(dtype: Array, rng: np.random.Generator, size: int) -> list:
    base = dtype.base_type
    if base == Int64:
        return rng.integers(-(2**40), 2**40, size).tolist()
    if base == Bool:
        return (rng.random(size) < 0.5).tolist()
    if base == String:
        return [f"k-{v}" for v in rng.integers(0, 99, size)]
    return rng.normal(0, 100, size).round(2).tolist()


def _build_lake(settings: Settings) -> None:
    """Each table's days, with the columns of every view reading it (product_stats feeds two)."""
    lake = Lake(settings)
    views_of: dict[str, list[FeatureView]] = {}
    for view in definitions(settings).views:
        views_of.setdefault(lake_table(view), []).append(view)
    for table, views in views_of.items():
        for day in (D1, D2):
            frame = _view_frame(views[0], day, lake.day_zone)
            for other in views[1:]:  # same keys and stamps, in the same order: add its feature columns
                more = _view_frame(other, day, lake.day_zone)
                frame = frame.join(more[[f.name for f in other.features if f.name not in frame.columns]])
            lake.write(table, day, frame)


def _store(settings: Settings, key_ttl: int | None = None) -> FeatureStore:
    config = repo_config(settings)
    if key_ttl is not None:
        config.online_store.key_ttl_seconds = key_ttl
    store = FeatureStore(config=config)
    store.apply(definitions(settings).objects)
    return store


def _stock_materialize(store: FeatureStore, settings: Settings, day: dt.date) -> None:
    zone = Lake(settings).day_zone
    store.materialize(start_date=schemas.day_start(day, zone), end_date=schemas.as_of(day, zone))


def _entity_rows(settings: Settings, service: str) -> list[dict]:
    """Every key of both days, plus one no store knows."""
    lake, repo = Lake(settings), definitions(settings)
    service_views = {s.name: s for s in repo.services}[service].feature_view_projections
    views = [v for v in repo.views if v.name in {p.name for p in service_views}]
    keys = list(dict.fromkeys(k for v in views for k in v.join_keys))
    frames = [lake.read(lake_table(v), d) for v in views for d in (D1, D2)]
    rows = pd.concat([f[[k for k in keys if k in f.columns]] for f in frames], ignore_index=True)
    for key in keys:  # a view without this key pairs its rows with some key of another view
        rows[key] = rows[key].fillna(rows[key].dropna().iloc[0]) if rows[key].notna().any() else 0
    rows = rows[keys].drop_duplicates()
    unknown = {k: ("no-such-order" if k == "order_id" else 987_654) for k in keys}
    out = [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()} for r in rows.to_dict("records")]
    out.append(unknown)
    if service == "order_fraud":
        for i, row in enumerate(out):
            row["purchase_value"] = 10.0 + i
    return out


def _online(store: FeatureStore, service: str, rows: list[dict]) -> list:
    response = store.get_online_features(features=store.get_feature_service(service), entity_rows=rows)
    return [
        (name, list(vector.values), list(vector.statuses), list(vector.event_timestamps))
        for name, vector in zip(response.proto.metadata.feature_names.val, response.proto.results, strict=True)
    ]


def _intervals(store: FeatureStore, settings: Settings) -> dict:
    return {
        v.name: store.registry.get_feature_view(v.name, store.project, allow_cache=False).materialization_intervals
        for v in definitions(settings).views
    }


def _settings(tmp_path, project: str, **online) -> Settings:
    home = tmp_path / ".storefront"  # one lake (and one SQLite file) for both projects
    return get_settings(
        home=home, num_threads=1, feast_project=project, feast_registry=str(home / f"{project}.db"), **online
    )


def _assert_same_reads(stock: FeatureStore, ours: FeatureStore, settings: Settings) -> None:
    for service in ("purchase_intent", "order_fraud", "product_ranking"):
        rows = _entity_rows(settings, service)
        read = _online(ours, service, rows)
        assert read == _online(stock, service, rows), f"{service}: Feast reads differ"
        kinds = {value.WhichOneof("val") for _, values, _, _ in read for value in values}
        assert {None, "double_val"} <= kinds, f"{service}: the rows should mix known and missing values"


@pytest.fixture
def projects(tmp_path) -> tuple[str, str]:
    tag = uuid.uuid4().hex[:10]
    return f"stock_{tag}", f"ours_{tag}"


def test_sqlite_rows_and_reads_match_stock_materialize(tmp_path, projects, monkeypatch):
    # A few entity rows per upsert statement: every view's batches then hold full statements and a shorter last one.
    monkeypatch.setattr(online_write, "_ROWS_PER_STATEMENT", 20)
    stock_s, ours_s = (_settings(tmp_path, p) for p in projects)
    _build_lake(stock_s)
    stock, ours = _store(stock_s), _store(ours_s)

    for day in (D1, D2):
        _stock_materialize(stock, stock_s, day)
        assert materialize_day(ours_s, day, store=ours) == 24 * len(stock.list_feature_views()) + 1

    with sqlite3.connect(ours_s.feast_online_path) as db:
        for view in definitions(ours_s).views:
            query = f'SELECT entity_key, feature_name, value, value_text, event_ts, created_ts FROM "{{}}_{view.name}"'
            ours_rows = set(db.execute(query.format(projects[1])).fetchall())
            assert ours_rows == set(db.execute(query.format(projects[0])).fetchall()), view.name
            keys = 48 if view.name == "order_risk" else 29  # day 1's keys that day 2 lacks stay online
            assert len(ours_rows) == keys * len(view.features), view.name
    _assert_same_reads(stock, ours, ours_s)
    assert _intervals(ours, ours_s) == _intervals(stock, stock_s)


@pytest.fixture
def redis_client():
    redis = pytest.importorskip("redis")
    client = redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.exceptions.ConnectionError as exc:
        service_unavailable(f"Redis at {REDIS}", str(exc))
    return client


def _redis_hashes(client, project: str) -> dict[bytes, dict[bytes, bytes]]:
    """Every hash of a project, keyed by the entity part of its key (the project name is the key's suffix)."""
    keys = list(client.scan_iter(match=f"*{project}", count=1_000))
    return {k[: -len(project)]: client.hgetall(k) for k in keys}


@pytest.fixture
def redis_projects(redis_client, projects) -> Iterator[tuple[str, str]]:
    yield projects
    for project in projects:
        keys = list(redis_client.scan_iter(match=f"*{project}", count=1_000))
        if keys:
            redis_client.delete(*keys)


def test_redis_hashes_reads_and_ttl_match_stock_materialize(tmp_path, redis_client, redis_projects):
    stock_s, ours_s = (_settings(tmp_path, p, feast_online_store="redis", redis_url=REDIS) for p in redis_projects)
    _build_lake(stock_s)
    stock, ours = _store(stock_s, key_ttl=KEY_TTL), _store(ours_s, key_ttl=KEY_TTL)

    for day in (D1, D2):
        _stock_materialize(stock, stock_s, day)
        materialize_day(ours_s, day, store=ours)

    stock_hashes = _redis_hashes(redis_client, redis_projects[0])
    assert _redis_hashes(redis_client, redis_projects[1]) == stock_hashes
    assert len(stock_hashes) > 100
    for project in redis_projects:
        ttls = {redis_client.ttl(k) for k in redis_client.scan_iter(match=f"*{project}", count=1_000)}
        assert min(ttls) > 0 and max(ttls) <= KEY_TTL, f"{project}: every key expires after key_ttl_seconds"
    _assert_same_reads(stock, ours, ours_s)
    assert _intervals(ours, ours_s) == _intervals(stock, stock_s)


def test_an_older_day_written_again_leaves_newer_redis_rows_as_feast_does(tmp_path, redis_client, redis_projects):
    stock_s, ours_s = (_settings(tmp_path, p, feast_online_store="redis", redis_url=REDIS) for p in redis_projects)
    _build_lake(stock_s)
    stock, ours = _store(stock_s), _store(ours_s)
    lake = Lake(ours_s)
    _stock_materialize(stock, stock_s, D2)
    materialize_day(ours_s, D2, store=ours)
    after_d2 = _redis_hashes(redis_client, redis_projects[1])

    _stock_materialize(stock, stock_s, D1)  # Feast skips a row older than the stored one
    view = ours.get_feature_view("user_behavior")
    written = write_view(ours, view, lake.read(lake_table(view), D1))
    for other in ours.list_feature_views():  # the other views of a user's hash, as stock wrote them
        if other.join_keys == ["user_id"] and other.name != view.name:
            write_view(ours, other, lake.read(lake_table(other), D1))

    assert written == 5, "only day 1's keys that day 2 lacks are written"
    ours_now = _redis_hashes(redis_client, redis_projects[1])
    assert {k: v for k, v in ours_now.items() if k in after_d2} == after_d2
    assert ours_now == {k: v for k, v in _redis_hashes(redis_client, redis_projects[0]).items() if k in ours_now}
    assert all(redis_client.ttl(k) == -1 for k in redis_client.scan_iter(match=f"*{redis_projects[1]}"))


def test_a_frame_missing_a_feature_column_fails_naming_it(tmp_path):
    settings = _settings(tmp_path, "p")
    _build_lake(settings)
    store = _store(settings)
    view = store.get_feature_view("user_behavior")
    frame = Lake(settings).read(lake_table(view), D1).drop(columns=["views_7d"])

    with pytest.raises(OnlineWriteError, match="user_behavior.*views_7d"):
        write_view(store, view, frame)


def _shop_view(settings: Settings) -> tuple[Entity, FeatureView]:
    """A view with the value types the repo does not use yet (Feast's own encoding path of the writer)."""
    shop = Entity(name="shop", join_keys=["shop_id"], value_type=ValueType.STRING)
    source = FileSource(name="shops", path=f"{settings.lake_uri}/shops", timestamp_field="event_timestamp")
    # A quote in a name: the writer's upsert spells feature names as SQL literals.
    fields = [
        Field(name="visits", dtype=Int64),
        Field(name="owner's tier", dtype=String),
        Field(name="open", dtype=Bool),
    ]
    fields.append(Field(name="rating", dtype=Float32))
    return shop, FeatureView(name="shop_facts", entities=[shop], schema=fields, source=source, ttl=dt.timedelta(0))


def test_other_value_types_are_stored_as_feast_stores_them(tmp_path, projects):
    stock_s, ours_s = (_settings(tmp_path, p) for p in projects)
    frame = pd.DataFrame(
        {
            "shop_id": ["a", "bé", "c"],
            "event_timestamp": pd.to_datetime(["2025-04-01 10:00:00.123456"] * 3, utc=True),
            "visits": pd.array([3, None, -7], dtype="Int64"),
            "owner's tier": ["gold", None, ""],
            "open": [True, False, None],
            "rating": [4.5, np.nan, 0.1],
        }
    )
    stores = []
    for settings in (stock_s, ours_s):
        store = FeatureStore(config=repo_config(settings))
        store.apply(list(_shop_view(settings)))
        stores.append(store)
    stores[0].write_to_online_store("shop_facts", frame)
    assert write_view(stores[1], stores[1].get_feature_view("shop_facts"), frame) == 3

    with sqlite3.connect(ours_s.feast_online_path) as db:
        query = "SELECT entity_key, feature_name, value, value_text, event_ts FROM {}_shop_facts ORDER BY 1, 2"
        assert db.execute(query.format(projects[1])).fetchall() == db.execute(query.format(projects[0])).fetchall()


def test_the_online_database_is_created_with_large_pages_and_an_existing_one_is_left_alone(tmp_path):
    settings = _settings(tmp_path, "p")
    _store(settings)  # repo_config creates the file, Feast's apply its tables
    with sqlite3.connect(settings.feast_online_path) as db:
        assert db.execute("PRAGMA page_size").fetchone() == (SQLITE_PAGE_SIZE,)
        tables = db.execute("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
    assert tables == len(definitions(settings).views)

    older = tmp_path / "older.db"
    with sqlite3.connect(older) as db:  # a database made before (4 KiB pages) keeps its pages and rows
        db.execute("CREATE TABLE t (x)")
        db.execute("INSERT INTO t VALUES (1)")
    create_sqlite_online_db(older)
    with sqlite3.connect(older) as db:
        assert db.execute("PRAGMA page_size").fetchone() == (4096,)
        assert db.execute("SELECT x FROM t").fetchall() == [(1,)]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".older")] == []  # nothing left aside


def test_a_batch_failing_midway_leaves_the_sqlite_rows_as_they_were(tmp_path):
    # Batches are encoded here while SQLite writes the previous one in its own thread: a failure in a later batch
    # must roll back the batches already written, so readers never see half a day.
    settings = _settings(tmp_path, "p")
    _build_lake(settings)
    store = _store(settings)
    materialize_day(settings, D1, store=store)
    table = '"p_user_behavior"'
    with sqlite3.connect(settings.feast_online_path) as db:
        before = set(db.execute(f"SELECT * FROM {table}").fetchall())
    view = store.get_feature_view("user_behavior")
    frame = Lake(settings).read(lake_table(view), D2)
    stamps = frame["event_timestamp"].astype(object)
    stamps.iloc[-1] = "not a time"
    frame["event_timestamp"] = stamps

    with pytest.raises((ValueError, TypeError)):
        write_view(store, view, frame, batch_rows=10)

    with sqlite3.connect(settings.feast_online_path) as db:
        assert set(db.execute(f"SELECT * FROM {table}").fetchall()) == before
    assert len(before) == 24 * len(view.features)


def test_a_view_failing_leaves_the_views_written_before_it_in_the_same_block_unwritten(tmp_path):
    # materialize_day writes all of a day's views through one writer: on SQLite a reader sees the whole day or none.
    settings = _settings(tmp_path, "p")
    _build_lake(settings)
    store = _store(settings)
    behavior, stats = store.get_feature_view("user_behavior"), store.get_feature_view("product_stats")
    broken = Lake(settings).read(lake_table(stats), D1).drop(columns=[stats.features[0].name])

    with pytest.raises(OnlineWriteError, match="product_stats"), online_writer(store) as write:
        assert write(behavior, Lake(settings).read(lake_table(behavior), D1)) == 24
        write(stats, broken)

    with sqlite3.connect(settings.feast_online_path) as db:
        assert db.execute('SELECT COUNT(*) FROM "p_user_behavior"').fetchone() == (0,)


def test_online_lag_names_the_views_whose_newest_lake_day_is_not_materialized(tmp_path):
    settings = _settings(tmp_path, "p")
    _build_lake(settings)  # days D1 and D2 of every view
    store = _store(settings)
    materialize_day(settings, D1, store=store)

    lags = online_lag(settings, store)

    assert {lag.view for lag in lags} == {v.name for v in definitions(settings).views if v.online}
    assert all(lag.behind and lag.built == D2 and lag.materialized_through == D1 for lag in lags)
    assert f"materialized through ds={D1}, the lake has ds={D2}" in lags[0].message()
    assert f"mlctl run daily_features --date {D2}" in lags[0].message()

    materialize_day(settings, D2, store=store)
    assert not any(lag.behind for lag in online_lag(settings, store))


def test_a_view_behind_its_lake_makes_the_service_stale_for_promotion(tmp_path):
    settings = _settings(tmp_path, "p")
    _build_lake(settings)
    store = _store(settings)
    materialize_day(settings, D1, store=store)
    now = pd.Timestamp(D2, tz="UTC") + pd.Timedelta(hours=12)  # D1's rows are young enough by age alone

    report = online_freshness(settings, "purchase_intent", max_age=dt.timedelta(days=3), now=now, store=store)

    assert not report.fresh
    assert "'user_behavior' is BEHIND its lake" in report.message
    assert f"mlctl run daily_features --date {D2}" in report.message
    materialize_day(settings, D2, store=store)
    assert online_freshness(settings, "purchase_intent", max_age=dt.timedelta(days=3), now=now, store=store).fresh
