"""Rows of user models (purchase intent): every known user at each as-of day, labelled by its next purchases.

Context columns for slices: ``ctx_days_since_signup`` (new vs returning) and ``ctx_top_category`` (the category
the user viewed most in the 30 days before the as-of time, "none" without views).
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from pipelines.data import schemas
from pipelines.data.labels import purchase_labels
from pipelines.data.truth import TRUTH_TABLE
from pipelines.features.user_features import USER_FEATURES_TABLE, WINDOW_DAYS
from pipelines.lake import Lake
from pipelines.settings import Settings
from pipelines.specs import ModelSpec
from pipelines.training.dataset import TIMESTAMP_COLUMN, SplitDays, TrainingSetError, assemble_training_frame

KEY = "user_id"


def entity_rows(lake: Lake, days: list[dt.date]) -> pd.DataFrame:
    """Every user with a feature row on each as-of day, stamped with that day's as-of time."""
    missing = [d for d in days if not lake.exists(USER_FEATURES_TABLE, d)]
    if missing:
        raise TrainingSetError(
            f"{lake.uri(USER_FEATURES_TABLE)}: no feature partition for as-of day(s) {[str(d) for d in missing]}; "
            "run the features pipeline for those days (or backfill) before training"
        )
    frames = [
        lake.read(USER_FEATURES_TABLE, d, columns=[KEY]).assign(
            **{TIMESTAMP_COLUMN: pd.Timestamp(schemas.as_of(d, lake.day_zone))}
        )
        for d in days
    ]
    rows = pd.concat(frames, ignore_index=True).drop_duplicates()
    rows[TIMESTAMP_COLUMN] = pd.to_datetime(rows[TIMESTAMP_COLUMN], utc=True, cache=False).dt.as_unit("us")
    return rows


def context_columns(lake: Lake, rows: pd.DataFrame, days: list[dt.date], events: pd.DataFrame) -> pd.DataFrame:
    """``rows`` with ctx_days_since_signup (from the newest users snapshot) and ctx_top_category."""
    users = lake.read("users", days[-1], columns=[KEY, "signup_time"])
    signup = rows[[KEY]].merge(users, on=KEY, how="left")["signup_time"]
    age = (rows[TIMESTAMP_COLUMN] - pd.to_datetime(signup, utc=True, cache=False).dt.as_unit("us")) / pd.Timedelta(
        days=1
    )
    out = rows.assign(ctx_days_since_signup=age.to_numpy(dtype="float64"))

    views = events[events["event_type"] == "view"]
    event_day = pd.to_datetime(views["event_time"], utc=True, cache=False).dt.tz_convert(lake.day_zone).dt.date
    tops = []
    for day in days:
        window = views[(event_day > day - dt.timedelta(days=WINDOW_DAYS)) & (event_day <= day)]
        counts = window.groupby([KEY, "category_id"]).size().rename("n").reset_index()
        top = counts.sort_values(["n", "category_id"], ascending=[False, True]).drop_duplicates(KEY)
        tops.append(
            top.assign(**{TIMESTAMP_COLUMN: pd.Timestamp(schemas.as_of(day, lake.day_zone))})[
                [KEY, TIMESTAMP_COLUMN, "category_id"]
            ]
        )
    top = pd.concat(tops, ignore_index=True)
    top[TIMESTAMP_COLUMN] = pd.to_datetime(top[TIMESTAMP_COLUMN], utc=True, cache=False).dt.as_unit("us")
    merged = out[[KEY, TIMESTAMP_COLUMN]].merge(top, on=[KEY, TIMESTAMP_COLUMN], how="left")["category_id"]
    out["ctx_top_category"] = np.where(merged.isna(), "none", merged.astype("Int64").astype(str))
    return out


def build_frame(
    settings: Settings, lake: Lake, spec: ModelSpec, splits: SplitDays, logical_date: dt.date
) -> pd.DataFrame:
    """User rows x purchase labels x Feast point-in-time features, with context columns."""
    # Imported here: Feast takes seconds to import and only this glue needs it.
    from pipelines.features.store import historical_features

    rows = entity_rows(lake, splits.days)
    # Context looks back 30 days from the oldest day; labels look forward to the logical date.
    first = splits.days[0] - dt.timedelta(days=WINDOW_DAYS - 1)
    columns = ["user_id", "event_type", "event_time", "category_id"]
    events = lake.read_range("events", first, logical_date, columns=columns)
    first_as_of = pd.Timestamp(schemas.as_of(splits.days[0], lake.day_zone))
    label_events = events[pd.to_datetime(events["event_time"], utc=True, cache=False) >= first_as_of]
    if label_events.empty:
        raise TrainingSetError(f"{lake.uri('events')}: no events between {splits.days[0]} and {logical_date}")
    labels = purchase_labels(
        label_events,
        splits.days,
        rows[KEY].unique().tolist(),
        window_days=spec.label.window_days,
        event_type=spec.label.event_type,
        zone=lake.day_zone,
    )
    rows = context_columns(lake, rows, splits.days, events)
    features = historical_features(settings, rows[[KEY, TIMESTAMP_COLUMN]], spec.feature_service)
    return assemble_training_frame(rows, labels, features, splits, KEY, zone=lake.day_zone)


def oracle_scores(settings: Settings, lake: Lake, spec: ModelSpec, frame: pd.DataFrame) -> np.ndarray | None:
    """The simulator's P(purchase in 7 days) of each row, from the lake's truth partitions (None if absent)."""
    if settings.data_source != "simulator" or spec.label.window_days != 7 or frame.empty:
        return None
    stamps = pd.to_datetime(frame[TIMESTAMP_COLUMN], utc=True, cache=False)
    days = sorted({(t - pd.Timedelta(days=1)).date() for t in stamps.unique()})
    if not all(lake.exists(TRUTH_TABLE, d) for d in days):
        return None
    truth = lake.read_range(TRUTH_TABLE, days[0], days[-1])
    truth = truth.assign(**{TIMESTAMP_COLUMN: pd.to_datetime(truth["as_of"], utc=True, cache=False).dt.as_unit("us")})
    asked = pd.DataFrame({KEY: frame[KEY].to_numpy(), TIMESTAMP_COLUMN: stamps.dt.as_unit("us").to_numpy()})
    merged = asked.merge(truth[[KEY, TIMESTAMP_COLUMN, "p_purchase_7d"]], on=[KEY, TIMESTAMP_COLUMN], how="left")
    scores = merged["p_purchase_7d"].to_numpy(dtype="float64")
    return None if np.isnan(scores).any() else scores
