"""Rows of ranking models (product ranking): one query per user with a session on an as-of day, one row per
candidate product, labelled by the user's best event on it in the label window.

A query is (user, as-of day D); its candidates come from ``pipelines.features.candidates`` at ``as_of(D)`` and its
rows are stamped ``as_of(D)``. The label is the highest ``spec.label.gains`` grade among the user's events on the
product in ``[as_of(D), as_of(D) + window_days)`` (e.g. purchase 2, cart 1, else 0). Only queries with at least
one relevant candidate are kept, in every split: NDCG and MAP are undefined without one (the metrics would skip
such queries anyway), and a ranker learns nothing from them.

Context columns for slices: ``ctx_days_since_signup``, ``ctx_top_category`` (the category the user viewed most
in the 30 days before the request) and ``ctx_views_7d`` (the user's views in the 7 days before it).
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from pipelines.data import schemas
from pipelines.features.candidates import EVENT_COLUMNS, generate_candidates, history_days, request_users
from pipelines.features.product_features import PRODUCT_STATS_TABLE, USER_CATEGORY_TABLE, USER_PRODUCT_TABLE
from pipelines.features.user_features import USER_FEATURES_TABLE, WINDOW_DAYS
from pipelines.lake import Lake
from pipelines.settings import Settings
from pipelines.specs import ModelSpec
from pipelines.training.dataset import (
    GROUP_COLUMN,
    LABEL_COLUMN,
    TIMESTAMP_COLUMN,
    SplitDays,
    TrainingSetError,
    assemble_training_frame,
)
from pipelines.training.rows_user import context_columns

KEYS = ["user_id", "product_id"]
# The feature tables a ranking training set joins; each must have a partition for every as-of day.
FEATURE_TABLES = (USER_FEATURES_TABLE, PRODUCT_STATS_TABLE, USER_CATEGORY_TABLE, USER_PRODUCT_TABLE)
ACTIVITY_DAYS = 7


def _as_of(day: dt.date, zone: str = "UTC") -> pd.Timestamp:
    return pd.Timestamp(schemas.as_of(day, zone)).as_unit("us")


def request_rows(events: pd.DataFrame, spec: ModelSpec, days: list[dt.date], zone: str = "UTC") -> pd.DataFrame:
    """Candidates of every user with a session on each day (days of the lake's ``zone``): user_id, product_id,
    category_id, event_timestamp."""
    frames = []
    for day in days:
        users = request_users(events, day, zone)
        rows = generate_candidates(events, spec.candidates, day, users, zone)
        frames.append(rows.assign(**{TIMESTAMP_COLUMN: _as_of(day, zone)}))
    rows = pd.concat(frames, ignore_index=True)
    rows[TIMESTAMP_COLUMN] = pd.to_datetime(rows[TIMESTAMP_COLUMN], utc=True, cache=False).dt.as_unit("us")
    return rows


def relevance_labels(events: pd.DataFrame, rows: pd.DataFrame, window_days: int, gains: dict[str, int]) -> np.ndarray:
    """Per row (user_id, product_id, event_timestamp = the request time): the highest ``gains`` grade among the
    user's events on the product in ``[event_timestamp, event_timestamp + window_days)``, 0 without one."""
    graded = events[events["event_type"].isin(list(gains))]
    graded = pd.DataFrame(
        {
            "user_id": graded["user_id"].astype("int64").to_numpy(),
            "product_id": graded["product_id"].astype("int64").to_numpy(),
            "t": pd.to_datetime(graded["event_time"], utc=True, cache=False).dt.as_unit("us").to_numpy(),
            "gain": graded["event_type"].map(gains).astype("int64").to_numpy(),
        }
    )
    asked = pd.DataFrame(
        {
            "user_id": rows["user_id"].astype("int64").to_numpy(),
            "product_id": rows["product_id"].astype("int64").to_numpy(),
            "start": pd.to_datetime(rows[TIMESTAMP_COLUMN], utc=True, cache=False).dt.as_unit("us").to_numpy(),
            "row": np.arange(len(rows)),
        }
    )
    hits = asked.merge(graded, on=KEYS)
    inside = (hits["t"] >= hits["start"]) & (hits["t"] < hits["start"] + pd.Timedelta(days=window_days))
    best = hits[inside].groupby("row")["gain"].max()
    labels = np.zeros(len(rows), dtype="int64")
    labels[best.index.to_numpy()] = best.to_numpy()
    return labels


def answered_queries(rows: pd.DataFrame, labels: np.ndarray) -> pd.DataFrame:
    """The rows of queries (user, request time) with a relevant candidate, with ``label`` and a ``query_id``
    numbering the queries in (request time, user) order."""
    rows = rows.assign(**{LABEL_COLUMN: labels})
    query = [TIMESTAMP_COLUMN, "user_id"]
    relevant = rows.groupby(query, sort=False)[LABEL_COLUMN].transform("max") > 0
    rows = rows[relevant].sort_values(query, kind="stable", ignore_index=True)
    keys = rows[query].drop_duplicates()
    ids = pd.Series(np.arange(len(keys), dtype="int64"), index=pd.MultiIndex.from_frame(keys))
    rows[GROUP_COLUMN] = ids.reindex(pd.MultiIndex.from_frame(rows[query])).to_numpy()
    return rows


def query_context(lake: Lake, rows: pd.DataFrame, days: list[dt.date], events: pd.DataFrame) -> pd.DataFrame:
    """``rows`` with the context columns of their query (tenure, top category, recent activity)."""
    queries = rows[["user_id", TIMESTAMP_COLUMN]].drop_duplicates(ignore_index=True)
    queries = context_columns(lake, queries, days, events)
    views = events[events["event_type"] == "view"]
    t = pd.to_datetime(views["event_time"], utc=True, cache=False).dt.as_unit("us")
    counts = []
    for stamp in queries[TIMESTAMP_COLUMN].unique():
        recent = views[(t >= stamp - pd.Timedelta(days=ACTIVITY_DAYS)) & (t < stamp)]
        counts.append(recent.groupby("user_id").size().rename("ctx_views_7d").reset_index().assign(ts=stamp))
    activity = pd.concat(counts, ignore_index=True).rename(columns={"ts": TIMESTAMP_COLUMN})
    activity[TIMESTAMP_COLUMN] = pd.to_datetime(activity[TIMESTAMP_COLUMN], utc=True, cache=False).dt.as_unit("us")
    queries = queries.merge(activity, on=["user_id", TIMESTAMP_COLUMN], how="left")
    queries["ctx_views_7d"] = queries["ctx_views_7d"].fillna(0).astype("float64")
    return rows.merge(queries, on=["user_id", TIMESTAMP_COLUMN], how="left", validate="many_to_one")


def labelled_requests(lake: Lake, spec: ModelSpec, splits: SplitDays, logical_date: dt.date) -> pd.DataFrame:
    """The kept candidate rows of every split day: keys, category_id, event_timestamp, label, query_id, ctx_*.

    Events are read from before the first day (the history of candidates and context) up to ``logical_date``
    (the label windows)."""
    days = splits.days
    missing = {t: [str(d) for d in days if not lake.exists(t, d)] for t in FEATURE_TABLES}
    missing = {t: ds for t, ds in missing.items() if ds}
    if missing:
        raise TrainingSetError(
            f"{lake.uri()}: no feature partition for as-of day(s) {missing}; run the features pipeline for those "
            "days (or backfill) before training"
        )
    first = days[0] - dt.timedelta(days=max(WINDOW_DAYS, history_days(spec.candidates)) - 1)
    events = lake.read_range("events", first, logical_date, columns=EVENT_COLUMNS)
    if events.empty:
        raise TrainingSetError(f"{lake.uri('events')}: no events between {first} and {logical_date}")
    rows = request_rows(events, spec, days, lake.day_zone)
    labels = relevance_labels(events, rows, spec.label.window_days, spec.label.gains)
    rows = answered_queries(rows, labels)
    if rows.empty:
        raise TrainingSetError(
            f"no request between {days[0]} and {days[-1]} has a relevant candidate "
            f"({sorted(spec.label.gains)} events in the {spec.label.window_days} days after it)"
        )
    return query_context(lake, rows, days, events)


def build_frame(
    settings: Settings, lake: Lake, spec: ModelSpec, splits: SplitDays, logical_date: dt.date
) -> pd.DataFrame:
    """Candidate rows x graded labels x Feast point-in-time features, grouped in queries, with context."""
    # Imported here: Feast takes seconds to import and only this glue needs it.
    from pipelines.features.store import historical_features

    rows = labelled_requests(lake, spec, splits, logical_date)
    asked = rows[[*KEYS, "category_id", TIMESTAMP_COLUMN]]
    # category_id is a join key of the user x category view, not a model feature.
    features = historical_features(settings, asked, spec.feature_service).drop(columns="category_id")
    labels = rows[[*KEYS, TIMESTAMP_COLUMN, LABEL_COLUMN]].rename(columns={TIMESTAMP_COLUMN: "as_of"})
    entity = rows.drop(columns=["category_id", LABEL_COLUMN])
    return assemble_training_frame(entity, labels, features, splits, KEYS, zone=lake.day_zone)


def oracle_scores(settings: Settings, lake: Lake, spec: ModelSpec, frame: pd.DataFrame) -> np.ndarray | None:
    """The simulator's expected NDCG gain E[2^relevance - 1] of each row (None when the data is not simulated or
    the spec's gains are not the simulated cart/purchase events)."""
    from pipelines.data.extract import simulation_config
    from pipelines.training.ranking_truth import SUPPORTED_EVENTS, expected_gain

    if settings.data_source != "simulator" or frame.empty or not set(spec.label.gains) <= set(SUPPORTED_EVENTS):
        return None
    # as_of(D) is 00:00 UTC of D + 1: the request's day is the day before its timestamp.
    days = (pd.to_datetime(frame[TIMESTAMP_COLUMN], utc=True, cache=False) - pd.Timedelta(days=1)).dt.date
    requests = frame[KEYS].assign(ds=days.to_numpy())
    return expected_gain(simulation_config(settings), requests, spec.label.window_days, spec.label.gains)
