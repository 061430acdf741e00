"""Metrics named as in model specs, computed with row weights so that one implementation gives both the point
estimate (every weight 1) and bootstrap resamples (weights = how often each row was drawn).

Binary: roc_auc, pr_auc (average precision, as scikit-learn defines it), log_loss, calibration_error (expected
calibration error over 10 equal-width bins) and recall_at_1pct_fpr (the largest recall reachable while at most 1%
of the negatives score above the threshold). Ranking: ndcg_at_10 and map_at_10 are computed per query (request)
and averaged over the queries that hold at least one relevant row (label > 0): without one, NDCG and AP are
undefined, so such queries are left out, as LightGBM and TREC do.

One class only (a quiet slice, a test split whose labels have not arrived): ROC-AUC, PR-AUC and recall at 1% FPR
need both classes and are undefined (NaN, with the reason from :func:`undefined_metrics`); log loss and calibration
error are defined with one class (they measure the probabilities against the labels row by row). A ranking metric
is undefined only when no query at all holds a relevant row. Nothing here raises on one-class labels: whether an
undefined metric blocks a model is the gate's decision.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from pipelines.specs import BINARY_METRICS, LOWER_IS_BETTER, RANKING_METRICS

__all__ = [
    "KNOWN_METRICS",
    "LOWER_IS_BETTER",
    "PROBABILITY_METRICS",
    "MetricError",
    "binary_metrics",
    "calibration_error",
    "compute_metrics",
    "per_query",
    "query_values",
    "recall_at_fpr",
    "undefined_metrics",
]

KNOWN_METRICS = BINARY_METRICS | RANKING_METRICS
# Metrics that read scores as probabilities: meaningless for a raw feature used as a score.
PROBABILITY_METRICS = frozenset({"log_loss", "calibration_error"})
# Metrics that compare positives with negatives: undefined unless both classes are present.
TWO_CLASS_METRICS = frozenset({"roc_auc", "pr_auc", "recall_at_1pct_fpr"})
NO_POSITIVES, NO_NEGATIVES, NO_RELEVANT = "no positives", "no negatives", "no query has a relevant row"
CALIBRATION_BINS = 10
MAX_FPR = 0.01
_EPS = 1e-15


class MetricError(ValueError):
    """A metric is unknown or cannot be computed on the given rows."""


def binary_metrics(
    y_true: np.ndarray, y_score: np.ndarray, names: Iterable[str], weights: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Each binary metric under each row of ``weights`` (shape resamples x rows; None: one row of ones).

    Values are NaN where a metric is undefined (ROC-AUC, PR-AUC and recall need both classes). Ties in the scores
    count half, as in scikit-learn's ROC-AUC; recall at 1% FPR reads the full ROC curve, without scikit-learn's
    dropping of collinear points (which can hide the best threshold).
    """
    y = np.asarray(y_true, dtype="float64")
    s = np.asarray(y_score, dtype="float64")
    w = np.ones((1, len(y))) if weights is None else np.asarray(weights, dtype="float64")
    names = list(names)
    unknown = [n for n in names if n not in BINARY_METRICS]
    if unknown:
        raise MetricError(f"not binary metric(s): {unknown}; known: {sorted(BINARY_METRICS)}")
    total = w.sum(axis=1)
    out: dict[str, np.ndarray] = {}
    if "log_loss" in names:
        p = np.clip(s, _EPS, 1 - _EPS)
        loss = -(y * np.log(p) + (1 - y) * np.log(1 - p))
        out["log_loss"] = _ratio(w @ loss, total)
    if "calibration_error" in names:
        out["calibration_error"] = _ratio(np.abs(w @ _bin_residuals(y, s)).sum(axis=1), total)
    ranked = [n for n in names if n in {"roc_auc", "pr_auc", "recall_at_1pct_fpr"}]
    if ranked:
        out |= _ranked_metrics(y, s, w, ranked)
    return {n: out[n] for n in names}


def _ratio(num: np.ndarray, den: np.ndarray, empty: float = np.nan) -> np.ndarray:
    """``num / den``, ``empty`` where ``den`` is 0."""
    return np.divide(num, den, out=np.full(np.shape(num), empty), where=den > 0)


def _bin_residuals(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """rows x bins matrix holding ``label - score`` in each row's probability bin (0 elsewhere)."""
    idx = np.clip((p * CALIBRATION_BINS).astype("int64"), 0, CALIBRATION_BINS - 1)
    m = np.zeros((len(y), CALIBRATION_BINS))
    m[np.arange(len(y)), idx] = y - p
    return m


def _ranked_metrics(
    y: np.ndarray, s: np.ndarray, w: np.ndarray, names: list[str], max_fpr: float = MAX_FPR
) -> dict[str, np.ndarray]:
    """ROC-AUC, average precision and recall at ``max_fpr``, each a sum over the positive rows.

    For each positive row (descending score) the weighted negatives scoring above it (``fp_lo``), at or above it
    (``fp_hi``, the tied ones counted) and the weighted positives at or above it (``tp_hi``) are read from two
    cumulative sums, one over the positives and one over the negatives, so the cost is one pass over the rows per
    resample; tied scores form one threshold, as in scikit-learn.
    """
    positive = y > 0
    if positive.all() or not positive.any():
        # One class: nothing to rank against (and no positive row to read a recall from).
        return {n: np.full(len(w), np.nan) for n in names}
    pos_idx = np.flatnonzero(positive)[np.argsort(-s[positive], kind="stable")]
    neg_idx = np.flatnonzero(~positive)[np.argsort(-s[~positive], kind="stable")]
    pos_desc, neg_desc = -s[pos_idx], -s[neg_idx]  # ascending, for searchsorted
    k_lo = np.searchsorted(neg_desc, pos_desc, side="left")  # negatives strictly above each positive
    k_hi = np.searchsorted(neg_desc, pos_desc, side="right")  # ... at or above it
    m_hi = np.searchsorted(pos_desc, pos_desc, side="right")  # positives at or above it
    w_pos = w[:, pos_idx]
    cum_pos = np.zeros((len(w), len(pos_idx) + 1))
    cum_neg = np.zeros((len(w), len(neg_idx) + 1))
    np.cumsum(w_pos, axis=1, out=cum_pos[:, 1:])
    np.cumsum(w[:, neg_idx], axis=1, out=cum_neg[:, 1:])
    n_pos, n_neg = cum_pos[:, -1], cum_neg[:, -1]
    fp_hi, tp_hi = cum_neg[:, k_hi], cum_pos[:, m_hi]
    both = (n_pos > 0) & (n_neg > 0)
    out: dict[str, np.ndarray] = {}
    if "roc_auc" in names:
        # A positive beats the negatives below it and half of those tied with it.
        above = 0.5 * (cum_neg[:, k_lo] + fp_hi)
        auc = _ratio((w_pos * (n_neg[:, None] - above)).sum(axis=1), n_pos * n_neg)
        out["roc_auc"] = np.where(both, auc, np.nan)
    if "pr_auc" in names:
        precision = _ratio(tp_hi, tp_hi + fp_hi, empty=0.0)  # 0 only where the row's own weight is 0
        out["pr_auc"] = np.where(both, _ratio((w_pos * precision).sum(axis=1), n_pos), np.nan)
    if "recall_at_1pct_fpr" in names:
        # fp_hi and tp_hi grow along the positives: the best threshold is the last one within the allowed FPR.
        within = (fp_hi <= max_fpr * n_neg[:, None]).sum(axis=1)
        reached = np.where(within > 0, tp_hi[np.arange(len(w)), np.maximum(within - 1, 0)], 0.0)
        out["recall_at_1pct_fpr"] = np.where(both, _ratio(reached, n_pos), np.nan)
    return out


def calibration_error(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Expected calibration error: |mean label - mean score| per equal-width bin, weighted by the bin's rows."""
    return float(binary_metrics(y_true, y_score, ["calibration_error"])["calibration_error"][0])


def recall_at_fpr(y_true: np.ndarray, y_score: np.ndarray, max_fpr: float = MAX_FPR) -> float:
    """The largest recall reachable while at most ``max_fpr`` of the negatives are flagged."""
    y, s = np.asarray(y_true, dtype="float64"), np.asarray(y_score, dtype="float64")
    return float(_ranked_metrics(y, s, np.ones((1, len(y))), ["recall_at_1pct_fpr"], max_fpr)["recall_at_1pct_fpr"][0])


def _query_order(groups: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row order by (query, score descending) and each row's 0-based rank within its query."""
    order = np.lexsort((-scores, groups))
    g = groups[order]
    starts = np.r_[0, np.flatnonzero(g[1:] != g[:-1]) + 1] if len(g) else np.empty(0, dtype="int64")
    sizes = np.diff(np.r_[starts, len(g)])
    rank = np.arange(len(g)) - np.repeat(starts, sizes)
    return order, rank


def per_query(
    y_true: np.ndarray, y_score: np.ndarray, groups: np.ndarray, name: str, k: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """(query ids in sorted order, ``ndcg_at_10`` or ``map_at_10`` of each query); NaN for a query without a
    relevant row. Bootstrap resamples these per-query values.

    NDCG uses gains ``2**label - 1`` and discounts ``log2(rank + 1)``; AP@k divides by min(relevant rows, k).
    Ties in score keep the rows' order within the query.
    """
    if name not in RANKING_METRICS:
        raise MetricError(f"unknown ranking metric {name!r}; known: {sorted(RANKING_METRICS)}")
    y, s, g = np.asarray(y_true, dtype="float64"), np.asarray(y_score, dtype="float64"), np.asarray(groups)
    uniq, gi = np.unique(g, return_inverse=True)
    n_q = len(uniq)
    order, rank = _query_order(gi, s)
    top = rank < k
    q, rel, r = gi[order][top], y[order][top], rank[top]
    n_rel = np.bincount(gi, weights=(y > 0).astype("float64"), minlength=n_q)
    if name == "ndcg_at_10":
        dcg = np.bincount(q, weights=(2.0**rel - 1) / np.log2(r + 2), minlength=n_q)
        ideal_order, ideal_rank = _query_order(gi, y)
        it = ideal_rank < k
        irel, ir = y[ideal_order][it], ideal_rank[it]
        idcg = np.bincount(gi[ideal_order][it], weights=(2.0**irel - 1) / np.log2(ir + 2), minlength=n_q)
        return uniq, _ratio(dcg, np.where(n_rel > 0, idcg, 0.0))
    hit = (rel > 0).astype("float64")
    # Hits so far within the query at each top-k position (rows are grouped by query, in rank order).
    total = np.cumsum(hit)
    first = np.r_[0, np.flatnonzero(q[1:] != q[:-1]) + 1] if len(q) else np.empty(0, dtype="int64")
    before = np.repeat(total[first] - hit[first], np.diff(np.r_[first, len(q)]))
    precision = np.where(hit > 0, (total - before) / (r + 1), 0.0)
    ap = np.bincount(q, weights=precision, minlength=n_q)
    return uniq, _ratio(ap, np.minimum(n_rel, k))


def query_values(y_true: np.ndarray, y_score: np.ndarray, groups: np.ndarray, name: str, k: int = 10) -> np.ndarray:
    """Per-query ``ndcg_at_10`` or ``map_at_10`` of the queries with a relevant row (label > 0), in query order."""
    values = per_query(y_true, y_score, groups, name, k)[1]
    return values[~np.isnan(values)]


def undefined_metrics(y_true: Iterable[float], names: Iterable[str]) -> dict[str, str]:
    """``metric -> why it cannot be computed`` on these labels (one class, no relevant row); defined ones are absent.

    Definedness depends on the labels only, so it is the same for every scorer on the same rows.
    """
    y = np.asarray(y_true, dtype="float64")
    positives = int((y > 0).sum())
    out: dict[str, str] = {}
    for name in names:
        if name in TWO_CLASS_METRICS and positives == 0:
            out[name] = f"{NO_POSITIVES} (all {len(y)} labels are 0)"
        elif name in TWO_CLASS_METRICS and positives == len(y):
            out[name] = f"{NO_NEGATIVES} (all {len(y)} labels are positive)"
        elif name in RANKING_METRICS and positives == 0:
            out[name] = f"{NO_RELEVANT} (all {len(y)} candidates have relevance 0)"
    return out


def compute_metrics(
    y_true: Iterable[float], y_score: Iterable[float], names: Iterable[str], groups: Iterable | None = None
) -> dict[str, float]:
    """Each named metric of scores ``y_score`` against labels ``y_true`` (0/1, or graded relevance with
    ``groups``, the query of each row, for ranking metrics).

    A metric undefined on these labels (see :func:`undefined_metrics`) is NaN: a one-class split is reported, not
    raised; the gate refuses a model whose main metric could not be computed.
    """
    y = np.asarray(y_true, dtype="float64")
    p = np.asarray(y_score, dtype="float64")
    names = list(dict.fromkeys(names))
    unknown = [n for n in names if n not in KNOWN_METRICS]
    if unknown:
        raise MetricError(f"unknown metric(s) {unknown}; the model spec's 'metrics' may use {sorted(KNOWN_METRICS)}")
    if len(y) == 0:
        raise MetricError("no rows to compute metrics on: the split is empty")
    if len(p) != len(y):
        raise MetricError(f"{len(p)} scores for {len(y)} labels")
    out: dict[str, float] = {}
    ranking = [n for n in names if n in RANKING_METRICS]
    if ranking:
        if groups is None:
            raise MetricError(f"ranking metric(s) {ranking} need the query of each row (groups)")
        g = np.asarray(groups)
        for name in ranking:
            values = query_values(y, p, g, name)
            out[name] = float(values.mean()) if len(values) else float("nan")
    binary = [n for n in names if n in BINARY_METRICS]
    if binary:
        out |= {n: float(v[0]) for n, v in binary_metrics(y, p, binary).items()}
    return {n: out[n] for n in names}
