"""Evaluation of a candidate against the champion on the same test rows, and the promotion gate."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from pipelines.evaluation.evaluate import Evaluation, EvaluationError, evaluate_candidate, load_evaluation
from pipelines.evaluation.gate import GateCheck, GateDecision, apply_gate, record_gate
from pipelines.lake import Lake
from pipelines.registry.registry import get_version, set_alias
from pipelines.settings import Settings
from pipelines.specs import ModelSpec
from pipelines.training.dataset import save_training_set
from pipelines.training.synthetic import synthetic_training_frame
from pipelines.training.train import train_model
from tests.conftest import quick_spec

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
        baseline=None if baseline is None else "logistic regression on signal_1",
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
    assert decision.summary.startswith("rejected: purchase_intent v2 (roc_auc 0.6500 on 1000 rows out of time")
    assert "with no champion yet, against the baseline (logistic regression on signal_1)" in decision.summary
    assert "2 of 3 checks failed: roc_auc 0.6500 is below the floor 0.7" in decision.summary
    assert "roc_auc 0.6500 does not beat the baseline's 0.7000" in decision.summary


def test_the_baseline_check_asks_for_the_specs_lift(spec: ModelSpec) -> None:
    lifted = spec.model_copy(update={"gate": spec.gate.model_copy(update={"min_lift_over_baseline": 0.02})})
    scored = evaluation({"roc_auc": 0.81, "calibration_error": 0.01}, baseline={"roc_auc": 0.80})

    decision = apply_gate(lifted, scored)

    (baseline,) = [c for c in decision.checks if c.kind == "baseline"]
    assert not baseline.passed and baseline.threshold == pytest.approx(0.82) and baseline.baseline_value == 0.80
    assert "roc_auc 0.8100 does not beat the baseline's 0.8000 by 0.02" in decision.summary
    assert apply_gate(spec, scored).passed


def test_no_rubber_stamp_when_the_specs_baseline_could_not_be_scored(spec: ModelSpec) -> None:
    decision = apply_gate(spec, evaluation({"roc_auc": 0.80, "calibration_error": 0.01}))

    assert not decision.passed
    (baseline,) = [c for c in decision.checks if not c.passed]
    assert baseline.kind == "baseline" and baseline.threshold is None
    assert "the baseline's value could not be computed" in decision.summary


def test_without_champion_or_baseline_the_summary_says_only_floors_applied(spec: ModelSpec) -> None:
    no_baseline = spec.model_copy(update={"baseline": None})
    decision = apply_gate(no_baseline, evaluation({"roc_auc": 0.75, "calibration_error": 0.01}))

    assert decision.passed and {c.kind for c in decision.checks} == {"floor"}
    assert "with no champion and no baseline in its spec: only the floors applied" in decision.summary
    assert decision.summary.startswith("passed:") and "all 2 checks held" in decision.summary


def test_a_regression_against_the_champion_fails_and_names_the_metric(spec: ModelSpec) -> None:
    decision = apply_gate(spec, evaluation({"roc_auc": 0.78, "calibration_error": 0.01}, champion={"roc_auc": 0.80}))

    assert not decision.passed
    (regression,) = [c for c in decision.checks if not c.passed]
    assert regression.metric == "roc_auc" and regression.kind == "regression"
    assert regression.champion_value == 0.80 and regression.threshold == pytest.approx(0.79)
    assert (
        "1 of 3 checks failed: roc_auc dropped 0.0200 against champion v1 (0.8000 -> 0.7800), "
        "more than the allowed 0.01." in decision.summary
    )


def test_a_candidate_within_the_allowed_regression_passes(spec: ModelSpec) -> None:
    decision = apply_gate(spec, evaluation({"roc_auc": 0.795, "calibration_error": 0.01}, champion={"roc_auc": 0.80}))

    assert decision.passed and all(c.passed for c in decision.checks)
    assert decision.summary.startswith("passed:") and "against champion v1" in decision.summary
    assert {c.kind for c in decision.checks} == {"floor", "regression"}  # the baseline is for first models


def test_lower_is_better_metrics_are_bounded_from_above(spec: ModelSpec) -> None:
    gate = spec.gate.model_copy(update={"floors": {"log_loss": 0.5}, "max_regression": {"log_loss": 0.02}})
    strict = spec.model_copy(update={"gate": gate})

    assert apply_gate(strict, evaluation({"log_loss": 0.45}, champion={"log_loss": 0.44})).passed
    worse = apply_gate(strict, evaluation({"log_loss": 0.47}, champion={"log_loss": 0.44}))
    assert not worse.passed and [c.kind for c in worse.checks if not c.passed] == ["regression"]
    assert "log_loss rose 0.0300 against champion v1 (0.4400 -> 0.4700), more than the allowed 0.02" in worse.summary
    ceiling = apply_gate(strict, evaluation({"log_loss": 0.55}, champion={"log_loss": 0.55}))
    assert "log_loss 0.5500 is above the ceiling 0.5" in ceiling.summary


def test_a_metric_the_candidate_lacks_fails_its_check(spec: ModelSpec) -> None:
    decision = apply_gate(spec, evaluation({"roc_auc": 0.80}, champion={"roc_auc": 0.80}))

    (missing,) = [c for c in decision.checks if not c.passed]
    assert (missing.metric, missing.kind, missing.value) == ("calibration_error", "floor", None)
    assert "calibration_error could not be computed on the evaluation rows" in decision.summary


def test_a_regression_in_one_slice_fails_the_gate_and_small_slices_are_not_gated(spec: ModelSpec) -> None:
    slices = [_slice("1", 0.80, 0.80), _slice("3", 0.691, 0.742), _slice("7", 0.50, 0.90, rows=20, positives=3)]
    decision = apply_gate(
        spec, evaluation({"roc_auc": 0.80, "calibration_error": 0.01}, champion={"roc_auc": 0.80}, slices=slices)
    )

    assert not decision.passed
    (failed,) = [c for c in decision.checks if not c.passed]
    assert (failed.kind, failed.slice) == ("slice_regression", "category=3")
    assert (
        "roc_auc in slice category=3 dropped 0.0510 against champion v1 (0.7420 -> 0.6910), "
        "more than the allowed 0.03" in decision.summary
    )
    assert decision.not_gated == ["category=7 (too small: 20 rows, 3 positives)"]
    assert decision.summary.endswith("Not gated: category=7 (too small: 20 rows, 3 positives).")
    assert [c.slice for c in decision.checks if c.kind == "slice_regression"] == ["category=1", "category=3"]


def test_a_slice_where_the_champion_has_no_value_is_listed_not_gated(spec: ModelSpec) -> None:
    undefined = _slice("2", 0.80, 0.80)
    del undefined["metrics"]["champion"]["roc_auc"]
    decision = apply_gate(
        spec, evaluation({"roc_auc": 0.80, "calibration_error": 0.01}, champion={"roc_auc": 0.80}, slices=[undefined])
    )

    assert decision.passed
    assert decision.not_gated == ["category=2 (roc_auc undefined for the champion there)"]
    assert decision.summary.endswith("Not gated: category=2 (roc_auc undefined for the champion there).")


# -- evaluation against the registry -----------------------------------------------------------------------
def _true_probability(test: pd.DataFrame) -> np.ndarray:
    """The synthetic generator's own probabilities (its default coefficients): the Bayes-optimal scorer."""
    logit = -1.0 + test[["signal_1", "signal_2", "signal_3"]].to_numpy() @ np.array([1.5, -1.0, 0.75])
    return 1 / (1 + np.exp(-logit))


def test_evaluation_without_a_champion_scores_the_candidate_and_logs_to_its_run(
    settings: Settings, lake: Lake, spec: ModelSpec, tmp_path: Path
) -> None:
    ts = save_training_set(lake, spec, DAY, synthetic_training_frame(spec, DAY))
    trained = train_model(settings, spec, ts)
    oracle = _true_probability(ts.split("test"))

    result = evaluate_candidate(settings, spec, trained.model_version, ts, oracle_scores=oracle)

    assert result.champion_version is None and result.champion is None
    assert set(result.candidate) == {"roc_auc", "pr_auc", "log_loss", "calibration_error"}
    assert set(result.overall) == {"candidate", "baseline", "oracle"}  # no champion yet
    assert result.baseline == "logistic regression on signal_1"
    for scorer in result.overall.values():
        for estimate in scorer.values():
            assert estimate["low"] <= estimate["value"] <= estimate["high"]
    assert result.overall["oracle"]["roc_auc"]["value"] > result.overall["baseline"]["roc_auc"]["value"]
    assert set(result.differences) == {"baseline", "oracle"}
    diff = result.differences["oracle"]["roc_auc"]
    assert diff["value"] == pytest.approx(result.candidate["roc_auc"] - result.overall["oracle"]["roc_auc"]["value"])
    assert [(s["slice"], s["value"]) for s in result.slices if s["slice"] != "category"] == [
        ("user_tenure", "new"),
        ("user_tenure", "returning"),
        ("price_band", "low"),
        ("price_band", "mid"),
        ("price_band", "high"),
    ]
    assert result.rows == ts.row_counts["test"] == sum(s["rows"] for s in result.slices if s["slice"] == "category")
    # The same test rows as training's own test metrics.
    assert result.candidate["roc_auc"] == pytest.approx(trained.metrics["test_roc_auc"])
    client = MlflowClient(settings.mlflow_tracking_uri)
    run = client.get_run(trained.run_id)
    assert run.data.metrics["eval_candidate_roc_auc"] == pytest.approx(result.candidate["roc_auc"])
    assert run.data.metrics["eval_bayes_optimal_roc_auc"] == pytest.approx(result.overall["oracle"]["roc_auc"]["value"])
    assert "eval_champion_roc_auc" not in run.data.metrics
    assert "evaluation.json" in {a.path for a in client.list_artifacts(trained.run_id)}
    scores = pd.read_parquet(client.download_artifacts(trained.run_id, "evaluation/scores.parquet", str(tmp_path)))
    assert list(scores.columns) == [
        "label",
        "candidate",
        "champion",
        "baseline",
        "oracle",
        "slice.user_tenure",
        "slice.category",
        "slice.price_band",
    ]
    assert scores["champion"].isna().all() and np.allclose(scores["oracle"], oracle)
    assert len(scores) == result.rows
    json.dumps(result.to_dict(), allow_nan=False)  # strict JSON for XCom and reports
    assert load_evaluation(settings, spec.name, trained.model_version) == result

    decision = apply_gate(spec, result)
    record_gate(settings, spec, trained.model_version, decision)
    tags = get_version(settings, spec.name, trained.model_version).tags
    assert decision.passed == (tags["gate.status"] == "passed")
    assert [c["kind"] for c in json.loads(tags["gate.checks"])] == ["floor", "floor", "baseline"]
    assert client.get_run(trained.run_id).data.tags["gate.status"] == tags["gate.status"]
    assert client.get_run(trained.run_id).data.metrics["gate_passed"] == float(decision.passed)
    assert "gate.json" in {a.path for a in client.list_artifacts(trained.run_id)}

    # A verdict too long for a tag keeps valid JSON, failed checks first; the run's gate.json keeps them all.
    many = [GateCheck("roc_auc", "slice_regression", 0.8, 0.7, True, slice=f"category={i}") for i in range(300)]
    many.append(GateCheck("roc_auc", "slice_regression", 0.6, 0.7, False, slice="category=last"))
    record_gate(settings, spec, trained.model_version, GateDecision(False, many, "rejected: " + "x" * 9000))
    tags = get_version(settings, spec.name, trained.model_version).tags
    kept = json.loads(tags["gate.checks"])
    assert kept[0]["slice"] == "category=last" and 10 < len(kept) < 301
    assert tags["gate.checks_omitted"] == f"{301 - len(kept)} of 301 (see the run's gate.json)"
    assert len(tags["gate.summary"]) <= 5000
    assert tags["gate.summary"].endswith("(truncated; the full verdict is the run's gate.json)")


def test_an_oracle_not_covering_the_test_rows_is_refused(settings: Settings, lake: Lake, spec: ModelSpec) -> None:
    ts = save_training_set(lake, spec, DAY, synthetic_training_frame(spec, DAY))
    trained = train_model(settings, spec, ts)

    with pytest.raises(EvaluationError, match=r"scores of \{'oracle': 3\} do not cover the 600 test rows"):
        evaluate_candidate(settings, spec, trained.model_version, ts, oracle_scores=np.zeros(3))


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
    # Paired on the same resamples: the whole interval of the difference is below zero.
    assert result.differences["champion"]["roc_auc"]["high"] < 0
    decision = apply_gate(spec, result)
    record_gate(settings, spec, candidate.model_version, decision)
    tags = get_version(settings, spec.name, candidate.model_version).tags
    assert not decision.passed and tags["gate.status"] == "failed"
    assert "roc_auc" in tags["gate.summary"] and "against champion v1" in tags["gate.summary"]
    assert {"floor", "regression"} <= {c["kind"] for c in json.loads(tags["gate.checks"]) if not c["passed"]}
