"""On the stack profile the audit log is a table in the registry's PostgreSQL database (issue 13): appends chain,
the database refuses edits and deletions, an edit made anyway (the trigger dropped by its owner) is named by the
chain check, and concurrent appends to one model's log all land in one unbroken chain."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pipelines.registry.audit import TABLE, read_audit, verify_chain, write_audit
from pipelines.settings import Settings
from tests.conftest import service_unavailable

pytestmark = pytest.mark.integration
SERVER = "postgresql+psycopg2://postgres@127.0.0.1:5432"


def _admin(dbname: str = "postgres"):
    import psycopg2

    try:
        connection = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname=dbname, connect_timeout=3)
    except psycopg2.OperationalError as exc:
        service_unavailable("PostgreSQL", str(exc).strip())
    connection.autocommit = True
    return connection


@pytest.fixture
def stack_settings(tmp_path: Path) -> Iterator[Settings]:
    """Stack-profile settings whose registry database is a fresh one of this test's own (dropped afterwards)."""
    name = f"storefront_audit_test_{uuid.uuid4().hex[:10]}"
    admin = _admin()
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    try:
        yield Settings(profile="stack", home=tmp_path, mlflow_backend_store_uri=f"{SERVER}/{name}")
    finally:
        from pipelines.registry import audit

        audit._SqlAudit.of.cache_clear()  # its pooled connections would keep the database in use
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def test_events_chain_in_the_registry_database_and_edits_are_refused(stack_settings: Settings) -> None:
    where = write_audit(stack_settings, "purchase_intent", "promote", "1", {"by": "alice", "comment": "ok"})
    write_audit(stack_settings, "purchase_intent", "promote", "2", {"by": "bob", "comment": "better"})
    write_audit(stack_settings, "purchase_intent", "rollback", "1", {"by": "alice", "comment": "v2 misbehaves"})
    write_audit(stack_settings, "order_fraud", "reject", "1", {"by": "carol", "comment": "no"})

    assert where.endswith(f"#{TABLE}/purchase_intent/1") and "postgres@127.0.0.1" in where
    events = read_audit(stack_settings, "purchase_intent")
    assert [(e["action"], e["version"], e["by"]) for e in events] == [
        ("promote", "1", "alice"),
        ("promote", "2", "bob"),
        ("rollback", "1", "alice"),
    ]
    assert verify_chain(events) == [] and events[0]["prev"] == "" and events[1]["prev"] == events[0]["sha256"]
    assert [e["action"] for e in read_audit(stack_settings, "order_fraud")] == ["reject"]
    assert not (stack_settings.home / "lake").exists()  # nothing went to the lake

    import psycopg2

    database = stack_settings.mlflow_backend_store_uri.rsplit("/", 1)[1]
    db = _admin(database)
    try:
        for statement in (
            f"UPDATE {TABLE} SET event = replace(event, 'alice', 'mallory') WHERE seq = 1",
            f"DELETE FROM {TABLE} WHERE model = 'purchase_intent' AND seq = 2",
        ):
            with pytest.raises(psycopg2.Error, match="append-only"):
                db.cursor().execute(statement)
        # The table's owner can drop the trigger and edit a row: the chain names the edited event.
        db.cursor().execute(f"DROP TRIGGER {TABLE}_append_only ON {TABLE}")
        db.cursor().execute(f"UPDATE {TABLE} SET event = replace(event, 'bob', 'mallory') WHERE seq = 2")
    finally:
        db.close()
    problems = verify_chain(read_audit(stack_settings, "purchase_intent"))
    assert len(problems) == 1 and "promote v2 was edited" in problems[0], problems


def test_concurrent_appends_all_land_in_one_chain(stack_settings: Settings) -> None:
    def append(i: int) -> str:
        return write_audit(stack_settings, "purchase_intent", "ask", str(i), {"by": f"trainer-{i}"})

    with ThreadPoolExecutor(8) as pool:
        places = list(pool.map(append, range(24)))

    events = read_audit(stack_settings, "purchase_intent")
    assert len(set(places)) == 24 and len(events) == 24
    assert sorted(int(e["version"]) for e in events) == list(range(24))
    assert verify_chain(events) == []
