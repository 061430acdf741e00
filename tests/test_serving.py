"""Serving: champion models from a real SQLite MLflow registry, scored on online feature rows, hot-swapped."""

from __future__ import annotations

import datetime as dt
import shutil
import time
from pathlib import Path

import lightgbm as lgb
import mlflow
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from mlflow import MlflowClient
from mlflow.models import infer_signature

from pipelines.serving.app import create_app
from pipelines.serving.served import MAX_USER_IDS
from pipelines.serving.server import serving_writer
from pipelines.settings import PROJECT_ROOT, Settings, get_settings
from pipelines.specs import load_specs
from tests.audit_support import audit_promotion, audit_rollout_start

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
    monkeypatch.setenv("STOREFRONT_HOME", str(settings.home))  # register() audits its promotions in this lake
    # Other modules may have pointed MLflow's fluent API elsewhere in this process: point it here.
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    mlflow.set_registry_uri(settings.mlflow_tracking_uri)
    monkeypatch.setenv("MLFLOW_UV_AUTO_DETECT", "false")
    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    exp_id = client.create_experiment("serving-tests", artifact_location=Path(settings.mlflow_artifact_root).as_uri())
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", exp_id)
    return client


def register(features: list[str], seed: int, champion: bool = True) -> str:
    """Train a tiny booster on random data, log and register it; optionally make it champion through an audited
    promotion (serving loads nothing else)."""
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
        audit_promotion(get_settings(num_threads=1), MODEL, version)
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
    client.app.state.serving.served[MODEL].holder.refresh()
    assert predict(client, [2]).json()["version"] == "1"

    v2 = register(FEATURES, seed=2)
    assert predict(client, [2]).json()["version"] == "1"  # not before the refresh
    client.app.state.serving.served[MODEL].holder.refresh()

    body = predict(client, [2]).json()
    assert body["version"] == v2 == "2"
    health = client.get("/health").json()
    assert health["status"] == "ok"
    assert health["models"][MODEL]["version"] == "2"
    assert health["models"][MODEL]["last_refusal"] is None


def test_version_failing_the_canary_is_refused_and_old_one_keeps_serving(client: TestClient) -> None:
    register(FEATURES, seed=1)
    holder = client.app.state.serving.served[MODEL].holder
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
    client.app.state.serving.served[MODEL].holder.refresh()
    broken = registry.create_model_version(MODEL, source="file:///nonexistent/model")
    audit_promotion(get_settings(num_threads=1), MODEL, str(broken.version))
    client.app.state.serving.served[MODEL].holder.refresh()

    assert predict(client, [2]).json()["version"] == "1"
    health = client.get("/health").json()["models"][MODEL]
    assert health["champion_version"] == "2" and health["version"] == "1"
    assert "failed to load" in health["last_refusal"]["reason"]


def test_an_alias_moved_outside_mlctl_is_refused_and_flagged_until_restored(client: TestClient) -> None:
    """Issue 13: a champion alias set by hand on a version whose gate failed was served within 2 s, /health ok."""
    from pipelines.registry.tamper import restore_aliases

    register(FEATURES, seed=1)
    served = client.app.state.serving.served[MODEL]
    served.holder.refresh()
    hand_moved = register(FEATURES, seed=2, champion=False)

    def refusals() -> float:  # the counter lives as long as the process's metric files: count from here
        lines = client.get("/metrics").text.splitlines()
        found = [line for line in lines if line.startswith(f'storefront_serving_refusals_total{{model="{MODEL}"}}')]
        return float(found[0].rsplit(" ", 1)[1]) if found else 0.0

    before = refusals()
    MlflowClient().set_registered_model_alias(MODEL, "champion", hand_moved)
    for _ in range(3):  # every refresh checks again; the refusal is counted once
        served.holder.refresh()
    assert predict(client, [2]).json()["version"] == "1"
    health = client.get("/health").json()
    model = health["models"][MODEL]
    assert health["status"] == "degraded" and model["version"] == "1" and model["champion_version"] == "2"
    assert "audit log's last move put v1 there" in model["finding"] and "mlctl restore" in model["finding"]
    assert model["last_refusal"]["version"] == "2"
    assert refusals() == before + 1
    settings = get_settings(num_threads=1)
    restore_aliases(settings, load_specs(PROJECT_ROOT / "models")[MODEL], "alice", "put back after a hand move")
    served.holder.refresh()
    assert client.get("/health").json()["status"] == "ok"
    # The same version, promoted through the audit log later, is served: a tamper refusal is not for ever.
    audit_promotion(settings, MODEL, hand_moved)
    served.holder.refresh()
    assert predict(client, [2]).json()["version"] == hand_moved


def test_a_version_whose_gate_failed_or_approval_was_edited_is_not_served(client: TestClient) -> None:
    from pipelines.registry.registry import delete_alias, set_version_tags

    register(FEATURES, seed=1)
    holder = client.app.state.serving.served[MODEL].holder
    holder.refresh()
    settings = get_settings(num_threads=1)
    failed = register(FEATURES, seed=2, champion=False)
    audit_promotion(settings, MODEL, failed)
    set_version_tags(settings, MODEL, failed, {"gate.status": "failed"})  # edited after the promotion
    holder.refresh()
    assert "gate did not pass" in holder.status().last_refusal.reason and holder.current().version == "1"
    edited = register(FEATURES, seed=3, champion=False)
    audit_promotion(settings, MODEL, edited, by="bob")
    set_version_tags(settings, MODEL, edited, {"approval.by": "mallory"})
    holder.refresh()
    assert "do not match its audited promotion" in holder.status().last_refusal.reason
    assert holder.current().version == "1"
    delete_alias(settings, MODEL, "champion")  # deleted outside mlctl: v1 keeps serving, flagged
    holder.refresh()
    assert holder.current().version == "1" and "alias was deleted" in holder.status().finding


def test_no_champion_yet_is_503_with_next_step(client: TestClient) -> None:
    register(FEATURES, seed=1, champion=False)
    client.app.state.serving.served[MODEL].holder.refresh()

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
    assert "is not served by /predict; it is served by /rank" in response.json()["detail"]
    # Both are served, each on its own route: the listing says which.
    assert {m["name"]: (m["served"], m["route"]) for m in models} == {
        MODEL: (True, f"/v1/models/{MODEL}/predict"),
        "product_ranking": (True, "/v1/models/product_ranking/rank"),
    }


@pytest.mark.parametrize("user_ids", [[], list(range(MAX_USER_IDS + 1))], ids=["empty", "too-long"])
def test_bad_user_id_lists_are_422(client: TestClient, user_ids: list[int]) -> None:
    assert predict(client, user_ids).status_code == 422


def test_models_listing_shows_served_version_and_features(client: TestClient) -> None:
    register(FEATURES, seed=1)
    client.app.state.serving.served[MODEL].holder.refresh()

    models = client.get("/v1/models").json()["models"]
    assert models == [
        {
            "name": MODEL,
            "objective": "binary",
            "feature_service": MODEL,
            "served": True,
            "route": f"/v1/models/{MODEL}/predict",
            "version": "1",
            "features": FEATURES,
        }
    ]


# -- hardening: client errors, API keys, request ids, metrics ------------------------------------------------
def test_client_errors_are_4xx_with_short_bodies_and_a_request_id(client: TestClient) -> None:
    register(FEATURES, seed=1)
    huge = list(range(10_000))
    cases = {
        "beyond int64": ({"user_ids": [2**63]}, 422, "user_ids[0]: id 9223372036854775808 is outside"),
        "negative": ({"user_ids": [-5]}, 422, "user_ids[0]: id -5 is outside"),
        "not an id": ({"user_ids": ["abc" * 100]}, 422, "user_ids[0]: expected an integer id"),
        "10k ids": ({"user_ids": huge}, 422, "user_ids: 10000 ids; send 1..1000 per request"),
        "not a list": ({"user_ids": 7}, 422, "user_ids: expected a list"),
        "missing": ({}, 422, "user_ids: required"),
    }
    for name, (body, status, message) in cases.items():
        response = client.post(f"/v1/models/{MODEL}/predict", json=body)
        assert response.status_code == status, name
        detail = response.json()["detail"]
        assert detail.startswith(message), (name, detail)
        assert len(response.content) < 300, (name, len(response.content))  # never the whole input echoed
        assert response.json()["request_id"] == response.headers["x-request-id"]
    not_json = client.post(f"/v1/models/{MODEL}/predict", content=b"{user_ids: [1,", headers={"x-request-id": "abc-1"})
    assert not_json.status_code == 400
    assert not_json.headers["x-request-id"] == "abc-1"  # the caller's id is kept
    assert not_json.json()["request_id"] == "abc-1"


def test_the_fast_path_answers_as_the_documented_route_and_an_unexpected_error_is_a_500_with_the_request_id(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scoring requests skip Starlette's routing (pipelines/serving/fast_path.py); FastAPI's route for the same path
    gives the same answers, and an error no handler expects is a short JSON 500 with the request id."""
    register(FEATURES, seed=1)
    app = client.app
    app.state.serving.served[MODEL].holder.refresh()
    bodies = [{"user_ids": [1, 2]}, {"user_ids": [2**63]}, {}]
    fast = [client.post(f"/v1/models/{MODEL}/predict", json=b, headers={"x-request-id": "same-1"}) for b in bodies]
    monkeypatch.setattr(app, "scoring", None)  # every request through FastAPI's router
    routed = [client.post(f"/v1/models/{MODEL}/predict", json=b, headers={"x-request-id": "same-1"}) for b in bodies]
    assert [(r.status_code, r.json(), r.headers["x-request-id"]) for r in fast] == [
        (r.status_code, r.json(), r.headers["x-request-id"]) for r in routed
    ]
    assert [r.status_code for r in fast] == [200, 422, 422]
    monkeypatch.undo()

    def broken(payload: dict) -> None:
        raise RuntimeError("/secret/path/of/the/server")

    monkeypatch.setattr(app.state.serving.served[MODEL], "serve", broken)
    counted = 'route="predict",status="500"'
    before = sum(counted in line for line in client.get("/metrics").text.splitlines())
    failed = predict(client, [1])
    assert failed.status_code == 500 and "secret" not in failed.text
    assert failed.json() == {"detail": "internal server error", "request_id": failed.headers["x-request-id"]}
    assert sum(counted in line for line in client.get("/metrics").text.splitlines()) > before  # counted as a 500


def test_online_store_failure_is_503_without_server_details(settings: Settings, registry: MlflowClient) -> None:
    register(FEATURES, seed=1)

    def broken(settings: Settings, feature_service: str, user_ids: list[int]) -> pd.DataFrame:
        if -1 in user_ids:  # let the canary through so a champion loads
            return dict_reader(settings, feature_service, user_ids)
        raise OSError(f"{settings.home}/feast/online.db: disk I/O error")

    with TestClient(create_app(settings, feature_reader=broken)) as client:
        response = predict(client, [1])
    assert response.status_code == 503
    assert "online features unavailable for feature service 'purchase_intent'" in response.json()["detail"]
    assert str(settings.home) not in response.text and "disk I/O" not in response.text


def keyed(settings: Settings, tmp_path: Path) -> tuple[Settings, dict[str, str]]:
    from pipelines.serving.auth import add_key

    path = tmp_path / "keys" / "serving_keys.yaml"
    tokens = {"all": add_key(path, "ops", ["*"]), "other": add_key(path, "ranking-only", ["product_ranking"])}
    return settings.model_copy(update={"serving_api_keys": path}), tokens


def test_api_keys_401_without_403_out_of_scope_200_in_scope(
    settings: Settings, registry: MlflowClient, tmp_path: Path
) -> None:
    register(FEATURES, seed=1)
    settings, tokens = keyed(settings, tmp_path)
    assert oct((tmp_path / "keys" / "serving_keys.yaml").stat().st_mode & 0o777) == "0o600"
    assert tokens["all"] not in (tmp_path / "keys" / "serving_keys.yaml").read_text()  # only hashes are kept

    def call(token: str | None):
        headers = {"authorization": f"Bearer {token}"} if token else {}
        return client.post(f"/v1/models/{MODEL}/predict", json={"user_ids": [1]}, headers=headers)

    with TestClient(create_app(settings, feature_reader=dict_reader)) as client:
        assert call(None).status_code == 401
        assert call(None).headers["www-authenticate"] == "Bearer"
        assert call("sfk_wrong").status_code == 401
        assert call(tokens["other"]).status_code == 403
        assert "may not call model 'purchase_intent'" in call(tokens["other"]).json()["detail"]
        assert call(tokens["all"]).status_code == 200
        # The docs and the model listing sit behind the same keys; health and metrics stay open for probes.
        assert client.get("/openapi.json").status_code == 401
        assert client.get("/docs").status_code == 401
        assert client.get("/v1/models").status_code == 401
        auth = {"authorization": f"Bearer {tokens['all']}"}
        spec = client.get("/openapi.json", headers=auth).json()
        assert "/v1/models/{model}/predict" in spec["paths"]
        assert client.get("/health").json()["auth"] is True
        assert client.get("/metrics").status_code == 200


def test_unsafe_keys_file_is_refused_naming_it(settings: Settings, tmp_path: Path) -> None:
    from pipelines.serving.auth import ApiKeysError

    path = tmp_path / "keys.yaml"
    path.write_text("keys:\n  - name: x\n    sha256: abc\n    models: ['*']\n")
    path.chmod(0o644)
    with pytest.raises(ApiKeysError, match=r"keys.yaml: permissions 0644 .* chmod 600"):
        create_app(settings.model_copy(update={"serving_api_keys": path}), feature_reader=dict_reader)
    path.chmod(0o600)
    with pytest.raises(ApiKeysError, match=r"keys.yaml: keys\[0\] \(x\): 'sha256' must be 64"):
        create_app(settings.model_copy(update={"serving_api_keys": path}), feature_reader=dict_reader)


def test_metrics_count_requests_errors_latency_missing_features_and_swaps(client: TestClient) -> None:
    def sample(text: str, name: str, **labels: str) -> float:
        wanted = [f'{k}="{v}"' for k, v in labels.items()]
        lines = [x for x in text.splitlines() if x.startswith(f"{name}{{") and all(p in x for p in wanted)]
        return sum(float(line.rsplit(" ", 1)[1]) for line in lines)

    # Samples are per process when prometheus_client keeps them in files (serving's workers; importing Feast
    # turns that on too): measure what this test adds.
    before = client.get("/metrics").text
    register(FEATURES, seed=1)
    client.app.state.serving.served[MODEL].holder.refresh()
    predict(client, [1, 2, 99])  # 99 has no online features
    predict(client, [])  # 422
    after = client.get("/metrics").text

    def added(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert added("storefront_serving_requests_total", model=MODEL, version="1", status="200") == 1
    assert added("storefront_serving_requests_total", model=MODEL, status="422") == 1
    assert added("storefront_serving_entities_total", model=MODEL, version="1") == 3
    assert added("storefront_serving_entities_missing_features_total", model=MODEL, version="1") == 1
    assert added("storefront_serving_request_seconds_count", model=MODEL, version="1", route="predict") == 1
    assert added("storefront_serving_swaps_total", model=MODEL) == 1


def test_every_prediction_is_logged_with_its_request_id_version_and_features(
    settings: Settings, registry: MlflowClient
) -> None:
    from pipelines.lake import Lake
    from pipelines.serving.prediction_log import predictions_table

    register(FEATURES, seed=1)
    with TestClient(create_app(settings, feature_reader=dict_reader)) as client:
        first = predict(client, [1, 2])
        second = predict(client, [99])
    # Leaving the app flushed the log (it writes off the request path, in batches).
    lake = Lake(settings)
    days = lake.part_days(predictions_table(MODEL))
    assert len(days) == 1
    logged = lake.read_parts(predictions_table(MODEL), days[0]).sort_values("user_id", ignore_index=True)
    assert logged["user_id"].tolist() == [1, 2, 99]
    assert logged["request_id"].tolist() == [first.headers["x-request-id"]] * 2 + [second.headers["x-request-id"]]
    assert set(logged["version"]) == {"1"} and set(logged["arm"]) == {"champion"}
    scores = {p["user_id"]: p["score"] for p in first.json()["predictions"] + second.json()["predictions"]}
    assert logged["score"].tolist() == [scores[1], scores[2], scores[99]]
    assert logged.loc[1, FEATURES].tolist() == [ONLINE_ROWS[2][f] for f in FEATURES]
    assert logged.loc[2, FEATURES].isna().all()  # the unknown user: logged with its missing features


def _start_rollout(mode: str, share: float, version: str) -> None:
    """What `mlctl rollout` leaves in the registry: the challenger's alias and the terms as model tags."""
    audit_rollout_start(get_settings(num_threads=1), MODEL, "ab1", version)
    client = MlflowClient()
    client.set_registered_model_alias(MODEL, "rollout-ab1", version)
    for key, value in {
        "mode": mode,
        "share": repr(share),
        "started_by": "bob",
        "started_at": "2025-02-05T00:00:00+00:00",
    }.items():
        client.set_registered_model_tag(MODEL, f"rollout.ab1.{key}", value)


def _logged(settings: Settings) -> pd.DataFrame:
    from pipelines.lake import Lake
    from pipelines.serving.prediction_log import predictions_table

    lake = Lake(settings)
    return pd.concat([lake.read_parts(predictions_table(MODEL), d) for d in lake.part_days(predictions_table(MODEL))])


def test_split_rollout_answers_a_sticky_share_with_the_challenger(settings: Settings, registry: MlflowClient) -> None:
    from pipelines.registry.rollouts import in_split

    register(FEATURES, seed=1)
    challenger = register(FEATURES, seed=2, champion=False)
    _start_rollout("split", 0.3, challenger)
    users = list(range(1, 201))
    with TestClient(create_app(settings, feature_reader=dict_reader)) as client:
        assert client.get("/health").json()["models"][MODEL]["rollout"] == {
            "name": "ab1",
            "mode": "split",
            "share": 0.3,
            "version": challenger,
        }
        first = predict(client, users).json()["predictions"]
        again = predict(client, users[::-1]).json()["predictions"]
    arms = {p["user_id"]: p["version"] for p in first}
    assert arms == {p["user_id"]: p["version"] for p in again}  # sticky: each user keeps its arm
    split = {u for u in users if in_split("ab1", str(u), 0.3)}
    assert {u for u, v in arms.items() if v == challenger} == split and 40 <= len(split) <= 80
    logged = _logged(settings)
    assert len(logged) == 2 * len(users)  # one row per answer, in the arm that answered
    assert set(logged.loc[logged["user_id"].isin(split), "arm"]) == {"split:ab1"}
    assert set(logged.loc[~logged["user_id"].isin(split), "arm"]) == {"champion"}


def test_shadow_rollout_logs_the_challenger_and_returns_the_champion(
    settings: Settings, registry: MlflowClient
) -> None:
    champion = register(FEATURES, seed=1)
    challenger = register(FEATURES, seed=2, champion=False)
    _start_rollout("shadow", 1.0, challenger)
    with TestClient(create_app(settings, feature_reader=dict_reader)) as client:
        response = predict(client, [1, 2, 3])
        # Ending the rollout (its alias deleted) takes the challenger out at the next refresh.
        MlflowClient().delete_registered_model_alias(MODEL, "rollout-ab1")
        client.app.state.serving.served[MODEL].refresh()
        after = predict(client, [1])
    assert {p["version"] for p in response.json()["predictions"]} == {champion}
    logged = _logged(settings)
    shadow = logged[logged["arm"] == "shadow:ab1"]
    assert sorted(shadow["user_id"]) == [1, 2, 3] and set(shadow["version"]) == {challenger}
    assert set(shadow["request_id"]) == {response.headers["x-request-id"]}  # paired with the champion's rows
    assert (logged["arm"] == "champion").sum() == 4
    assert after.json()["predictions"][0]["version"] == champion


def test_a_key_added_while_serving_works_after_the_next_refresh(
    settings: Settings, registry: MlflowClient, tmp_path: Path
) -> None:
    from pipelines.serving.auth import add_key

    register(FEATURES, seed=1)
    settings, _ = keyed(settings, tmp_path)
    with TestClient(create_app(settings, feature_reader=dict_reader)) as client:
        token = add_key(settings.serving_api_keys, "checkout", [MODEL])
        headers = {"authorization": f"Bearer {token}"}
        client.app.state.serving.keys.refresh()  # what the refresh loop does every few seconds
        assert client.post(f"/v1/models/{MODEL}/predict", json={"user_ids": [1]}, headers=headers).status_code == 200
        settings.serving_api_keys.write_text("keys: oops")  # broken on disk: the loaded keys stay in force
        client.app.state.serving.keys.refresh()
        assert client.post(f"/v1/models/{MODEL}/predict", json={"user_ids": [1]}, headers=headers).status_code == 200


def test_under_mlctl_serve_the_writer_logs_every_prediction_and_publishes_swaps(
    settings: Settings, registry: MlflowClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    register(FEATURES, seed=1)
    fast = settings.model_copy(update={"serving_refresh_seconds": 0.2})
    directory = tmp_path / "serving"
    directory.mkdir()
    for name, value in fast.environment().items():  # the writer's settings, as mlctl serve passes them
        monkeypatch.setenv(name, value)
    app = create_app(fast, feature_reader=dict_reader, writer_dir=directory)
    with serving_writer(directory) as writer, TestClient(app) as client:
        answers = [predict(client, [uid]) for uid in (1, 2, 99) * 20]
        v2 = register(FEATURES, seed=2)
        # The writer reads the registry, the worker follows its file: no registry read in the worker.
        deadline = time.monotonic() + 20
        while predict(client, [2]).json()["version"] != v2:
            assert time.monotonic() < deadline, client.get("/health").json()
            time.sleep(0.05)
        answers.append(predict(client, [3]))
    # Leaving the app sent what was queued; stopping the writer wrote it (nothing pending is lost).
    assert writer.returncode == 0
    logged = _logged(settings)
    sent = {a.headers["x-request-id"]: a.json()["predictions"][0] for a in answers}
    assert set(sent) <= set(logged["request_id"])  # every answer logged (the polls too)
    mine = logged[logged["request_id"].isin(sent)].set_index("request_id").loc[list(sent)]
    assert mine["score"].tolist() == [p["score"] for p in sent.values()]
    assert mine["version"].tolist() == [p["version"] for p in sent.values()]
    assert mine["version"].iloc[-1] == v2


def test_the_writer_receives_every_row_in_order_large_ones_too(tmp_path: Path) -> None:
    """A burst beyond what the socket buffers (queued in the worker, sent as the writer reads) and rows of
    hundreds of kilobytes (an IP shared by thousands of orders) all arrive, in order."""
    import threading

    from pipelines.serving.writer import Writer, WriterClient

    received: list[tuple] = []
    writer = Writer(tmp_path, received.append, store=lambda: None)
    stopping = threading.Event()
    reader = threading.Thread(target=writer.serve, args=(stopping,))
    reader.start()
    client = WriterClient(tmp_path)
    rows = [("small", i) for i in range(20_000)] + [("large", "x" * 600_000)]
    assert all(client.send(("log", row)) for row in rows)
    client.close()
    stopping.set()
    reader.join(30)
    writer.histories.close()
    assert received == rows and client.refused == 0


def test_messages_sent_together_arrive_as_one_after_the_block(tmp_path: Path) -> None:
    """A scored order's history rows and prediction row go as one message: nothing is sent inside the block, all of
    it, in order, when it ends; a nested block joins the outer one; a closed client refuses at once."""
    import threading

    from pipelines.serving.writer import Writer, WriterClient

    received: list[tuple] = []
    writer = Writer(tmp_path, lambda row: received.append(("log", row)), store=lambda: None)
    writer.histories.put = lambda origin, seq, entity, row, at: received.append(("order", seq, entity, row, at))
    datagrams = []
    dispatch = writer._dispatch
    writer._dispatch = lambda origin, message: (datagrams.append(message[0]), dispatch(origin, message))
    stopping = threading.Event()
    reader = threading.Thread(target=writer.serve, args=(stopping,))
    reader.start()
    client = WriterClient(tmp_path)
    at = dt.datetime(2025, 2, 5, tzinfo=dt.UTC)
    sent = [("order", 1, "user", {"user_id": 7}, at), ("order", 2, "device", {"device_id": "d"}, at), ("log", ("r",))]
    with client.together():
        assert client.send(sent[0])
        with client.together():
            assert client.send(sent[1])
        assert client.send(sent[2])
        time.sleep(0.3)
        assert received == []  # held until the block ends
    assert client.send(("log", ("alone",)))
    client.close()
    stopping.set()
    reader.join(30)
    writer.histories.close()
    assert received == [*sent, ("log", ("alone",))]
    # One "many" message carried the block's three (its parts dispatched after it), then the one sent alone.
    assert datagrams == ["many", "order", "order", "log", "log"] and client.refused == 0
    with client.together():
        assert not client.send(("log", ("late",)))  # closed: refused and counted, as outside a block
    assert client.refused == 1


def test_rows_sent_before_the_writer_serves_arrive_when_it_stops_at_once(tmp_path: Path) -> None:
    """A worker that connected while the writer was still starting (its connection waiting to be accepted) and
    closed again before the writer served a single loop loses nothing: the writer takes that connection before it
    stops listening."""
    import threading

    from pipelines.serving.writer import Writer, WriterClient

    received: list[tuple] = []
    writer = Writer(tmp_path, received.append, store=lambda: None)
    clients = [WriterClient(tmp_path) for _ in range(2)]
    rows = [[("early", c, i) for i in range(50)] for c in range(2)]
    for client, sent in zip(clients, rows, strict=True):
        assert all(client.send(("log", row)) for row in sent)
        client.close()
    stopping = threading.Event()
    stopping.set()  # stdin closed before the writer's loop ever ran
    writer.serve(stopping)
    writer.histories.close()
    assert sorted(received) == sorted(rows[0] + rows[1])
    assert [r for r in received if r[1] == 0] == rows[0] and [r for r in received if r[1] == 1] == rows[1]
