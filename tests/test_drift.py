"""Drift of a champion: the same distribution gives a low PSI and KS, a shifted one is flagged, missing values and
constant features are handled, and a day whose labels hold one class has no realised metric, with the reason."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from pipelines.monitoring.drift import (
    DriftReport,
    features_drift,
    ks,
    prediction_drift,
    psi,
    realised_metric,
    score_histograms,
)
from pipelines.specs import MonitoringSpec

DAY = dt.date(2025, 2, 1)
RULES = MonitoringSpec()


def _frame(rng: np.random.Generator, rows: int, shift: float = 0.0) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "views_7d": rng.poisson(3 + shift * 3, rows).astype("float64"),
            "price": rng.lognormal(3 + shift, 0.5, rows),
            "score_like": rng.normal(shift, 1, rows),
            "constant": np.full(rows, 2.0),
        }
    )


def test_the_same_distribution_has_a_low_psi_and_ks() -> None:
    rng = np.random.default_rng(1)
    drifts, not_compared = features_drift(
        _frame(rng, 5000), _frame(rng, 3000), ["views_7d", "price", "score_like"], RULES
    )

    assert not_compared == {}
    assert all(d.psi < 0.02 and d.ks < 0.05 and not d.drifting for d in drifts)


def test_a_shifted_day_is_flagged_and_the_report_says_so() -> None:
    rng = np.random.default_rng(2)
    names = ["views_7d", "price", "score_like", "constant"]
    drifts, _ = features_drift(_frame(rng, 5000), _frame(rng, 3000, shift=1.0), names, RULES)

    by_name = {d.feature: d for d in drifts}
    assert {n for n, d in by_name.items() if d.drifting} == {"views_7d", "price", "score_like"}
    assert by_name["price"].psi > 1.0 and by_name["price"].ks > 0.5
    # A constant feature that stays constant does not drift (its two bins keep their shares).
    assert by_name["constant"].psi == pytest.approx(0.0) and by_name["constant"].ks == 0.0
    report = DriftReport(
        model="m",
        day=DAY,
        version="3",
        reference={"logical_date": "2025-01-20", "uri": "lake/x", "rows": 5000},
        population={"source": "offline", "rows": 3000},
        thresholds=RULES,
        features=drifts,
        not_compared={},
        prediction=None,
        scores=None,
        realised=None,
    )
    assert report.drifting and report.flagged == ["views_7d", "price", "score_like"]
    assert report.summary.startswith("drifting: 3 of 4 features over PSI 0.25")
    assert report.to_dict()["drifting"] is True


def test_a_constant_feature_that_moves_and_missing_values_count_as_drift() -> None:
    reference = pd.DataFrame({"c": np.full(1000, 1.0), "m": np.arange(1000, dtype="float64")})
    day = pd.DataFrame({"c": np.full(500, 5.0), "m": np.where(np.arange(500) % 2 == 0, np.nan, np.arange(500.0))})

    drifts, _ = features_drift(reference, day, ["c", "m"], RULES)

    moved, missing = drifts
    assert moved.drifting and moved.psi > 5
    # Half the day's values are missing where the reference had none: the missing bin alone makes it drift.
    assert missing.missing_day == pytest.approx(0.5) and missing.missing_reference == 0.0
    assert missing.drifting and missing.psi > 1


def test_features_without_reference_values_or_absent_on_the_day_are_handled() -> None:
    reference = pd.DataFrame({"empty": [np.nan] * 10, "x": np.arange(10.0)})
    day = pd.DataFrame({"other": np.arange(5.0)})

    drifts, not_compared = features_drift(reference, day, ["empty", "x", "not_there"], RULES)

    assert set(not_compared) == {"empty", "not_there"} and "no value" in not_compared["empty"]
    (x,) = drifts
    assert x.missing_day == 1.0 and x.ks is None and x.drifting  # every value gone on the day
    assert math.isnan(psi([], [1.0])) and ks([np.nan], [1.0]) is None


def test_prediction_drift_uses_its_own_threshold_and_histograms_share_bins() -> None:
    rng = np.random.default_rng(3)
    reference, same, higher = rng.beta(2, 8, 4000), rng.beta(2, 8, 2000), rng.beta(4, 6, 2000)

    assert not prediction_drift(reference, same, RULES).drifting
    assert prediction_drift(reference, higher, RULES).drifting
    histograms = score_histograms(reference, higher)
    assert len(histograms["edges"]) == len(histograms["reference"]) + 1
    assert sum(histograms["reference"]) == pytest.approx(1.0) and sum(histograms["day"]) == pytest.approx(1.0)


def test_realised_metric_has_an_interval_and_a_one_class_day_gives_nan_with_the_reason() -> None:
    rng = np.random.default_rng(4)
    labels = rng.random(2000) < 0.2
    scores = np.where(labels, rng.beta(5, 3, 2000), rng.beta(3, 5, 2000))

    metric = realised_metric(DAY, "roc_auc", labels.astype(int), scores)
    assert 0.6 < metric.value < 0.9 and metric.low < metric.value < metric.high and metric.reason is None

    quiet = realised_metric(DAY, "roc_auc", np.zeros(300), scores[:300])
    assert math.isnan(quiet.value) and quiet.low is None and "no positives" in quiet.reason
    assert quiet.to_dict()["value"] is None  # stored as null in the JSON report
    empty = realised_metric(DAY, "pr_auc", np.zeros(0), np.zeros(0))
    assert empty.rows == 0 and "no labelled row" in empty.reason


def test_the_spec_monitoring_block_has_defaults_and_refuses_unknown_keys() -> None:
    assert RULES.psi_alert == 0.25 and RULES.features_share == 0.2
    with pytest.raises(ValidationError, match="psi_alrt"):
        MonitoringSpec.model_validate({"psi_alrt": 0.1})
    with pytest.raises(ValidationError, match="ks_alert"):
        MonitoringSpec.model_validate({"ks_alert": 2})


def test_ks_is_scipys_two_sample_statistic_with_ties_and_missing_values() -> None:
    from scipy.stats import ks_2samp

    rng = np.random.default_rng(3)
    for reference, day in (
        (rng.poisson(3, 4000).astype("float64"), rng.poisson(4, 2500).astype("float64")),  # many ties
        (rng.normal(0, 1, 20000), rng.normal(0.1, 1.2, 700)),
        (np.array([1.0, np.nan, 2.0, 2.0]), np.array([2.0, np.nan, np.nan, 3.0, 1.0])),
    ):
        present = reference[~np.isnan(reference)], day[~np.isnan(day)]
        assert ks(reference, day) == pytest.approx(ks_2samp(*present).statistic, abs=1e-12)
    assert ks(np.array([np.nan]), np.array([1.0])) is None
