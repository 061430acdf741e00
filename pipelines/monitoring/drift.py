"""Drift of a champion after promotion: its features and scores on a day against the rows it was trained on (PSI
and KS per feature), and its realised main metric on a day whose labels have matured, with a bootstrap interval.

Everything here is pure (frames and arrays in, a :class:`DriftReport` out); :mod:`pipelines.monitoring.watch`
reads the lake and the registry, and publishes the report at ``monitoring/drift/<model>/ds=YYYY-MM-DD/drift.json``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pipelines.evaluation.bootstrap import interval, metric_draws, resample_counts, units_of
from pipelines.evaluation.metrics import undefined_metrics
from pipelines.specs import MonitoringSpec

# A bin empty on one side would make PSI infinite: its share is floored at this (a common choice, 1e-4).
PSI_FLOOR = 1e-4
# Bins of the score histograms kept in the report for the monitoring page.
SCORE_BINS = 30


@dataclass(frozen=True)
class FeatureDrift:
    """One feature (or the champion's score) on the day against the reference rows."""

    feature: str
    psi: float
    ks: float | None  # None: no value on one side
    missing_reference: float  # share of rows without a value
    missing_day: float
    drifting: bool


@dataclass(frozen=True)
class RealisedMetric:
    """The champion's main metric on the rows of one day whose labels have matured; NaN with a reason when the
    day's labels cannot measure it (one class, no rows)."""

    day: dt.date
    metric: str
    value: float
    low: float | None
    high: float | None
    rows: int
    positives: int
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"day": self.day.isoformat(), "value": _finite(self.value)}


@dataclass(frozen=True)
class DriftReport:
    """A champion's drift on one day and, when labels allow, its realised metric (on an older day)."""

    model: str
    day: dt.date
    version: str
    reference: dict[str, Any]  # {"logical_date", "uri", "rows"}: the champion's training rows
    population: dict[str, Any]  # {"source": "prediction_log" | "offline", "rows"}
    thresholds: MonitoringSpec
    features: list[FeatureDrift]
    not_compared: dict[str, str]  # feature -> why
    prediction: FeatureDrift | None
    scores: dict[str, Any] | None  # {"edges", "reference", "day"}: score histograms (shares per bin)
    realised: RealisedMetric | None

    @property
    def judged(self) -> bool:
        """Whether the day had enough rows to be called drifting or not."""
        return self.population["rows"] >= self.thresholds.min_rows

    @property
    def flagged(self) -> list[str]:
        return [f.feature for f in self.features if f.drifting]

    @property
    def drifting(self) -> bool:
        if not self.judged or not self.features:
            return False
        share = len(self.flagged) / len(self.features)
        return share >= self.thresholds.features_share or bool(self.prediction and self.prediction.drifting)

    @property
    def summary(self) -> str:
        """One line: the verdict with its reason, as ``mlctl status`` and the page's header print it."""
        t = self.thresholds
        if not self.judged:
            return f"not judged: {self.population['rows']} rows on {self.day} (fewer than {t.min_rows})"
        over = f"{len(self.flagged)} of {len(self.features)} features over PSI {t.psi_alert:g} or KS {t.ks_alert:g}"
        scores = f"score PSI {self.prediction.psi:.3f}" if self.prediction else "no score drift measured"
        return f"{'drifting' if self.drifting else 'stable'}: {over}; {scores}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "day": self.day.isoformat(),
            "version": self.version,
            "reference": self.reference,
            "population": self.population,
            "thresholds": self.thresholds.model_dump(),
            "judged": self.judged,
            "drifting": self.drifting,
            "flagged": self.flagged,
            "summary": self.summary,
            "features": [_feature_dict(f) for f in self.features],
            "not_compared": dict(self.not_compared),
            "prediction": _feature_dict(self.prediction) if self.prediction else None,
            "scores": self.scores,
            "realised": self.realised.to_dict() if self.realised else None,
        }


def _finite(value: float | None) -> float | None:
    """JSON has no NaN: undefined values are stored as null."""
    return None if value is None or not math.isfinite(value) else float(value)


def _feature_dict(drift: FeatureDrift) -> dict[str, Any]:
    return dataclasses.asdict(drift) | {"psi": _finite(drift.psi), "ks": _finite(drift.ks)}


# -- per feature ----------------------------------------------------------------------------------------------
def _values(values: np.ndarray | pd.Series) -> np.ndarray:
    return pd.Series(values).to_numpy(dtype="float64", na_value=np.nan)


def psi(reference: np.ndarray | pd.Series, day: np.ndarray | pd.Series, bins: int = 10) -> float:
    """Population stability index of ``day`` against ``reference``. Bins: below, at and between the reference's
    quantiles (ties merged; a value exactly at a quantile has its own bin, so the mass of a count feature at 0, or
    a constant feature, is one bin and a move either way leaves it), plus one bin for missing values so a change
    in how often a value is missing counts too. Empty bins are floored at :data:`PSI_FLOOR`; NaN when either side
    is empty."""
    ref, cur = _values(reference), _values(day)
    if len(ref) == 0 or len(cur) == 0:
        return float("nan")
    present = ref[~np.isnan(ref)]
    edges = np.unique(np.quantile(present, np.linspace(0, 1, bins + 1)[1:-1])) if len(present) else np.empty(0)

    def shares(x: np.ndarray) -> np.ndarray:
        missing = np.isnan(x)
        present = x[~missing]
        below = np.searchsorted(edges, present, side="left")
        at = edges[np.minimum(below, len(edges) - 1)] == present if len(edges) else np.zeros(len(present), bool)
        counts = np.bincount(2 * below + at, minlength=2 * len(edges) + 1)
        return np.maximum(np.append(counts, missing.sum()) / len(x), PSI_FLOOR)

    expected, actual = shares(ref), shares(cur)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def ks(reference: np.ndarray | pd.Series, day: np.ndarray | pd.Series) -> float | None:
    """Two-sample Kolmogorov-Smirnov statistic of the present values: the largest gap between the two empirical
    distribution functions, taken at every observed value (scipy's ``ks_2samp`` statistic; its p-value, which
    says nothing at these sizes and cost most of a monitor step, is not computed). None when one side has no
    value."""
    ref, cur = _values(reference), _values(day)
    ref, cur = np.sort(ref[~np.isnan(ref)]), np.sort(cur[~np.isnan(cur)])
    if len(ref) == 0 or len(cur) == 0:
        return None
    at = np.concatenate([ref, cur])
    gap = np.searchsorted(ref, at, side="right") / len(ref) - np.searchsorted(cur, at, side="right") / len(cur)
    return float(np.abs(gap).max())


def feature_drift(
    name: str, reference: np.ndarray | pd.Series, day: np.ndarray | pd.Series, thresholds: MonitoringSpec
) -> FeatureDrift:
    ref, cur = _values(reference), _values(day)
    value, stat = psi(ref, cur, thresholds.bins), ks(ref, cur)
    drifting = (math.isfinite(value) and value >= thresholds.psi_alert) or (
        stat is not None and stat >= thresholds.ks_alert
    )
    return FeatureDrift(
        feature=name,
        psi=value,
        ks=stat,
        missing_reference=float(np.isnan(ref).mean()) if len(ref) else 1.0,
        missing_day=float(np.isnan(cur).mean()) if len(cur) else 1.0,
        drifting=bool(drifting),
    )


def features_drift(
    reference: pd.DataFrame, day: pd.DataFrame, features: list[str], thresholds: MonitoringSpec
) -> tuple[list[FeatureDrift], dict[str, str]]:
    """Drift of each feature the reference holds a value of; the others are returned with the reason. A feature
    the day's rows lack entirely is missing on every row (so its drift shows as the missing bin)."""
    out, not_compared = [], {}
    for name in features:
        if name not in reference or reference[name].isna().all():
            not_compared[name] = "no value in the champion's training rows"
            continue
        values = day[name] if name in day else np.full(len(day), np.nan)
        out.append(feature_drift(name, reference[name], values, thresholds))
    return out, not_compared


# -- scores -----------------------------------------------------------------------------------------------------
def prediction_drift(reference: np.ndarray, day: np.ndarray, thresholds: MonitoringSpec) -> FeatureDrift:
    """The champion's scores on the day against its scores on its training rows (its own view of the shift)."""
    drift = feature_drift("score", reference, day, thresholds)
    psi_only = math.isfinite(drift.psi) and drift.psi >= thresholds.prediction_psi_alert
    return dataclasses.replace(drift, drifting=psi_only)


def score_histograms(reference: np.ndarray, day: np.ndarray, bins: int = SCORE_BINS) -> dict[str, list[float]]:
    """Shares of the reference and the day's scores in common equal-width bins (for the page's plot)."""
    both = np.concatenate([reference, day])
    both = both[np.isfinite(both)]
    low, high = (float(both.min()), float(both.max())) if len(both) else (0.0, 1.0)
    edges = np.linspace(low, high if high > low else low + 1.0, bins + 1)

    def shares(x: np.ndarray) -> list[float]:
        x = x[np.isfinite(x)]
        counts = np.histogram(x, bins=edges)[0]
        return (counts / max(len(x), 1)).tolist()

    return {"edges": edges.tolist(), "reference": shares(reference), "day": shares(day)}


# -- realised metric ----------------------------------------------------------------------------------------------
def realised_metric(
    day: dt.date, metric: str, labels: np.ndarray, scores: np.ndarray, groups: np.ndarray | None = None
) -> RealisedMetric:
    """``metric`` of the champion's ``scores`` against the matured ``labels`` of ``day``, with a bootstrap interval
    (rows resampled; queries for ranking, ``groups``). Undefined (one class, no relevant row, no rows): NaN with
    the reason."""
    y, s = np.asarray(labels, dtype="float64"), np.asarray(scores, dtype="float64")
    positives = int((y > 0).sum())
    reason = "no labelled row on the day" if len(y) == 0 else undefined_metrics(y, [metric]).get(metric)
    if reason:
        return RealisedMetric(day, metric, float("nan"), None, None, len(y), positives, reason)
    units = units_of(len(y), groups)
    drawn = metric_draws(y, s, [metric], units, resample_counts(int(units.max()) + 1))
    if metric not in drawn:
        return RealisedMetric(day, metric, float("nan"), None, None, len(y), positives, "undefined on these labels")
    estimate = interval(*drawn[metric])
    return RealisedMetric(day, metric, float(estimate["value"]), estimate["low"], estimate["high"], len(y), positives)
