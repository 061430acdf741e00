"""Percentile bootstrap confidence intervals of every metric, and of the paired difference between scorers.

The unit resampled is the row for binary models and the query (request) for ranking ones. One matrix of
resample counts (resamples x units, fixed seed) serves every scorer and every slice: scorers are compared on the
very same resamples (so their differences are paired), and a slice's interval is read from the rows of the
slice within each resample of the whole test split. Metrics are computed with the counts as row weights
(:func:`pipelines.evaluation.metrics.binary_metrics`), so no resample is materialised.
"""

from __future__ import annotations

import numpy as np

from pipelines.evaluation.metrics import binary_metrics, per_query
from pipelines.specs import RANKING_METRICS

N_BOOTSTRAP = 200
SEED = 20240601
CONFIDENCE = 0.95
# An interval needs at least this share of resamples where the metric is defined (e.g. both classes present).
MIN_DEFINED = 0.5
# Resamples are weighed in chunks of at most this many (resample, row) cells: ~32 MB per float matrix, so a
# test split of millions of rows costs time, not memory.
CHUNK_CELLS = 4_000_000

Estimate = dict[str, float | None]  # {"value", "low", "high"}; low/high None when no interval could be drawn
PointAndDraws = tuple[float, np.ndarray]


def units_of(rows: int, groups: np.ndarray | None) -> np.ndarray:
    """Each row's resampling unit: its own index, or the index of its query among the sorted query ids."""
    if groups is None:
        return np.arange(rows)
    return np.unique(np.asarray(groups), return_inverse=True)[1]


def resample_counts(units: int, n_resamples: int = N_BOOTSTRAP, seed: int = SEED) -> np.ndarray:
    """resamples x units: how often each unit is drawn when ``units`` units are drawn with replacement.

    Stored in the smallest integer type that holds the counts (a byte in practice), one resample at a time.
    """
    rng = np.random.default_rng(seed)
    counts = np.zeros((n_resamples, units), dtype="uint8")
    for b in range(n_resamples):
        row = np.bincount(rng.integers(0, units, size=units), minlength=units)
        if len(row) and row.max() > np.iinfo(counts.dtype).max:
            counts = counts.astype("uint32")
        counts[b] = row
    return counts


def metric_draws(
    y: np.ndarray, scores: np.ndarray, names: list[str], units: np.ndarray, counts: np.ndarray
) -> dict[str, PointAndDraws]:
    """Point value and one value per resample of each metric, on rows whose units are ``units``.

    ``counts`` covers every unit of the test split; the rows given may be a slice of it. Metrics undefined on
    these rows (one class only, no relevant row) are left out.
    """
    out: dict[str, PointAndDraws] = {}
    binary = [n for n in names if n not in RANKING_METRICS]
    if binary:
        points = binary_metrics(y, scores, binary)
        step = max(1, CHUNK_CELLS // max(len(y), 1))
        chunks = [
            binary_metrics(y, scores, binary, counts[b : b + step, units].astype("float64"))
            for b in range(0, len(counts), step)
        ]
        draws = {n: np.concatenate([c[n] for c in chunks]) for n in binary}
        out |= {n: (float(points[n][0]), draws[n]) for n in binary if np.isfinite(points[n][0])}
    for name in (n for n in names if n in RANKING_METRICS):
        queries, values = per_query(y, scores, units, name)
        defined = ~np.isnan(values)
        if not defined.any():
            continue
        w = counts[:, queries[defined]].astype("float64")
        total = w.sum(axis=1)
        draws = np.divide(w @ values[defined], total, out=np.full(len(w), np.nan), where=total > 0)
        out[name] = (float(values[defined].mean()), draws)
    return out


def interval(point: float, draws: np.ndarray, confidence: float = CONFIDENCE) -> Estimate:
    """``{"value", "low", "high"}``: the percentile interval of the draws where the metric was defined."""
    finite = draws[np.isfinite(draws)]
    if len(draws) == 0 or len(finite) < MIN_DEFINED * len(draws):
        return {"value": point, "low": None, "high": None}
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(finite, [tail, 100 - tail])
    return {"value": point, "low": float(low), "high": float(high)}


def compare(
    y: np.ndarray,
    scores: dict[str, tuple[np.ndarray, list[str]]],
    units: np.ndarray,
    counts: np.ndarray,
    reference: str = "candidate",
    confidence: float = CONFIDENCE,
) -> tuple[dict[str, dict[str, Estimate]], dict[str, dict[str, Estimate]]]:
    """Estimates of every scorer's metrics, and the paired difference ``reference - other`` for each other scorer.

    ``scores`` maps a scorer to its scores and the metrics it is measured on. Differences are computed on the
    same resamples (a resample where either metric is undefined is skipped).
    """
    drawn = {name: metric_draws(y, s, metrics, units, counts) for name, (s, metrics) in scores.items()}
    estimates = {name: {m: interval(*pair, confidence) for m, pair in values.items()} for name, values in drawn.items()}
    differences: dict[str, dict[str, Estimate]] = {}
    ref = drawn.get(reference, {})
    for name, values in drawn.items():
        if name != reference:
            differences[name] = {
                m: interval(ref[m][0] - values[m][0], ref[m][1] - values[m][1], confidence) for m in ref if m in values
            }
    return estimates, differences
