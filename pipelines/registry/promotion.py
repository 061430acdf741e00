"""Promotion: move alias ``champion`` only with a passed gate, an allowed approver and fresh online features.

Every alias move and every rejection is appended to the audit log (``audit/<model>/`` in the lake). Four eyes:
the approvers are the spec's reviewers, none of them triggered the version's training, ``approvals_required``
distinct ones; the request they answer is live and about the same champion, features and evaluation.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Protocol

from pipelines.evaluation.gate import TAG_STATUS as GATE_STATUS
from pipelines.evaluation.gate import TAG_SUMMARY as GATE_SUMMARY
from pipelines.registry.approval import ApprovalError, ApprovalRecord
from pipelines.registry.audit import read_audit, write_audit
from pipelines.registry.decisions import (
    PROMOTED,
    REJECTED,
    TAG_STATE,
    TAG_TRAINED_BY,
    DecisionRefused,
    check_request,
    refuse_if_rejected,
    trained_by,
)
from pipelines.registry.registry import (
    CHAMPION,
    PREVIOUS,
    ModelVersionInfo,
    get_alias,
    get_version,
    set_alias,
    set_version_tags,
)
from pipelines.registry.tamper import CHAMPION_MOVES, audited_champion
from pipelines.settings import Settings
from pipelines.specs import ModelSpec

__all__ = [
    "ApprovalError",
    "ApprovalExpired",
    "ApprovalRecord",
    "FeaturesNotFresh",
    "GateNotPassed",
    "NotApproved",
    "PromotionRefused",
    "PromotionResult",
    "ReviewerNotAllowed",
    "SelfApproval",
    "check_reviewer",
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


class ApprovalExpired(PromotionRefused):
    """The request expired, or the champion, features or evaluation changed since it was asked."""


# The reviewers whose approvals promoted the version (approval.by keeps the last one's name).
TAG_APPROVERS = "approval.approvers"


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


def check_reviewer(settings: Settings, spec: ModelSpec, version: str, by: str) -> ModelVersionInfo:
    """Four eyes: ``by`` is one of the spec's reviewers and did not trigger the training of ``version``, which
    passed the gate and is not rejected. Returns the version."""
    info = get_version(settings, spec.name, version)
    gate = info.tags.get(GATE_STATUS)
    if gate != "passed":
        raise GateNotPassed(
            f"{spec.name} v{version}: gate status is {gate or 'missing'!r} (tag {GATE_STATUS}); "
            f"only a version that passed the gate can be promoted: "
            f"{info.tags.get('gate.summary', 'run the gate first')}"
        )
    if by not in spec.reviewers:
        raise ReviewerNotAllowed(
            f"{spec.name} v{version}: {by or '(unknown user)'!r} is not a reviewer of this model; "
            f"allowed: {spec.reviewers} (key 'reviewers' in models/{spec.name}.yaml)"
        )
    trainers = trained_by(info.tags)
    if not trainers:
        raise SelfApproval(
            f"{spec.name} v{version}: who triggered its training is not recorded (tag {TAG_TRAINED_BY}), so four "
            f"eyes cannot be checked; train it through its DAG (`mlctl run train_{spec.name} --date D`)"
        )
    if by in trainers:
        raise SelfApproval(
            f"{spec.name} v{version}: {by!r} triggered its training ({TAG_TRAINED_BY}={','.join(trainers)}) and "
            "cannot approve it; another reviewer must"
        )
    try:
        refuse_if_rejected(spec, info)
    except DecisionRefused as exc:
        raise NotApproved(str(exc)) from exc
    return info


def _check(settings: Settings, spec: ModelSpec, version: str, approval: ApprovalRecord, freshness: Freshness) -> None:
    """The checks of one reviewer's approval (promotion and a rollout's start)."""
    if not approval.approved:
        raise NotApproved(f"{spec.name} v{version}: the review decision is {approval.decision!r}, not an approval")
    check_reviewer(settings, spec, version, approval.by)
    if not freshness.fresh:
        raise FeaturesNotFresh(
            f"{spec.name} v{version}: online features of feature service {spec.feature_service!r} "
            f"are not fresh: {freshness.message}; materialize them, then promote again"
        )


def _check_approvals(
    settings: Settings, spec: ModelSpec, version: str, approvals: list[ApprovalRecord], freshness: Freshness
) -> None:
    """Every approval valid, from ``approvals_required`` distinct reviewers, answering a live, unchanged request."""
    if not approvals:
        raise NotApproved(f"{spec.name} v{version}: no approval given")
    for approval in approvals:
        _check(settings, spec, version, approval, freshness)
    distinct = sorted({a.by for a in approvals})
    if len(distinct) < spec.approvals_required:
        raise NotApproved(
            f"{spec.name} v{version}: {spec.approvals_required} approvals by different reviewers are required "
            f"(approvals_required in models/{spec.name}.yaml), got {len(distinct)}: {distinct}"
        )
    try:
        check_request(settings, spec, get_version(settings, spec.name, version))
    except DecisionRefused as exc:
        raise ApprovalExpired(str(exc)) from exc


def promote(
    settings: Settings,
    spec: ModelSpec,
    version: str,
    approval: ApprovalRecord | list[ApprovalRecord],
    freshness: Freshness,
) -> PromotionResult:
    """Make ``version`` the champion (the old champion becomes ``previous``), record the approval(s), audit it.

    Refuses with a :class:`PromotionRefused` subclass and touches nothing when a condition fails.
    Promoting the current champion again only refreshes its approval tags (a task retry is harmless), and writes
    the audit event of a try that moved the alias but failed before its event landed (the registry's database
    went away in between): until then serving refuses the unaudited champion, so the rerun is the repair.
    """
    version = str(version)
    approvals = approval if isinstance(approval, list) else [approval]
    _check_approvals(settings, spec, version, approvals, freshness)
    last = approvals[-1]
    old = get_alias(settings, spec.name, CHAMPION)
    tags = {**last.to_tags(), TAG_APPROVERS: ",".join(a.by for a in approvals), TAG_STATE: PROMOTED}
    set_version_tags(settings, spec.name, version, tags)
    result = PromotionResult(
        spec.name,
        version,
        None if old is None else old.version,
        moved=False,
        approved_by=",".join(a.by for a in approvals),
        approved_at=last.at.isoformat(),
        audit_uri=None,
    )
    if old is not None and old.version == version:
        audited = audited_champion(read_audit(settings, spec.name))
        if audited == version:
            return result
        # An earlier try moved the alias and died before its audit event: the log's last champion is the one
        # that try replaced.
        result.previous_version = audited
    else:
        if old is not None:
            set_alias(settings, spec.name, PREVIOUS, old.version)
        set_alias(settings, spec.name, CHAMPION, version)
        result.moved = True
    result.audit_uri = write_audit(
        settings,
        spec.name,
        "promote",
        version,
        {
            "previous_champion": result.previous_version,
            "by": result.approved_by,
            "comment": last.comment,
            "approval": last.to_tags(),
            "approvals": [a.to_tags() for a in approvals],
            "gate": get_version(settings, spec.name, version).tags.get(GATE_SUMMARY, ""),
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
    set_version_tags(settings, spec.name, version, {**approval.to_tags(), TAG_STATE: REJECTED})
    return write_audit(
        settings,
        spec.name,
        "reject",
        version,
        {"by": approval.by, "comment": approval.comment, "approval": approval.to_tags()},
    )


def rollback_target(settings: Settings, model: str, champion: str) -> str | None:
    """The version a rollback of ``champion`` would restore: the newest other champion the audit log holds."""
    moves = [e for e in read_audit(settings, model) if e.get("action") in CHAMPION_MOVES]
    earlier = [str(e["version"]) for e in moves if not e.get("champion_removed") and str(e["version"]) != champion]
    return earlier[-1] if earlier else None


def rollback(settings: Settings, spec: ModelSpec, by: str, comment: str = "") -> PromotionResult:
    """Move ``champion`` back to the version promoted before it (by the audit log), audited.

    The target is the newest champion the audit log holds other than the current one (not the ``previous``
    alias, which anyone with registry access could have moved); ``previous`` becomes the demoted version.
    """
    if by not in spec.reviewers:
        raise ReviewerNotAllowed(f"{spec.name}: {by!r} is not a reviewer; allowed: {spec.reviewers}")
    if not comment.strip():
        raise PromotionRefused(f"{spec.name}: a rollback needs a --comment saying why")
    champion = get_alias(settings, spec.name, CHAMPION)
    if champion is None:
        raise PromotionRefused(f"{spec.name}: there is no champion to roll back")
    target = rollback_target(settings, spec.name, champion.version)
    if target is None:
        raise PromotionRefused(
            f"{spec.name}: rollback needs a champion promoted before v{champion.version}; none is audited"
        )
    set_alias(settings, spec.name, CHAMPION, target)
    set_alias(settings, spec.name, PREVIOUS, champion.version)
    now = dt.datetime.now(dt.UTC)
    uri = write_audit(
        settings,
        spec.name,
        "rollback",
        target,
        {"previous_champion": champion.version, "by": by, "comment": comment},
        now=now,
    )
    return PromotionResult(spec.name, target, champion.version, True, by, now.isoformat(), uri)
