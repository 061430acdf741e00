"""Shared fixtures: every test gets its own ``.storefront`` home under a temporary directory."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines.lake import Lake
from pipelines.settings import PROJECT_ROOT, Settings, get_settings
from pipelines.specs import BaselineSpec, ModelSpec, WindowSpec, load_spec

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# A developer's own .env (e.g. from `mlctl stack init` in the repository root) must not reach the tests.
Settings.model_config["env_file"] = None


def service_unavailable(name: str, reason: str) -> None:
    """Skip a test that needs a service, except on CI where a missing service is a failure."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{name} is required on CI but unavailable: {reason}")
    pytest.skip(f"{name} unavailable: {reason}")


MLFLOW_IDENTITY = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


@pytest.fixture(scope="module", autouse=True)
def _no_mlflow_identity_between_modules() -> Iterator[None]:
    """``registry.connect`` puts the stack's MLflow identity in this process's environment (MLflow reads it from
    there only), as each real process does once. A module's stack or server must not start with the identity an
    earlier module's stack left there (Settings read it): cleared before each module's fixtures, and after."""
    for key in MLFLOW_IDENTITY:
        os.environ.pop(key, None)
    yield
    for key in MLFLOW_IDENTITY:
        os.environ.pop(key, None)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never inherit a profile from the developer's shell or from another test's Airflow env."""
    for key in list(os.environ):
        if key.startswith("STOREFRONT_"):
            monkeypatch.delenv(key)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return get_settings(home=tmp_path / ".storefront", num_threads=1)


@pytest.fixture
def lake(settings: Settings) -> Lake:
    return Lake(settings)


@pytest.fixture(scope="session")
def migrated_mlflow_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated, empty SQLite MLflow store: creating one costs seconds, copying it milliseconds."""
    from pipelines.registry.registry import connect

    template = get_settings(home=tmp_path_factory.mktemp("mlflow-template"), num_threads=1)
    connect(template).search_experiments()
    return Path(template.mlflow_tracking_uri.removeprefix("sqlite:///"))


@pytest.fixture
def mlflow_settings(settings: Settings, migrated_mlflow_db: Path) -> Settings:
    """``settings`` whose MLflow store already exists (a copy of the migrated template)."""
    db = Path(settings.mlflow_tracking_uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(migrated_mlflow_db, db)
    return settings


def quick_spec(rounds: int, early_stopping: int, train: int, validation: int, test: int) -> ModelSpec:
    """The shipped purchase_intent spec with few boosting rounds and short windows, for small test data; its
    baseline is a logistic regression on the strongest synthetic signal alone (beatable, not trivial)."""
    base = load_spec(PROJECT_ROOT / "models" / "purchase_intent.yaml")
    params = base.params | {"num_boost_round": rounds, "early_stopping_rounds": early_stopping, "min_data_in_leaf": 20}
    windows = WindowSpec(train_days=train, validation_days=validation, test_days=test)
    baseline = BaselineSpec(features=["signal_1"])
    return base.model_copy(update={"params": params, "windows": windows, "baseline": baseline})


def behaviour_only_models(root: Path) -> Path:
    """A models dir with purchase_intent alone: what a behaviour log (no orders) can feed."""
    models = root / "models"
    models.mkdir(parents=True, exist_ok=True)
    shutil.copy(PROJECT_ROOT / "models" / "purchase_intent.yaml", models)
    return models
