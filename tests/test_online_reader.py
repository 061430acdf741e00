"""The serving app's online reader returns what Feast's ``get_online_features`` returns, on SQLite and Redis.

The reader (pipelines/serving/online.py) plans a feature service once and calls Feast's online store directly;
for every stored value, every missing value and every unknown entity it must agree with Feast's full read.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.features.store import materialize_day, online_features
from pipelines.serving.online import RowReader, ServiceReader, UnsupportedService
from tests.test_online_write import (  # noqa: F401, F811  (fixtures)
    D1,
    D2,
    REDIS,
    _build_lake,
    _entity_rows,
    _settings,
    _store,
    projects,
    redis_client,
    redis_projects,
)

SERVICES = ("purchase_intent", "product_ranking")


def _assert_reader_matches_feast(settings, store) -> None:
    for service in SERVICES:
        rows = pd.DataFrame(_entity_rows(settings, service))
        reader = ServiceReader(store, service)
        got = reader.read({k: rows[k].tolist() for k in reader.keys})
        expected = online_features(settings, service, rows[list(reader.keys)], store=store)
        want = expected[list(reader.features)].to_numpy(dtype=float)
        np.testing.assert_array_equal(got.values, want, err_msg=service)  # NaN where Feast has no value
        assert np.isnan(want).any() and (~np.isnan(want)).any(), f"{service}: rows should mix known and missing"
        assert not got.found[-1].any(), f"{service}: the unknown entity has no stored row"
        # An entity row found in some view has at least one value there; one found nowhere has none.
        assert (np.isnan(got.values).all(axis=1) | got.found.any(axis=1)).all()


def test_reader_matches_feast_on_sqlite(tmp_path, projects):  # noqa: F811
    settings = _settings(tmp_path, projects[1])
    _build_lake(settings)
    store = _store(settings)
    for day in (D1, D2):
        materialize_day(settings, day, store=store)
    _assert_reader_matches_feast(settings, store)


def test_reader_matches_feast_on_redis(tmp_path, redis_client, redis_projects):  # noqa: F811
    settings = _settings(tmp_path, redis_projects[1], feast_online_store="redis", redis_url=REDIS)
    _build_lake(settings)
    store = _store(settings)
    for day in (D1, D2):
        materialize_day(settings, day, store=store)
    _assert_reader_matches_feast(settings, store)


def test_services_with_on_demand_views_are_left_to_feast(tmp_path, projects):  # noqa: F811
    settings = _settings(tmp_path, projects[1])
    with pytest.raises(UnsupportedService, match="order_fraud"):
        ServiceReader(_store(settings), "order_fraud")


def _assert_rows_match_feast(settings, store) -> None:
    """Checkout's reader: the order histories of accounts, devices and IPs (lists), all three views in one read."""
    rows = _entity_rows(settings, "order_checkout")
    reader = RowReader(store, ["order_history_user", "order_history_device", "order_history_ip"])
    keys = {name: [row[view.join_keys[0]] for row in rows] for name, view in reader.views.items()}
    got = reader.read(keys)
    for name, view in reader.views.items():
        features = reader.features[name]
        expected = store.get_online_features(
            features=[f"{name}:{f}" for f in features], entity_rows=[{view.join_keys[0]: k} for k in keys[name]]
        ).to_dict()
        want = [{f: expected[f][i] for f in features} for i in range(len(keys[name]))]
        # Feast's full read gives None for every feature of a key it has no row for.
        assert [row or dict.fromkeys(features) for row in got[name]] == want, name
        assert got[name][-1] is None and any(row is not None for row in got[name]), f"{name}: known and unknown keys"


def test_row_reader_matches_feast_on_sqlite_and_redis(tmp_path, projects, redis_client, redis_projects):  # noqa: F811
    for store_settings in (
        _settings(tmp_path / "sqlite", projects[1]),
        _settings(tmp_path / "redis", redis_projects[1], feast_online_store="redis", redis_url=REDIS),
    ):
        _build_lake(store_settings)
        store = _store(store_settings)
        materialize_day(store_settings, D2, store=store)
        _assert_rows_match_feast(store_settings, store)
