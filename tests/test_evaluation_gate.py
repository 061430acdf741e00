"""Evaluation of a candidate against the champion on the same test rows, and the promotion gate."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipelines.evaluation.evaluate import Evaluation, evaluate_candidate, load_evaluation
from pipelines.evaluation.gate import apply_gate, record_gate
from pipelines.lake import Lake
from pipelines.registry.registry import get_version, set_alias
from pipelines.settings import Settings
from pipelines.specs import ModelSpec
from pipelines.training.dataset import save_training_set
from pipelines.training.synthetic import synthetic_training_frame
from pipelines.training.train import train_model
from tests.conftest import quick_spec

ROOT = Path(__file__).resolve().parents[1]
DAY = dt.date(2024, 3, 31)


@pytest.fixture
def settings(mlflow_settings: Settings) -> Settings:
    """These tests need an MLflow store: start from conftest's pre-migrated one."""
    return mlflow_settings


@pytest.fixture
def spec() -> ModelSpec:
    return quick_spec(40, 5, train=4, validation=2, test=2)


def evaluation(candidate: dict[str, float], champion: dict[str, float] | None = None) -> Evaluation:
    return Evaluation(
        model="purchase_intent",
        candidate_version="2",
        champion_version=None if champion is None else "1",
        logical_date="2024-03-31",
        training_set_digest="d",
        rows=1000,
        label_rate=0.3,
        candidate=candidate,
        champion=champion,
    )


# -- the gate on its own -----------------------------------------------------------------------------------
def test_without_a_champion_the_floors_still_apply(spec: ModelSpec) -> None:
    decision = apply_gate(spec, evaluation({"roc_auc": 0.65, "pr_auc": 0.4, "log_loss": 0.6}))

    assert not decision.passed
    (check,) = decision.checks
    assert (check.metric, check.kind, check.threshold, check.passed) == ("roc_auc", "floor", 0.70, False)
    assert "roc_auc 0.6500 >= floor 0.7000: FAILED" in decision.summary and "no champion" in decision.summary


def test_a_regression_against_the_champion_fails_and_names_the_metric(spec: ModelSpec) -> None:
    decision = apply_gate(spec, evaluation({"roc_auc": 0.78}, champion={"roc_auc": 0.80}))

    assert not decision.passed
    floor, regression = decision.checks
    assert floor.passed and not regression.passed
    assert regression.metric == "roc_auc" and regression.kind == "regression"
    assert regression.champion_value == 0.80 and regression.threshold == pytest.approx(0.79)
    assert decision.summary.startswith("failed (champion v1): roc_auc 0.7800 >= 0.7900")


def test_a_candidate_within_the_allowed_regression_passes(spec: ModelSpec) -> None:
    decision = apply_gate(spec, evaluation({"roc_auc": 0.795}, champion={"roc_auc": 0.80}))

    assert decision.passed and all(c.passed for c in decision.checks)
    assert decision.summary.startswith("passed (champion v1)")


def test_lower_is_better_metrics_are_bounded_from_above(spec: ModelSpec) -> None:
    gate = spec.gate.model_copy(update={"floors": {"log_loss": 0.5}, "max_regression": {"log_loss": 0.02}})
    strict = spec.model_copy(update={"gate": gate})

    assert apply_gate(strict, evaluation({"log_loss": 0.45}, champion={"log_loss": 0.44})).passed
    worse = apply_gate(strict, evaluation({"log_loss": 0.47}, champion={"log_loss": 0.44}))
    assert not worse.passed and [c.kind for c in worse.checks if not c.passed] == ["regression"]


# -- evaluation against the registry -----------------------------------------------------------------------
def test_evaluation_without_a_champion_scores_the_candidate_and_logs_to_its_run(
    settings: Settings, lake: Lake, spec: ModelSpec
) -> None:
    ts = save_training_set(lake, spec, DAY, synthetic_training_frame(spec, DAY))
    trained = train_model(settings, spec, ts)

    result = evaluate_candidate(settings, spec, trained.model_version, ts)

    assert result.champion_version is None and result.champion is None
    assert set(result.candidate) == {"roc_auc", "pr_auc", "log_loss"}
    assert result.rows == ts.row_counts["test"]
    # The same test rows as training's own test metrics.
    assert result.candidate["roc_auc"] == pytest.approx(trained.metrics["test_roc_auc"])
    client = MlflowClient(settings.mlflow_tracking_uri)
    run = client.get_run(trained.run_id)
    assert run.data.metrics["eval_candidate_roc_auc"] == pytest.approx(result.candidate["roc_auc"])
    assert "evaluation.json" in {a.path for a in client.list_artifacts(trained.run_id)}
    json.dumps(result.to_dict())  # JSON-able for XCom and reports
    assert load_evaluation(settings, spec.name, trained.model_version) == result

    decision = apply_gate(spec, result)
    record_gate(settings, spec, trained.model_version, decision)
    tags = get_version(settings, spec.name, trained.model_version).tags
    assert decision.passed and tags["gate.status"] == "passed"
    assert json.loads(tags["gate.checks"])[0]["metric"] == "roc_auc"


def test_a_worse_candidate_is_compared_with_the_champion_on_the_same_rows_and_fails_the_gate(
    settings: Settings, lake: Lake, spec: ModelSpec
) -> None:
    good = save_training_set(lake, spec, DAY, synthetic_training_frame(spec, DAY))
    champion = train_model(settings, spec, good)
    set_alias(settings, spec.name, "champion", champion.model_version)
    later = DAY + dt.timedelta(days=1)
    # Labels carrying no signal at all: the candidate learns nothing useful.
    noise = save_training_set(lake, spec, later, synthetic_training_frame(spec, later, coefs=(0.0, 0.0, 0.0), seed=1))
    candidate = train_model(settings, spec, noise)

    result = evaluate_candidate(settings, spec, candidate.model_version, good)

    assert result.champion_version == champion.model_version
    assert result.champion is not None
    assert result.champion["roc_auc"] > 0.75 > result.candidate["roc_auc"]
    decision = apply_gate(spec, result)
    record_gate(settings, spec, candidate.model_version, decision)
    tags = get_version(settings, spec.name, candidate.model_version).tags
    assert not decision.passed and tags["gate.status"] == "failed"
    assert "roc_auc" in tags["gate.summary"] and "champion v1" in tags["gate.summary"]
    assert {c["kind"] for c in json.loads(tags["gate.checks"]) if not c["passed"]} == {"floor", "regression"}
