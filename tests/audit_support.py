"""What an audited promotion or rollout start leaves in the registry and the audit log, for tests whose subject is
serving, not the promotion itself: serving loads only versions the audit log vouches for (registry/tamper.py)."""

from __future__ import annotations

import datetime as dt

from pipelines.evaluation.gate import TAG_STATUS as GATE_STATUS
from pipelines.registry.approval import ApprovalRecord
from pipelines.registry.audit import write_audit
from pipelines.registry.registry import CHAMPION, aliases, set_alias, set_version_tags
from pipelines.settings import Settings


def audit_promotion(settings: Settings, model: str, version: str, by: str = "alice", comment: str = "test") -> None:
    """Gate passed, ``by``'s approval on the version, the promotion in the audit log, then the champion alias."""
    approval = ApprovalRecord("approve", by, dt.datetime.now(dt.UTC), comment)
    set_version_tags(settings, model, version, {GATE_STATUS: "passed", **approval.to_tags()})
    record = {
        "previous_champion": aliases(settings, model).get(CHAMPION),
        "by": by,
        "approval": approval.to_tags(),
        "approvals": [approval.to_tags()],
    }
    write_audit(settings, model, "promote", version, record)
    set_alias(settings, model, CHAMPION, version)


def audit_rollout_start(settings: Settings, model: str, name: str, version: str, by: str = "bob") -> None:
    """Gate passed and the rollout's start in the audit log (the alias and terms are the caller's)."""
    set_version_tags(settings, model, version, {GATE_STATUS: "passed"})
    write_audit(settings, model, "rollout-start", version, {"rollout": name, "by": by})
