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


def _points(values: dict[str, float] | None) -> dict[str, dict[str, float]] | None:
    return None if values is None else {m: {"value": v, "low": v, "high": v} for m, v in values.items()}


def evaluation(
    candidate: dict[str, float],
    champion: dict[str, float] | None = None,
    baseline: dict[str, float] | None = None,
    slices: list[dict] | None = None,
) -> Evaluation:
    overall = {"candidate": _points(candidate)}
    for name, values in (("champion", champion), ("baseline", baseline)):
        if values is not None:
            overall[name] = _points(values)
    return Evaluation(
        model="purchase_intent",
        candidate_version="2",
        champion_version=None if champion is None else "1",
        logical_date="2024-03-31",
        training_set_digest="d",
        objective="binary",
        main_metric="roc_auc",
        rows=1000,
        positives=300,
        label_rate=0.3,
        overall=overall,
        slices=slices or [],
    )


def _slice(value: str, candidate: float, champion: float, rows: int = 500, positives: int = 100) -> dict:
    return {
        "slice": "category",
        "value": value,
        "rows": rows,
        "positives": positives,
        "metrics": {"candidate": {"roc_auc": {"value": candidate}}, "champion": {"roc_auc": {"value": champion}}},
    }


# -- the gate on its own -----------------------------------------------------------------------------------
def test_without_a_champion_the_floors_and_the_baseline_apply(spec: ModelSpec) -> None:
    decision = apply_gate(spec, evaluation({"roc_auc": 0.65, "calibration_error": 0.01}, baseline={"roc_auc": 0.70}))

    assert not decision.passed
    failed = {(c.metric, c.kind) for c in decision.checks if not c.passed}
    assert failed == {("roc_auc", "floor"), ("roc_auc", "baseline")}
    assert decision.summary.startswith("rejected: purchase_intent v2")
    assert "against the spec's baseline" in decision.summary
    assert "roc_auc 0.6500 below the floor 0.7000" in decision.summary
    assert "roc_auc 0.6500 vs baseline 0.7000" in decision.summary


def test_without_champion_or_baseline_the_summary_says_only_floors_applied(spec: ModelSpec) -> None:
    decision = apply_gate(spec, evaluation({"roc_auc": 0.75, "calibration_error": 0.01}))

    assert decision.passed and {c.kind for c in decision.checks} == {"floor"}
    assert "only the floors applied" in decision.summary


def test_a_regression_against_the_champion_fails_and_names_the_metric(spec: ModelSpec) -> None:
    decision = apply_gate(spec, evaluation({"roc_auc": 0.78, "calibration_error": 0.01}, champion={"roc_auc": 0.80}))

    assert not decision.passed
    (regression,) = [c for c in decision.checks if not c.passed]
    assert regression.metric == "roc_auc" and regression.kind == "regression"
    assert regression.champion_value == 0.80 and regression.threshold == pytest.approx(0.79)
    assert "roc_auc 0.8000 -> 0.7800 (-0.0200) against the champion, allowed >= 0.7900" in decision.summary


def test_a_candidate_within_the_allowed_regression_passes(spec: ModelSpec) -> None:
    decision = apply_gate(spec, evaluation({"roc_auc": 0.795, "calibration_error": 0.01}, champion={"roc_auc": 0.80}))

    assert decision.passed and all(c.passed for c in decision.checks)
    assert decision.summary.startswith("passed:") and "against champion v1" in decision.summary


def test_lower_is_better_metrics_are_bounded_from_above(spec: ModelSpec) -> None:
    gate = spec.gate.model_copy(update={"floors": {"log_loss": 0.5}, "max_regression": {"log_loss": 0.02}})
    strict = spec.model_copy(update={"gate": gate})

    assert apply_gate(strict, evaluation({"log_loss": 0.45}, champion={"log_loss": 0.44})).passed
    worse = apply_gate(strict, evaluation({"log_loss": 0.47}, champion={"log_loss": 0.44}))
    assert not worse.passed and [c.kind for c in worse.checks if not c.passed] == ["regression"]


def test_a_regression_in_one_slice_fails_the_gate_and_small_slices_are_not_gated(spec: ModelSpec) -> None:
    slices = [_slice("1", 0.80, 0.80), _slice("3", 0.74, 0.80), _slice("7", 0.50, 0.90, rows=20, positives=3)]
    decision = apply_gate(
        spec, evaluation({"roc_auc": 0.80, "calibration_error": 0.01}, champion={"roc_auc": 0.80}, slices=slices)
    )

    assert not decision.passed
    (failed,) = [c for c in decision.checks if not c.passed]
    assert (failed.kind, failed.slice) == ("slice_regression", "category=3")
    assert "roc_auc in slice category=3 0.8000 -> 0.7400 (-0.0600)" in decision.summary
    assert decision.not_gated == ["category=7 (20 rows, 3 positives)"]


# -- evaluation against the registry -----------------------------------------------------------------------
def test_evaluation_without_a_champion_scores_the_candidate_and_logs_to_its_run(
    settings: Settings, lake: Lake, spec: ModelSpec
) -> None:
    ts = save_training_set(lake, spec, DAY, synthetic_training_frame(spec, DAY))
    trained = train_model(settings, spec, ts)

    result = evaluate_candidate(settings, spec, trained.model_version, ts)

    assert result.champion_version is None and result.champion is None
    assert set(result.candidate) == {"roc_auc", "pr_auc", "log_loss", "calibration_error"}
    assert set(result.overall) == {"candidate", "baseline"}  # no champion, no simulator truth
    for estimate in result.overall["candidate"].values():
        assert estimate["low"] <= estimate["value"] <= estimate["high"]
    assert {s["slice"] for s in result.slices} == {"user_tenure", "category", "price_band"}
    assert result.rows == ts.row_counts["test"]
    # The same test rows as training's own test metrics.
    assert result.candidate["roc_auc"] == pytest.approx(trained.metrics["test_roc_auc"])
    client = MlflowClient(settings.mlflow_tracking_uri)
    run = client.get_run(trained.run_id)
    assert run.data.metrics["eval_candidate_roc_auc"] == pytest.approx(result.candidate["roc_auc"])
    assert "evaluation.json" in {a.path for a in client.list_artifacts(trained.run_id)}
    assert "evaluation/scores.parquet" in {a.path for a in client.list_artifacts(trained.run_id, "evaluation")}
    json.dumps(result.to_dict())  # JSON-able for XCom and reports
    assert load_evaluation(settings, spec.name, trained.model_version) == result

    decision = apply_gate(spec, result)
    record_gate(settings, spec, trained.model_version, decision)
    tags = get_version(settings, spec.name, trained.model_version).tags
    assert decision.passed == (tags["gate.status"] == "passed")
    assert json.loads(tags["gate.checks"])[0]["metric"] == "roc_auc"
    assert client.get_run(trained.run_id).data.tags["gate.status"] == tags["gate.status"]
    assert "gate.json" in {a.path for a in client.list_artifacts(trained.run_id)}


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
    assert {"floor", "regression"} <= {c["kind"] for c in json.loads(tags["gate.checks"]) if not c["passed"]}
