"""Append-only audit log of registry decisions: one JSON file per event in the lake's ``audit/<model>/``.

Each event carries ``prev`` (the sha256 of the event before it, "" for the first) and its own ``sha256`` over
its canonical JSON, so an edited, removed or inserted event breaks the chain and :func:`verify_chain` names it.
The chain shows tampering with history; it cannot stop someone who can write the lake from rewriting all of it
(docs/governance.md: what the log proves and what it does not).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Any

import pyarrow.fs as pafs

from pipelines.lake import Lake

HASH, PREV = "sha256", "prev"


def audit_key(model: str, action: str, version: str, at: dt.datetime) -> str:
    stamp = at.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    return f"audit/{model}/{stamp}-{action}-v{version}.json"


def event_hash(event: dict[str, Any]) -> str:
    """The sha256 of an event's canonical JSON without its own hash (``prev`` included: that is the chain)."""
    body = {k: v for k, v in event.items() if k != HASH}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def write_audit(
    lake: Lake, model: str, action: str, version: str, record: dict[str, Any], now: dt.datetime | None = None
) -> str:
    """Append one audit event chained to the newest one; never overwrites (a clash moves the stamp by 1 µs)."""
    at = now or dt.datetime.now(dt.UTC)
    events = read_audit(lake, model)
    newest = events[-1]["at"] if events else None
    if newest and dt.datetime.fromisoformat(newest) >= at:  # keep the file order the chain order
        at = dt.datetime.fromisoformat(newest) + dt.timedelta(microseconds=1)
    while lake.read_json(audit_key(model, action, version, at)) is not None:
        at += dt.timedelta(microseconds=1)
    payload = {"model": model, "action": action, "version": str(version), "at": at.isoformat(), **record}
    payload[PREV] = events[-1].get(HASH, "") if events else ""
    payload[HASH] = event_hash(payload)
    return lake.write_json(audit_key(model, action, version, at), payload)


def read_audit(lake: Lake, model: str) -> list[dict[str, Any]]:
    """Every audit event of ``model``, oldest first."""
    selector = pafs.FileSelector(f"{lake.root}/audit/{model}", allow_not_found=True)
    names = sorted(
        info.base_name
        for info in lake.fs.get_file_info(selector)
        if info.type == pafs.FileType.File and info.base_name.endswith(".json")
    )
    return [doc for name in names if (doc := lake.read_json(f"audit/{model}/{name}")) is not None]


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
