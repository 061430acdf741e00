"""Evaluation on one-class data (issue 10 item 7): every metric, bootstrap, the gate and the report say "not
gated: no positives / no negatives" where a metric needs both classes, and never raise."""

from __future__ import annotations

import datetime as dt
import warnings

import numpy as np
import pandas as pd
import pytest

from pipelines.evaluation import plots
from pipelines.evaluation.bootstrap import compare, metric_draws, resample_counts, units_of
from pipelines.evaluation.evaluate import evaluate_scores
from pipelines.evaluation.gate import apply_gate
from pipelines.evaluation.metrics import (
    TWO_CLASS_METRICS,
    binary_metrics,
    compute_metrics,
    undefined_metrics,
)
from pipelines.evaluation.report_html import slices_html
from pipelines.evaluation.report_inputs import ReportInputs, Verdict, read_evaluation
from pipelines.specs import BINARY_METRICS, RANKING_METRICS, GateSpec
from pipelines.training.synthetic import synthetic_training_frame
from tests.conftest import quick_spec

DAY = dt.date(2024, 3, 31)
ONE_CLASS = {"all zero": 0.0, "all one": 1.0}


# -- every metric on one class ----------------------------------------------------------------------------------
@pytest.mark.parametrize("label", ONE_CLASS.values(), ids=ONE_CLASS.keys())
@pytest.mark.parametrize("metric", sorted(BINARY_METRICS))
def test_every_binary_metric_on_one_class_is_a_value_or_undefined_with_its_reason(metric: str, label: float) -> None:
    """issue 10 item 7: all-zero and all-one labels never raise (the IndexError of recall_at_1pct_fpr)."""
    labels = np.full(50, label)
    scores = np.linspace(0.01, 0.99, 50)

    value = compute_metrics(labels, scores, [metric])[metric]
    resampled = binary_metrics(labels, scores, [metric], weights=resample_counts(50, 20).astype("float64"))[metric]
    reason = undefined_metrics(labels, [metric]).get(metric)

    if metric in TWO_CLASS_METRICS:
        assert np.isnan(value) and np.isnan(resampled).all()
        assert reason == (
            "no positives (all 50 labels are 0)" if label == 0 else "no negatives (all 50 labels are positive)"
        )
    else:  # log loss and calibration error compare each probability with its label: one class is enough
        assert np.isfinite(value) and np.isfinite(resampled).all() and reason is None
        assert value == pytest.approx(resampled.mean(), rel=0.5)


@pytest.mark.parametrize("metric", sorted(RANKING_METRICS))
def test_every_ranking_metric_on_one_grade_is_undefined_without_relevant_rows_and_perfect_with_only_them(
    metric: str,
) -> None:
    """issue 10 item 7: queries without a relevant row are left out; with none anywhere the metric is undefined."""
    queries = np.repeat(np.arange(6), 5)
    scores = np.random.default_rng(0).random(30)

    none = compute_metrics(np.zeros(30), scores, [metric], groups=queries)[metric]
    every = compute_metrics(np.ones(30), scores, [metric], groups=queries)[metric]

    assert np.isnan(none)
    assert undefined_metrics(np.zeros(30), [metric]) == {
        metric: "no query has a relevant row (all 30 candidates have relevance 0)"
    }
    assert every == pytest.approx(1.0) and undefined_metrics(np.ones(30), [metric]) == {}
    drawn = metric_draws(np.zeros(30), scores, [metric], units_of(30, queries), resample_counts(6, 20))
    assert drawn == {}


def test_bootstrap_on_a_rare_class_gives_intervals_where_resamples_hold_both_classes() -> None:
    """issue 10 item 7: a resample may draw no positive at all; those draws are left out, never raised on."""
    rng = np.random.default_rng(3)
    labels = np.zeros(3000)
    labels[[17, 1500]] = 1  # two positives: about 13% of resamples draw neither
    scores = {"candidate": (rng.random(3000) + labels) / 2, "champion": rng.random(3000)}
    metrics = sorted(BINARY_METRICS)
    counts = resample_counts(3000, 200)
    inputs = {name: (s, metrics) for name, s in scores.items()}

    estimates, differences = compare(labels, inputs, units_of(3000, None), counts)

    no_positive = (counts[:, [17, 1500]].sum(axis=1) == 0).sum()
    assert 0 < no_positive < 100
    auc = estimates["candidate"]["roc_auc"]
    assert auc["low"] is not None and auc["low"] <= auc["value"] <= auc["high"]
    assert set(differences["champion"]) == set(metrics)
    assert estimates["candidate"]["recall_at_1pct_fpr"]["value"] == pytest.approx(1.0)


# -- evaluation, gate, report --------------------------------------------------------------------------------------
def _test_rows(labels_by_category: dict[str, float] | None = None) -> pd.DataFrame:
    spec = quick_spec(40, 5, train=1, validation=1, test=2)
    test = synthetic_training_frame(spec, DAY, users_per_day=800).query("split == 'test'").reset_index(drop=True)
    for category, label in (labels_by_category or {}).items():
        test.loc[test["ctx_top_category"] == category, "label"] = label
    return test


def _scores(test: pd.DataFrame) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    informed = np.clip(0.3 + 0.4 * test["label"].to_numpy() + rng.normal(0, 0.2, len(test)), 0.01, 0.99)
    return {"candidate": informed, "champion": np.clip(informed + rng.normal(0, 0.05, len(test)), 0.01, 0.99)}


def test_a_slice_without_positives_or_negatives_is_evaluated_and_listed_not_gated_with_the_reason() -> None:
    """issue 10 item 7: the evaluation of a slice with no positives crashed in recall_at_1pct_fpr."""
    spec = quick_spec(40, 5, train=1, validation=1, test=2)
    spec = spec.model_copy(
        update={
            "metrics": sorted(BINARY_METRICS),
            "gate": GateSpec(
                floors={"roc_auc": 0.6},
                slice_max_regression={"roc_auc": 0.05, "log_loss": 0.05},
                min_slice_rows=50,
                min_slice_positives=0,
            ),
        }
    )
    test = _test_rows({"a": 0.0, "b": 1.0})

    evaluation, _ = evaluate_scores(
        spec, test, _scores(test), candidate_version="2", champion_version="1", n_bootstrap=50
    )
    decision = apply_gate(spec, evaluation)

    quiet = next(s for s in evaluation.slices if (s["slice"], s["value"]) == ("category", "a"))
    assert quiet["positives"] == 0 and "roc_auc" not in quiet["metrics"]["candidate"]
    assert quiet["metrics"]["candidate"]["log_loss"]["value"] > 0  # defined with one class, still gated
    assert quiet["undefined"]["recall_at_1pct_fpr"].startswith("no positives")
    assert "category=a (roc_auc not gated: no positives (all " in " ".join(decision.not_gated)
    assert "category=b (roc_auc not gated: no negatives (all " in " ".join(decision.not_gated)
    gated = {(c.slice, c.metric) for c in decision.checks if c.kind == "slice_regression"}
    assert ("category=a", "log_loss") in gated and ("category=a", "roc_auc") not in gated
    assert ("category=c", "roc_auc") in gated
    assert decision.passed, decision.summary
    assert "Not gated: " in decision.summary and "no positives" in decision.summary

    # The reviewer's report says why the slice row is not gated.
    view = read_evaluation(evaluation.to_dict())
    verdict = Verdict(decision.passed, decision.summary, decision.checks)
    inputs = ReportInputs(spec, None, view, verdict, pd.DataFrame(), {}, pd.DataFrame(), (np.zeros(0), pd.DataFrame()))
    html = slices_html(inputs)
    row = html[html.index("<td class='l'>a</td>") :].split("</tr>")[0]
    assert "not gated: no positives" in row


@pytest.mark.parametrize("label", ONE_CLASS.values(), ids=ONE_CLASS.keys())
def test_a_test_split_with_one_class_fails_the_gate_with_the_reason(label: float) -> None:
    """issue 10 item 7: nothing can be judged on a one-class test split, so the gate fails; it never passes on
    the metrics that happen to be defined (log loss) and never raises."""
    spec = quick_spec(40, 5, train=1, validation=1, test=2)
    test = _test_rows()
    test["label"] = label

    evaluation, _ = evaluate_scores(spec, test, _scores(test), candidate_version="2", n_bootstrap=20)
    decision = apply_gate(spec, evaluation)

    assert "roc_auc" not in evaluation.candidate and "calibration_error" in evaluation.candidate
    assert not decision.passed
    first = decision.checks[0]  # other defined checks (the calibration ceiling) are judged as usual
    assert (first.kind, first.metric, first.passed) == ("evaluable", "roc_auc", False)
    assert all(c.metric not in TWO_CLASS_METRICS for c in decision.checks[1:])
    missing = "no positives" if label == 0 else "no negatives"
    assert f"roc_auc cannot be computed on the test split: {missing} (all {len(test)} labels" in decision.summary
    assert f"roc_auc floor (not computable on the test split: {missing}" in decision.summary


@pytest.mark.parametrize("label", ONE_CLASS.values(), ids=ONE_CLASS.keys())
def test_the_reports_plots_draw_one_class_test_rows(label: float) -> None:
    """issue 10 item 7: the reviewer's report of a rejected one-class evaluation still renders its plots."""
    data = plots.ScoreSet(np.full(40, label), {"candidate": np.linspace(0.05, 0.95, 40)}, {"candidate": "challenger"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn warns that the curves are undefined: they are drawn empty
        for draw in (plots.roc_figure, plots.pr_figure, plots.score_distribution_figure, plots.calibration_figure):
            plots.png_bytes(draw(data))
        plots.png_bytes(plots.gain_figure(data))
