"""Training sets and LightGBM training into the MLflow registry (real SQLite store under a temporary home)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from pydantic import ValidationError

from pipelines.data import schemas
from pipelines.lake import Lake
from pipelines.registry.registry import list_versions
from pipelines.settings import Settings
from pipelines.specs import ModelSpec, WindowSpec
from pipelines.training.dataset import (
    TrainingSet,
    TrainingSetError,
    assemble_training_frame,
    load_training_set,
    save_step_outputs,
    save_training_set,
    split_days,
)
from pipelines.training.synthetic import synthetic_training_frame
from pipelines.training.train import TAG_DIGEST, TAG_LOGICAL_DATE, train_model
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


def test_split_days_are_time_ordered_and_leave_a_complete_label_window(spec: ModelSpec) -> None:
    splits = split_days(spec, DAY)
    assert splits.test[-1] == DAY - dt.timedelta(days=7)  # its label window ends exactly on the logical date
    assert len(splits.train) == 4 and len(splits.validation) == 2 and len(splits.test) == 2
    assert max(splits.train) < min(splits.validation) and max(splits.validation) < min(splits.test)
    assert splits.days == sorted(set(splits.days))


def test_max_train_days_reaches_back_over_the_days_whose_features_the_lake_holds(spec: ModelSpec) -> None:
    longer = spec.model_copy(
        update={"windows": WindowSpec(train_days=4, validation_days=2, test_days=2, max_train_days=7)}
    )
    shipped = split_days(spec, DAY)
    first = shipped.train[0]
    before = [first - dt.timedelta(days=i) for i in range(1, 11)]  # the 10 days before the shipped train window
    # Nothing older held: the spec's own train_days; the validation and test days never move.
    assert split_days(longer, DAY, set(shipped.days)) == shipped
    # Two older days held, then a gap: the train split takes those two and stops at the gap.
    held = {*shipped.days, before[0], before[1], before[3]}
    grown = split_days(longer, DAY, held)
    assert grown.train == (before[1], before[0], *shipped.train)
    assert (grown.validation, grown.test) == (shipped.validation, shipped.test)
    # Every older day held: at most max_train_days; without max_train_days the held days change nothing.
    capped = split_days(longer, DAY, {*shipped.days, *before})
    assert len(capped.train) == 7 and capped.train[-1] == shipped.train[-1] and capped.days == sorted(capped.days)
    assert split_days(spec, DAY, {*shipped.days, *before}) == shipped
    with pytest.raises(ValidationError, match="'max_train_days' \\(3\\) must be at least 'train_days' \\(4\\)"):
        WindowSpec(train_days=4, max_train_days=3)


def test_training_set_round_trips_through_the_lake_with_the_same_digest(spec: ModelSpec, lake: Lake) -> None:
    frame = synthetic_training_frame(spec, DAY, users_per_day=50)
    saved = save_training_set(lake, spec, DAY, frame)
    loaded = load_training_set(lake, spec, DAY)

    assert saved.uri.endswith("training_sets/purchase_intent/ds=2024-03-31/data.parquet")
    assert loaded.digest == saved.digest
    assert loaded.row_counts == {"train": 200, "validation": 100, "test": 100, "total": 400}
    assert loaded.feature_columns == ["signal_1", "signal_2", "signal_3", "noise_1", "noise_2", "avg_price_viewed_30d"]
    assert {"ctx_days_since_signup", "ctx_top_category"} <= set(loaded.frame.columns)
    assert 0.0 < loaded.label_rate < 1.0
    changed = frame.assign(label=1 - frame["label"])
    assert save_training_set(lake, spec, DAY, changed).digest != saved.digest


def test_split_columns_and_matrices_are_the_split_rows_whether_contiguous_or_not(spec: ModelSpec) -> None:
    frame = synthetic_training_frame(spec, DAY, users_per_day=20)
    ordered = TrainingSet(spec.name, DAY, ("user_id",), frame, "mem://ordered", "d")
    shuffled = frame.sample(frac=1.0, random_state=1)  # interleaved splits: index arrays, not slices
    mixed = TrainingSet(spec.name, DAY, ("user_id",), shuffled, "mem://mixed", "d")

    for ts in (ordered, mixed):
        for name in ("train", "validation", "test"):
            rows = ts.frame[ts.frame["split"] == name]
            assert ts.row_counts[name] == len(rows)
            matrix = ts.matrix(name)
            assert matrix.dtype == np.float64 and matrix.shape == (len(rows), len(ts.feature_columns))
            np.testing.assert_array_equal(matrix, rows[ts.feature_columns].to_numpy(dtype="float64"))
            np.testing.assert_array_equal(ts.labels(name), rows["label"].to_numpy())
            pd.testing.assert_frame_equal(ts.split(name), rows)
            pd.testing.assert_frame_equal(ts.features(name, head=3), rows[ts.feature_columns].head(3))
    with pytest.raises(ValueError, match="read-only"):
        ordered.labels("train")[0] = 1  # a view of the frame: must not be written through
    with pytest.raises(TrainingSetError, match="unknown split 'holdout'"):
        ordered.matrix("holdout")


def test_assembly_refuses_a_feature_join_that_lost_rows(spec: ModelSpec) -> None:
    splits = split_days(spec, DAY)
    stamps = [pd.Timestamp(schemas.as_of(d)) for d in splits.days]
    entity = pd.DataFrame({"user_id": [1] * len(stamps), "event_timestamp": stamps})
    labels = entity.rename(columns={"event_timestamp": "as_of"}).assign(label=0)
    features = entity.iloc[1:].assign(views_7d=1.0)  # what Feast's file store does to early rows
    with pytest.raises(TrainingSetError, match=f"returned {len(stamps) - 1} of {len(stamps)} entity rows"):
        assemble_training_frame(entity, labels, features, splits, "user_id")


def test_training_registers_a_version_with_lineage_metrics_and_artifacts(
    settings: Settings, lake: Lake, spec: ModelSpec
) -> None:
    ts = save_training_set(lake, spec, DAY, synthetic_training_frame(spec, DAY))

    result = train_model(settings, spec, ts)

    assert result.model_version == "1" and not result.reused
    assert result.metrics["test_roc_auc"] > 0.75  # the planted logistic signal is learnable
    client = MlflowClient(settings.mlflow_tracking_uri)
    version = client.get_model_version(spec.name, "1")
    assert version.run_id == result.run_id
    assert version.tags[TAG_LOGICAL_DATE] == "2024-03-31" and version.tags[TAG_DIGEST] == ts.digest
    run = client.get_run(result.run_id)
    assert run.data.params["num_threads"] == "1" and run.data.params["objective"] == "binary"
    assert run.data.params["num_boost_round"] == "40" and run.data.params["seed"] == "42"
    assert {
        "validation_roc_auc",
        "test_pr_auc",
        "test_log_loss",
        "best_iteration",
        "rows_test",
        "label_rate",
    } <= set(run.data.metrics)
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == spec.name
    assert experiment.artifact_location.startswith(Path(settings.mlflow_artifact_root).as_uri())
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"feature_importance.json", "feature_importance.png"} <= artifacts
    importance = json.loads(
        Path(
            mlflow.artifacts.download_artifacts(
                run_id=result.run_id,
                artifact_path="feature_importance.json",
                tracking_uri=settings.mlflow_tracking_uri,
            )
        ).read_text()
    )
    assert max(importance, key=importance.get) == "signal_1"  # the largest planted coefficient
    (dataset_input,) = run.inputs.dataset_inputs
    assert json.loads(dataset_input.dataset.source)["uri"] == ts.uri
    # Lineage: the code's commit, the spec and the definitions of the Feast views the features came from.
    tags = run.data.tags
    assert len(tags["code.git_commit"]) == 40 and tags["code.dirty"] in {"true", "false"}
    assert tags["feast.feature_service"] == "purchase_intent" and len(tags["feast.view.user_behavior"]) == 12
    assert version.tags["spec.digest"] == tags["spec.digest"]
    assert "model_spec.json" in artifacts
    model = mlflow.models.get_model_info(f"models:/{spec.name}/1")
    assert model.signature is not None
    assert [c.name for c in model.signature.inputs.inputs] == ts.feature_columns


def test_rerun_for_the_same_logical_date_reuses_the_version(settings: Settings, lake: Lake, spec: ModelSpec) -> None:
    ts = save_training_set(lake, spec, DAY, synthetic_training_frame(spec, DAY, users_per_day=150))
    first = train_model(settings, spec, ts)

    again = train_model(settings, spec, load_training_set(lake, spec, DAY))

    assert again.reused and again.model_version == first.model_version and again.run_id == first.run_id
    assert again.metrics["test_roc_auc"] == pytest.approx(first.metrics["test_roc_auc"])
    assert [v.version for v in list_versions(settings, spec.name)] == ["1"]


def test_training_set_from_the_lake_labels_every_featured_user_with_its_own_day_features(
    settings: Settings, lake: Lake, spec: ModelSpec
) -> None:
    from pipelines.data import simulator
    from pipelines.features.user_features import build_user_features, write_user_features
    from pipelines.lake import date_range
    from pipelines.training.dataset import build_training_set

    config = simulator.SimulationConfig(n_users=300, n_products=100, start=dt.date(2025, 1, 1))
    logical = config.start + dt.timedelta(days=20)
    for d in date_range(config.start, logical):
        lake.write("events", d, simulator.simulate_day(config, d), schema=schemas.EVENTS)
        lake.write("users", d, simulator.users_snapshot(config, d), schema=schemas.USERS)
        lake.write("follows", d, simulator.follows_snapshot(config, d), schema=schemas.FOLLOWS)
    splits = split_days(spec, logical)
    for d in splits.days:
        write_user_features(lake, d, build_user_features(lake, d))

    ts = build_training_set(settings, lake, spec, logical)

    featured = {d: lake.read("features/user_behavior", d) for d in splits.days}
    assert ts.row_counts["total"] == sum(len(f) for f in featured.values())
    newest = splits.test[-1]
    rows = ts.frame[ts.frame["event_timestamp"] == pd.Timestamp(schemas.as_of(newest))]
    assert set(rows["split"]) == {"test"}
    # Point in time: each row carries the features computed for its own as-of day, nothing later.
    expected = featured[newest].set_index("user_id")[ts.feature_columns].sort_index()
    pd.testing.assert_frame_equal(rows.set_index("user_id")[ts.feature_columns].sort_index(), expected)
    # The label is whether the user purchased in the 7 days after the as-of time.
    events = lake.read_range("events", newest + dt.timedelta(days=1), newest + dt.timedelta(days=7))
    buyers = set(events.loc[events["event_type"] == "purchase", "user_id"])
    assert set(rows.loc[rows["label"] == 1, "user_id"]) == buyers & set(rows["user_id"])
    loaded = load_training_set(lake, spec, logical)
    assert loaded.digest == ts.digest
    # The Feast lineage is recorded by this step, beside the set; a world without its truth has no oracle.
    assert loaded.lineage == ts.lineage and ts.lineage["feast.feature_service"] == "purchase_intent"
    assert loaded.oracle is None
    # Context columns for slices are there, and are not features.
    assert (rows["ctx_days_since_signup"] >= 0).all() and rows["ctx_top_category"].notna().all()
    assert not any(c.startswith("ctx_") for c in ts.feature_columns)
    assert ts.train_days == 4
    # With max_train_days the set reaches back over the older days whose features are built, and says so.
    older = [splits.train[0] - dt.timedelta(days=i) for i in (1, 2)]
    for d in older:
        write_user_features(lake, d, build_user_features(lake, d))
    windows = spec.windows.model_copy(update={"max_train_days": 30})
    longer = build_training_set(settings, lake, spec.model_copy(update={"windows": windows}), logical)
    assert longer.train_days == 6 and load_training_set(lake, spec, logical).train_days == 6
    added = sum(len(lake.read("features/user_behavior", d)) for d in older)
    assert longer.row_counts["train"] == ts.row_counts["train"] + added
    assert (longer.row_counts["validation"], longer.row_counts["test"]) == (
        ts.row_counts["validation"],
        ts.row_counts["test"],
    )


def test_the_step_keeps_bayes_optimal_scores_and_lineage_beside_the_set_for_training_and_evaluation(
    settings: Settings, lake: Lake, spec: ModelSpec
) -> None:
    ts = save_training_set(lake, spec, DAY, synthetic_training_frame(spec, DAY, users_per_day=100))
    oracle = np.linspace(0.01, 0.99, ts.row_counts["test"])
    lineage = {"feast.feature_service": "purchase_intent", "feast.view.user_behavior": "0123456789ab"}

    save_step_outputs(lake, spec, ts, oracle, lineage, train_days=6)
    loaded = load_training_set(lake, spec, DAY)

    np.testing.assert_array_equal(loaded.oracle, oracle)
    assert loaded.lineage == lineage and loaded.train_days == 6
    trained = train_model(settings, spec, loaded)
    assert "bayes_optimal_test_roc_auc" in trained.metrics
    run = MlflowClient(settings.mlflow_tracking_uri).get_run(trained.run_id)
    assert run.data.tags["feast.view.user_behavior"] == "0123456789ab"
    assert run.data.params["train_days"] == "6"  # the days the set was built on, not the spec's minimum
    # A rebuild on data without a simulated truth drops the old scores; scores must cover the test rows.
    save_step_outputs(lake, spec, ts, None, lineage)
    assert load_training_set(lake, spec, DAY).oracle is None
    # A set saved again without the step's outputs does not inherit those of the set it replaced.
    save_step_outputs(lake, spec, ts, oracle, lineage)
    changed = save_training_set(lake, spec, DAY, ts.frame.assign(label=1 - ts.frame["label"]))
    replaced = load_training_set(lake, spec, DAY)
    assert replaced.digest == changed.digest and replaced.oracle is None and replaced.lineage == {}
    with pytest.raises(TrainingSetError, match="3 Bayes-optimal scores for the 200 test rows"):
        save_step_outputs(lake, spec, ts, np.zeros(3), lineage)


def test_feature_lineage_digests_are_stable_and_cover_on_demand_views(settings: Settings) -> None:
    from pipelines.specs import load_spec
    from pipelines.training.lineage import feature_lineage

    spec = load_spec(Path(__file__).resolve().parents[1] / "models" / "order_fraud.yaml")
    first, again = feature_lineage(settings, spec), feature_lineage(settings, spec)
    assert first == again
    assert {"feast.view.order_risk", "feast.view.order_value"} <= set(first)
