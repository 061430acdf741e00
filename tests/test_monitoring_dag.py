"""The daily DAG's monitor task emits an event on storefront://drift/<model> (through the drift alias) only for a
drifting champion, and the model's training DAG is scheduled on that asset as well as on its features."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from pipelines.orchestration.airflow_env import airflow_environment, migrate_db
from pipelines.settings import Settings
from tests.test_monitoring import LAST, SHIFT, shifted_world

# Airflow configures itself once per process: these run in their own pytest process (see Makefile).
pytestmark = pytest.mark.airflow


@pytest.fixture
def dagbag(mlflow_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    settings = shifted_world(mlflow_settings, tmp_path)
    env = airflow_environment(settings)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    migrate_db(settings)
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(settings.dags_dir))


def _monitor(dagbag, day: dt.date) -> list:
    from airflow.sdk.execution_time.context import OutletEventAccessors

    events = OutletEventAccessors()
    dagbag.get_dag("daily_features").get_task("monitor").python_callable(ds=day.isoformat(), outlet_events=events)
    return [event for accessor in events.values() for event in accessor.asset_alias_events]


def test_a_drifting_champion_emits_the_asset_its_training_dag_is_scheduled_on(dagbag) -> None:
    assert dagbag.import_errors == {}
    assert _monitor(dagbag, SHIFT - dt.timedelta(days=1)) == []

    (event,) = _monitor(dagbag, LAST)

    assert event.dest_asset_key.uri == "storefront://drift/purchase_intent"
    assert event.extra["ds"] == LAST.isoformat() and event.extra["model"] == "purchase_intent"
    assert "sessions_7d" in event.extra["features"]
    condition = repr(dagbag.get_dag("train_purchase_intent").timetable.asset_condition)
    assert "storefront://drift/purchase_intent" in condition and "storefront://features/user_behavior" in condition
    # Drift triggers training, not promotion: the run still goes through the gate and the approval.
    training = dagbag.get_dag("train_purchase_intent")
    assert {"gate", "approval", "promote"} <= set(training.task_ids)
