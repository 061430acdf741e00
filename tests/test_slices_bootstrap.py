"""Metrics against hand-computed values, slices of evaluation rows, and bootstrap intervals (resampling rows for
binary models, queries for ranking ones)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, log_loss, roc_auc_score

from pipelines.evaluation.bootstrap import compare, metric_draws, resample_counts, units_of
from pipelines.evaluation.evaluate import evaluate_scores
from pipelines.evaluation.metrics import compute_metrics, per_query, recall_at_fpr
from pipelines.evaluation.slices import SliceError, ordered_values, slice_frame, slice_values
from pipelines.specs import BaselineSpec, CandidateSpec, GateSpec, LabelSpec, ModelSpec, SliceSpec
from pipelines.training.synthetic import synthetic_training_frame
from tests.conftest import quick_spec

BINARY = ["roc_auc", "pr_auc", "log_loss", "calibration_error", "recall_at_1pct_fpr"]


# -- metrics ----------------------------------------------------------------------------------------------------
def test_binary_metrics_on_a_hand_computed_example() -> None:
    labels = np.array([1, 0, 1, 0])
    scores = np.array([0.95, 0.8, 0.35, 0.35])
    out = compute_metrics(labels, scores, BINARY)
    # Pairs (positive, negative): 0.95>0.8 win, 0.95>0.35 win, 0.35<0.8 loss, 0.35=0.35 half.
    assert out["roc_auc"] == pytest.approx(2.5 / 4)
    # Thresholds 0.95: precision 1 at recall 1/2; 0.8: no new positive; 0.35: precision 2/4 at recall 1.
    assert out["pr_auc"] == pytest.approx(0.5 * 1 + 0.5 * 0.5)
    # Bins [0.9, 1): |1 - 0.95|; [0.8, 0.9): |0 - 0.8|; [0.3, 0.4): two rows, |mean label 0.5 - mean score 0.35|.
    assert out["calibration_error"] == pytest.approx((0.05 + 0.8 + 2 * abs(0.5 - 0.35)) / 4)
    assert out["log_loss"] == pytest.approx(log_loss(labels, scores))
    assert out["recall_at_1pct_fpr"] == pytest.approx(0.5)  # no negative may be flagged: only 0.95 is


def test_binary_metrics_agree_with_scikit_learn_with_ties() -> None:
    rng = np.random.default_rng(4)
    labels = (rng.random(500) < 0.3).astype(int)
    scores = np.round(rng.random(500) * 0.5 + labels * 0.3, 2)  # many ties
    out = compute_metrics(labels, scores, BINARY)
    assert out["roc_auc"] == pytest.approx(roc_auc_score(labels, scores))
    assert out["pr_auc"] == pytest.approx(average_precision_score(labels, scores))


def test_recall_at_one_percent_false_positives() -> None:
    # 100 negatives and 10 positives: one negative scores above every positive, the next one sits between the
    # fifth and the sixth positive. 1% of 100 negatives allows exactly one false positive.
    positives = np.linspace(0.9, 0.5, 10)
    negatives = np.r_[0.95, 0.7, np.linspace(0.0, 0.4, 98)]
    labels = np.r_[np.ones(10), np.zeros(100)]
    scores = np.r_[positives, negatives]
    assert recall_at_fpr(labels, scores) == pytest.approx(0.5)
    assert compute_metrics(labels, scores, ["recall_at_1pct_fpr"])["recall_at_1pct_fpr"] == pytest.approx(0.5)
    assert recall_at_fpr(labels, scores, max_fpr=0.02) == pytest.approx(1.0)


def test_ranking_metrics_on_a_hand_computed_example() -> None:
    labels = np.array([2, 0, 1, 0, 0, 0, 1, 0, 0])
    scores = np.array([0.9, 0.8, 0.1, 0.2, 0.5, 0.4, 0.3, 0.9, 0.8])
    queries = np.array([1, 1, 1, 1, 2, 2, 2, 3, 3])  # query 3 has no relevant row: left out
    out = compute_metrics(labels, scores, ["ndcg_at_10", "map_at_10"], groups=queries)
    # Query 1 ranks its rows 2, 0, 0, 1: DCG = 3/log2(2) + 1/log2(5); ideal order 2, 1: 3/log2(2) + 1/log2(3).
    ndcg_1 = (3 + 1 / np.log2(5)) / (3 + 1 / np.log2(3))
    assert out["ndcg_at_10"] == pytest.approx((ndcg_1 + 0.5) / 2)  # query 2: its one relevant row at rank 3
    assert out["map_at_10"] == pytest.approx(((1 + 2 / 4) / 2 + 1 / 3) / 2)
    ids, values = per_query(labels, scores, queries, "ndcg_at_10")
    assert ids.tolist() == [1, 2, 3] and np.isnan(values[2]) and values[1] == pytest.approx(0.5)


def test_only_the_top_ten_of_a_query_count() -> None:
    labels = np.r_[np.zeros(10), 1]  # the one relevant row is ranked 11th
    scores = np.linspace(1, 0, 11)
    out = compute_metrics(labels, scores, ["ndcg_at_10", "map_at_10"], groups=np.zeros(11))
    assert out == {"ndcg_at_10": 0.0, "map_at_10": 0.0}


# -- slices -----------------------------------------------------------------------------------------------------
def test_numeric_slices_are_banded_and_missing_values_named() -> None:
    frame = pd.DataFrame({"price": [0.0, 10.0, 80.0, np.nan, 30.0], "cat": ["x", None, "y", "x", "y"]})
    frame["code"] = [3.0, 3.0, 1.0, np.nan, 2.5]
    banded = slice_values(frame, SliceSpec(name="p", column="price", bands=[0.01, 25], labels=["none", "low", "high"]))
    assert banded.tolist() == ["none", "low", "high", "missing", "high"]
    unnamed = slice_values(frame, SliceSpec(name="p", column="price", bands=[25]))
    assert unnamed.tolist() == ["<25", "<25", ">=25", "missing", ">=25"]
    three = slice_values(frame, SliceSpec(name="p", column="price", bands=[5, 20.5]))
    assert three.tolist() == ["<5", "5-20.5", ">=20.5", "missing", ">=20.5"]
    assert slice_values(frame, SliceSpec(name="c", column="cat")).tolist() == ["x", "missing", "y", "x", "y"]
    assert slice_values(frame, SliceSpec(name="k", column="code")).tolist() == ["3", "3", "1", "missing", "2.5"]
    spec = SliceSpec(name="p", column="price", bands=[0.01, 25], labels=["none", "low", "high"])
    assert ordered_values(spec, {"missing", "high", "none", "low"}) == ["none", "low", "high", "missing"]


def test_a_slice_on_an_absent_or_non_numeric_column_is_refused_by_name() -> None:
    frame = pd.DataFrame({"cat": ["x", "y"]})
    with pytest.raises(SliceError, match=r"slice 'z' reads column 'nope', which the training set lacks.*models/m"):
        slice_values(frame, SliceSpec(name="z", column="nope"), model="m")
    with pytest.raises(SliceError, match="slice 'c' cuts column 'cat' into bands, but it holds object values"):
        slice_values(frame, SliceSpec(name="c", column="cat", bands=[1]), model="m")


def test_a_query_takes_the_slice_value_of_its_first_row() -> None:
    frame = pd.DataFrame({"query_id": [7, 7, 7, 9, 9], "price": [5.0, 50.0, 50.0, 60.0, 1.0]})
    spec = ranking_spec().model_copy(update={"slices": [SliceSpec(name="price", column="price", bands=[10])]})
    assert slice_frame(frame, spec)["slice.price"].tolist() == ["<10", "<10", "<10", ">=10", ">=10"]


# -- bootstrap --------------------------------------------------------------------------------------------------
def test_resample_counts_draw_every_unit_count_with_a_fixed_seed() -> None:
    counts = resample_counts(50, n_resamples=30)
    assert counts.shape == (30, 50) and (counts.sum(axis=1) == 50).all()
    assert np.array_equal(counts, resample_counts(50, n_resamples=30))
    assert 0.3 < (counts == 0).mean() < 0.45  # about 1/e of the units are left out of a resample


def test_vectorised_draws_equal_metrics_of_materialised_resamples() -> None:
    rng = np.random.default_rng(5)
    labels = (rng.random(300) < 0.2).astype(float)
    scores = np.round(np.clip(rng.random(300) * 0.6 + labels * 0.3, 0, 1), 2)
    counts = resample_counts(300, n_resamples=5)
    drawn = metric_draws(labels, scores, BINARY, units_of(300, None), counts)
    for b in range(5):
        rows = np.repeat(np.arange(300), counts[b].astype(int))
        expected = compute_metrics(labels[rows], scores[rows], BINARY)
        for metric in BINARY:
            assert drawn[metric][1][b] == pytest.approx(expected[metric]), (metric, b)

    # Ranking: queries are resampled whole.
    queries = np.repeat(np.arange(40), 5)
    graded = rng.integers(0, 3, 200) * (rng.random(200) < 0.4)
    units = units_of(200, queries * 10)  # any query ids: units number them 0..39
    counts = resample_counts(40, n_resamples=5)
    drawn = metric_draws(graded, scores[:200], ["ndcg_at_10", "map_at_10"], units, counts)
    for b in range(5):
        picked = np.repeat(np.arange(40), counts[b].astype(int))
        rows = np.concatenate([np.flatnonzero(queries == q) for q in picked])
        copies = np.repeat(np.arange(len(picked)), 5)  # each drawn copy of a query is its own query
        expected = compute_metrics(graded[rows], scores[rows], ["ndcg_at_10", "map_at_10"], groups=copies)
        assert drawn["ndcg_at_10"][1][b] == pytest.approx(expected["ndcg_at_10"])
        assert drawn["map_at_10"][1][b] == pytest.approx(expected["map_at_10"])


def _sample(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    signal = rng.normal(size=n)
    labels = (rng.random(n) < 1 / (1 + np.exp(-(2 * signal - 1)))).astype(float)
    return labels, 1 / (1 + np.exp(-(2 * signal - 1 + rng.normal(0, 0.5, n))))


def test_intervals_contain_the_point_estimate_and_shrink_with_more_rows() -> None:
    widths = {}
    for n in (500, 5000):
        labels, scores = _sample(n)
        estimates, _ = compare(labels, {"candidate": (scores, BINARY)}, units_of(n, None), resample_counts(n))
        for metric, e in estimates["candidate"].items():
            assert e["low"] <= e["value"] <= e["high"], (n, metric)
        widths[n] = {m: e["high"] - e["low"] for m, e in estimates["candidate"].items()}
    for metric in BINARY:
        # Width ~ 1/sqrt(n): ten times the rows, about a third of the width.
        assert widths[5000][metric] < 0.6 * widths[500][metric], metric


def test_paired_differences_come_from_the_same_resamples() -> None:
    labels, scores = _sample(2000)
    noisy = np.clip(scores + np.random.default_rng(1).normal(0, 0.01, len(scores)), 0, 1)
    counts = resample_counts(2000)
    inputs = {"candidate": (scores, BINARY), "champion": (scores.copy(), BINARY), "baseline": (noisy, BINARY)}
    estimates, differences = compare(labels, inputs, units_of(2000, None), counts)
    assert set(differences) == {"champion", "baseline"}
    assert all(d == {"value": 0.0, "low": 0.0, "high": 0.0} for d in differences["champion"].values())
    # Two nearly identical scorers: their paired difference is far narrower than either interval.
    paired = differences["baseline"]["roc_auc"]
    alone = estimates["candidate"]["roc_auc"]
    assert paired["high"] - paired["low"] < 0.25 * (alone["high"] - alone["low"])


# -- evaluating scores ------------------------------------------------------------------------------------------
def ranking_spec() -> ModelSpec:
    return ModelSpec(
        name="ranker",
        entity="user_product",
        feature_service="ranker",
        label=LabelSpec(kind="ranking_relevance", gains={"cart": 1, "purchase": 2}),
        objective="lambdarank",
        metrics=["ndcg_at_10", "map_at_10"],
        main_metric="ndcg_at_10",
        gate=GateSpec(floors={"ndcg_at_10": 0.3}, min_slice_rows=20, min_slice_positives=20),
        slices=[
            SliceSpec(name="tenure", column="ctx_days_since_signup", bands=[30], labels=["new", "returning"]),
            SliceSpec(name="price", column="price", bands=[10]),
        ],
        baseline=BaselineSpec(kind="feature", features=["popularity"]),
        candidates=CandidateSpec(),
        reviewers=["alice"],
    )


def test_a_ranking_evaluation_resamples_queries_and_slices_them_whole() -> None:
    rng = np.random.default_rng(2)
    queries, per = 120, 8
    relevance = rng.integers(0, 3, queries * per) * (rng.random(queries * per) < 0.3)
    test = pd.DataFrame(
        {
            "query_id": np.repeat(np.arange(1000, 1000 + queries), per),
            "label": relevance,
            "ctx_days_since_signup": np.repeat(rng.integers(0, 90, queries), per).astype(float),
            "price": rng.gamma(2.0, 8.0, queries * per),
            "popularity": relevance + rng.normal(0, 2.0, queries * per),
        }
    )
    scores = {"candidate": relevance + rng.normal(0, 1.0, len(test)), "champion": rng.random(len(test))}

    evaluation, frame = evaluate_scores(ranking_spec(), test, scores, candidate_version="3", champion_version="2")

    assert evaluation.queries == queries and evaluation.rows == queries * per
    assert list(frame.columns) == [
        "label",
        "candidate",
        "champion",
        "baseline",
        "oracle",
        "query_id",
        "slice.tenure",
        "slice.price",
    ]
    assert frame["baseline"].isna().all() and frame["oracle"].isna().all()
    for name in ("tenure", "price"):
        entries = [s for s in evaluation.slices if s["slice"] == name]
        assert sum(s["rows"] for s in entries) == queries, "each query falls in exactly one value of a slice"
        assert sum(s["positives"] for s in entries) == int((relevance > 0).sum())
        assert frame.groupby("query_id")[f"slice.{name}"].nunique().max() == 1
    candidate = evaluation.overall["candidate"]
    assert candidate["ndcg_at_10"]["low"] <= candidate["ndcg_at_10"]["value"] <= candidate["ndcg_at_10"]["high"]
    assert evaluation.differences["champion"]["ndcg_at_10"]["low"] > 0  # the informed ranker beats random order


def test_a_raw_feature_baseline_is_not_measured_as_a_probability() -> None:
    spec = quick_spec(40, 5, train=2, validation=1, test=1).model_copy(
        update={"baseline": BaselineSpec(kind="feature", features=["signal_1"])}
    )
    test = synthetic_training_frame(spec, dt.date(2024, 3, 31), users_per_day=400).query("split == 'test'")
    scores = {"candidate": np.full(len(test), 0.3), "baseline": test["signal_1"].to_numpy()}

    evaluation, _ = evaluate_scores(spec, test, scores, candidate_version="1")

    assert set(evaluation.overall["baseline"]) == {"roc_auc", "pr_auc"}
    assert set(evaluation.overall["candidate"]) == {"roc_auc", "pr_auc", "log_loss", "calibration_error"}
    assert set(evaluation.differences["baseline"]) == {"roc_auc", "pr_auc"}


def test_twenty_thousand_rows_with_three_slices_get_an_interval_everywhere() -> None:
    """Speed is measured in bench/, not here; this checks a demo-sized evaluation is complete."""
    spec = quick_spec(40, 5, train=1, validation=1, test=2)
    frame = synthetic_training_frame(spec, dt.date(2024, 3, 31), users_per_day=10_000)
    test = frame[frame["split"] == "test"]
    rng = np.random.default_rng(0)
    scores = {name: rng.random(len(test)) for name in ("candidate", "champion", "baseline", "oracle")}

    evaluation, _ = evaluate_scores(spec, test, scores, candidate_version="2", champion_version="1")

    assert evaluation.rows == 20_000 and len({s["slice"] for s in evaluation.slices}) == 3
    assert all(e["low"] is not None for s in evaluation.slices for m in s["metrics"].values() for e in m.values())
