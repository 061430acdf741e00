"""Rollouts in a real SQLite MLflow registry: who may start one, what starting and ending change, the audit."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pytest

from pipelines.evaluation.gate import TAG_STATUS as GATE_STATUS
from pipelines.registry.audit import read_audit
from pipelines.registry.decisions import TAG_TRAINED_BY
from pipelines.registry.promotion import FeaturesNotFresh, GateNotPassed, ReviewerNotAllowed, SelfApproval
from pipelines.registry.registry import CHAMPION, aliases, connect, ensure_experiment, set_alias, set_version_tags
from pipelines.registry.rollouts import (
    RolloutError,
    active_rollouts,
    end_rollout,
    in_split,
    rollout_history,
    start_rollout,
)
from pipelines.settings import PROJECT_ROOT, Settings
from pipelines.specs import ModelSpec, load_spec

MODEL = "purchase_intent"  # reviewers: alice, bob
START = dt.datetime(2024, 3, 10, 8, 0, tzinfo=dt.UTC)


@dataclass
class Freshness:
    fresh: bool
    message: str


FRESH = Freshness(True, "newest online features 9 h old")
STALE = Freshness(False, "newest online features are 80 h old (max 48 h)")


def register_version(settings: Settings, trainer: str, gate: str | None = "passed") -> str:
    """A registered version of MODEL whose run was started by ``trainer`` (no artifacts: rollouts never load it)."""
    client = connect(settings)
    run = client.create_run(ensure_experiment(settings, "rollout-tests"), tags={"mlflow.user": "root"})
    client.set_terminated(run.info.run_id)
    if not client.search_registered_models(f"name = '{MODEL}'"):
        client.create_registered_model(MODEL)
    version = str(client.create_model_version(MODEL, f"{run.info.artifact_uri}/model", run.info.run_id).version)
    set_version_tags(settings, MODEL, version, {TAG_TRAINED_BY: trainer})  # the training DAG's record
    if gate:
        set_version_tags(settings, MODEL, version, {GATE_STATUS: gate})
    return version


@pytest.fixture
def settings(mlflow_settings: Settings) -> Settings:
    return mlflow_settings


@pytest.fixture
def spec() -> ModelSpec:
    return load_spec(PROJECT_ROOT / "models" / f"{MODEL}.yaml")


@pytest.fixture
def versions(settings: Settings) -> dict[str, str]:
    """v1 the champion; v2 trained by carol and gated; v3 trained by alice; v4 not gated."""
    out = {
        "champion": register_version(settings, "carol"),
        "challenger": register_version(settings, "carol"),
        "alices": register_version(settings, "alice"),
        "ungated": register_version(settings, "carol", gate=None),
    }
    set_alias(settings, MODEL, CHAMPION, out["champion"])
    return out


def test_start_is_refused_unless_a_reviewer_who_did_not_train_it_rolls_out_a_gated_version(
    settings: Settings, spec: ModelSpec, versions: dict[str, str]
) -> None:
    with pytest.raises(ReviewerNotAllowed, match="'carol' is not a reviewer"):
        start_rollout(settings, spec, versions["challenger"], "shadow", 1.0, "ab1", "carol", now=START)
    with pytest.raises(SelfApproval, match="'alice' triggered its training"):
        start_rollout(settings, spec, versions["alices"], "shadow", 1.0, "ab1", "alice", now=START)
    with pytest.raises(GateNotPassed, match="gate status is 'missing'"):
        start_rollout(settings, spec, versions["ungated"], "shadow", 1.0, "ab1", "alice", now=START)
    with pytest.raises(RolloutError, match="is the champion already"):
        start_rollout(settings, spec, versions["champion"], "shadow", 1.0, "ab1", "alice", now=START)
    with pytest.raises(RolloutError, match=r"split share 0.7: .* \(0, 0.5\]"):
        start_rollout(settings, spec, versions["challenger"], "split", 0.7, "ab1", "alice", now=START)
    with pytest.raises(RolloutError, match="rollout name 'AB 1'"):
        start_rollout(settings, spec, versions["challenger"], "shadow", 1.0, "AB 1", "alice", now=START)

    assert aliases(settings, MODEL) == {"champion": versions["champion"]}
    assert rollout_history(settings, MODEL) == [] and read_audit(settings, MODEL) == []


def test_a_second_rollout_is_refused_naming_the_active_one(
    settings: Settings, spec: ModelSpec, versions: dict[str, str]
) -> None:
    start_rollout(settings, spec, versions["challenger"], "split", 0.1, "ab1", "alice", now=START)

    with pytest.raises(RolloutError, match=r"active rollout 'ab1' \(split, v2, started by alice.*rollout-end"):
        start_rollout(settings, spec, versions["alices"], "shadow", 1.0, "ab2", "bob", now=START)
    assert [r.name for r in active_rollouts(settings, MODEL)] == ["ab1"]


def test_start_then_stop_leaves_the_champion_and_keeps_the_history(
    settings: Settings, spec: ModelSpec, versions: dict[str, str]
) -> None:
    challenger = versions["challenger"]

    started = start_rollout(settings, spec, challenger, "shadow", 1.0, "ab1", "alice", "try it", now=START)

    assert aliases(settings, MODEL) == {"champion": versions["champion"], "rollout-ab1": challenger}
    (active,) = active_rollouts(settings, MODEL)  # what serving reads
    assert active == started
    assert (active.mode, active.share, active.arm, active.started_by, active.started_at) == (
        "shadow",
        1.0,
        "shadow:ab1",
        "alice",
        START,
    )

    ended = end_rollout(settings, spec, None, "bob", promote=False, comment="enough", now=START + dt.timedelta(days=9))

    assert aliases(settings, MODEL) == {"champion": versions["champion"]}
    assert active_rollouts(settings, MODEL) == []
    (history,) = rollout_history(settings, MODEL)
    assert history == ended and not history.active
    assert (history.ended_by, history.outcome, history.ended_at) == ("bob", "stopped", START + dt.timedelta(days=9))
    events = read_audit(settings, MODEL)
    assert [(e["action"], e["version"], e["by"]) for e in events] == [
        ("rollout-start", challenger, "alice"),
        ("rollout-stop", challenger, "bob"),
    ]
    assert events[0]["mode"] == "shadow" and events[0]["champion"] == versions["champion"]
    with pytest.raises(RolloutError, match="had a rollout named 'ab1' already"):
        start_rollout(settings, spec, challenger, "shadow", 1.0, "ab1", "alice")


def test_promote_moves_the_champion_through_the_promotion_checks(
    settings: Settings, spec: ModelSpec, versions: dict[str, str]
) -> None:
    challenger = versions["challenger"]
    start_rollout(settings, spec, challenger, "split", 0.2, "ab1", "alice", now=START)

    with pytest.raises(ReviewerNotAllowed):
        end_rollout(settings, spec, "ab1", "carol", promote=True, freshness=FRESH)
    with pytest.raises(FeaturesNotFresh):
        end_rollout(settings, spec, "ab1", "bob", promote=True, freshness=STALE)
    assert aliases(settings, MODEL)["rollout-ab1"] == challenger  # refused: the rollout goes on

    ended = end_rollout(settings, spec, "ab1", "bob", promote=True, comment="better AUC", freshness=FRESH)

    assert ended.outcome == "promoted"
    assert aliases(settings, MODEL) == {"champion": challenger, "previous": versions["champion"]}
    assert [(e["action"], e["version"]) for e in read_audit(settings, MODEL)] == [
        ("rollout-start", challenger),
        ("ask", challenger),  # the stale-features attempt asked too, and was refused
        ("ask", challenger),
        ("promote", challenger),
        ("rollout-promote", challenger),
    ]


def test_split_membership_is_sticky_and_follows_the_share() -> None:
    inside = [in_split("ab1", str(uid), 0.1) for uid in range(20_000)]
    assert inside == [in_split("ab1", str(uid), 0.1) for uid in range(20_000)]
    assert 0.09 < sum(inside) / len(inside) < 0.11
