"""The review of a model version as a state machine, kept on the version's tags and in the audit log.

::

    (gate passed) --ask--> pending --approve--> approved --promote--> promoted
                              |  ^
                         reject  reopen (a reviewer, with a comment, audited)
                              v  |
                            rejected

A rejected version is never asked about again nor promoted until a reviewer reopens it. When a review is asked,
the champion, the feature definitions and the evaluation it is about are recorded; an approval is refused when any
of them changed since, or when the request is older than the spec's ``approval_ttl_hours``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, replace

from pipelines.evaluation.gate import TAG_CHECKS, TAG_STATUS, TAG_SUMMARY
from pipelines.registry.approval import TAG_STATUS as APPROVAL_STATUS
from pipelines.registry.audit import write_audit
from pipelines.registry.registry import CHAMPION, ModelVersionInfo, aliases, get_version, set_version_tags
from pipelines.settings import Settings
from pipelines.specs import ModelSpec

TAG_STATE = "decision.state"
PENDING, APPROVED, REJECTED, PROMOTED, REOPENED = "pending", "approved", "rejected", "promoted", "reopened"
# The identities that triggered the training runs which produced (or reused) the version: none may approve it.
TAG_TRAINED_BY = "storefront.trained_by"
TAG_ASKED_AT, TAG_ASKED_CHAMPION = "review.asked_at", "review.champion"
TAG_ASKED_FEATURES, TAG_ASKED_EVALUATION = "review.features", "review.evaluation"


class DecisionRefused(RuntimeError):
    """The review cannot move that way; the message says why and which command would."""


@dataclass(frozen=True)
class ReviewContext:
    """What an approval is about: the champion it replaces, the feature definitions, the evaluation."""

    champion: str
    features: str
    evaluation: str

    def changes_since(self, asked: ReviewContext) -> list[str]:
        changed = []
        if self.champion != asked.champion:
            changed.append(f"the champion moved (v{asked.champion or 'none'} -> v{self.champion or 'none'})")
        if self.features != asked.features:
            changed.append("the feature definitions (feature_repo/) changed")
        if self.evaluation != asked.evaluation:
            changed.append("the evaluation or gate verdict of the version changed")
        return changed


def state_of(tags: dict[str, str]) -> str:
    """The version's review state ("" before any review was asked); older versions are read from their approval."""
    if tags.get(TAG_STATE):
        return tags[TAG_STATE]
    legacy = tags.get(APPROVAL_STATUS)
    if legacy in (APPROVED, REJECTED):
        return legacy
    return PENDING if tags.get(TAG_ASKED_AT) else ""


def trained_by(tags: dict[str, str]) -> list[str]:
    return [name for name in tags.get(TAG_TRAINED_BY, "").split(",") if name]


def record_trainer(settings: Settings, model: str, version: str, identity: str) -> list[str]:
    """Add the identity that triggered this training run to the version (a reused version keeps them all)."""
    names = trained_by(get_version(settings, model, version).tags)
    if identity and identity not in names:
        names.append(identity)
        set_version_tags(settings, model, version, {TAG_TRAINED_BY: ",".join(names)})
    return names


def feature_definitions_hash(settings: Settings) -> str:
    """sha256 over the Feast repository's definition files (names and bytes), in name order."""
    digest = hashlib.sha256()
    for path in sorted(settings.feast_repo_path.glob("*")):
        if path.suffix in (".py", ".yaml") and path.is_file():
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def evaluation_hash(info: ModelVersionInfo) -> str:
    """sha256 over the version's evaluation metrics and gate verdict as the registry holds them."""
    evaluated = sorted((k, repr(v)) for k, v in info.metrics.items() if k.startswith("eval_"))
    gate = [info.tags.get(k, "") for k in (TAG_STATUS, TAG_SUMMARY, TAG_CHECKS)]
    return hashlib.sha256(repr((evaluated, gate)).encode()).hexdigest()


def current_context(settings: Settings, spec: ModelSpec, info: ModelVersionInfo) -> ReviewContext:
    champion = aliases(settings, spec.name).get(CHAMPION, "")
    return ReviewContext(champion, feature_definitions_hash(settings), evaluation_hash(info))


def asked_context(tags: dict[str, str]) -> ReviewContext | None:
    if not tags.get(TAG_ASKED_AT):
        return None
    return ReviewContext(
        tags.get(TAG_ASKED_CHAMPION, ""), tags.get(TAG_ASKED_FEATURES, ""), tags.get(TAG_ASKED_EVALUATION, "")
    )


def refuse_if_rejected(spec: ModelSpec, info: ModelVersionInfo) -> None:
    if state_of(info.tags) == REJECTED:
        who = info.tags.get("approval.by") or "a reviewer"
        raise DecisionRefused(
            f"{spec.name} v{info.version} was rejected by {who} ({info.tags.get('approval.comment') or 'no comment'}); "
            f"a rejected version is neither asked about again nor promoted unless a reviewer reopens it: "
            f"`mlctl reopen {spec.name} {info.version} --comment '...'`"
        )


def request_review(settings: Settings, spec: ModelSpec, version: str, now: dt.datetime | None = None) -> ReviewContext:
    """Record that an approval is asked for ``version`` now, and what about (refused for a rejected version)."""
    info = get_version(settings, spec.name, version)
    refuse_if_rejected(spec, info)
    at = now or dt.datetime.now(dt.UTC)
    context = current_context(settings, spec, info)
    set_version_tags(
        settings,
        spec.name,
        info.version,
        {
            TAG_STATE: PENDING,
            TAG_ASKED_AT: at.isoformat(),
            TAG_ASKED_CHAMPION: context.champion,
            TAG_ASKED_FEATURES: context.features,
            TAG_ASKED_EVALUATION: context.evaluation,
        },
    )
    write_audit(settings, spec.name, "ask", info.version, {"champion": context.champion or None}, now=at)
    return context


def check_request(settings: Settings, spec: ModelSpec, info: ModelVersionInfo, now: dt.datetime | None = None) -> None:
    """Refuse an approval of a request that was never made, has expired, or whose subject changed since."""
    asked = asked_context(info.tags)
    if asked is None:
        raise DecisionRefused(
            f"{spec.name} v{info.version}: no review was asked for this version (tag {TAG_ASKED_AT}); approvals "
            f"answer a request of its training run: `mlctl run train_{spec.name} --date D`"
        )
    asked_at = dt.datetime.fromisoformat(info.tags[TAG_ASKED_AT])
    ttl = dt.timedelta(hours=spec.approval_ttl_hours)
    if (now or dt.datetime.now(dt.UTC)) > asked_at + ttl:
        raise DecisionRefused(
            f"{spec.name} v{info.version}: the review asked at {asked_at:%Y-%m-%d %H:%M} UTC expired after "
            f"{spec.approval_ttl_hours:g} h (approval_ttl_hours in models/{spec.name}.yaml); retrain to ask again"
        )
    current = current_context(settings, spec, info)
    if current.champion == info.version != asked.champion:
        # This version's promotion moved the alias and was cut short before its audit event (the registry's
        # database went away): the approval still covers it, and promote() writes the missing event.
        current = replace(current, champion=asked.champion)
    changed = current.changes_since(asked)
    if changed:
        raise DecisionRefused(
            f"{spec.name} v{info.version}: {'; '.join(changed)} since the review was asked at "
            f"{asked_at:%Y-%m-%d %H:%M} UTC; the approval no longer covers it: retrain to ask again"
        )


def reopen(settings: Settings, spec: ModelSpec, version: str, by: str, comment: str) -> str:
    """A reviewer takes a rejected version back to review (audited); its next training run asks again."""
    info = get_version(settings, spec.name, version)
    if by not in spec.reviewers:
        raise DecisionRefused(
            f"{spec.name}: {by!r} is not a reviewer and cannot reopen v{version}; allowed: {spec.reviewers}"
        )
    if state_of(info.tags) != REJECTED:
        raise DecisionRefused(f"{spec.name} v{version} is {state_of(info.tags) or 'not reviewed'!r}, not rejected")
    if not comment.strip():
        raise DecisionRefused(f"reopening {spec.name} v{version} needs a --comment saying why")
    set_version_tags(settings, spec.name, info.version, {TAG_STATE: REOPENED})
    return write_audit(settings, spec.name, "reopen", info.version, {"by": by, "comment": comment, "was": REJECTED})
