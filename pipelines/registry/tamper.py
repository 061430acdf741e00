"""Tamper checks: which alias of a model disagrees with its audit log (a pure read; nothing is changed).

An alias moved by hand in MLflow (``set_registered_model_alias``) or deleted has no matching audit event; an
edited audit event breaks the log's chain. :func:`verify_aliases` names each with the command that fixes it;
`mlctl status` prints them in red and the daily DAG's `skew` step flags them; serving loads a version only when
:func:`serving_refusal` finds nothing wrong with it (docs/governance.md).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from pipelines.evaluation.gate import TAG_STATUS as GATE_STATUS
from pipelines.registry.approval import TAG_BY as APPROVAL_BY
from pipelines.registry.approval import TAG_STATUS as APPROVAL_STATUS
from pipelines.registry.audit import read_audit, verify_chain, write_audit
from pipelines.registry.registry import CHAMPION, aliases, delete_alias, get_version, set_alias
from pipelines.registry.rollouts import ALIAS_PREFIX
from pipelines.settings import Settings
from pipelines.specs import ModelSpec

# Audit actions after which the event's version holds ``champion`` (``champion_removed``: it holds none).
CHAMPION_MOVES = frozenset({"promote", "rollback", "restore"})
ROLLOUT_END = frozenset({"rollout-stop", "rollout-promote"})


@dataclass(frozen=True)
class Finding:
    """One disagreement between the registry and the audit log."""

    model: str
    alias: str
    message: str
    fix: str


def audited_champion(events: list[dict]) -> str | None:
    """The version the audit log says holds ``champion`` (None: never promoted, or removed by a restore)."""
    moves = [e for e in events if e.get("action") in CHAMPION_MOVES]
    if not moves or moves[-1].get("champion_removed"):
        return None
    return str(moves[-1]["version"])


def audited_rollouts(events: list[dict]) -> dict[str, str]:
    """Rollout alias -> version of the rollouts the audit log started and did not end."""
    active: dict[str, str] = {}
    for event in events:
        alias = f"{ALIAS_PREFIX}{event.get('rollout')}"
        if event.get("action") == "rollout-start":
            active[alias] = str(event["version"])
        elif event.get("action") in ROLLOUT_END:
            active.pop(alias, None)
        elif event.get("action") == "restore":
            for gone in event.get("ended_rollouts") or []:
                active.pop(gone, None)
    return active


def verify_aliases(settings: Settings, spec: ModelSpec) -> list[Finding]:
    """Every alias of ``spec``'s model that the audit log does not account for, and any break in the log."""
    model = spec.name
    events = read_audit(settings, model)
    restore = f"mlctl restore {model} --comment '...'"
    findings = [
        Finding(model, "(audit log)", problem, f"restore audit/{model}/ in the lake from its backup, then {restore}")
        for problem in verify_chain(events)
    ]
    actual = aliases(settings, model)
    expected = audited_champion(events)
    held = actual.get(CHAMPION)
    if held != expected:
        if held is None:
            message = f"champion alias was deleted; the audit log's last move put v{expected} there"
        elif expected is None:
            message = f"champion is on v{held}, but the audit log holds no promotion of any version"
        else:
            message = f"champion is on v{held}, but the audit log's last move put v{expected} there"
        findings.append(Finding(model, CHAMPION, f"{message} (moved outside mlctl)", restore))
    started = audited_rollouts(events)
    for alias, version in actual.items():
        if alias.startswith(ALIAS_PREFIX) and started.get(alias) != version:
            message = f"{alias} is on v{version} with no audited rollout start of that version"
            findings.append(Finding(model, alias, message, restore))
    for alias, version in started.items():
        if alias not in actual:
            message = f"{alias} (v{version}) was deleted without an audited end of the rollout"
            findings.append(Finding(model, alias, message, restore))
    return findings


def serving_refusal(settings: Settings, model: str, alias: str, version: str | None) -> str | None:
    """Why serving must not load ``version`` under ``alias`` (``champion`` or a rollout's), or, with ``version``
    None, why a missing alias is wrong; None when the version may be served. Serving asks only when the alias
    points somewhere new (or keeps pointing at a version it refused), so reading the log and the version's tags
    costs nothing on the request path."""
    events = read_audit(settings, model)
    restore = f"fix: mlctl restore {model} --comment '...'"
    broken = verify_chain(events)
    if broken:
        return f"the audit log of {model} is broken ({broken[0]}); restore audit/{model}/ from its backup"
    if alias == CHAMPION:
        expected = audited_champion(events)
        if version is None:
            if expected is None:
                return None
            return (
                f"the champion alias was deleted outside mlctl; the audit log's last move put v{expected} there; "
                + restore
            )
        if version != expected:
            where = " holds no promotion" if expected is None else f"'s last move put v{expected} there"
            return f"champion is on v{version}, but the audit log{where} (moved outside mlctl); {restore}"
    elif version is None:
        return None  # a rollout's alias goes when the rollout ends; verify_aliases flags one deleted by hand
    elif audited_rollouts(events).get(alias) != version:
        return f"{alias} is on v{version} with no audited rollout start of that version; {restore}"
    tags = get_version(settings, model, version).tags
    if tags.get(GATE_STATUS) != "passed":
        return f"v{version}'s gate did not pass (gate.status {tags.get(GATE_STATUS)!r}); it is never served"
    if alias != CHAMPION:
        return None
    promotion = next(
        (e for e in reversed(events) if e.get("action") == "promote" and str(e.get("version")) == version), None
    )
    if promotion is None:
        return f"the audit log holds no promotion of v{version} (an approved promotion puts a champion there)"
    approvers = {a.get(APPROVAL_BY) for a in promotion.get("approvals") or []} | {promotion.get("by")}
    if tags.get(APPROVAL_STATUS) != "approved" or tags.get(APPROVAL_BY) not in approvers:
        return (
            f"v{version}'s approval tags ({tags.get(APPROVAL_STATUS)!r} by {tags.get(APPROVAL_BY)!r}) do not match "
            f"its audited promotion (approved by {sorted(a for a in approvers if a)}); edited outside mlctl"
        )
    return None


def restore_aliases(settings: Settings, spec: ModelSpec, by: str, comment: str) -> str:
    """Put ``champion`` back where the audit log says (removing it when it says none) and remove rollout aliases
    the log did not start; a reviewer's decision, audited. Returns the audit URI."""
    if by not in spec.reviewers:
        raise PermissionError(f"{spec.name}: {by!r} is not a reviewer; allowed: {spec.reviewers}")
    model = spec.name
    events = read_audit(settings, model)
    expected, started = audited_champion(events), audited_rollouts(events)
    actual = aliases(settings, model)
    if expected is None:
        if CHAMPION in actual:
            delete_alias(settings, model, CHAMPION)
    elif actual.get(CHAMPION) != expected:
        set_alias(settings, model, CHAMPION, expected)
    removed = [a for a in actual if a.startswith(ALIAS_PREFIX) and started.get(a) != actual[a]]
    for alias in removed:
        delete_alias(settings, model, alias)
    record = {
        "by": by,
        "comment": comment,
        "found_champion": actual.get(CHAMPION),
        "champion_removed": expected is None,
        "removed_aliases": removed,
        # Rollouts whose alias someone deleted end here, on the record (their tags still say who started them).
        "ended_rollouts": [a for a in started if a not in actual],
    }
    return write_audit(settings, model, "restore", expected or "none", record, now=dt.datetime.now(dt.UTC))
