"""DAG integrity: every DAG file imports, and each DAG has the expected tasks in the expected order."""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path

import pytest

from pipelines.flows.daily_plan import skipped_families
from pipelines.settings import PROJECT_ROOT, Settings, get_settings
from tests.airflow_support import AirflowWorld, make_world
from tests.test_daily_data_allows import BEHAVIOUR, DAYS, land

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
    order = ["extract", "validate", "features_user_behavior", "materialize", "skew"]
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


def test_training_checks_first_and_follows_the_daily_features(dagbag) -> None:
    """issue 10 item 11: a training DAG runs after the daily features it reads (their Asset), not on a cron, and
    its first task is the readiness check."""
    dag = dagbag.get_dag("train_purchase_intent")
    assert dag.get_task("check").upstream_task_ids == set()
    assert "training_set" in dag.get_task("check").downstream_task_ids
    assert type(dag.timetable).__name__ == "AssetTriggeredTimetable"
    assert "storefront://features/user_behavior" in repr(dag.timetable.asset_condition)


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


def test_daily_features_processes_complete_days(dagbag) -> None:
    """issue 10 item 11: logical date D is the data interval [D, D+1), so the scheduler starts it after D ended."""
    from airflow.serialization.encoders import coerce_to_core_timetable
    from airflow.timetables.base import TimeRestriction

    dag = dagbag.get_dag("daily_features")
    day = dt.datetime(2026, 12, 6, tzinfo=dt.UTC)
    timetable = coerce_to_core_timetable(dag.timetable)
    info = timetable.next_dagrun_info(
        last_automated_data_interval=None, restriction=TimeRestriction(earliest=day, latest=None, catchup=True)
    )
    assert info.logical_date == day
    assert (info.data_interval.start, info.data_interval.end) == (day, day + dt.timedelta(days=1))
    assert info.run_after == day + dt.timedelta(days=1)
    # Materialize runs after skipped families (and fails itself when none ran).
    assert dag.get_task("materialize").trigger_rule == "none_failed"


@pytest.fixture
def ingested_env(world: AirflowWorld, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """The test world's Airflow with an ingested lake and the shipped specs (three feature families)."""
    settings = get_settings(home=tmp_path / ".storefront", data_source="ingested", num_threads=1)
    for key, value in world.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("STOREFRONT_START_DATE", raising=False)
    monkeypatch.setenv("STOREFRONT_DATA_SOURCE", "ingested")
    monkeypatch.setenv("STOREFRONT_MODELS_DIR", str(PROJECT_ROOT / "models"))
    for name in ("lake_uri", "feast_registry", "feast_online_path"):
        monkeypatch.setenv(f"STOREFRONT_{name.upper()}", str(getattr(settings, name)))
    return settings


def _daily_dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(PROJECT_ROOT / "dags"))
    assert bag.import_errors == {}
    return bag.get_dag("daily_features")


def _states(run) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in run.get_task_instances()}


def test_an_ingested_dag_schedules_the_landed_span(ingested_env: Settings) -> None:
    """issue 10 item 1: the start date follows the data, so a backfill over the landed days runs every day."""
    land(ingested_env, BEHAVIOUR)
    dag = _daily_dag()
    assert (dag.start_date.date(), dag.end_date.date()) == (DAYS[0], DAYS[1])
    assert [t.start_date.date() for t in dag.tasks] == [DAYS[0]] * len(dag.tasks)
    # Training runs for a day of the log have tasks to run too (a log of the past against the default start date).
    from airflow.dag_processing.dagbag import DagBag

    training = DagBag(dag_folder=str(PROJECT_ROOT / "dags")).get_dag("train_purchase_intent")
    assert training.start_date.date() == DAYS[0]


def test_a_behaviour_only_day_skips_order_features_and_publishes_its_assets(ingested_env: Settings) -> None:
    """issue 10 item 2: the run succeeds with order_risk skipped (reason in the lake); the family tasks' asset
    events carry the day, for the training DAGs scheduled on them."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    from pipelines.orchestration.runs import logical_datetime

    lake = land(ingested_env, BEHAVIOUR)
    run = _daily_dag().test(logical_date=logical_datetime(DAYS[1]))

    states = _states(run)
    assert states["features_order_risk"] == "skipped"
    assert states["features_user_behavior"] == states["features_ranking"] == states["materialize"] == "success"
    assert str(run.state) == "success"
    assert "no orders partition for 2025-03-02" in skipped_families(lake, DAYS[1])["order_risk"]
    with create_session() as session:
        extras = {
            uri: extra
            for uri, extra in session.query(AssetModel.uri, AssetEvent.extra)
            .join(AssetEvent, AssetEvent.asset_id == AssetModel.id)
            .filter(AssetEvent.source_run_id == run.run_id)
        }
    assert extras == {
        "storefront://features/user_behavior": {"ds": "2025-03-02"},
        "storefront://features/ranking": {"ds": "2025-03-02"},
    }


def test_a_day_without_data_fails_the_run(ingested_env: Settings) -> None:
    """issue 10 items 1 and 2: a day outside the landed span is a failed run, never an empty success."""
    from pipelines.orchestration.runs import logical_datetime

    land(ingested_env, BEHAVIOUR)
    day = DAYS[0] - dt.timedelta(days=1)
    land(ingested_env, ("users",), days=[day])  # widens the span; no family can run on users alone
    run = _daily_dag().test(logical_date=logical_datetime(day))
    states = _states(run)
    assert str(run.state) == "failed"
    assert states["materialize"] == "failed"
    assert {states[f"features_{f}"] for f in ("user_behavior", "order_risk", "ranking")} == {"skipped"}


def test_running_today_is_refused(world: AirflowWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    """issue 10 item 11: `mlctl run daily_features --date <today>` fails at extract; nothing is landed."""
    from pipelines.lake import Lake
    from pipelines.orchestration.runs import logical_datetime

    for key, value in world.env.items():
        monkeypatch.setenv(key, value)
    today = dt.datetime.now(dt.UTC).date()
    run = _daily_dag().test(logical_date=logical_datetime(today))
    states = _states(run)
    assert str(run.state) == "failed" and states["extract"] == "failed"
    assert not Lake(world.settings).exists("events", today)


def test_a_migrated_db_is_recognised_from_its_recorded_heads(
    world: AirflowWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ensure_migrated checks Airflow's migrations once, then only compares the DB's revision with the heads it
    recorded; a DB whose revision no longer matches is checked (and migrated) again. `airflow db migrate` run by
    migrate_db records the heads too, so a DB it migrated is not checked again by the first run."""
    import airflow.utils.db
    from sqlalchemy import text

    from pipelines.orchestration import airflow_env, runs

    def checked(timeout: int) -> None:
        raise AssertionError("the migrations were checked again")

    monkeypatch.setattr(airflow.utils.db, "check_migrations", checked)
    recorded = world.settings.airflow_home / "migrated.json"
    recorded.unlink(missing_ok=True)
    # The world's DB is at Airflow's heads already: `airflow db migrate` has nothing to do, so it is not run again.
    migrated = subprocess.CompletedProcess(["airflow", "db", "migrate"], 0, "", "")
    monkeypatch.setattr(airflow_env, "airflow_cli", lambda *args, **kwargs: migrated)
    airflow_env.migrate_db(world.settings)
    assert recorded.exists()
    runs.ensure_migrated(world.settings)  # from the record alone

    from airflow import settings as airflow_settings

    with airflow_settings.engine.begin() as connection:
        (head,) = connection.execute(text("SELECT version_num FROM alembic_version")).one()
        connection.execute(text("UPDATE alembic_version SET version_num = 'elsewhere'"))
    try:
        with pytest.raises(AssertionError, match="checked again"):
            runs.ensure_migrated(world.settings)
    finally:
        with airflow_settings.engine.begin() as connection:
            connection.execute(text("UPDATE alembic_version SET version_num = :head"), {"head": head})


def test_a_new_homes_db_is_created_without_checking_its_migrations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A home without a metadata DB (a first `mlctl run`): ensure_migrated creates it at once, as checking the
    migrations first would only wait for a DB that is not there; the heads are recorded, the next run reads them."""
    import airflow.utils.db

    from pipelines.orchestration import airflow_env, runs

    def checked(timeout: int) -> None:
        raise AssertionError("the migrations of a DB that does not exist were checked")

    monkeypatch.setattr(airflow.utils.db, "check_migrations", checked)
    # This process's Airflow stays the world's: only the new home's DB is made (by the `airflow` CLI).
    monkeypatch.setattr(runs, "configure_airflow", lambda settings: None)
    settings = get_settings(home=tmp_path / ".storefront")
    assert airflow_env.no_db_yet(settings)
    runs.ensure_migrated(settings)
    assert not airflow_env.no_db_yet(settings) and airflow_env.at_recorded_heads(settings)
    server = settings.model_copy(update={"airflow_db_uri": "postgresql+psycopg2://airflow@127.0.0.1:1/none"})
    assert not airflow_env.no_db_yet(server)  # a server's DB: unknown, so it is checked


def test_the_in_process_execution_api_serves_airflows_newest_version_and_refuses_others(
    world: AirflowWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dag.test's in-process execution API (pipelines/orchestration/execution_api.py): the same routes as Airflow's
    own app has for the newest API version, every request allowed, another version refused with 400."""
    for key, value in world.env.items():
        monkeypatch.setenv(key, value)
    from airflow.api_fastapi.execution_api import app as execution_app
    from airflow.api_fastapi.execution_api.versions import bundle
    from airflow.sdk.api.datamodels._generated import API_VERSION
    from fastapi.testclient import TestClient

    from pipelines.orchestration.execution_api import use_newest_version_app
    from pipelines.orchestration.runs import load_dag

    load_dag(world.settings, "daily_features")  # installs the app, as every local run does
    installed = execution_app.InProcessExecutionAPI
    assert installed.__module__ == "pipelines.orchestration.execution_api"
    use_newest_version_app()  # idempotent
    assert execution_app.InProcessExecutionAPI is installed
    original = installed.__mro__[1]
    assert original.__module__ == execution_app.__name__
    newest = str(bundle.versions[0].value)
    assert newest == API_VERSION, "the task SDK of this Airflow speaks its newest execution API version"

    airflows = original().app  # Cadwyn's app, every version
    airflows._cadwyn_initialize()
    routes = airflows.router.versioned_routers[newest].routes
    expected = {(r.path, m) for r in routes if r.path != "/openapi.json" for m in r.methods}  # no schema route
    ours = execution_app.InProcessExecutionAPI().app
    served = {(r.path, m) for r in ours.routes if hasattr(r, "methods") for m in r.methods}
    assert served == expected

    with TestClient(ours) as client:
        assert client.get("/health/ping", headers={"Airflow-API-Version": newest}).status_code == 200
        # Unauthenticated on purpose: in-process calls come from this process's own task runner.
        missing = client.get("/task-instances/00000000-0000-0000-0000-000000000000/previous-successful-dagrun")
        assert missing.status_code != 401
        older = client.get("/health/ping", headers={"Airflow-API-Version": str(bundle.versions[-1].value)})
        assert older.status_code == 400 and newest in older.json()["detail"]
