"""Metrics named as in model specs.

Binary: roc_auc, pr_auc, log_loss, calibration_error, recall_at_1pct_fpr. Ranking: ndcg_at_10 and map_at_10,
computed per query (request) and averaged over the queries that hold at least one relevant row (without one,
NDCG and AP are undefined; such queries are left out, as in LightGBM and TREC practice).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
from sklearn.metrics import average_precision_score, log_loss, roc_auc_score, roc_curve

from pipelines.specs import BINARY_METRICS, LOWER_IS_BETTER, RANKING_METRICS

__all__ = ["LOWER_IS_BETTER", "KNOWN_METRICS", "MetricError", "compute_metrics", "query_values"]


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


def recall_at_fpr(y_true: np.ndarray, y_score: np.ndarray, max_fpr: float = 0.01) -> float:
    """The largest recall (true-positive rate) reachable while at most ``max_fpr`` of negatives are flagged."""
    fpr, tpr, _ = roc_curve(y_true, y_score)
    return float(tpr[fpr <= max_fpr].max())


_BINARY: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "roc_auc": lambda y, p: float(roc_auc_score(y, p)),
    "pr_auc": lambda y, p: float(average_precision_score(y, p)),
    "log_loss": lambda y, p: float(log_loss(y, np.clip(p, 1e-15, 1 - 1e-15), labels=[0, 1])),
    "calibration_error": calibration_error,
    "recall_at_1pct_fpr": recall_at_fpr,
}
KNOWN_METRICS = frozenset(_BINARY) | RANKING_METRICS
assert frozenset(_BINARY) == BINARY_METRICS, "specs.BINARY_METRICS and metrics.py disagree"


def _query_order(groups: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row order by (query, score descending) and each row's 0-based rank within its query."""
    order = np.lexsort((-scores, groups))
    g = groups[order]
    starts = np.r_[0, np.flatnonzero(g[1:] != g[:-1]) + 1] if len(g) else np.empty(0, dtype="int64")
    sizes = np.diff(np.r_[starts, len(g)])
    rank = np.arange(len(g)) - np.repeat(starts, sizes)
    return order, rank


def query_values(y_true: np.ndarray, y_score: np.ndarray, groups: np.ndarray, name: str, k: int = 10) -> np.ndarray:
    """Per-query ``ndcg_at_10`` or ``map_at_10`` of the queries with a relevant row (label > 0), in query order."""
    y, s, g = np.asarray(y_true, dtype="float64"), np.asarray(y_score, dtype="float64"), np.asarray(groups)
    uniq, gi = np.unique(g, return_inverse=True)
    n_q = len(uniq)
    order, rank = _query_order(gi, s)
    top = rank < k
    q, rel, r = gi[order][top], y[order][top], rank[top]
    if name == "ndcg_at_10":
        dcg = np.bincount(q, weights=(2.0**rel - 1) / np.log2(r + 2), minlength=n_q)
        ideal_order, ideal_rank = _query_order(gi, y)
        it = ideal_rank < k
        irel, ir = y[ideal_order][it], ideal_rank[it]
        idcg = np.bincount(gi[ideal_order][it], weights=(2.0**irel - 1) / np.log2(ir + 2), minlength=n_q)
        has = idcg > 0
        return dcg[has] / idcg[has]
    if name == "map_at_10":
        hit = (rel > 0).astype("float64")
        # Hits so far within the query at each top-k position (rows are grouped by query, in rank order).
        total = np.cumsum(hit)
        first = np.r_[0, np.flatnonzero(q[1:] != q[:-1]) + 1] if len(q) else np.empty(0, dtype="int64")
        before = np.repeat(total[first] - hit[first], np.diff(np.r_[first, len(q)]))
        cum = total - before
        precision = np.where(hit > 0, cum / (r + 1), 0.0)
        n_rel = np.bincount(gi, weights=(y > 0).astype("float64"), minlength=n_q)
        ap = np.bincount(q, weights=precision, minlength=n_q)
        has = n_rel > 0
        return ap[has] / np.minimum(n_rel[has], k)
    raise MetricError(f"unknown ranking metric {name!r}; known: {sorted(RANKING_METRICS)}")


def compute_metrics(
    y_true: Iterable[float], y_score: Iterable[float], names: Iterable[str], groups: Iterable | None = None
) -> dict[str, float]:
    """Each named metric of scores ``y_score`` against labels ``y_true`` (0/1, or graded relevance with
    ``groups``, the query of each row, for ranking metrics)."""
    y = np.asarray(y_true, dtype="float64")
    p = np.asarray(y_score, dtype="float64")
    names = list(dict.fromkeys(names))
    unknown = [n for n in names if n not in KNOWN_METRICS]
    if unknown:
        raise MetricError(f"unknown metric(s) {unknown}; the model spec's 'metrics' may use {sorted(KNOWN_METRICS)}")
    if len(y) == 0:
        raise MetricError("no rows to compute metrics on: the split is empty")
    out: dict[str, float] = {}
    ranking = [n for n in names if n in RANKING_METRICS]
    if ranking:
        if groups is None:
            raise MetricError(f"ranking metric(s) {ranking} need the query of each row (groups)")
        g = np.asarray(groups)
        for name in ranking:
            values = query_values(y, p, g, name)
            if len(values) == 0:
                raise MetricError("no query holds a relevant row: NDCG/MAP are undefined")
            out[name] = float(values.mean())
    binary = [n for n in names if n in _BINARY]
    if binary:
        if len(np.unique(y)) < 2:
            raise MetricError(
                f"all {len(y)} labels are {int(y[0])}: ROC-AUC/PR-AUC are undefined; widen the split's days "
                "(model spec 'windows') or check the labels"
            )
        out |= {n: _BINARY[n](y, p) for n in binary}
    return {n: out[n] for n in names}
