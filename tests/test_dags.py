"""DAG integrity: every DAG file imports, and each DAG has the expected tasks in the expected order."""

from __future__ import annotations

import pytest

from tests.airflow_support import AirflowWorld, make_world

# Airflow configures itself once per process: these run in their own pytest process (see Makefile).
pytestmark = pytest.mark.airflow


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> AirflowWorld:
    return make_world(tmp_path_factory.mktemp("dags"))


@pytest.fixture
def dagbag(world: AirflowWorld, monkeypatch: pytest.MonkeyPatch):
    for key, value in world.env.items():
        monkeypatch.setenv(key, value)
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(world.settings.dags_dir))


def test_every_dag_imports_without_errors(dagbag) -> None:
    assert dagbag.import_errors == {}
    assert {"daily_features", "train_purchase_intent", "train_purchase_intent_strict"} <= set(dagbag.dag_ids)


def test_daily_features_chain(dagbag) -> None:
    dag = dagbag.get_dag("daily_features")
    assert dag.catchup is True
    # The test world's specs are all user models: one feature family.
    order = ["extract", "validate", "features_user_behavior", "materialize"]
    for upstream, downstream in zip(order, order[1:], strict=False):
        assert downstream in dag.get_task(upstream).downstream_task_ids
    assert [o.uri for o in dag.get_task("features_user_behavior").outlets] == ["storefront://features/user_behavior"]


def test_training_chain_has_gate_approval_and_promotion(dagbag) -> None:
    dag = dagbag.get_dag("train_purchase_intent")
    edges = [
        ("training_set", "train"),
        ("train", "evaluate"),
        ("evaluate", "gate"),
        ("gate", "approval"),
        ("approval", "promote"),
        ("promote", "record_review"),
    ]
    for upstream, downstream in edges:
        assert downstream in dag.get_task(upstream).downstream_task_ids, (upstream, downstream)
    approval = dag.get_task("approval")
    from airflow.providers.standard.operators.hitl import ApprovalOperator

    assert isinstance(approval, ApprovalOperator)
    assert approval.defaults == ["Reject"], "a timeout must never approve"
    assert [u["id"] for u in approval.assigned_users] == ["alice", "bob"]


def test_a_malformed_spec_fails_at_dag_parse_time_naming_file_and_key(
    world: AirflowWorld, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    models = tmp_path / "models"
    models.mkdir()
    for spec in world.settings.models_dir.glob("*.yaml"):
        (models / spec.name).write_text(spec.read_text())
    bad = models / "purchase_intent.yaml"
    bad.write_text(bad.read_text().replace("objective: binary", "objective: multiclass"))
    for key, value in world.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("STOREFRONT_MODELS_DIR", str(models))
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(world.settings.dags_dir))

    errors = "\n".join(bag.import_errors.values())
    assert f"{bad}: key 'objective': Input should be 'binary' or 'lambdarank'" in errors
    # Feature production for the other models goes on.
    assert "daily_features" in bag.dag_ids
