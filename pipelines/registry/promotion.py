"""Promotion: move alias ``champion`` only with a passed gate, an allowed approver and fresh online features.

Every alias move and every rejection is appended to the audit log (``audit/<model>/`` in the lake).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Protocol

from pipelines.evaluation.gate import TAG_STATUS as GATE_STATUS
from pipelines.lake import Lake
from pipelines.registry.approval import ApprovalError, ApprovalRecord
from pipelines.registry.audit import write_audit
from pipelines.registry.registry import (
    CHAMPION,
    PREVIOUS,
    connect,
    get_alias,
    get_version,
    set_alias,
    set_version_tags,
)
from pipelines.settings import Settings
from pipelines.specs import ModelSpec

__all__ = [
    "ApprovalError",
    "ApprovalRecord",
    "FeaturesNotFresh",
    "GateNotPassed",
    "NotApproved",
    "PromotionRefused",
    "PromotionResult",
    "ReviewerNotAllowed",
    "SelfApproval",
    "promote",
    "record_rejection",
    "rollback",
]


class PromotionRefused(RuntimeError):
    """The champion was not moved; the message says which condition failed and what to do."""


class GateNotPassed(PromotionRefused):
    pass


class NotApproved(PromotionRefused):
    pass


class ReviewerNotAllowed(PromotionRefused):
    pass


class SelfApproval(PromotionRefused):
    pass


class FeaturesNotFresh(PromotionRefused):
    pass


class Freshness(Protocol):
    """What promotion needs of ``pipelines.features.store.FreshnessReport``."""

    fresh: bool
    message: str


@dataclass
class PromotionResult:
    """What happened to the aliases; plain JSON-able fields."""

    model: str
    version: str
    previous_version: str | None
    moved: bool
    approved_by: str
    approved_at: str
    audit_uri: str | None


def _check(settings: Settings, spec: ModelSpec, version: str, approval: ApprovalRecord, freshness: Freshness) -> None:
    info = get_version(settings, spec.name, version)
    gate = info.tags.get(GATE_STATUS)
    if gate != "passed":
        raise GateNotPassed(
            f"{spec.name} v{version}: gate status is {gate or 'missing'!r} (tag {GATE_STATUS}); "
            f"only a version that passed the gate can be promoted: "
            f"{info.tags.get('gate.summary', 'run the gate first')}"
        )
    if not approval.approved:
        raise NotApproved(f"{spec.name} v{version}: the review decision is {approval.decision!r}, not an approval")
    if approval.by not in spec.reviewers:
        raise ReviewerNotAllowed(
            f"{spec.name} v{version}: {approval.by or '(unknown user)'!r} is not a reviewer of this model; "
            f"allowed: {spec.reviewers} (key 'reviewers' in models/{spec.name}.yaml)"
        )
    trainer = connect(settings).get_run(info.run_id).data.tags.get("mlflow.user") if info.run_id else None
    if trainer and trainer == approval.by:
        raise SelfApproval(f"{spec.name} v{version}: {approval.by!r} trained this version and cannot approve it")
    if not freshness.fresh:
        raise FeaturesNotFresh(
            f"{spec.name} v{version}: online features of feature service {spec.feature_service!r} "
            f"are not fresh: {freshness.message}; materialize them, then promote again"
        )


def promote(
    settings: Settings, spec: ModelSpec, version: str, approval: ApprovalRecord, freshness: Freshness
) -> PromotionResult:
    """Make ``version`` the champion (the old champion becomes ``previous``), record the approval, audit it.

    Refuses with a :class:`PromotionRefused` subclass and touches nothing when a condition fails.
    Promoting the current champion again only refreshes its approval tags (a task retry is harmless).
    """
    version = str(version)
    _check(settings, spec, version, approval, freshness)
    old = get_alias(settings, spec.name, CHAMPION)
    set_version_tags(settings, spec.name, version, approval.to_tags())
    result = PromotionResult(
        spec.name,
        version,
        None if old is None else old.version,
        moved=False,
        approved_by=approval.by,
        approved_at=approval.at.isoformat(),
        audit_uri=None,
    )
    if old is not None and old.version == version:
        return result
    if old is not None:
        set_alias(settings, spec.name, PREVIOUS, old.version)
    set_alias(settings, spec.name, CHAMPION, version)
    result.moved = True
    result.audit_uri = write_audit(
        Lake(settings),
        spec.name,
        "promote",
        version,
        {
            "previous_champion": result.previous_version,
            "approval": approval.to_tags(),
            "freshness": freshness.message,
        },
    )
    return result


def record_rejection(settings: Settings, spec: ModelSpec, version: str, approval: ApprovalRecord) -> str:
    """Tag ``version`` rejected with who and why and audit it (returns the URI); aliases are never touched."""
    if approval.approved:
        raise ApprovalError(f"{spec.name} v{version}: record_rejection got an approval; use promote() instead")
    version = str(version)
    get_version(settings, spec.name, version)
    set_version_tags(settings, spec.name, version, approval.to_tags())
    return write_audit(Lake(settings), spec.name, "reject", version, {"approval": approval.to_tags()})


def rollback(settings: Settings, spec: ModelSpec, by: str, comment: str = "") -> PromotionResult:
    """Move ``champion`` back to the ``previous`` version (and ``previous`` to the demoted one), audited."""
    champion, previous = get_alias(settings, spec.name, CHAMPION), get_alias(settings, spec.name, PREVIOUS)
    if champion is None or previous is None:
        raise PromotionRefused(f"{spec.name}: rollback needs both a champion and a previous version")
    if by not in spec.reviewers:
        raise ReviewerNotAllowed(f"{spec.name}: {by!r} is not a reviewer; allowed: {spec.reviewers}")
    set_alias(settings, spec.name, CHAMPION, previous.version)
    set_alias(settings, spec.name, PREVIOUS, champion.version)
    now = dt.datetime.now(dt.UTC)
    uri = write_audit(
        Lake(settings),
        spec.name,
        "rollback",
        previous.version,
        {"previous_champion": champion.version, "by": by, "comment": comment},
        now=now,
    )
    return PromotionResult(spec.name, previous.version, champion.version, True, by, now.isoformat(), uri)
