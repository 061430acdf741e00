"""Materializing one day of ``user_behavior`` rows: the fast writer vs Feast's ``materialize`` vs the raw client.

Run: `uv run python -m bench.bench_materialize [--rows N] [--no-stock]` (N defaults to 200,000; Redis at
127.0.0.1:6379, own Feast projects, keys deleted afterwards). One table: rows/s per store and method and the ratio
of each to the fast writer. "ours" is ``materialize_day`` (lake read, window filter, write, registry update);
"stock" is ``FeatureStore.materialize`` with ``online_write_batch_size`` 10,000; "raw client" is, on Redis,
pipelined ``HSET`` of the already serialized rows in batches of 10,000, and on SQLite Feast's own upsert statement
(one row per entity and feature, six bound values each) of the already serialized rows into a table of the same
schema, in multi-row statements of 5,000 rows, in one transaction: transport and storage only, no encoding. The
fast writer's SQLite upsert binds each entity's key and times once for all its features (two bound values per
stored row), so it can beat that client. A sample of keys is
compared between stock and ours, so a fast but wrong writer shows up here too, and ``feast serve`` over our project
must answer ``/get-online-features`` with the same JSON as Feast's in-process read of the stock project ("served").
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from contextlib import closing
from pathlib import Path

import numpy as np
import pandas as pd
import redis
import yaml
from feast import FeatureStore
from feast.feature_server import convert_response_to_dict

from pipelines.data import schemas
from pipelines.features.store import feature_store, materialize_day
from pipelines.features.user_features import FEATURE_COLUMNS, write_user_features
from pipelines.lake import Lake
from pipelines.settings import Settings, get_settings

DS = dt.date(2025, 3, 1)
VIEW = "user_behavior"
REDIS_URL = "127.0.0.1:6379"


def _frame(rows: int) -> pd.DataFrame:
    rng = np.random.default_rng(11)
    frame = pd.DataFrame({"user_id": np.arange(1, rows + 1, dtype="int64")})
    frame["event_timestamp"] = pd.Timestamp(schemas.as_of(DS)).as_unit("us")
    for column in FEATURE_COLUMNS:
        values = rng.gamma(2.0, 3.0, rows).round(3)
        values[rng.random(rows) < 0.05] = np.nan  # missing values are part of the layout
        frame[column] = values
    return frame


def _settings(home: Path, project: str, store: str) -> Settings:
    online = {"feast_online_store": "redis", "redis_url": REDIS_URL} if store == "redis" else {}
    return get_settings(
        home=home,
        num_threads=1,
        feast_project=project,
        feast_registry=str(home / "feast" / f"{project}.db"),
        **online,
    )


def _rate(rows: int, seconds: float) -> float:
    return rows / seconds if seconds > 0 else float("nan")


def _timed(fn) -> float:
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def _stock(settings: Settings) -> float:
    store = feature_store(settings)
    start, end = schemas.day_start(DS), schemas.as_of(DS)
    return _timed(lambda: store.materialize(start_date=start, end_date=end, feature_views=[VIEW]))


def _ours(settings: Settings) -> float:
    store = feature_store(settings)
    return _timed(lambda: materialize_day(settings, DS, store=store))


def _redis_keys(client: redis.Redis, project: str) -> list[bytes]:
    return list(client.scan_iter(match=f"*{project}", count=10_000))


def _raw_redis(client: redis.Redis, written_by_ours: str) -> tuple[float, int]:
    """Seconds of pipelined HSETs of the rows ours wrote into keys of a third project, and rows written.

    The rows are read back batch by batch (untimed), so memory stays bounded by the batch."""
    target = f"bench_raw_{uuid.uuid4().hex[:8]}"
    keys = _redis_keys(client, written_by_ours)
    seconds = 0.0
    try:
        for start in range(0, len(keys), 10_000):
            batch = keys[start : start + 10_000]
            reads = client.pipeline(transaction=False)
            for key in batch:
                reads.hgetall(key)
            hashes = reads.execute()
            began = time.perf_counter()
            writes = client.pipeline(transaction=False)
            for key, mapping in zip(batch, hashes, strict=True):
                writes.hset(key[: -len(written_by_ours)] + target.encode(), mapping=mapping)
            writes.execute()
            seconds += time.perf_counter() - began
        return seconds, len(keys)
    finally:
        delete_redis_project(client, target)


_FEAST_COLUMNS = ("entity_key", "feature_name", "value", "value_text", "event_ts", "created_ts")
_RAW_ROWS_PER_STATEMENT = 5_000


def _feast_upsert_sql(table: str, rows: int) -> str:
    """Feast's own SQLite upsert (its columns and conflict rule), ``rows`` rows of six bound values each."""
    placeholders = ", ".join(["(" + ", ".join("?" * len(_FEAST_COLUMNS)) + ")"] * rows)
    updates = ", ".join(f"{c} = excluded.{c}" for c in _FEAST_COLUMNS[2:])
    return (
        f'INSERT INTO "{table}" ({", ".join(_FEAST_COLUMNS)}) VALUES {placeholders} '
        f"ON CONFLICT(entity_key, feature_name) DO UPDATE SET {updates}"
    )


def _raw_sqlite(path: str, written_by_ours: str) -> tuple[float, int]:
    """Seconds of Feast's upsert (one row per entity and feature, six bound values each) in multi-row statements
    of the rows ours wrote, copied into a new table with the same schema and indexes, in one transaction; and
    entity rows written.

    The rows are read back in batches (untimed), so memory stays bounded by the batch."""
    source, target = f"{written_by_ours}_{VIEW}", f"bench_raw_{uuid.uuid4().hex[:8]}_{VIEW}"
    seconds, last = 0.0, 0
    with closing(sqlite3.connect(path)) as db:
        schema = db.execute("SELECT sql FROM sqlite_master WHERE tbl_name = ? AND sql IS NOT NULL", (source,))
        try:
            with db:
                for (statement,) in schema.fetchall():
                    db.execute(statement.replace(source, target))
                per_statement = min(
                    _RAW_ROWS_PER_STATEMENT,
                    db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // len(_FEAST_COLUMNS),
                )
                upsert = _feast_upsert_sql(target, per_statement)
                while batch := db.execute(
                    f"SELECT rowid, {', '.join(_FEAST_COLUMNS)} FROM {source} WHERE rowid > ? ORDER BY rowid LIMIT ?",
                    (last, 40 * per_statement),
                ).fetchall():
                    last = batch[-1][0]
                    flat = [
                        [value for row in batch[i : i + per_statement] for value in row[1:]]
                        for i in range(0, len(batch), per_statement)
                    ]
                    began = time.perf_counter()
                    for parameters in flat:  # the last statement of a batch may hold fewer rows
                        rows = len(parameters) // len(_FEAST_COLUMNS)
                        db.execute(upsert if rows == per_statement else _feast_upsert_sql(target, rows), parameters)
                    seconds += time.perf_counter() - began
            entities = db.execute(f"SELECT COUNT(DISTINCT entity_key) FROM {target}").fetchone()[0]
        finally:
            with db:
                db.execute(f"DROP TABLE IF EXISTS {target}")
    return seconds, entities


def delete_redis_project(client: redis.Redis, project: str) -> None:
    keys = _redis_keys(client, project)
    for start in range(0, len(keys), 10_000):
        client.delete(*keys[start : start + 10_000])


def _same_redis(client: redis.Redis, stock: str, ours: str, sample: int = 2_000) -> bool:
    keys = _redis_keys(client, stock)[:sample]
    return bool(keys) and all(client.hgetall(k) == client.hgetall(k[: -len(stock)] + ours.encode()) for k in keys)


def _same_sqlite(path: str, stock: str, ours: str) -> bool:
    query = "SELECT entity_key, feature_name, value, value_text, event_ts, created_ts FROM {} ORDER BY 1, 2"
    with sqlite3.connect(path) as db:
        return (
            db.execute(query.format(f"{stock}_{VIEW}")).fetchall()
            == db.execute(query.format(f"{ours}_{VIEW}")).fetchall()
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _by_feature(response: dict) -> dict:
    """A get-online-features JSON keyed by feature name (the server may list the features in another order)."""
    return dict(zip(response["metadata"]["feature_names"], response["results"], strict=True))


def feast_serve_repo(settings: Settings, repo: Path) -> Path:
    """A feature repo directory for ``feast -c REPO serve`` on the registry and online store of ``settings``."""
    online = feature_store(settings).config.online_store
    repo.mkdir()
    config = {
        "project": settings.feast_project,
        "provider": "local",
        "registry": {"registry_type": "file", "path": settings.feast_registry},
        "online_store": (
            {"type": "redis", "connection_string": online.connection_string}
            if online.type == "redis"
            else {"type": "sqlite", "path": online.path}
        ),
        "offline_store": {"type": "file"},
        "entity_key_serialization_version": 3,
    }
    (repo / "feature_store.yaml").write_text(yaml.safe_dump(config))
    return repo


def _served_same(settings: Settings, stock: FeatureStore, home: Path, users: list[int]) -> bool:
    """``feast serve`` over our project answers exactly what Feast reads in-process from the stock project."""
    repo = feast_serve_repo(settings, home / f"serve_{settings.feast_project}")
    port = free_port()
    feast = str(Path(sys.executable).with_name("feast"))
    server = subprocess.Popen(
        [feast, "-c", str(repo), "serve", "-h", "127.0.0.1", "-p", str(port), "--no-access-log"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        body = json.dumps({"feature_service": "purchase_intent", "entities": {"user_id": users}}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/get-online-features", body, {"content-type": "application/json"}
        )
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    served = json.loads(response.read())
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    return False
                time.sleep(1)
        rows = [{"user_id": u} for u in users]
        expected = stock.get_online_features(features=stock.get_feature_service("purchase_intent"), entity_rows=rows)
        expected_json = json.loads(json.dumps(convert_response_to_dict(expected.proto)))
        return _by_feature(served) == _by_feature(expected_json)
    finally:
        server.terminate()
        server.wait(timeout=30)


def run(rows: int, stock: bool) -> list[dict]:
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_materialize_") as tmp:
        home = Path(tmp) / ".storefront"
        write_user_features(Lake(_settings(home, "lake", "sqlite")), DS, _frame(rows))
        for kind in ("redis", "sqlite"):
            tag = uuid.uuid4().hex[:8]
            stock_project, our_project = f"bench_stock_{tag}", f"bench_ours_{tag}"
            ours_s = _settings(home, our_project, kind)
            client = redis.Redis.from_url(f"redis://{REDIS_URL}") if kind == "redis" else None
            try:
                row = {"store": kind, "ours": _rate(rows, _ours(ours_s))}
                if stock:
                    stock_s = _settings(home, stock_project, kind)
                    row["stock"] = _rate(rows, _stock(stock_s))
                    row["identical"] = (
                        _same_redis(client, stock_project, our_project)
                        if client
                        else _same_sqlite(ours_s.feast_online_path, stock_project, our_project)
                    )
                    users = [1, 2, rows // 2, rows, rows + 1]  # the last one is unknown
                    row["served"] = _served_same(ours_s, feature_store(stock_s), home, users)
                seconds, written = (
                    _raw_redis(client, our_project) if client else _raw_sqlite(ours_s.feast_online_path, our_project)
                )
                row["raw"] = _rate(written, seconds)
                results.append(row)
            finally:
                if client:
                    delete_redis_project(client, stock_project)
                    delete_redis_project(client, our_project)
    return results


def _table(rows: int, results: list[dict]) -> str:
    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:,.0f}"

    def ratio(row: dict, key: str) -> str:
        return "-" if row.get(key) is None else f"{row['ours'] / row[key]:.1f}x"

    lines = [
        f"materializing {rows:,} rows x {len(FEATURE_COLUMNS)} features of {VIEW} (rows/s; ratio = ours / other)",
        f"{'store':<7} {'ours':>10} {'stock':>10} {'raw client':>13} {'ours/stock':>11} {'ours/raw':>9} "
        f"{'identical':>10} {'served':>7}",
    ]

    def check(row: dict, key: str) -> str:
        return "-" if key not in row else ("yes" if row[key] else "NO")

    for row in results:
        lines.append(
            f"{row['store']:<7} {cell(row['ours']):>10} {cell(row.get('stock')):>10} {cell(row.get('raw')):>13} "
            f"{ratio(row, 'stock'):>11} {ratio(row, 'raw'):>9} {check(row, 'identical'):>10} {check(row, 'served'):>7}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000, help="rows of the day (users), default 200,000")
    parser.add_argument("--no-stock", action="store_true", help="skip Feast's materialize (slow at 1M rows)")
    args = parser.parse_args()
    print(_table(args.rows, run(args.rows, stock=not args.no_stock)))


if __name__ == "__main__":
    main()
