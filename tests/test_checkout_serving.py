"""Fraud at checkout over HTTP: each order of a day, sent to ``POST /v1/models/order_fraud/score`` as it is placed,
gets the score the champion gives the order's point-in-time training row (|diff| < 1e-6), from the order
histories the daily chain loaded into the online store and the pushes of the day's earlier orders.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import shutil
from pathlib import Path

import lightgbm as lgb
import mlflow
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from mlflow import MlflowClient

from feature_repo.orders import ON_DEMAND_FEATURES, order_value
from pipelines.data import orders as simulated
from pipelines.data.orders import FraudConfig
from pipelines.data.simulator import SimulationConfig
from pipelines.features.checkout import build_and_write_histories
from pipelines.features.order_features import FEATURE_COLUMNS, compute_order_features
from pipelines.features.store import feature_store, materialize_day
from pipelines.lake import Lake
from pipelines.serving.app import create_app
from pipelines.serving.server import serving_writer
from pipelines.settings import PROJECT_ROOT, Settings
from tests.audit_support import audit_promotion

MODEL = "order_fraud"
CONFIG = SimulationConfig(n_users=1500, n_products=200, n_merchants=10, start=dt.date(2025, 3, 1))
DENSE = FraudConfig(ring_bursts_per_1k_orders=30, new_account_fraudsters_per_1k_orders=20, takeovers_per_1k_orders=10)
DAYS = [CONFIG.start + dt.timedelta(days=i) for i in range(9)]
SCORED = DAYS[-1]
NAMES = [*FEATURE_COLUMNS, *ON_DEMAND_FEATURES]


@pytest.fixture
def world(mlflow_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> tuple[Settings, pd.DataFrame, pd.DataFrame]:
    """Orders of DAYS in the lake (labels that arrived before the scored day), the order histories for the scored
    day loaded into the online store, and a champion of order_fraud scoring all its features."""
    settings = mlflow_settings.model_copy(update={"models_dir": _models(mlflow_settings.home.parent)})
    lake = Lake(settings)
    orders = pd.concat([simulated.simulate_orders(CONFIG, d, DENSE) for d in DAYS], ignore_index=True)
    labels = pd.concat([simulated.order_labels(CONFIG, d, DENSE) for d in DAYS[:-1]], ignore_index=True)
    for day in DAYS:
        lake.write("orders", day, orders[orders["purchase_time"].dt.date == day])
    for day in DAYS[:-1]:
        lake.write("order_labels", day, labels[pd.to_datetime(labels["label_time"]).dt.date == day])
    build_and_write_histories(lake, DAYS[-2])  # what the daily run of the day before leaves
    materialize_day(settings, DAYS[-2], store=feature_store(settings))

    monkeypatch.setenv("MLFLOW_UV_AUTO_DETECT", "false")
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    mlflow.set_registry_uri(settings.mlflow_tracking_uri)
    # Trained on the day before's real training rows with random labels: every feature takes part in some split,
    # at the values real orders have, so scores differ from order to order.
    rng = np.random.default_rng(3)
    before = compute_order_features(orders, labels, DAYS[-2])
    x = pd.concat([before, order_value(before.assign(purchase_value=rng.gamma(2.0, 30.0, len(before))))], axis=1)
    y = (rng.random(len(x)) < 0.3).astype(int)
    params = {"objective": "binary", "num_threads": 1, "verbose": -1, "num_leaves": 31, "min_data_in_leaf": 3}
    booster = lgb.train(params, lgb.Dataset(x[NAMES], y), num_boost_round=40)
    experiment = MlflowClient().create_experiment("checkout-tests")
    with mlflow.start_run(experiment_id=experiment):
        info = mlflow.lightgbm.log_model(
            booster, name="model", registered_model_name=MODEL, pip_requirements=["lightgbm"]
        )
    audit_promotion(settings, MODEL, str(info.registered_model_version), by="carol")
    return settings, orders, labels


def _models(root: Path) -> Path:
    models = root / "models"
    models.mkdir(parents=True, exist_ok=True)
    shutil.copy(PROJECT_ROOT / "models" / f"{MODEL}.yaml", models)
    return models


def _body(order: pd.Series) -> dict:
    def iso(value: pd.Timestamp) -> str:
        return (
            pd.Timestamp(value).tz_localize("UTC").isoformat()
            if pd.Timestamp(value).tzinfo is None
            else (pd.Timestamp(value).isoformat())
        )

    return {
        "order_id": order["order_id"],
        "user_id": int(order["user_id"]),
        "signup_time": iso(order["signup_time"]),
        "purchase_time": iso(order["purchase_time"]),
        "purchase_value": float(order["purchase_value"]),
        "device_id": order["device_id"],
        "ip_address": order["ip_address"],
        "source": order["source"],
        "browser": order["browser"],
        "age": float(order["age"]),
    }


@pytest.mark.parametrize("writer", [False, True], ids=["in-process", "writer-process"])
def test_each_order_scored_at_checkout_gets_its_training_rows_score(
    world, writer: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In-process (the app alone) and as under mlctl serve (the writer process writes the orders back and tells
    the worker which landed; the worker answers from its own until then)."""
    settings, orders, labels = world
    today = orders[orders["purchase_time"].dt.date == SCORED].sort_values(["purchase_time", "order_id"])
    # The training rows of the day's orders: compute_order_features, then the on-demand view's own function.
    rows = compute_order_features(orders, labels, SCORED).set_index("order_id").loc[today["order_id"]]
    rows = pd.concat([rows, order_value(rows.assign(purchase_value=today["purchase_value"].to_numpy()))], axis=1)

    directory = tmp_path / "serving" if writer else None
    with contextlib.ExitStack() as stack:
        if directory is not None:
            directory.mkdir()
            for name, value in settings.environment().items():
                monkeypatch.setenv(name, value)
            stack.enter_context(serving_writer(directory))
        client = stack.enter_context(TestClient(create_app(settings, writer_dir=directory)))
        served = client.app.state.serving.served[MODEL]
        booster = served.champion().booster
        expected = booster.predict(rows[NAMES].to_numpy(dtype=float), num_threads=1)
        responses = [client.post(f"/v1/models/{MODEL}/score", json=_body(o)) for _, o in today.iterrows()]
        served.state().drain()
        assert served.state().push_errors == 0
    # Every scored order reached its account's history in the online store (the writer's by the time it stopped).
    users = sorted(set(today["user_id"].astype(int)))
    stored = served.state().rows_of("user", users)
    times = {user: set(row["order_time_us"]) for user, row in zip(users, stored, strict=True) if row}

    assert all(r.status_code == 200 for r in responses), responses[0].text
    scores = np.array([r.json()["score"] for r in responses])
    assert len(scores) >= 50
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-6)
    assert len(set(np.round(scores, 6))) > 10  # the features vary from order to order
    found = pd.DataFrame([r.json()["features_found"] for r in responses])
    assert found["user"].any() and not found["user"].all()  # returning and first-time accounts
    placed = today.assign(us=pd.to_datetime(today["purchase_time"], utc=True).dt.as_unit("us").astype("int64"))
    assert all(int(o.us) in times.get(int(o.user_id), set()) for o in placed.itertuples())


def test_a_bad_order_is_422_naming_the_field(world) -> None:
    settings, orders, _ = world
    body = _body(orders.iloc[0])
    with TestClient(create_app(settings)) as client:
        for field, value, message in [
            ("signup_time", "2025-03-01T10:00:00", "signup_time: '2025-03-01T10:00:00' has no time zone"),
            ("purchase_value", "12", "purchase_value: expected a number"),
            ("purchase_value", -3, "purchase_value: -3 is outside 0..1e+09"),
            ("user_id", 2**64, "user_id: id"),
            ("source", None, "source: expected a non-empty string"),
        ]:
            response = client.post(f"/v1/models/{MODEL}/score", json=body | {field: value})
            assert response.status_code == 422, (field, response.text)
            assert response.json()["detail"].startswith(message), response.json()["detail"]


def test_the_value_features_equal_the_on_demand_views_function() -> None:
    from pipelines.serving.checkout import value_features

    values = [0.0, 0.01, 1.0, 49.5, 1e6, 1e9]
    means = [np.nan, -1.0, 0.0, 1e-9, 3.0, 120.0]
    grid = pd.DataFrame([(v, m) for v in values for m in means], columns=["purchase_value", "user_mean_value_30d"])
    expected = order_value(grid)[ON_DEMAND_FEATURES].to_numpy()
    got = np.array([value_features(v, m) for v, m in grid.itertuples(index=False)])
    np.testing.assert_array_equal(got, expected)  # NaN where the view gives NaN
