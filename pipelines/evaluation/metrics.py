"""Binary classification metrics named as in model specs: roc_auc, pr_auc, log_loss, calibration_error."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
from sklearn.metrics import average_precision_score, log_loss, roc_auc_score

LOWER_IS_BETTER = frozenset({"log_loss", "calibration_error"})


class MetricError(ValueError):
    """A metric is unknown or cannot be computed on the given rows."""


def calibration_error(y_true: np.ndarray, y_score: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error over equal-width probability bins (weighted by bin size)."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(y_score, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        mask = idx == b
        if mask.any():
            total += mask.sum() * abs(y_true[mask].mean() - y_score[mask].mean())
    return float(total / len(y_true))


_METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "roc_auc": lambda y, p: float(roc_auc_score(y, p)),
    "pr_auc": lambda y, p: float(average_precision_score(y, p)),
    "log_loss": lambda y, p: float(log_loss(y, np.clip(p, 1e-15, 1 - 1e-15), labels=[0, 1])),
    "calibration_error": calibration_error,
}

KNOWN_METRICS = frozenset(_METRICS)


def compute_metrics(y_true: Iterable[float], y_score: Iterable[float], names: Iterable[str]) -> dict[str, float]:
    """Each named metric of scores ``y_score`` against 0/1 labels ``y_true``."""
    y = np.asarray(y_true, dtype="float64")
    p = np.asarray(y_score, dtype="float64")
    names = list(dict.fromkeys(names))
    unknown = [n for n in names if n not in _METRICS]
    if unknown:
        raise MetricError(f"unknown metric(s) {unknown}; the model spec's 'metrics' may use {sorted(_METRICS)}")
    if len(y) == 0:
        raise MetricError("no rows to compute metrics on: the split is empty")
    if len(np.unique(y)) < 2:
        raise MetricError(
            f"all {len(y)} labels are {int(y[0])}: ROC-AUC/PR-AUC are undefined; widen the split's days "
            "(model spec 'windows') or check the labels"
        )
    return {n: _METRICS[n](y, p) for n in names}
