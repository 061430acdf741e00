"""Issue 13's findings, each reproduced on the local profile and now failing closed: four eyes on the recorded
trainer, a rejected version never promoted, approvals that expire or outlive what they were about, a hand-moved
or deleted alias flagged, an edited audit event detected, rollback from the audit log."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipelines.evaluation.gate import TAG_STATUS as GATE_STATUS
from pipelines.lake import Lake
from pipelines.registry.approval import ApprovalRecord
from pipelines.registry.audit import read_audit, verify_chain
from pipelines.registry.decisions import (
    REOPENED,
    TAG_ASKED_AT,
    TAG_STATE,
    TAG_TRAINED_BY,
    DecisionRefused,
    record_trainer,
    reopen,
    request_review,
)
from pipelines.registry.promotion import (
    ApprovalExpired,
    NotApproved,
    SelfApproval,
    promote,
    record_rejection,
    rollback,
    rollback_target,
)
from pipelines.registry.registry import (
    CHAMPION,
    aliases,
    connect,
    delete_alias,
    ensure_experiment,
    get_version,
    set_alias,
    set_version_tags,
)
from pipelines.registry.tamper import restore_aliases, verify_aliases
from pipelines.settings import PROJECT_ROOT, Settings
from pipelines.specs import ModelSpec, load_spec

MODEL = "purchase_intent"  # reviewers: alice, bob


@dataclass
class Freshness:
    fresh: bool
    message: str


FRESH = Freshness(True, "newest online features 9 h old")


def register_version(settings: Settings, trainer: str = "engineer") -> str:
    """A registered, gated version whose training the DAG recorded as triggered by ``trainer`` (never loaded)."""
    client = connect(settings)
    run = client.create_run(ensure_experiment(settings, "governance-tests"), tags={"mlflow.user": "root"})
    client.set_terminated(run.info.run_id)
    if not client.search_registered_models(f"name = '{MODEL}'"):
        client.create_registered_model(MODEL)
    version = str(client.create_model_version(MODEL, f"{run.info.artifact_uri}/model", run.info.run_id).version)
    set_version_tags(settings, MODEL, version, {GATE_STATUS: "passed", "gate.summary": "passed: test"})
    record_trainer(settings, MODEL, version, trainer)
    return version


def approve(by: str, comment: str = "fine") -> ApprovalRecord:
    return ApprovalRecord("approve", by, dt.datetime.now(dt.UTC), comment)


@pytest.fixture
def settings(mlflow_settings: Settings) -> Settings:
    return mlflow_settings


@pytest.fixture
def spec() -> ModelSpec:
    return load_spec(PROJECT_ROOT / "models" / f"{MODEL}.yaml")


def promoted(settings: Settings, spec: ModelSpec, by: str = "alice") -> str:
    version = register_version(settings)
    request_review(settings, spec, version)
    promote(settings, spec, version, approve(by), FRESH)
    return version


def test_whoever_triggered_training_cannot_approve_it(settings: Settings, spec: ModelSpec) -> None:
    """Finding 1b: self-approval compared the run's OS user (root) with an Airflow login and never fired."""
    version = register_version(settings, trainer="alice")
    request_review(settings, spec, version)
    with pytest.raises(SelfApproval, match="'alice' triggered its training"):
        promote(settings, spec, version, approve("alice"), FRESH)
    record_trainer(settings, MODEL, version, "bob")  # retrained on the same data by bob: both are kept
    assert get_version(settings, MODEL, version).tags[TAG_TRAINED_BY] == "alice,bob"
    with pytest.raises(SelfApproval, match="'bob' triggered"):
        promote(settings, spec, version, approve("bob"), FRESH)
    unknown = register_version(settings, trainer="")
    request_review(settings, spec, unknown)
    with pytest.raises(SelfApproval, match="not recorded"):
        promote(settings, spec, unknown, approve("alice"), FRESH)
    assert aliases(settings, MODEL) == {}


def test_a_spec_can_require_two_distinct_reviewers(settings: Settings, spec: ModelSpec) -> None:
    two = spec.model_copy(update={"approvals_required": 2})
    version = register_version(settings)
    request_review(settings, two, version)
    with pytest.raises(NotApproved, match="2 approvals by different reviewers"):
        promote(settings, two, version, [approve("alice"), approve("alice")], FRESH)
    result = promote(settings, two, version, [approve("alice"), approve("bob")], FRESH)
    assert result.moved and get_version(settings, MODEL, version).tags["approval.approvers"] == "alice,bob"


def test_a_rejected_version_is_never_asked_again_nor_promoted_until_reopened(
    settings: Settings, spec: ModelSpec
) -> None:
    """Finding 2: a version bob rejected was asked again on a retrain (same data, same version) and promoted."""
    version = register_version(settings)
    request_review(settings, spec, version)
    record_rejection(settings, spec, version, ApprovalRecord("reject", "bob", dt.datetime.now(dt.UTC), "leak"))
    with pytest.raises(DecisionRefused, match="rejected by bob .*mlctl reopen purchase_intent"):
        request_review(settings, spec, version)  # what the training DAG's gate step does on a retrain
    with pytest.raises(NotApproved, match="rejected by bob"):
        promote(settings, spec, version, approve("alice"), FRESH)
    assert CHAMPION not in aliases(settings, MODEL)

    with pytest.raises(DecisionRefused, match="'carol' is not a reviewer"):
        reopen(settings, spec, version, "carol", "try again")
    with pytest.raises(DecisionRefused, match="needs a --comment"):
        reopen(settings, spec, version, "alice", " ")
    reopen(settings, spec, version, "alice", "the leak was a false alarm")
    assert get_version(settings, MODEL, version).tags[TAG_STATE] == REOPENED
    request_review(settings, spec, version)
    assert promote(settings, spec, version, approve("alice"), FRESH).moved
    actions = [e["action"] for e in read_audit(settings, MODEL)]
    assert actions == ["ask", "reject", "reopen", "ask", "promote"]


def test_an_approval_expires_and_is_refused_when_its_subject_changed(settings: Settings, spec: ModelSpec) -> None:
    """Finding 4b: a granted approval never expired."""
    version = register_version(settings)
    request_review(settings, spec, version, now=dt.datetime.now(dt.UTC) - dt.timedelta(hours=73))
    with pytest.raises(ApprovalExpired, match="expired after 72 h"):
        promote(settings, spec, version, approve("alice"), FRESH)

    request_review(settings, spec, version)
    set_version_tags(settings, MODEL, version, {"gate.summary": "passed: re-evaluated"})
    with pytest.raises(ApprovalExpired, match="evaluation or gate verdict of the version changed"):
        promote(settings, spec, version, approve("alice"), FRESH)

    request_review(settings, spec, version)
    other = promoted(settings, spec)
    with pytest.raises(ApprovalExpired, match=f"the champion moved \\(vnone -> v{other}\\)"):
        promote(settings, spec, version, approve("alice"), FRESH)
    assert aliases(settings, MODEL)[CHAMPION] == other
    assert get_version(settings, MODEL, version).tags[TAG_ASKED_AT]


def test_feature_definitions_changed_since_asked_is_refused(
    settings: Settings, spec: ModelSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "feature_repo"
    repo.mkdir()
    (repo / "users.py").write_text("# v1\n")
    monkeypatch.setattr(type(settings), "feast_repo_path", property(lambda self: repo))
    version = register_version(settings)
    request_review(settings, spec, version)
    (repo / "users.py").write_text("# v2: a window changed\n")
    with pytest.raises(ApprovalExpired, match="feature definitions"):
        promote(settings, spec, version, approve("alice"), FRESH)


def test_an_alias_moved_by_hand_or_deleted_is_flagged_with_the_fix(settings: Settings, spec: ModelSpec) -> None:
    """Finding 3: set_registered_model_alias on a version that failed the gate was served, and not flagged."""
    audited = promoted(settings, spec)
    assert verify_aliases(settings, spec) == []
    failed = register_version(settings)
    set_version_tags(settings, MODEL, failed, {GATE_STATUS: "failed"})

    set_alias(settings, MODEL, CHAMPION, failed)
    (finding,) = verify_aliases(settings, spec)
    assert finding.alias == CHAMPION
    assert f"champion is on v{failed}, but the audit log's last move put v{audited} there" in finding.message
    assert finding.fix == "mlctl restore purchase_intent --comment '...'"

    delete_alias(settings, MODEL, CHAMPION)
    (finding,) = verify_aliases(settings, spec)
    assert "champion alias was deleted" in finding.message

    set_alias(settings, MODEL, "rollout-x", failed)
    assert {f.alias for f in verify_aliases(settings, spec)} == {CHAMPION, "rollout-x"}
    restore_aliases(settings, spec, "bob", "hand-made alias moves undone")
    assert aliases(settings, MODEL) == {CHAMPION: audited}
    assert verify_aliases(settings, spec) == []


def test_an_edited_audit_event_breaks_the_chain(settings: Settings, spec: ModelSpec) -> None:
    promoted(settings, spec)
    lake = Lake(settings)
    events = read_audit(lake.settings, MODEL)
    assert len(events) == 2 and verify_chain(events) == []
    first = Path(lake.root) / "audit" / MODEL
    path = sorted(first.glob("*.json"))[0]
    edited = json.loads(path.read_text()) | {"champion": "7"}
    path.write_text(json.dumps(edited))
    problems = verify_chain(read_audit(lake.settings, MODEL))
    assert len(problems) == 1 and "was edited" in problems[0]
    assert any(f.alias == "(audit log)" for f in verify_aliases(settings, spec))


def test_rollback_goes_to_the_previous_audited_champion_not_the_previous_alias(
    settings: Settings, spec: ModelSpec
) -> None:
    """Finding 4: no rollback but a function only tests called, following a `previous` alias anyone could move."""
    first = promoted(settings, spec)
    assert rollback_target(settings, MODEL, first) is None  # a first champion has nothing to go back to
    second = promoted(settings, spec, by="bob")
    assert rollback_target(settings, MODEL, second) == first
    set_alias(settings, MODEL, "previous", second)  # a hand-made move of `previous` must not steer a rollback
    result = rollback(settings, spec, "alice", "second hurts conversion")
    assert (result.version, result.previous_version) == (first, second)
    assert aliases(settings, MODEL) == {CHAMPION: first, "previous": second}
    assert verify_aliases(settings, spec) == []
    assert read_audit(settings, MODEL)[-1]["action"] == "rollback"


def test_the_daily_skew_step_flags_an_alias_moved_outside_mlctl(settings: Settings, spec: ModelSpec) -> None:
    """Finding 3: the daily DAG said nothing about a hand-moved champion; its skew step now names it and the fix."""
    from pipelines.flows.daily_features import skew

    promoted(settings, spec)
    assert skew(settings, dt.date(2025, 2, 4))["aliases"] == {}
    set_alias(settings, MODEL, CHAMPION, register_version(settings))
    flagged = skew(settings, dt.date(2025, 2, 4))["aliases"]
    assert list(flagged) == [MODEL]
    assert "champion is on v2" in flagged[MODEL][0] and f"mlctl restore {MODEL}" in flagged[MODEL][0]
