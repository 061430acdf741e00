"""The whole daily chain through Airflow on a tiny world: backfill, rerun, validation stop, gate, approval.

Runs go through ``mlctl`` in child processes, exactly as an engineer would start them; approvals go through
Airflow's REST API (served in-process on the local profile) as a reviewer's would.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pandas as pd
import pytest

from pipelines.lake import Lake
from pipelines.orchestration.airflow_client import AirflowClient
from pipelines.registry.registry import get_champion, get_version
from tests.airflow_support import START, AirflowWorld, make_world

# Airflow configures itself once per process: these run in their own pytest process (see Makefile).
pytestmark = pytest.mark.airflow

DAYS = 11  # the 8 as-of days and 2-day labels of tests/airflow_support.small_spec, and the run's own day
END = START + dt.timedelta(days=DAYS - 1)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> AirflowWorld:
    world = make_world(tmp_path_factory.mktemp("e2e"))
    result = world.mlctl("backfill", "--dag", "daily_features", "--from", str(START), "--to", str(END))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{DAYS} day(s) to run, 2 days at a time" in result.stdout, result.stdout
    return world


@pytest.fixture
def airflow_env(world: AirflowWorld, monkeypatch: pytest.MonkeyPatch) -> AirflowWorld:
    for key, value in world.env.items():
        monkeypatch.setenv(key, value)
    return world


def _digest(lake: Lake, table: str, day: dt.date) -> str:
    frame = lake.read(table, day)
    return hashlib.sha256(pd.util.hash_pandas_object(frame, index=False).values.tobytes()).hexdigest()


def as_reviewer(world: AirflowWorld, reviewer: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`mlctl ARGS` as ``reviewer``, logged in with their own password in their own config dir (as they would)."""
    env = {**os.environ, **world.env, "XDG_CONFIG_HOME": str(world.settings.home / "config" / reviewer)}
    mlctl = str(Path(sys.executable).with_name("mlctl"))
    if not (Path(env["XDG_CONFIG_HOME"]) / "storefront" / "identity.json").exists():
        assert world.settings.airflow_home is not None
        password = json.loads((world.settings.airflow_home / "passwords.json").read_text())[reviewer]
        login = [mlctl, "login", "--user", reviewer, "--password-stdin"]
        done = subprocess.run(login, input=password + "\n", env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
    return subprocess.run([mlctl, *args], env=env, capture_output=True, text=True, timeout=600)


def _train(
    world: AirflowWorld, model: str, day: dt.date, answer: str | None, reviewer: str = "alice", expect: int = 0
) -> str | None:
    """Run a training DAG; answer its approval request (if one comes) through `mlctl approve|reject`.

    Returns the version the request was about (None when no approval was requested). ``expect``: the exit code
    of `mlctl run` (2 when the gate rejects).
    """
    log = world.settings.home / f"train_{model}_{day}.log"
    proc = world.popen_mlctl("run", f"train_{model}", "--date", str(day), log=log)
    client = AirflowClient(world.settings)  # the engineer account watches for the request
    deadline = time.time() + 600
    pending, version = [], None
    while proc.poll() is None and time.time() < deadline:
        pending = client.pending_approvals(dag_id=f"train_{model}")
        if pending:
            # Another DAG's requests are not this one's (the DAG is a path parameter of Airflow's route).
            assert [p.dag_id for p in pending] == [f"train_{model}"]
            assert client.pending_approvals(dag_id="train_no_such_model") == []
            version = pending[0].field("version")
            assert answer is not None, "an approval was requested although the gate should have stopped it"
            result = as_reviewer(world, reviewer, answer, model, version, "--comment", f"{answer} in e2e")
            assert result.returncode == 0, result.stdout + result.stderr
            break
        time.sleep(1)
    assert proc.wait(timeout=600) == expect, log.read_text()[-5000:]
    if answer is not None:
        assert pending, f"no approval was requested; log:\n{log.read_text()[-5000:]}"
    return version


def test_backfill_landed_every_day(world: AirflowWorld) -> None:
    lake = Lake(world.settings)
    days = [START + dt.timedelta(days=i) for i in range(DAYS)]
    assert lake.partitions("events") == days
    assert lake.partitions("features/user_behavior") == days
    status = json.loads(world.mlctl("status", "--json").stdout)
    runs = status["dags"]["daily_features"]
    assert runs and all(r["state"] == "success" for r in runs)


def _online_rows(settings) -> dict[str, list[tuple]]:
    """Every row of the SQLite online store, per table."""
    with closing(sqlite3.connect(settings.feast_online_path)) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {t: sorted(db.execute(f'SELECT entity_key, feature_name, value, event_ts FROM "{t}"')) for t in tables}


def test_days_side_by_side_give_what_days_one_after_another_give(world: AirflowWorld, tmp_path: Path) -> None:
    """The world's backfill ran two days at a time (local_lanes=2); one day after another gives the same lake,
    online store and materialization windows."""
    from feature_repo.definitions import definitions
    from feature_repo.parts import lake_table
    from pipelines.data import schemas
    from pipelines.features.store import feature_store

    assert world.settings.local_lanes == 2
    serial = make_world(tmp_path, lanes=1)
    result = serial.mlctl("backfill", "--dag", "daily_features", "--from", str(START), "--to", str(END))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{DAYS} day(s) to run, one day at a time" in result.stdout, result.stdout
    lakes = Lake(world.settings), Lake(serial.settings)
    tables = ["events", "orders", "users", *sorted({lake_table(v) for v in definitions(serial.settings).views})]
    assert "features/user_behavior" in tables and lakes[1].partitions("features/user_behavior")
    for table in tables:
        assert lakes[0].partitions(table) == lakes[1].partitions(table), table
        for day in lakes[1].partitions(table):
            assert _digest(lakes[0], table, day) == _digest(lakes[1], table, day), (table, day)
    online = _online_rows(world.settings), _online_rows(serial.settings)
    assert online[0] == online[1] and sum(map(len, online[1].values())) > 0
    newest = [
        {v.name: max(end for _, end in v.materialization_intervals or [(None, None)]) for v in views}
        for views in (feature_store(s).list_feature_views() for s in (world.settings, serial.settings))
    ]
    assert newest[0] == newest[1] and newest[1]["user_behavior"] == schemas.as_of(END, lakes[1].day_zone)


def test_rerunning_a_day_changes_nothing(world: AirflowWorld) -> None:
    lake = Lake(world.settings)
    day = START + dt.timedelta(days=5)
    before = {t: _digest(lake, t, day) for t in ("events", "features/user_behavior")}
    result = world.mlctl("run", "daily_features", "--date", str(day))
    assert result.returncode == 0, result.stdout + result.stderr
    assert {t: _digest(lake, t, day) for t in before} == before
    assert lake.partitions("events") == [START + dt.timedelta(days=i) for i in range(DAYS)]


def test_failing_validation_quarantines_and_stops_the_chain(airflow_env: AirflowWorld) -> None:
    from pipelines.orchestration.runs import load_dag, logical_datetime

    lake = Lake(airflow_env.settings)
    day = END + dt.timedelta(days=1)
    bad = lake.read("events", END).head(50).copy()
    bad.loc[:5, "event_type"] = "teleport"
    bad["event_time"] = bad["event_time"] + pd.Timedelta(days=1)
    lake.write("events", day, bad)
    dag = load_dag(airflow_env.settings, "daily_features")
    run = dag.test(logical_date=logical_datetime(day), mark_success_pattern="extract")
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states["validate"] == "failed"
    assert states["features_user_behavior"] == "upstream_failed" and states["materialize"] == "upstream_failed"
    assert not lake.exists("events", day) and lake.is_quarantined("events", day)
    assert not lake.exists("features/user_behavior", day)
    report = lake.read_json(f"quarantine/events/ds={day}/report.json")
    assert "teleport" in json.dumps(report)


def test_gate_failure_never_moves_the_alias(world: AirflowWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    """issue 10 item 4: `mlctl run` prints the gate's verdict with the failed checks and exits 2."""
    monkeypatch.setenv("COLUMNS", "400")
    _train(world, "purchase_intent_strict", END, answer=None, expect=2)
    assert get_champion(world.settings, "purchase_intent_strict") is None
    printed = (world.settings.home / f"train_purchase_intent_strict_{END}.log").read_text()
    assert "gate rejected version 1: roc_auc" in printed and "is below the floor 0.999" in printed
    assert "Traceback" not in printed and "logs/train_purchase_intent_strict.log" in printed


def test_training_on_a_short_history_is_skipped_with_the_reason(
    world: AirflowWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    """issue 10 items 3 and 11: the training DAG's first task checks the history and skips the run, saying why."""
    monkeypatch.setenv("COLUMNS", "400")
    result = world.mlctl("run", "train_purchase_intent_strict", "--date", str(START + dt.timedelta(days=3)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "skipped: purchase_intent_strict cannot train for" in result.stdout
    assert any(what in result.stdout for what in ("backfill", "windows", "land a longer log"))


def test_a_failed_task_prints_its_error_and_the_log_path(world: AirflowWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    """issue 10 item 4: a failed run names the failing task and its error line, prints the log path, exits 1."""
    monkeypatch.setenv("COLUMNS", "400")
    lake = Lake(world.settings)
    day = START + dt.timedelta(days=2)
    partition = Path(lake.partition_uri("features/user_behavior", day))
    kept = partition.read_bytes()
    try:
        partition.write_bytes(b"not parquet")
        result = world.mlctl("run", "train_purchase_intent_strict", "--date", str(END))
    finally:
        partition.write_bytes(kept)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "task training_set failed:" in result.stdout
    assert "Parquet" in result.stdout or "parquet" in result.stdout
    assert "Traceback" not in result.stdout and "[DAG TEST]" not in result.stdout
    assert "log: " in result.stdout and "logs/train_purchase_intent_strict.log" in result.stdout


def test_approved_candidate_becomes_champion_and_is_served(airflow_env: AirflowWorld) -> None:
    world = airflow_env
    _train(world, "purchase_intent", END, answer="approve")
    champion = get_champion(world.settings, "purchase_intent")
    assert champion is not None
    assert champion.approval["by"] == "alice" and champion.approval["comment"] == "approve in e2e"
    status = json.loads(world.mlctl("status", "--json").stdout)
    assert status["models"]["purchase_intent"]["champion"]["version"] == champion.version

    from fastapi.testclient import TestClient

    from pipelines.serving.app import create_app

    with TestClient(create_app(world.settings)) as http:
        resp = http.post("/v1/models/purchase_intent/predict", json={"user_ids": [1, 2, 3]})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["version"] == champion.version
    assert [p["user_id"] for p in body["predictions"]] == [1, 2, 3]
    assert all(0.0 <= p["score"] <= 1.0 for p in body["predictions"])


def test_rejected_candidate_never_moves_the_alias(world: AirflowWorld) -> None:
    before = get_champion(world.settings, "purchase_intent")
    assert before is not None, "runs after the approval test"
    rejected = _train(world, "purchase_intent", END - dt.timedelta(days=1), answer="reject", reviewer="bob")
    assert rejected is not None and rejected != before.version
    after = get_champion(world.settings, "purchase_intent")
    assert after.version == before.version
    tags = get_version(world.settings, "purchase_intent", rejected).tags
    assert tags["approval.status"] == "rejected" and tags["approval.by"] == "bob"
    assert tags["approval.comment"] == "reject in e2e"


def test_a_rejected_version_is_not_asked_again_on_the_same_data(world: AirflowWorld) -> None:
    """Finding 2: retraining on the same data reused bob's rejected version, asked again and promoted it."""
    before = get_champion(world.settings, "purchase_intent")
    rejected = get_version(world.settings, "purchase_intent", str(int(before.version) + 1))
    assert rejected.tags["approval.status"] == "rejected", "runs after the rejection test"
    again = _train(world, "purchase_intent", END - dt.timedelta(days=1), answer=None)
    assert again is None
    assert get_champion(world.settings, "purchase_intent").version == before.version
    outcome = Lake(world.settings).read_json(f"runs/train_purchase_intent/ds={END - dt.timedelta(days=1)}/outcome.json")
    assert outcome["outcome"] == "skipped" and "rejected by bob" in outcome["reason"]
    assert "mlctl reopen purchase_intent" in outcome["reason"]


def test_the_trainer_cannot_approve_and_as_only_confirms_the_login(world: AirflowWorld) -> None:
    """Finding 1: `--as alice` acted as alice without her password; the trainer's approval was never refused."""
    champion = get_champion(world.settings, "purchase_intent")
    assert champion.tags["storefront.trained_by"] == world.settings.airflow_username  # local `mlctl run`
    mismatch = as_reviewer(world, "alice", "approve", "purchase_intent", champion.version, "--as", "bob")
    assert mismatch.returncode == 1 and "logged in as 'alice'" in mismatch.stdout
    mlctl = str(Path(sys.executable).with_name("mlctl"))
    empty = {**os.environ, **world.env, "XDG_CONFIG_HOME": str(world.settings.home / "config" / "nobody")}
    approve = [mlctl, "approve", "purchase_intent", champion.version, "--as", "alice"]
    nobody = subprocess.run(approve, env=empty, capture_output=True, text=True)
    assert nobody.returncode == 1 and "not logged in" in nobody.stdout
    forged = world.settings.home / "config" / "mallory" / "storefront"
    forged.mkdir(parents=True)
    (forged / "identity.json").write_text(
        json.dumps(
            {
                "user": "alice",
                "token": "e30.eyJzdWIiOiJhbGljZSJ9.x",
                "expires_at": "2099-01-01T00:00:00+00:00",
                "api": f"in-process:{world.settings.airflow_home}",
            }
        )
    )
    (forged / "identity.json").chmod(0o600)
    env = {**os.environ, **world.env, "XDG_CONFIG_HOME": str(forged.parent)}
    mlctl = str(Path(sys.executable).with_name("mlctl"))
    rolled = subprocess.run(
        [mlctl, "rollback", "purchase_intent", "--comment", "x"], env=env, capture_output=True, text=True
    )
    assert rolled.returncode == 1 and "Airflow did not accept your login" in rolled.stdout
    history = world.mlctl("history", "purchase_intent")
    assert history.returncode == 0 and "promote" in history.stdout and "reject" in history.stdout
