"""Append-only audit log of registry decisions, chained by sha256.

Where it lives follows the profile: on the local profile one JSON file per event in the lake's ``audit/<model>/``;
on the stack profile a table (``storefront_audit``) in the registry's own database (the MLflow server's
PostgreSQL), numbered per model, whose trigger refuses UPDATE and DELETE. Each event carries ``prev`` (the sha256
of the event before it, "" for the first) and its own ``sha256`` over its canonical JSON, so an edited, removed or
inserted event breaks the chain and :func:`verify_chain` names it. The chain shows tampering with history; it cannot
stop someone who can rewrite all of it (docs/governance.md: what the log proves and what it does not).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from functools import lru_cache
from typing import Any

import pyarrow.fs as pafs

from pipelines.lake import Lake
from pipelines.settings import Settings

HASH, PREV = "sha256", "prev"
TABLE = "storefront_audit"
APPEND_TRIES = 20  # concurrent appends to one model's log: each retry reads the newer end of the chain


def event_hash(event: dict[str, Any]) -> str:
    """The sha256 of an event's canonical JSON without its own hash (``prev`` included: that is the chain)."""
    body = {k: v for k, v in event.items() if k != HASH}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def _chained(
    events: list[dict[str, Any]], model: str, action: str, version: str, record: dict[str, Any], at: dt.datetime
) -> dict[str, Any]:
    """The next event after ``events``: stamped no earlier than the newest (the log's order is the chain's)."""
    newest = events[-1]["at"] if events else None
    if newest and dt.datetime.fromisoformat(newest) >= at:
        at = dt.datetime.fromisoformat(newest) + dt.timedelta(microseconds=1)
    payload = {"model": model, "action": action, "version": str(version), "at": at.isoformat(), **record}
    payload[PREV] = events[-1].get(HASH, "") if events else ""
    payload[HASH] = event_hash(payload)
    return payload


def write_audit(
    settings: Settings,
    model: str,
    action: str,
    version: str,
    record: dict[str, Any],
    now: dt.datetime | None = None,
) -> str:
    """Append one audit event chained to the newest one; never overwrites. Returns where it was written."""
    at = now or dt.datetime.now(dt.UTC)
    if settings.profile == "stack":
        return _SqlAudit.of(settings.mlflow_backend_store_uri).append(model, action, str(version), record, at)
    return _LakeAudit(Lake(settings)).append(model, action, str(version), record, at)


def read_audit(settings: Settings, model: str) -> list[dict[str, Any]]:
    """Every audit event of ``model``, oldest first."""
    if settings.profile == "stack":
        return _SqlAudit.of(settings.mlflow_backend_store_uri).events(model)
    return _LakeAudit(Lake(settings)).events(model)


def verify_chain(events: list[dict[str, Any]]) -> list[str]:
    """What breaks the chain, one sentence per broken event (empty when intact)."""
    problems, prev = [], ""
    for event in events:
        where = f"audit event {event.get('at')} {event.get('action')} v{event.get('version')}"
        if event.get(HASH) != event_hash(event):
            problems.append(f"{where} was edited (its sha256 no longer matches its content)")
        elif event.get(PREV) != prev:
            problems.append(f"{where} does not follow the event before it (one was removed, inserted or edited)")
        prev = event.get(HASH, "")
    return problems


class _LakeAudit:
    """One JSON file per event under ``audit/<model>/``, named by its stamp (file order is chain order)."""

    def __init__(self, lake: Lake) -> None:
        self.lake = lake

    @staticmethod
    def key(model: str, action: str, version: str, at: dt.datetime) -> str:
        stamp = at.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        return f"audit/{model}/{stamp}-{action}-v{version}.json"

    def events(self, model: str) -> list[dict[str, Any]]:
        lake = self.lake
        selector = pafs.FileSelector(f"{lake.root}/audit/{model}", allow_not_found=True)
        names = sorted(
            info.base_name
            for info in lake.fs.get_file_info(selector)
            if info.type == pafs.FileType.File and info.base_name.endswith(".json")
        )
        return [doc for name in names if (doc := lake.read_json(f"audit/{model}/{name}")) is not None]

    def append(self, model: str, action: str, version: str, record: dict[str, Any], at: dt.datetime) -> str:
        events = self.events(model)
        payload = _chained(events, model, action, version, record, at)
        while self.lake.read_json(self.key(model, action, version, dt.datetime.fromisoformat(payload["at"]))):
            later = dt.datetime.fromisoformat(payload["at"]) + dt.timedelta(microseconds=1)  # a clash: 1 µs later
            payload = _chained(events, model, action, version, record, later)
        return self.lake.write_json(self.key(model, action, version, dt.datetime.fromisoformat(payload["at"])), payload)


_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    model TEXT NOT NULL,
    seq INTEGER NOT NULL,
    at TEXT NOT NULL,
    action TEXT NOT NULL,
    version TEXT NOT NULL,
    event TEXT NOT NULL,
    PRIMARY KEY (model, seq)
);
CREATE OR REPLACE FUNCTION {TABLE}_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION '{TABLE} is append-only: rows are never updated or deleted';
END
$$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS {TABLE}_append_only ON {TABLE};
CREATE TRIGGER {TABLE}_append_only BEFORE UPDATE OR DELETE ON {TABLE}
    FOR EACH ROW EXECUTE FUNCTION {TABLE}_append_only();
"""


class _SqlAudit:
    """The ``storefront_audit`` table in the registry's database: one row per event, ``seq`` 1, 2, ... per model
    (the primary key makes two concurrent appends after the same event collide; the loser reads and retries)."""

    def __init__(self, url: str) -> None:
        import sqlalchemy

        if not url.startswith("postgresql"):
            raise ValueError(
                "the stack profile keeps its audit log in the registry's PostgreSQL database: "
                f"STOREFRONT_MLFLOW_BACKEND_STORE_URI must be a postgresql URL, not {url.split(':')[0]!r}"
            )
        self.engine = sqlalchemy.create_engine(url, pool_pre_ping=True, pool_size=1, max_overflow=2)
        self.where = sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
        with self.engine.begin() as conn:
            # Two processes creating the schema at once: PostgreSQL serializes them on this advisory lock.
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(hashtext(%(name)s))", {"name": TABLE})
            conn.exec_driver_sql(_SCHEMA)

    @staticmethod
    @lru_cache(maxsize=4)
    def of(url: str) -> _SqlAudit:
        return _SqlAudit(url)

    def events(self, model: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.exec_driver_sql(
                f"SELECT event FROM {TABLE} WHERE model = %(model)s ORDER BY seq", {"model": model}
            ).all()
        return [json.loads(row[0]) for row in rows]

    def append(self, model: str, action: str, version: str, record: dict[str, Any], at: dt.datetime) -> str:
        from sqlalchemy.exc import IntegrityError

        for _ in range(APPEND_TRIES):
            events = self.events(model)
            payload = _chained(events, model, action, version, record, at)
            seq = len(events) + 1
            try:
                with self.engine.begin() as conn:
                    conn.exec_driver_sql(
                        f"INSERT INTO {TABLE} (model, seq, at, action, version, event) "
                        "VALUES (%(model)s, %(seq)s, %(at)s, %(action)s, %(version)s, %(event)s)",
                        {
                            "model": model,
                            "seq": seq,
                            "at": payload["at"],
                            "action": action,
                            "version": version,
                            "event": json.dumps(payload, sort_keys=True, default=str),
                        },
                    )
            except IntegrityError:
                continue  # another process appended event ``seq`` first: chain after it
            return f"{self.where}#{TABLE}/{model}/{seq}"
        raise RuntimeError(f"{self.where}: {TABLE} for {model!r} kept moving; {APPEND_TRIES} appends collided")
