"""Promotion, rejection, rollback and the audit log against a real SQLite MLflow registry."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipelines.evaluation.gate import GateDecision, record_gate
from pipelines.lake import Lake
from pipelines.registry.approval import ApprovalError, ApprovalRecord
from pipelines.registry.audit import read_audit
from pipelines.registry.decisions import record_trainer, request_review
from pipelines.registry.promotion import (
    ApprovalExpired,
    FeaturesNotFresh,
    GateNotPassed,
    NotApproved,
    PromotionRefused,
    ReviewerNotAllowed,
    promote,
    record_rejection,
    rollback,
)
from pipelines.registry.registry import aliases, get_champion, get_version
from pipelines.settings import Settings
from pipelines.specs import ModelSpec
from pipelines.training.dataset import save_training_set
from pipelines.training.synthetic import synthetic_training_frame
from pipelines.training.train import train_model
from tests.conftest import quick_spec

ROOT = Path(__file__).resolve().parents[1]
DAY = dt.date(2024, 3, 31)
AT = dt.datetime(2024, 4, 1, 9, 30, tzinfo=dt.UTC)
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


@dataclass
class Freshness:
    """The two fields promotion reads from pipelines.features.store.FreshnessReport."""

    fresh: bool
    message: str


FRESH = Freshness(True, "newest online features 2024-03-31T00:00:00+00:00, 9 h old")
STALE = Freshness(False, "newest online features are 80 h old (max 48 h)")


@pytest.fixture
def settings(mlflow_settings: Settings) -> Settings:
    """These tests need an MLflow store: start from conftest's pre-migrated one."""
    return mlflow_settings


@pytest.fixture
def spec() -> ModelSpec:
    return quick_spec(10, 3, train=2, validation=1, test=1)


@pytest.fixture
def versions(settings: Settings, lake: Lake, spec: ModelSpec) -> list[str]:
    """Two registered versions (trained on two logical dates) that both passed the gate."""
    out = []
    for i in range(2):
        day = DAY + dt.timedelta(days=i)
        ts = save_training_set(lake, spec, day, synthetic_training_frame(spec, day, users_per_day=150, seed=i))
        version = train_model(settings, spec, ts).model_version
        record_gate(settings, spec, version, GateDecision(True, [], "passed: test"))
        record_trainer(settings, spec.name, version, "engineer")  # what the training DAG's train task records
        out.append(version)
    return out


def approval(by: str = "alice", decision: str = "approve", comment: str = "looks good") -> ApprovalRecord:
    return ApprovalRecord(decision, by, NOW, comment)  # type: ignore[arg-type]


def asked(settings: Settings, spec: ModelSpec, version: str) -> str:
    """The training DAG asks for a review when the gate passes; the approval answers that request."""
    request_review(settings, spec, version)
    return version


def decisions(lake: Lake, model: str) -> list[tuple[str, str]]:
    """(action, version) of the audit events other than the review requests."""
    return [(e["action"], e["version"]) for e in read_audit(lake.settings, model) if e["action"] != "ask"]


def test_first_promotion_makes_the_champion_and_records_the_approval(
    settings: Settings, lake: Lake, spec: ModelSpec, versions: list[str]
) -> None:
    result = promote(settings, spec, asked(settings, spec, versions[0]), approval(), FRESH)

    assert result.moved and result.previous_version is None
    champion = get_champion(settings, spec.name)
    assert champion is not None and champion.version == "1" and isinstance(champion.version, str)
    assert champion.tags["approval.status"] == "approved" and champion.tags["approval.by"] == "alice"
    assert champion.tags["approval.at"] == NOW.isoformat()
    assert champion.approval_record == approval()
    assert champion.approval == {
        "status": "approved",
        "by": "alice",
        "at": NOW.isoformat(),
        "comment": "looks good",
        "approvers": "alice",
    }
    assert json.loads(json.dumps(champion.to_dict()))["version"] == "1"
    assert aliases(settings, spec.name) == {"champion": "1"}
    ask, event = read_audit(lake.settings, spec.name)
    assert ask["action"] == "ask" and event["prev"] == ask["sha256"]
    assert event["action"] == "promote" and event["version"] == "1" and event["previous_champion"] is None
    assert result.audit_uri and "-promote-v1.json" in result.audit_uri


def test_promotion_moves_the_champion_and_keeps_the_previous_one(
    settings: Settings, lake: Lake, spec: ModelSpec, versions: list[str]
) -> None:
    asked(settings, spec, versions[1])
    promote(settings, spec, asked(settings, spec, versions[0]), approval(), FRESH)
    with pytest.raises(ApprovalExpired, match=r"the champion moved \(vnone -> v1\)"):
        promote(settings, spec, versions[1], approval("bob"), FRESH)

    asked(settings, spec, versions[1])
    result = promote(settings, spec, versions[1], approval("bob", comment="better on recent data"), FRESH)

    assert result.previous_version == "1"
    assert aliases(settings, spec.name) == {"champion": "2", "previous": "1"}
    assert decisions(lake, spec.name) == [("promote", "1"), ("promote", "2")]
    # Promoting the champion again (a task retry) changes nothing and writes no audit event.
    events = len(read_audit(lake.settings, spec.name))
    asked(settings, spec, versions[1])
    again = promote(settings, spec, versions[1], approval("bob"), FRESH)
    assert not again.moved and aliases(settings, spec.name) == {"champion": "2", "previous": "1"}
    assert len(read_audit(lake.settings, spec.name)) == events + 1  # the request only


def test_promotion_refuses_and_leaves_the_aliases_untouched(
    settings: Settings, lake: Lake, spec: ModelSpec, versions: list[str]
) -> None:
    promote(settings, spec, asked(settings, spec, versions[0]), approval(), FRESH)
    record_gate(settings, spec, versions[1], GateDecision(False, [], "failed (champion v1): roc_auc 0.60 >= 0.79"))
    gated = versions[1]

    with pytest.raises(GateNotPassed, match="roc_auc 0.60"):
        promote(settings, spec, gated, approval(), FRESH)
    record_gate(settings, spec, gated, GateDecision(True, [], "passed"))
    with pytest.raises(ApprovalExpired, match="no review was asked"):
        promote(settings, spec, gated, approval(), FRESH)
    asked(settings, spec, gated)
    with pytest.raises(NotApproved, match="'reject'"):
        promote(settings, spec, gated, approval(decision="reject"), FRESH)
    with pytest.raises(ReviewerNotAllowed, match="'mallory' is not a reviewer"):
        promote(settings, spec, gated, approval("mallory"), FRESH)
    with pytest.raises(FeaturesNotFresh, match="80 h old"):
        promote(settings, spec, gated, approval(), STALE)

    assert aliases(settings, spec.name) == {"champion": "1"}
    assert "approval.status" not in get_version(settings, spec.name, gated).tags
    assert decisions(lake, spec.name) == [("promote", "1")]


def test_rejection_is_tagged_and_audited_but_never_moves_an_alias(
    settings: Settings, lake: Lake, spec: ModelSpec, versions: list[str]
) -> None:
    promote(settings, spec, asked(settings, spec, versions[0]), approval(), FRESH)

    record_rejection(settings, spec, versions[1], approval("bob", "reject", "label leak suspected"))

    rejected = get_version(settings, spec.name, versions[1])
    assert rejected.tags["approval.status"] == "rejected"
    assert (rejected.tags["approval.by"], rejected.tags["approval.comment"]) == (
        "bob",
        "label leak suspected",
    )
    assert aliases(settings, spec.name) == {"champion": "1"}
    assert decisions(lake, spec.name) == [("promote", "1"), ("reject", "2")]
    with pytest.raises(ApprovalError):
        record_rejection(settings, spec, versions[1], approval())


def test_rollback_restores_the_previous_champion_and_is_audited(
    settings: Settings, lake: Lake, spec: ModelSpec, versions: list[str]
) -> None:
    promote(settings, spec, asked(settings, spec, versions[0]), approval(), FRESH)
    with pytest.raises(PromotionRefused, match="needs a champion promoted before v1"):
        rollback(settings, spec, by="alice", comment="too early")
    promote(settings, spec, asked(settings, spec, versions[1]), approval("bob"), FRESH)
    with pytest.raises(PromotionRefused, match="needs a --comment"):
        rollback(settings, spec, by="alice")

    result = rollback(settings, spec, by="alice", comment="v2 hurts conversion")

    assert result.version == "1" and aliases(settings, spec.name) == {"champion": "1", "previous": "2"}
    assert read_audit(lake.settings, spec.name)[-1] | {"at": None, "prev": None, "sha256": None} == {
        "model": "purchase_intent",
        "action": "rollback",
        "version": "1",
        "at": None,
        "previous_champion": "2",
        "by": "alice",
        "comment": "v2 hurts conversion",
        "prev": None,
        "sha256": None,
    }


def test_approval_record_reads_airflow_approval_operator_output() -> None:
    approved = ApprovalRecord.from_hitl(
        {
            "chosen_options": ["Approve"],
            "params_input": {"comment": "ship it"},
            "responded_at": dt.datetime(2024, 4, 1, 11, 30, tzinfo=dt.timezone(dt.timedelta(hours=2))),
            "responded_by_user": {"id": "7", "name": "alice"},
        }
    )
    assert approved == ApprovalRecord("approve", "alice", AT, "ship it")

    rejected = ApprovalRecord.from_hitl(
        {
            "chosen_options": ["Reject"],
            "params_input": {},
            "responded_at": "2024-04-01T09:30:00Z",
            "responded_by_user": {"id": "bob", "name": ""},
        }
    )
    assert (rejected.decision, rejected.by, rejected.at, rejected.comment) == ("reject", "bob", AT, "")
    with pytest.raises(ApprovalError, match="chosen_options"):
        ApprovalRecord.from_hitl({"chosen_options": ["Approve", "Reject"]})
