"""Serving: champion models from a real SQLite MLflow registry, scored on online feature rows, hot-swapped."""

from __future__ import annotations

import shutil
from pathlib import Path

import lightgbm as lgb
import mlflow
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from mlflow import MlflowClient
from mlflow.models import infer_signature

from pipelines.serving.app import MAX_USER_IDS, create_app
from pipelines.settings import PROJECT_ROOT, Settings, get_settings
from pipelines.specs import load_specs

MODEL = "purchase_intent"
FEATURES = ["views_7d", "carts_7d", "days_since_last_event"]

# The online store's rows for the purchase_intent feature service (user 99 has none).
ONLINE_ROWS = {
    1: {"views_7d": 0.0, "carts_7d": 0.0, "days_since_last_event": 30.0},
    2: {"views_7d": 40.0, "carts_7d": 6.0, "days_since_last_event": 0.5},
    3: {"views_7d": 5.0, "carts_7d": 1.0, "days_since_last_event": 3.0},
}


def dict_reader(settings: Settings, feature_service: str, user_ids: list[int]) -> pd.DataFrame:
    """Online rows from a plain dict: one row per id, all features missing for unknown users."""
    assert feature_service == MODEL
    empty = dict.fromkeys(FEATURES, np.nan)
    rows = [{"user_id": uid, **ONLINE_ROWS.get(uid, empty)} for uid in user_ids]
    return pd.DataFrame(rows, columns=["user_id", *FEATURES])


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Serving of the purchase_intent model alone (other shipped models have no champion in these tests)."""
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(PROJECT_ROOT / "models" / f"{MODEL}.yaml", models)
    return get_settings(home=tmp_path / ".storefront", num_threads=1, models_dir=models)


@pytest.fixture(scope="module")
def empty_mlflow_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated MLflow SQLite store, made once: creating tables takes seconds, copying the file doesn't."""
    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def registry(settings: Settings, empty_mlflow_db: Path, monkeypatch: pytest.MonkeyPatch) -> MlflowClient:
    (settings.home / "mlflow").mkdir(parents=True)
    shutil.copyfile(empty_mlflow_db, settings.home / "mlflow" / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", settings.mlflow_tracking_uri)
    # Other modules may have pointed MLflow's fluent API elsewhere in this process: point it here.
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    mlflow.set_registry_uri(settings.mlflow_tracking_uri)
    monkeypatch.setenv("MLFLOW_UV_AUTO_DETECT", "false")
    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    exp_id = client.create_experiment("serving-tests", artifact_location=Path(settings.mlflow_artifact_root).as_uri())
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", exp_id)
    return client


def register(features: list[str], seed: int, champion: bool = True) -> str:
    """Train a tiny booster on random data, log and register it; optionally make it champion."""
    rng = np.random.default_rng(seed)
    x = pd.DataFrame(rng.random((200, len(features))) * 10, columns=features)
    y = (x.iloc[:, 0] + rng.normal(0, 2, len(x)) > 5).astype(int)
    params = {"objective": "binary", "num_threads": 1, "verbose": -1, "num_leaves": 4, "min_data_in_leaf": 5}
    booster = lgb.train(params, lgb.Dataset(x, y), num_boost_round=5)
    with mlflow.start_run():
        info = mlflow.lightgbm.log_model(
            booster,
            name="model",
            signature=infer_signature(x, booster.predict(x, num_threads=1)),
            registered_model_name=MODEL,
            pip_requirements=["lightgbm"],  # skips inferring requirements in a subprocess (seconds)
        )
    version = str(info.registered_model_version)
    if champion:
        MlflowClient().set_registered_model_alias(MODEL, "champion", version)
    return version


@pytest.fixture
def client(settings: Settings, registry: MlflowClient) -> TestClient:
    # A long refresh interval: tests call refresh() themselves instead of sleeping.
    app = create_app(settings.model_copy(update={"serving_refresh_seconds": 3600}), feature_reader=dict_reader)
    with TestClient(app) as test_client:
        yield test_client


def predict(client: TestClient, user_ids: list[int], model: str = MODEL):
    return client.post(f"/v1/models/{model}/predict", json={"user_ids": user_ids})


def test_predict_scores_users_with_the_champion(settings: Settings, registry: MlflowClient) -> None:
    version = register(FEATURES, seed=1)
    with TestClient(create_app(settings, feature_reader=dict_reader)) as client:
        response = predict(client, [2, 1, 99])

    assert response.status_code == 200
    body = response.json()
    assert body["model"] == MODEL and body["version"] == version == "1"
    preds = body["predictions"]
    assert [p["user_id"] for p in preds] == [2, 1, 99]
    assert all(0.0 <= p["score"] <= 1.0 for p in preds)
    # The heavy shopper scores above the idle user; the unknown user is scored but flagged.
    assert preds[0]["score"] > preds[1]["score"]
    assert [p["features_found"] for p in preds] == [True, True, False]


def test_alias_move_is_served_after_refresh_without_restart(client: TestClient) -> None:
    register(FEATURES, seed=1)
    client.app.state.models[MODEL].refresh()
    assert predict(client, [2]).json()["version"] == "1"

    v2 = register(FEATURES, seed=2)
    assert predict(client, [2]).json()["version"] == "1"  # not before the refresh
    client.app.state.models[MODEL].refresh()

    body = predict(client, [2]).json()
    assert body["version"] == v2 == "2"
    health = client.get("/health").json()
    assert health["status"] == "ok"
    assert health["models"][MODEL]["version"] == "2"
    assert health["models"][MODEL]["last_refusal"] is None


def test_version_failing_the_canary_is_refused_and_old_one_keeps_serving(client: TestClient) -> None:
    register(FEATURES, seed=1)
    holder = client.app.state.models[MODEL]
    holder.refresh()
    before = predict(client, [1, 2, 3]).json()

    # Trained on a feature the online store does not have: it cannot score the canary row.
    register(["views_7d", "wishlist_30d"], seed=3)
    holder.refresh()

    after = predict(client, [1, 2, 3]).json()
    assert after == before and after["version"] == "1"
    refusal = client.get("/health").json()["models"][MODEL]["last_refusal"]
    assert refusal["version"] == "2"
    assert "wishlist_30d" in refusal["reason"] and "canary" in refusal["reason"]


def test_version_that_fails_to_load_is_refused(client: TestClient, registry: MlflowClient) -> None:
    register(FEATURES, seed=1)
    client.app.state.models[MODEL].refresh()
    broken = registry.create_model_version(MODEL, source="file:///nonexistent/model")
    registry.set_registered_model_alias(MODEL, "champion", broken.version)
    client.app.state.models[MODEL].refresh()

    assert predict(client, [2]).json()["version"] == "1"
    health = client.get("/health").json()["models"][MODEL]
    assert health["champion_version"] == "2" and health["version"] == "1"
    assert "failed to load" in health["last_refusal"]["reason"]


def test_no_champion_yet_is_503_with_next_step(client: TestClient) -> None:
    register(FEATURES, seed=1, champion=False)
    client.app.state.models[MODEL].refresh()

    response = predict(client, [1])
    assert response.status_code == 503
    assert response.json()["detail"] == f"no champion for {MODEL}; approve a version first"
    health = client.get("/health").json()
    assert health["status"] == "degraded"
    assert health["models"][MODEL]["version"] is None and health["models"][MODEL]["last_error"] is None


def test_empty_registry_is_503_not_an_error(client: TestClient) -> None:
    assert predict(client, [1]).status_code == 503
    assert client.get("/health").json()["models"][MODEL]["last_error"] is None


def test_unknown_model_is_404(client: TestClient) -> None:
    response = predict(client, [1], model="nope")
    assert response.status_code == 404
    assert "unknown model 'nope'" in response.json()["detail"]
    assert MODEL in response.json()["detail"]


def test_ranking_model_is_not_served_by_the_binary_route(settings: Settings, registry: MlflowClient) -> None:
    spec = load_specs(settings.models_dir)[MODEL]
    ranking = spec.model_copy(update={"name": "product_ranking", "objective": "lambdarank", "entity": "user_product"})
    app = create_app(settings, feature_reader=dict_reader, specs={MODEL: spec, "product_ranking": ranking})
    with TestClient(app) as client:
        response = predict(client, [1], model="product_ranking")
        models = client.get("/v1/models").json()["models"]

    assert response.status_code == 404
    assert "binary user models" in response.json()["detail"]
    assert {m["name"]: m["served"] for m in models} == {MODEL: True, "product_ranking": False}


@pytest.mark.parametrize("user_ids", [[], list(range(MAX_USER_IDS + 1))], ids=["empty", "too-long"])
def test_bad_user_id_lists_are_422(client: TestClient, user_ids: list[int]) -> None:
    assert predict(client, user_ids).status_code == 422


def test_models_listing_shows_served_version_and_features(client: TestClient) -> None:
    register(FEATURES, seed=1)
    client.app.state.models[MODEL].refresh()

    models = client.get("/v1/models").json()["models"]
    assert models == [
        {
            "name": MODEL,
            "objective": "binary",
            "feature_service": MODEL,
            "served": True,
            "version": "1",
            "features": FEATURES,
        }
    ]
