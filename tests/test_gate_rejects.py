"""The gate catches what matters: a degraded candidate, and a regression confined to one slice."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest

from pipelines.evaluation.evaluate import Evaluation, evaluate_candidate, evaluate_scores
from pipelines.evaluation.gate import apply_gate, record_gate
from pipelines.evaluation.metrics import compute_metrics, recall_at_fpr
from pipelines.evaluation.slices import slice_values
from pipelines.lake import Lake
from pipelines.registry.registry import get_version, set_alias
from pipelines.settings import Settings
from pipelines.specs import GateSpec, ModelSpec, SliceSpec
from pipelines.training.dataset import SPLIT_COLUMN, load_training_set, save_training_set
from pipelines.training.synthetic import synthetic_training_frame
from pipelines.training.train import train_model
from tests.conftest import quick_spec

DAY = dt.date(2024, 3, 31)


@pytest.fixture
def settings(mlflow_settings: Settings) -> Settings:
    return mlflow_settings


@pytest.fixture
def spec() -> ModelSpec:
    return quick_spec(40, 5, train=4, validation=2, test=2)


def test_a_candidate_trained_on_shuffled_features_is_rejected_naming_the_failed_checks(
    settings: Settings, lake: Lake, spec: ModelSpec
) -> None:
    good = save_training_set(lake, spec, DAY, synthetic_training_frame(spec, DAY, users_per_day=400))
    champion = train_model(settings, spec, good)
    set_alias(settings, spec.name, "champion", champion.model_version)
    # The same rows with every feature column shuffled within the train and validation splits: the relation
    # between features and labels is destroyed, the columns' distributions are not.
    later = DAY + dt.timedelta(days=1)
    frame = synthetic_training_frame(spec, DAY, users_per_day=400)
    rng = np.random.default_rng(3)
    fitted = frame[SPLIT_COLUMN] != "test"
    for column in good.feature_columns:
        frame.loc[fitted, column] = rng.permutation(frame.loc[fitted, column].to_numpy())
    degraded = train_model(settings, spec, save_training_set(lake, spec, later, frame))

    result = evaluate_candidate(settings, spec, degraded.model_version, load_training_set(lake, spec, DAY))
    decision = apply_gate(spec, result)
    record_gate(settings, spec, degraded.model_version, decision)

    assert not decision.passed
    failed = {(c.kind, c.metric, c.slice) for c in decision.checks if not c.passed}
    assert {("floor", "roc_auc", None), ("regression", "roc_auc", None)} <= failed
    assert any(kind == "slice_regression" for kind, _, _ in failed)
    tags = get_version(settings, spec.name, degraded.model_version).tags
    assert tags["gate.status"] == "failed"
    assert tags["gate.summary"].startswith(f"rejected: {spec.name} v{degraded.model_version}")
    assert "roc_auc" in tags["gate.summary"] and "below the floor 0.7000" in tags["gate.summary"]
    assert "against the champion" in tags["gate.summary"] and "in slice " in tags["gate.summary"]
    recorded = {(c["kind"], c["slice"]) for c in json.loads(tags["gate.checks"]) if not c["passed"]}
    assert ("regression", None) in recorded


def test_a_regression_in_one_slice_alone_is_caught(lake: Lake, spec: ModelSpec) -> None:
    """Candidate == champion everywhere except slice category=b, where noise blurs its scores."""
    strict = spec.model_copy(
        update={
            "gate": GateSpec(
                floors={"roc_auc": 0.6},
                max_regression={"roc_auc": 0.05},
                slice_max_regression={"roc_auc": 0.03},
                min_slice_rows=50,
                min_slice_positives=10,
            )
        }
    )
    ts = save_training_set(lake, strict, DAY, synthetic_training_frame(strict, DAY, users_per_day=1000))
    test = ts.split("test").reset_index(drop=True)
    signal = test[["signal_1", "signal_2", "signal_3"]].to_numpy() @ np.array([1.5, -1.0, 0.75])
    champion = 1 / (1 + np.exp(-(signal - 1.0)))
    in_b = (test["ctx_top_category"] == "b").to_numpy()
    blurred = 1 / (1 + np.exp(-(signal - 1.0 + np.random.default_rng(0).normal(0, 1.2, len(test)))))
    candidate = np.where(in_b, blurred, champion)

    overall, slices, frame = evaluate_scores(strict, test, {"candidate": candidate, "champion": champion})
    evaluation = Evaluation(
        model=strict.name,
        candidate_version="2",
        champion_version="1",
        logical_date=str(DAY),
        training_set_digest=ts.digest,
        objective="binary",
        main_metric="roc_auc",
        rows=len(test),
        positives=int(test["label"].sum()),
        label_rate=float(test["label"].mean()),
        overall=overall,
        slices=slices,
    )
    decision = apply_gate(strict, evaluation)

    overall_check = next(c for c in decision.checks if c.kind == "regression")
    assert overall_check.passed, "the overall drop stays within the allowed regression"
    failed = [c for c in decision.checks if not c.passed]
    assert [(c.kind, c.slice) for c in failed] == [("slice_regression", "category=b")]
    assert "in slice category=b" in decision.summary and decision.summary.startswith("rejected")
    assert set(frame["slice.category"]) == {"a", "b", "c", "d"}
    b = next(s for s in slices if s["slice"] == "category" and s["value"] == "b")
    main = b["metrics"]["candidate"]["roc_auc"]
    assert main["low"] <= main["value"] <= main["high"]


def test_ranking_metrics_on_a_hand_computed_example() -> None:
    labels = np.array([2, 0, 1, 0, 0, 0, 1, 0, 0])
    scores = np.array([0.9, 0.8, 0.1, 0.2, 0.5, 0.4, 0.3, 0.9, 0.8])
    queries = np.array([1, 1, 1, 1, 2, 2, 2, 3, 3])  # query 3 has no relevant row: left out
    out = compute_metrics(labels, scores, ["ndcg_at_10", "map_at_10"], groups=queries)
    ndcg_1 = (3 + 1 / np.log2(5)) / (3 + 1 / np.log2(3))
    assert out["ndcg_at_10"] == pytest.approx((ndcg_1 + 0.5) / 2)
    assert out["map_at_10"] == pytest.approx(((1 + 2 / 4) / 2 + 1 / 3) / 2)


def test_recall_at_one_percent_false_positives() -> None:
    labels = np.r_[np.ones(10), np.zeros(200)]
    scores = np.r_[np.linspace(0.9, 0.5, 10), np.linspace(0.0, 0.6, 200)]
    # Negatives above 0.5 are those > 0.5 of 200 spread over [0, 0.6]: 2 allowed (1%), so the threshold can drop
    # to just above the third-highest negative.
    third = np.sort(scores[10:])[-3]
    assert recall_at_fpr(labels, scores, 0.01) == pytest.approx((scores[:10] > third).mean())


def test_numeric_slices_are_banded_and_missing_values_named() -> None:
    import pandas as pd

    frame = pd.DataFrame({"price": [0.0, 10.0, 80.0, np.nan], "cat": ["x", None, "y", "x"]})
    banded = slice_values(frame, SliceSpec(name="p", column="price", bands=[0.01, 25], labels=["none", "low", "high"]))
    assert banded.tolist() == ["none", "low", "high", "missing"]
    unnamed = slice_values(frame, SliceSpec(name="p", column="price", bands=[25]))
    assert unnamed.tolist() == ["<25", "<25", ">=25", "missing"]
    assert slice_values(frame, SliceSpec(name="c", column="cat")).tolist() == ["x", "missing", "y", "x"]
    with pytest.raises(ValueError, match="slice 'z' reads column 'nope'"):
        slice_values(frame, SliceSpec(name="z", column="nope"))
