"""Rows of order models (fraud): every order placed on the split days, labelled by the chargebacks that arrived by
the logical date, at its own purchase time.

Context columns for slices: ``ctx_source``, ``ctx_browser``, ``ctx_account_age_days`` (age of the account when it
ordered) and ``ctx_purchase_value``.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from pipelines.data import schemas
from pipelines.features.order_features import ORDER_FEATURES_TABLE
from pipelines.lake import Lake
from pipelines.settings import Settings
from pipelines.specs import ModelSpec
from pipelines.training.dataset import (
    LABEL_COLUMN,
    TIMESTAMP_COLUMN,
    SplitDays,
    TrainingSetError,
    assemble_training_frame,
)

KEY = "order_id"
TRUTH_TABLE = "truth_order_fraud"
_ORDER_COLUMNS = ["order_id", "signup_time", "purchase_time", "purchase_value", "source", "browser"]


def entity_rows(lake: Lake, days: list[dt.date]) -> pd.DataFrame:
    """Every order of ``days`` at its purchase time, with its value (the on-demand features' request field) and
    the context columns."""
    missing = [d for d in days if not lake.exists(ORDER_FEATURES_TABLE, d)]
    if missing:
        raise TrainingSetError(
            f"{lake.uri(ORDER_FEATURES_TABLE)}: no feature partition for order day(s) {[str(d) for d in missing]}; "
            "run the features pipeline for those days (or backfill) before training"
        )
    orders = lake.read_range("orders", days[0], days[-1], columns=_ORDER_COLUMNS)
    if orders.empty:
        raise TrainingSetError(f"{lake.uri('orders')}: no orders between {days[0]} and {days[-1]}")
    placed = pd.to_datetime(orders["purchase_time"], utc=True, cache=False).dt.as_unit("us")
    signup = pd.to_datetime(orders["signup_time"], utc=True, cache=False).dt.as_unit("us")
    return pd.DataFrame(
        {
            KEY: orders["order_id"].astype(str),
            TIMESTAMP_COLUMN: placed,
            "purchase_value": orders["purchase_value"].astype("float64"),
            "ctx_source": orders["source"].astype(str),
            "ctx_browser": orders["browser"].astype(str),
            "ctx_account_age_days": ((placed - signup) / pd.Timedelta(days=1)).clip(lower=0.0).astype("float64"),
            "ctx_purchase_value": orders["purchase_value"].astype("float64"),
        }
    )


def chargeback_labels(lake: Lake, rows: pd.DataFrame, first_day: dt.date, logical_date: dt.date) -> pd.DataFrame:
    """1 for each order whose chargeback arrived by the end of ``logical_date``, else 0 (no chargeback yet).

    Labels are partitioned by the day they arrived, so only partitions up to ``logical_date`` are read: a
    chargeback arriving later is not known to this run, exactly as it would not be in production.
    """
    arrived = lake.read_range("order_labels", first_day, logical_date, columns=["order_id", "is_fraud", "label_time"])
    by_end = pd.to_datetime(arrived["label_time"], utc=True, cache=False) < pd.Timestamp(
        schemas.as_of(logical_date, lake.day_zone)
    )
    charged = set(arrived.loc[by_end & (arrived["is_fraud"].astype("int64") == 1), "order_id"].astype(str))
    return pd.DataFrame(
        {
            KEY: rows[KEY],
            "as_of": rows[TIMESTAMP_COLUMN],
            LABEL_COLUMN: rows[KEY].isin(charged).astype("int64"),
        }
    )


def build_frame(
    settings: Settings, lake: Lake, spec: ModelSpec, splits: SplitDays, logical_date: dt.date
) -> pd.DataFrame:
    """Order rows x chargeback labels x Feast point-in-time features (incl. on-demand ones), with context."""
    # Imported here: Feast takes seconds to import and only this glue needs it.
    from feature_repo.orders import REQUEST_FIELDS
    from pipelines.features.store import historical_features

    rows = entity_rows(lake, splits.days)
    labels = chargeback_labels(lake, rows, splits.days[0], logical_date)
    joined = historical_features(settings, rows[[KEY, TIMESTAMP_COLUMN, *REQUEST_FIELDS]], spec.feature_service)
    # The request fields fed the on-demand features; the raw value stays out of the model (ctx_purchase_value
    # keeps it for slices).
    features = joined.drop(columns=REQUEST_FIELDS)
    rows = rows.drop(columns=REQUEST_FIELDS)
    return assemble_training_frame(rows, labels, features, splits, KEY, split_by="event_day", zone=lake.day_zone)


def oracle_scores(settings: Settings, lake: Lake, spec: ModelSpec, frame: pd.DataFrame) -> np.ndarray | None:
    """The simulator's true fraud probability of each row's order (None without simulated truth for them)."""
    if settings.data_source != "simulator" or frame.empty:
        return None
    days = sorted(set(pd.to_datetime(frame[TIMESTAMP_COLUMN], utc=True, cache=False).dt.date))
    if not all(lake.exists(TRUTH_TABLE, d) for d in days):
        return None
    truth = lake.read_range(TRUTH_TABLE, days[0], days[-1], columns=[KEY, "p_fraud"])
    merged = frame[[KEY]].astype({KEY: str}).merge(truth.astype({KEY: str}), on=KEY, how="left", validate="m:1")
    scores = merged["p_fraud"].to_numpy(dtype="float64")
    return None if np.isnan(scores).any() else scores
