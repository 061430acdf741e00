"""Plots of the reviewer's report, drawn from the evaluation's scores: one function, one matplotlib Figure.

Every scorer that was evaluated on the test rows (challenger, champion, baseline, Bayes-optimal) is drawn in the same
colour and style in every plot, so a reviewer reads the legend once. Figures are built with
``matplotlib.figure.Figure`` (Agg canvas, no pyplot state), so Airflow tasks and tests can draw them concurrently.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_curve, roc_curve

from pipelines.evaluation.metrics import query_values

# Scorer id (a column of evaluation/scores.parquet) -> line style; the order is the legend's.
SCORER_STYLE: dict[str, dict] = {
    "candidate": {"color": "#1f5fa8", "linewidth": 2.2, "linestyle": "-"},
    "champion": {"color": "#e07b1a", "linewidth": 1.8, "linestyle": "-"},
    "baseline": {"color": "#5a9e5a", "linewidth": 1.5, "linestyle": "--"},
    "oracle": {"color": "#444444", "linewidth": 1.3, "linestyle": ":"},
}
LABEL_COLORS = ("#4c72b0", "#c44e52", "#55a868", "#8172b2", "#937860")
DPI = 100
WIDE = 11.5  # inches: a two-panel figure spanning the report's width (DPI x WIDE pixels)
MAX_RANK = 20


@dataclass(frozen=True)
class ScoreSet:
    """The test rows' labels and every available scorer's scores on them.

    ``scores`` maps scorer ids (keys of :data:`SCORER_STYLE`) to scores, ``names`` the same ids to legend names
    (e.g. "challenger v3"); ``query_id`` groups the rows of a ranking model's requests.
    """

    label: np.ndarray
    scores: dict[str, np.ndarray]
    names: dict[str, str]
    query_id: np.ndarray | None = None

    def ordered(self) -> list[tuple[str, str, np.ndarray]]:
        """(id, legend name, scores) in legend order."""
        return [(k, self.names.get(k, k), self.scores[k]) for k in SCORER_STYLE if k in self.scores]


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _figure(width: float = 6.0, height: float = 4.4) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def roc_figure(data: ScoreSet) -> Figure:
    """ROC curves with the AUC of each scorer in the legend."""
    fig = _figure()
    ax = fig.add_subplot()
    positives = data.label > 0
    for key, name, scores in data.ordered():
        fpr, tpr, _ = roc_curve(positives, scores)
        auc = float(np.trapezoid(tpr, fpr))
        ax.plot(fpr, tpr, label=f"{name} (AUC {auc:.3f})", **SCORER_STYLE[key])
    ax.plot([0, 1], [0, 1], color="0.75", linewidth=1, linestyle="-", label="random")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate", ylabel="true positive rate", title="ROC curve")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def pr_figure(data: ScoreSet) -> Figure:
    """Precision-recall curves; the label rate is the precision of a random ranking."""
    fig = _figure()
    ax = fig.add_subplot()
    positives = data.label > 0
    for key, name, scores in data.ordered():
        precision, recall, _ = precision_recall_curve(positives, scores)
        ap = float(-np.sum(np.diff(recall) * precision[:-1]))
        ax.plot(recall, precision, label=f"{name} (AP {ap:.3f})", drawstyle="steps-post", **SCORER_STYLE[key])
    rate = float(positives.mean())
    ax.axhline(rate, color="0.75", linewidth=1, label=f"random ({rate:.3f})")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="recall", ylabel="precision", title="Precision-recall curve")
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def score_distribution_figure(data: ScoreSet) -> Figure:
    """Histograms of each model's scores by label (by relevance grade for ranking): how well the classes separate."""
    models = [(k, n, s) for k, n, s in data.ordered() if k in {"candidate", "champion"}]
    grades = np.unique(data.label)
    fig = _figure(width=5.6 * len(models), height=4.0)
    axes = fig.subplots(1, len(models), squeeze=False, sharey=False)[0]
    for ax, (_, name, scores) in zip(axes, models, strict=True):
        lo, hi = float(np.min(scores)), float(np.max(scores))
        bins = np.linspace(lo, hi, 41) if hi > lo else 10  # a constant scorer still gets its (one-bar) histogram
        for i, grade in enumerate(grades):
            chosen = scores[data.label == grade]
            label = f"{'label' if len(grades) <= 2 else 'relevance'} {grade:g} ({chosen.size:,} rows)"
            color = LABEL_COLORS[i % len(LABEL_COLORS)]
            ax.hist(chosen, bins=bins, density=True, alpha=0.45, color=color, label=label)
            ax.hist(chosen, bins=bins, density=True, histtype="step", color=color, linewidth=1.2)
        ax.set(xlabel="score", ylabel="density", title=name)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle("Score distributions by label")
    return fig


def reliability_points(label: np.ndarray, scores: np.ndarray, bins: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Mean predicted probability and observed positive rate in equal-count bins of the score."""
    order = np.argsort(scores, kind="stable")
    groups = np.array_split(order, min(bins, len(order)))
    predicted = np.array([scores[g].mean() for g in groups if g.size])
    observed = np.array([(label[g] > 0).mean() for g in groups if g.size])
    return predicted, observed


def calibration_figure(data: ScoreSet) -> Figure:
    """Reliability curves (observed rate against mean predicted probability, equal-count bins) and where the
    predicted probabilities fall.

    Equal-count bins keep every point backed by the same number of rows, also when probabilities pile up near zero
    (fraud); the reliability axes zoom on the range the scores occupy.
    """
    fig = _figure(width=WIDE, height=4.4)
    ax, hist_ax = fig.subplots(1, 2)
    top = 0.0
    for key, name, scores in data.ordered():
        predicted, observed = reliability_points(data.label, scores)
        ax.plot(predicted, observed, marker="o", markersize=4, label=name, **SCORER_STYLE[key])
        top = max(top, float(predicted.max()), float(observed.max()))
    top = min(1.0, top * 1.08) if top > 0 else 1.0
    ax.plot([0, top], [0, top], color="0.6", linewidth=1, label="perfectly calibrated")
    ax.set(xlim=(0, top), ylim=(0, top), xlabel="mean predicted probability (10 equal-count bins)")
    ax.set(ylabel="observed positive rate", title="Calibration (reliability)")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    bins = np.linspace(0.0, top, 31)
    for key, name, scores in data.ordered():
        style = SCORER_STYLE[key]
        hist_ax.hist(
            np.clip(scores, 0, top),
            bins=bins,
            histtype="step",
            color=style["color"],
            linestyle=style["linestyle"],
            linewidth=style["linewidth"],
            label=name,
        )
    hist_ax.set(xlim=(0, top), xlabel="predicted probability", ylabel="rows", title="Predicted probabilities")
    hist_ax.legend(loc="best", fontsize=8)
    hist_ax.grid(alpha=0.3)
    return fig


def cumulative_gain(label: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Share of all positives found (y) in the top share of rows by score (x), starting at (0, 0)."""
    positives = (label[np.argsort(-scores, kind="stable")] > 0).astype("float64")
    total = positives.sum()
    found = np.r_[0.0, np.cumsum(positives) / total] if total else np.zeros(len(positives) + 1)
    return np.linspace(0.0, 1.0, len(positives) + 1), found


def gain_figure(data: ScoreSet) -> Figure:
    """Cumulative gain (share of positives in the top x% of rows) and lift over random targeting per decile."""
    fig = _figure(width=WIDE, height=4.4)
    gain_ax, lift_ax = fig.subplots(1, 2)
    deciles = np.arange(1, 11) / 10
    for key, name, scores in data.ordered():
        share, found = cumulative_gain(data.label, scores)
        gain_ax.plot(share, found, label=name, **SCORER_STYLE[key])
        lift = np.interp(deciles, share, found) / deciles
        lift_ax.plot(deciles * 100, lift, marker="o", markersize=4, label=name, **SCORER_STYLE[key])
    gain_ax.plot([0, 1], [0, 1], color="0.75", linewidth=1, label="random")
    gain_ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="share of rows targeted (highest scores first)")
    gain_ax.set(ylabel="share of positives found", title="Cumulative gain")
    lift_ax.axhline(1.0, color="0.75", linewidth=1, label="random")
    lift_ax.set(xlabel="top % of rows targeted", ylabel="lift (positive rate / overall rate)", title="Lift")
    lift_ax.set_xticks(deciles * 100)
    for ax in (gain_ax, lift_ax):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    return fig


def _ranked(label: np.ndarray, scores: np.ndarray, query_id: np.ndarray, depth: int) -> np.ndarray:
    """queries x depth matrix of labels in each query's score order (NaN past a query's last candidate)."""
    frame = pd.DataFrame({"q": query_id, "s": scores, "y": label.astype("float64")})
    frame = frame.sort_values(["q", "s"], ascending=[True, False], kind="stable")
    frame["rank"] = frame.groupby("q", sort=False).cumcount()
    frame = frame[frame["rank"] < depth]
    return frame.pivot(index="q", columns="rank", values="y").reindex(columns=range(depth)).to_numpy()


def ndcg_curve(label: np.ndarray, scores: np.ndarray, query_id: np.ndarray, depth: int = MAX_RANK) -> np.ndarray:
    """Mean NDCG@k for k = 1..depth, as the evaluation computes NDCG@10 (queries with a relevant candidate)."""
    curve = [query_values(label, scores, query_id, "ndcg_at_10", k=k) for k in range(1, depth + 1)]
    return np.array([values.mean() if len(values) else np.nan for values in curve])


def ndcg_figure(data: ScoreSet) -> Figure:
    """NDCG@k for k = 1..20 of every scorer (ranking models)."""
    if data.query_id is None:
        raise ValueError("NDCG@k needs the query_id of every row (a ranking model's scores)")
    fig = _figure()
    ax = fig.add_subplot()
    ks = np.arange(1, MAX_RANK + 1)
    for key, name, scores in data.ordered():
        curve = ndcg_curve(data.label, scores, data.query_id)
        ax.plot(ks, curve, marker="o", markersize=3, label=f"{name} (@10 {curve[9]:.3f})", **SCORER_STYLE[key])
    ax.set(xlabel="k (top k candidates)", ylabel="mean NDCG@k", title="NDCG@k", xlim=(0.5, MAX_RANK + 0.5))
    ax.set_xticks(ks[::2] if MAX_RANK > 10 else ks)
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def relevance_by_rank_figure(data: ScoreSet) -> Figure:
    """Mean relevance of the candidate each scorer puts at rank 1..20: a good ranker's curve falls steeply."""
    if data.query_id is None:
        raise ValueError("relevance by rank needs the query_id of every row (a ranking model's scores)")
    fig = _figure()
    ax = fig.add_subplot()
    ranks = np.arange(1, MAX_RANK + 1)
    for key, name, scores in data.ordered():
        with np.errstate(invalid="ignore"):
            mean = np.nanmean(_ranked(data.label, scores, data.query_id, MAX_RANK), axis=0)
        ax.plot(ranks, mean, marker="o", markersize=3, label=name, **SCORER_STYLE[key])
    ax.set(xlabel="rank", ylabel="mean relevance at that rank", title="Relevance by rank")
    ax.set_xticks(ranks[::2])
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def importance_figure(gain: dict[str, float], top: int = 20) -> Figure:
    """The ``top`` features by total gain, as a share of the model's total gain."""
    total = sum(gain.values()) or 1.0
    items = sorted(gain.items(), key=lambda kv: kv[1], reverse=True)[:top][::-1]
    fig = _figure(width=7.5, height=max(2.6, 0.32 * len(items) + 1.0))
    ax = fig.add_subplot()
    shares = [v / total for _, v in items]
    bars = ax.barh([k for k, _ in items], shares, color="#1f5fa8")
    for bar, share in zip(bars, shares, strict=True):
        ax.annotate(
            f"{share:.1%}",
            (bar.get_width(), bar.get_y() + bar.get_height() / 2),
            va="center",
            fontsize=7,
            xytext=(3, 0),
            textcoords="offset points",
        )
    ax.set_xlim(0, max(shares, default=1.0) * 1.15)
    ax.xaxis.set_major_formatter(lambda v, _: f"{v:.0%}")
    shown = f"top {len(items)} of {len(gain)}" if len(gain) > len(items) else f"all {len(items)}"
    ax.set(xlabel="share of total gain", title=f"Feature importance (gain), {shown} features")
    ax.tick_params(axis="y", labelsize=8)
    return fig


def _swarm_offsets(values: np.ndarray, width: float = 0.4, bins: int = 60) -> np.ndarray:
    """Vertical offsets spreading points with nearby values apart, so the band's height follows their density."""
    if values.size == 0:
        return values
    lo, hi = float(values.min()), float(values.max())
    idx = np.zeros(values.size, dtype="int64") if hi == lo else ((values - lo) / (hi - lo) * (bins - 1)).astype(int)
    offsets = np.zeros(values.size)
    counts = np.bincount(idx, minlength=bins)
    peak = counts.max()
    for b in np.flatnonzero(counts):
        members = np.flatnonzero(idx == b)
        # alternate above/below the centre line: 0, +1, -1, +2, -2, ...
        steps = np.arange(members.size)
        signed = np.where(steps % 2 == 1, (steps + 1) // 2, -(steps // 2))
        offsets[members] = signed * (width / max(peak / 2, 1))
    return offsets


def shap_figure(contributions: np.ndarray, features: pd.DataFrame, top: int = 15) -> Figure:
    """SHAP summary: one row per feature (the ``top`` by mean |contribution|), one dot per scored row.

    ``contributions`` is LightGBM's ``predict(X, pred_contrib=True)`` (rows x features + 1; the last column is the
    expected value). A dot's position is the feature's contribution to that row's raw score, its colour the
    feature's value from low (blue) to high (red), rank-scaled per feature; grey is a missing value.
    """
    names = list(features.columns)
    contrib = contributions[:, : len(names)]
    strength = np.abs(contrib).mean(axis=0)
    order = np.argsort(strength)[::-1][:top][::-1]
    fig = _figure(width=8.5, height=max(3.0, 0.42 * len(order) + 1.4))
    ax = fig.add_subplot()
    rng = np.random.default_rng(0)
    scatter = None
    for row, j in enumerate(order):
        x = contrib[:, j]
        shuffled = rng.permutation(x.size)  # draw order must not follow the value, or one colour hides the other
        values = features.iloc[:, j].to_numpy(dtype="float64")
        missing = ~np.isfinite(values)
        colour = np.full(values.size, np.nan)
        if (~missing).any():
            colour[~missing] = pd.Series(values[~missing]).rank(pct=True).to_numpy()
        y = row + _swarm_offsets(x)
        s = shuffled[missing[shuffled]]
        ax.scatter(x[s], y[s], c="#bbbbbb", s=6, linewidths=0)
        s = shuffled[~missing[shuffled]]
        scatter = ax.scatter(x[s], y[s], c=colour[s], cmap="coolwarm", vmin=0, vmax=1, s=6, linewidths=0)
    ax.axvline(0, color="0.5", linewidth=0.8)
    ax.set_yticks(range(len(order)), [names[j] for j in order], fontsize=8)
    ax.set_ylim(-0.7, len(order) - 0.3)
    ax.set(xlabel="contribution to the raw score (SHAP value)", title=f"SHAP summary, {contributions.shape[0]:,} rows")
    ax.grid(axis="x", alpha=0.3)
    if scatter is not None:
        bar = fig.colorbar(scatter, ax=ax, ticks=[0, 1], aspect=30, pad=0.01)
        bar.ax.set_yticklabels(["low", "high"])
        bar.set_label("feature value", fontsize=8)
    return fig
