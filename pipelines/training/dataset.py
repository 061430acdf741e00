"""Training sets: labelled entity rows at past as-of days, joined point-in-time to their features.

A training set for logical date L is written once to ``training_sets/<model>/ds=L`` and read back by training
and evaluation, so every step of one run scores the same rows (its digest travels with the MLflow run).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from pipelines.data import schemas
from pipelines.features.user_features import USER_FEATURES_TABLE
from pipelines.lake import Lake, as_date
from pipelines.settings import Settings
from pipelines.specs import ModelSpec

TIMESTAMP_COLUMN = "event_timestamp"
LABEL_COLUMN = "label"
SPLIT_COLUMN = "split"
SPLITS = ("train", "validation", "test")
# Entity of a model spec -> (its key column, the lake table whose rows define who exists on a given day).
ENTITIES: dict[str, tuple[str, str]] = {"user": ("user_id", USER_FEATURES_TABLE)}


class TrainingSetError(ValueError):
    """A training set cannot be built or read as asked (missing inputs, lost rows, bad columns)."""


@dataclass(frozen=True)
class SplitDays:
    """As-of days of each split, oldest first; the splits never overlap and test is the newest."""

    train: tuple[dt.date, ...]
    validation: tuple[dt.date, ...]
    test: tuple[dt.date, ...]

    @property
    def days(self) -> list[dt.date]:
        return [*self.train, *self.validation, *self.test]

    def split_of(self, day: dt.date) -> str:
        for name in SPLITS:
            if day in getattr(self, name):
                return name
        raise TrainingSetError(f"as-of day {day} is in none of the splits {self}")


def split_days(spec: ModelSpec, logical_date: dt.date) -> SplitDays:
    """Time-based splits ending at the newest as-of day whose label window is complete on ``logical_date``.

    The label of as-of day D covers events of days D+1 .. D+window, so D + window <= logical_date.
    """
    newest = as_date(logical_date) - dt.timedelta(days=spec.label.window_days)
    w = spec.windows
    days = [newest - dt.timedelta(days=i) for i in range(w.train_days + w.validation_days + w.test_days)][::-1]
    return SplitDays(
        train=tuple(days[: w.train_days]),
        validation=tuple(days[w.train_days : w.train_days + w.validation_days]),
        test=tuple(days[w.train_days + w.validation_days :]),
    )


def entity_key(spec: ModelSpec) -> str:
    if spec.entity not in ENTITIES:
        raise TrainingSetError(
            f"model spec {spec.name!r}: entity {spec.entity!r} has no training-set support; known: {sorted(ENTITIES)}"
        )
    return ENTITIES[spec.entity][0]


def _utc_us(values: pd.Series) -> pd.Series:
    return pd.to_datetime(values, utc=True).dt.as_unit("us")


def frame_digest(frame: pd.DataFrame) -> str:
    """A stable sha256 of a frame's columns, dtypes and values (unchanged by a parquet round trip)."""
    h = hashlib.sha256()
    for name in frame.columns:
        col = frame[name]
        if isinstance(col.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(col):
            col = _utc_us(col).astype("int64")
        h.update(f"{name}:{col.dtype}\n".encode())
        h.update(pd.util.hash_pandas_object(col, index=False).to_numpy().tobytes())
    return h.hexdigest()


@dataclass
class TrainingSet:
    """One model's labelled rows for one logical date, with the split of each row and where it is stored."""

    model: str
    logical_date: dt.date
    entity_key: str
    frame: pd.DataFrame
    uri: str
    digest: str
    feature_columns: list[str] = field(init=False)
    row_counts: dict[str, int] = field(init=False)
    label_rate: float = field(init=False)

    def __post_init__(self) -> None:
        keys = {self.entity_key, TIMESTAMP_COLUMN, LABEL_COLUMN, SPLIT_COLUMN}
        self.feature_columns = [c for c in self.frame.columns if c not in keys]
        counts = self.frame[SPLIT_COLUMN].value_counts()
        self.row_counts = {name: int(counts.get(name, 0)) for name in SPLITS} | {"total": len(self.frame)}
        self.label_rate = float(self.frame[LABEL_COLUMN].mean()) if len(self.frame) else 0.0

    def split(self, name: str) -> pd.DataFrame:
        if name not in SPLITS:
            raise TrainingSetError(f"unknown split {name!r}; expected one of {SPLITS}")
        return self.frame[self.frame[SPLIT_COLUMN] == name]

    def features(self, name: str) -> pd.DataFrame:
        return self.split(name)[self.feature_columns]

    def labels(self, name: str) -> np.ndarray:
        return self.split(name)[LABEL_COLUMN].to_numpy()


def assemble_training_frame(
    entity_df: pd.DataFrame,
    labels: pd.DataFrame,
    features: pd.DataFrame,
    splits: SplitDays,
    key: str,
) -> pd.DataFrame:
    """Join labels onto the point-in-time features of every entity row and mark each row's split.

    ``entity_df`` [key, event_timestamp] is what was asked for; ``labels`` [key, as_of, label] must label
    every entity row and ``features`` (the point-in-time join) must return every entity row: a lost row is an
    error, never a silently smaller training set.
    """
    asked = entity_df[[key, TIMESTAMP_COLUMN]].assign(**{TIMESTAMP_COLUMN: _utc_us(entity_df[TIMESTAMP_COLUMN])})
    feats = features.assign(**{TIMESTAMP_COLUMN: _utc_us(features[TIMESTAMP_COLUMN])})
    feats = asked.merge(feats, on=[key, TIMESTAMP_COLUMN], how="left", indicator=True)
    lost = feats["_merge"] != "both"
    if lost.any() or len(feats) != len(asked):
        raise TrainingSetError(
            f"the point-in-time feature join returned {int((~lost).sum())} of {len(asked)} entity rows "
            f"(e.g. {feats.loc[lost, [key, TIMESTAMP_COLUMN]].head(3).to_dict('records')}); "
            "check pipelines/features/store.historical_features keeps every row"
        )
    lab = labels[[key, "as_of", LABEL_COLUMN]].rename(columns={"as_of": TIMESTAMP_COLUMN})
    lab = lab.assign(**{TIMESTAMP_COLUMN: _utc_us(lab[TIMESTAMP_COLUMN])})
    frame = feats.drop(columns="_merge").merge(lab, on=[key, TIMESTAMP_COLUMN], how="left")
    if len(frame) != len(asked):
        raise TrainingSetError("labels hold duplicate (entity, as_of) rows; expected one label per entity and day")
    unlabelled = frame[LABEL_COLUMN].isna()
    if unlabelled.any():
        raise TrainingSetError(
            f"{int(unlabelled.sum())} entity rows have no label "
            f"(e.g. {frame.loc[unlabelled, [key, TIMESTAMP_COLUMN]].head(3).to_dict('records')}); "
            "check pipelines/data/labels.purchase_labels covers every user and as-of day"
        )
    feature_cols = [c for c in frame.columns if c not in {key, TIMESTAMP_COLUMN, LABEL_COLUMN}]
    not_numeric = [c for c in feature_cols if not pd.api.types.is_numeric_dtype(frame[c])]
    if not_numeric:
        raise TrainingSetError(f"feature column(s) {not_numeric} are not numeric; LightGBM needs numbers")
    # as_of(D) = D+1 00:00 UTC, so the as-of day of a row is its timestamp minus one day.
    day = (frame[TIMESTAMP_COLUMN] - pd.Timedelta(days=1)).dt.date
    split = day.map({d: splits.split_of(d) for d in splits.days})
    if split.isna().any():
        raise TrainingSetError(f"entity rows at as-of days outside the splits: {sorted(set(day[split.isna()]))[:5]}")
    out = pd.DataFrame(
        {
            key: frame[key].astype("int64"),
            TIMESTAMP_COLUMN: frame[TIMESTAMP_COLUMN],
            LABEL_COLUMN: frame[LABEL_COLUMN].astype("int64"),
            SPLIT_COLUMN: split.astype(str),
        }
    )
    out = pd.concat([out, frame[feature_cols].astype("float64")], axis=1)
    return out.sort_values([TIMESTAMP_COLUMN, key], kind="stable").reset_index(drop=True)


def training_table(spec: ModelSpec) -> str:
    return f"training_sets/{spec.name}"


def save_training_set(lake: Lake, spec: ModelSpec, logical_date: dt.date, frame: pd.DataFrame) -> TrainingSet:
    """Publish an assembled frame as the training set of ``logical_date`` (replacing a previous one)."""
    uri = lake.write(training_table(spec), logical_date, frame)
    return TrainingSet(spec.name, as_date(logical_date), entity_key(spec), frame, uri, frame_digest(frame))


def load_training_set(lake: Lake, spec: ModelSpec, logical_date: dt.date) -> TrainingSet:
    """The training set built for ``logical_date`` (run the training-set step first)."""
    table = training_table(spec)
    if not lake.exists(table, logical_date):
        raise TrainingSetError(
            f"{lake.partition_uri(table, logical_date)}: no training set for {spec.name} "
            f"on {as_date(logical_date)}; "
            "build it first (pipelines.training.dataset.build_training_set)"
        )
    frame = lake.read(table, logical_date)
    frame[TIMESTAMP_COLUMN] = _utc_us(frame[TIMESTAMP_COLUMN])
    return TrainingSet(
        spec.name,
        as_date(logical_date),
        entity_key(spec),
        frame,
        lake.partition_uri(table, logical_date),
        frame_digest(frame),
    )


def entity_rows(lake: Lake, spec: ModelSpec, days: list[dt.date]) -> pd.DataFrame:
    """Every entity that has a feature row on each as-of day, stamped with that day's as-of time."""
    key, table = entity_key(spec), ENTITIES[spec.entity][1]
    missing = [d for d in days if not lake.exists(table, d)]
    if missing:
        raise TrainingSetError(
            f"{lake.uri(table)}: no feature partition for as-of day(s) {[str(d) for d in missing]}; "
            "run the features pipeline for those days (or backfill) before training"
        )
    frames = [
        lake.read(table, d, columns=[key]).assign(**{TIMESTAMP_COLUMN: pd.Timestamp(schemas.as_of(d))}) for d in days
    ]
    rows = pd.concat(frames, ignore_index=True).drop_duplicates()
    rows[TIMESTAMP_COLUMN] = _utc_us(rows[TIMESTAMP_COLUMN])
    return rows


def build_training_set(settings: Settings, lake: Lake, spec: ModelSpec, logical_date: dt.date) -> TrainingSet:
    """Entity rows x labels from the lake's events x Feast point-in-time features, written to the lake."""
    # Imported here: Feast takes seconds to import and only this glue needs it.
    from pipelines.data.labels import purchase_labels
    from pipelines.features.store import historical_features

    logical_date = as_date(logical_date)
    splits = split_days(spec, logical_date)
    key = entity_key(spec)
    rows = entity_rows(lake, spec, splits.days)
    # The label window of the oldest day starts the day after it; the newest one ends on the logical date.
    events = lake.read_range("events", splits.days[0] + dt.timedelta(days=1), logical_date)
    if events.empty:
        raise TrainingSetError(f"{lake.uri('events')}: no events between {splits.days[0]} and {logical_date}")
    labels = purchase_labels(
        events,
        splits.days,
        rows[key].unique().tolist(),
        window_days=spec.label.window_days,
        event_type=spec.label.event_type,
    )
    features = historical_features(settings, rows, spec.feature_service)
    frame = assemble_training_frame(rows, labels, features, splits, key)
    return save_training_set(lake, spec, logical_date, frame)
