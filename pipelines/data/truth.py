"""Best achievable scores: the simulator's true probabilities scored against the realised labels (purchase intent
from the lake, order fraud from the simulator)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from pipelines.data import orders
from pipelines.data.labels import purchase_labels
from pipelines.data.simulator import SimulationConfig
from pipelines.lake import Lake, as_date, date_range

TRUTH_TABLE = "truth_purchase_intent"


class IncompleteLabelWindow(RuntimeError):
    """Events needed to label the requested as-of days are not (yet) in the lake."""


def best_achievable(lake: Lake, start: dt.date, end: dt.date, window_days: int = 7) -> dict[str, float]:
    """ROC-AUC and PR-AUC of the ground truth ``p_purchase_7d`` for as-of days ``start..end`` (inclusive).

    This is the Bayes-optimal score on those rows: no model fed only observable data can beat it in expectation.
    Needs the truth partitions of every as-of day and the events of days ``start+1 .. end+window_days``.
    """
    start, end = as_date(start), as_date(end)
    if end < start:
        raise ValueError(f"best_achievable: end {end} is before start {start}")
    days = date_range(start, end)
    missing_truth = [d for d in days if not lake.exists(TRUTH_TABLE, d)]
    if missing_truth:
        raise FileNotFoundError(
            f"{lake.uri(TRUTH_TABLE)}: no partition for {_days(missing_truth)}; extract those days first"
        )
    label_days = date_range(start + dt.timedelta(days=1), end + dt.timedelta(days=window_days))
    missing_events = [d for d in label_days if not lake.exists("events", d)]
    if missing_events:
        raise IncompleteLabelWindow(
            f"{lake.uri('events')}: label windows of as-of days {start}..{end} need events through "
            f"{label_days[-1]}, missing {_days(missing_events)}; extract them or pick an earlier end"
        )

    truth = lake.read_range(TRUTH_TABLE, start, end)
    events = lake.read_range("events", label_days[0], label_days[-1], columns=["user_id", "event_type", "event_time"])
    labels = purchase_labels(events, days, truth["user_id"].unique(), window_days=window_days)
    truth["as_of"] = pd.to_datetime(truth["as_of"], utc=True, cache=False).dt.as_unit("ns")
    scored = truth.merge(labels, on=["user_id", "as_of"], how="inner")
    if scored["label"].nunique() < 2:
        raise ValueError(f"best_achievable: labels of {start}..{end} are all {scored['label'].iloc[0]}; no AUC")
    return {
        "roc_auc": float(roc_auc_score(scored["label"], scored["p_purchase_7d"])),
        "pr_auc": float(average_precision_score(scored["label"], scored["p_purchase_7d"])),
        "n_rows": int(len(scored)),
        "label_rate": float(scored["label"].mean()),
        "mean_truth": float(scored["p_purchase_7d"].mean()),
    }


def best_achievable_fraud(
    config: SimulationConfig,
    start: dt.date,
    end: dt.date,
    fraud: orders.FraudConfig = orders.DEFAULT_FRAUD,
    max_fpr: float = 0.01,
) -> dict[str, float]:
    """ROC-AUC, PR-AUC and recall at ``max_fpr`` of the true ``p_fraud`` against the realised labels of the orders
    placed on ``start..end`` (inclusive): the Bayes-optimal scores of an order-fraud model on those orders.

    Uses every order's eventual label, whenever it arrives (a model evaluated before the labels have arrived
    sees fewer positives); the simulator computes it directly, no lake needed.
    """
    start, end = as_date(start), as_date(end)
    if end < start:
        raise ValueError(f"best_achievable_fraud: end {end} is before start {start}")
    scored = pd.concat([orders.realised_labels(config, d, fraud) for d in date_range(start, end)], ignore_index=True)
    if scored["is_fraud"].nunique() < 2:
        raise ValueError(
            f"best_achievable_fraud: the {len(scored)} orders of {start}..{end} are all labelled "
            f"{scored['is_fraud'].iloc[0] if len(scored) else 'nothing'}; pick a longer range or a larger world"
        )
    y, p = scored["is_fraud"].to_numpy(), scored["p_fraud"].to_numpy()
    fpr, tpr, _ = roc_curve(y, p)
    return {
        "roc_auc": float(roc_auc_score(y, p)),
        "pr_auc": float(average_precision_score(y, p)),
        f"recall_at_{max_fpr:g}_fpr": float(tpr[fpr <= max_fpr].max()),
        "n_orders": int(len(scored)),
        "fraud_rate": float(y.mean()),
        "mean_p_fraud": float(np.mean(p)),
    }


def _days(days: list[dt.date]) -> str:
    shown = ", ".join(d.isoformat() for d in days[:5])
    return shown + (f" (+{len(days) - 5} more)" if len(days) > 5 else "")
