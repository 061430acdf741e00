"""Training sets: labelled entity rows at past as-of days, joined point-in-time to their features.

A training set for logical date L is written once to ``training_sets/<model>/ds=L`` and read back by training
and evaluation, so every step of one run scores the same rows (its digest travels with the MLflow run).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

from pipelines.lake import Lake, as_date
from pipelines.settings import Settings
from pipelines.specs import CONTEXT_PREFIX, ModelSpec
from pipelines.training.lineage import feature_lineage
from pipelines.usecases import FAMILIES, UnknownUseCase, families_for, use_case

TIMESTAMP_COLUMN = "event_timestamp"
LABEL_COLUMN = "label"
SPLIT_COLUMN = "split"
# Ranking: the request a candidate row belongs to (one user at one as-of time); rows of a request are contiguous.
GROUP_COLUMN = "query_id"
SPLITS = ("train", "validation", "test")


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


def split_days(spec: ModelSpec, logical_date: dt.date, held: Collection[dt.date] = ()) -> SplitDays:
    """Time-based splits ending at the newest as-of day whose label window is complete on ``logical_date``.

    The label of as-of day D is complete ``spec.label.maturity_days`` later (the label window for behaviour
    labels, the delay for chargebacks), so D + maturity <= logical_date. With ``windows.max_train_days``, the train
    split reaches back past ``train_days``, day by day while ``held`` (the days whose features the lake holds:
    :func:`feature_days`) has the day before, up to that many days: a model short of positives learns from all the
    history there is, and a young lake still trains on ``train_days``.
    """
    newest = as_date(logical_date) - dt.timedelta(days=spec.label.maturity_days)
    w = spec.windows
    days = [newest - dt.timedelta(days=i) for i in range(w.train_days + w.validation_days + w.test_days)][::-1]
    train = days[: w.train_days]
    held = set(held)
    while len(train) < (w.max_train_days or 0) and train[0] - dt.timedelta(days=1) in held:
        train.insert(0, train[0] - dt.timedelta(days=1))
    return SplitDays(
        train=tuple(train),
        validation=tuple(days[w.train_days : w.train_days + w.validation_days]),
        test=tuple(days[w.train_days + w.validation_days :]),
    )


def feature_tables(spec: ModelSpec) -> tuple[str, ...]:
    """The feature tables training joins at every as-of day (those of the families the spec's use case reads)."""
    return tuple(t for name in families_for([spec]) for t in FAMILIES[name].feature_tables)


def feature_days(lake: Lake, spec: ModelSpec) -> set[dt.date]:
    """The days on which every feature table the spec joins has a partition."""
    held = [set(lake.partitions(table)) for table in feature_tables(spec)]
    return set.intersection(*held) if held else set()


def entity_keys(spec: ModelSpec) -> tuple[str, ...]:
    """The key columns of the spec's entity (pipelines/usecases/)."""
    try:
        return use_case(spec.entity).keys
    except UnknownUseCase as exc:
        raise TrainingSetError(f"model spec {spec.name!r}: {exc}") from exc


def _utc_us(values: pd.Series) -> pd.Series:
    return pd.to_datetime(values, utc=True, cache=False).dt.as_unit("us")


def _positions(mask: np.ndarray) -> slice | np.ndarray:
    """The rows where ``mask`` holds: a slice when they are one run (time-ordered splits are), so that a column's
    split is a view rather than a copy; an index array otherwise."""
    index = np.flatnonzero(mask)
    if index.size == 0:
        return slice(0, 0)
    if index[-1] - index[0] + 1 == index.size:
        return slice(int(index[0]), int(index[-1]) + 1)
    return index


def _count(rows: slice | np.ndarray) -> int:
    return rows.stop - rows.start if isinstance(rows, slice) else len(rows)


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
    keys: tuple[str, ...]
    frame: pd.DataFrame
    uri: str
    digest: str
    # Kept beside the training set by the training-set step, so training and evaluation need not recompute them:
    # the simulator's Bayes-optimal scores of the test rows (None without a simulated truth) and the Feast lineage.
    oracle: np.ndarray | None = None
    lineage: dict[str, str] = field(default_factory=dict)
    train_days: int | None = None  # as-of days of the train split (more than the spec's with max_train_days)
    feature_columns: list[str] = field(init=False)
    row_counts: dict[str, int] = field(init=False)
    label_rate: float = field(init=False)
    # Row positions of each split, found once: training reads the splits' columns several times, and comparing the
    # split column's strings (then copying whole split frames) each time cost seconds at a million rows.
    _rows: dict[str, slice | np.ndarray] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        reserved = {*self.keys, TIMESTAMP_COLUMN, LABEL_COLUMN, SPLIT_COLUMN, GROUP_COLUMN}
        self.feature_columns = [c for c in self.frame.columns if c not in reserved and not c.startswith(CONTEXT_PREFIX)]
        split = self.frame[SPLIT_COLUMN].to_numpy()
        self._rows = {name: _positions(split == name) for name in SPLITS}
        self.row_counts = {name: _count(rows) for name, rows in self._rows.items()} | {"total": len(self.frame)}
        self.label_rate = float(self.frame[LABEL_COLUMN].mean()) if len(self.frame) else 0.0

    def split_rows(self, name: str) -> slice | np.ndarray:
        """Positions of the split's rows in ``frame``: a slice when they are contiguous, an index array otherwise."""
        if name not in SPLITS:
            raise TrainingSetError(f"unknown split {name!r}; expected one of {SPLITS}")
        return self._rows[name]

    def split(self, name: str) -> pd.DataFrame:
        """The split's rows, all columns (a copy)."""
        return self.frame.take(np.arange(len(self.frame))[self.split_rows(name)])

    def features(self, name: str, head: int | None = None) -> pd.DataFrame:
        """The split's feature columns (only its first ``head`` rows when given: no copy of the rest)."""
        rows = self.split_rows(name)
        if head is not None:
            rows = slice(rows.start, min(rows.stop, rows.start + head)) if isinstance(rows, slice) else rows[:head]
        return self.frame.iloc[rows][self.feature_columns]

    def matrix(self, name: str) -> np.ndarray:
        """The split's features as one column-major float64 matrix, filled column by column in a single copy:
        LightGBM reads column-major input without another copy, and the frame's columns are contiguous already
        (a row-major matrix would need strided writes or a second copy)."""
        rows = self.split_rows(name)
        out = np.empty((_count(rows), len(self.feature_columns)), dtype="float64", order="F")
        for j, column in enumerate(self.feature_columns):
            out[:, j] = self.frame[column].to_numpy()[rows]
        return out

    def column(self, name: str, column: str) -> np.ndarray:
        """One column's values on the split's rows without copying the split's other columns; read-only, as it
        may be a view of ``frame``."""
        if column not in self.frame.columns:
            raise TrainingSetError(f"training set {self.uri}: no column {column!r}")
        values = self.frame[column].to_numpy()[self.split_rows(name)]
        values.flags.writeable = False
        return values

    def labels(self, name: str) -> np.ndarray:
        return self.column(name, LABEL_COLUMN)

    def group_sizes(self, name: str) -> np.ndarray | None:
        """Rows per query, in row order (ranking training sets); None for sets without queries."""
        if GROUP_COLUMN not in self.frame.columns:
            return None
        groups = self.column(name, GROUP_COLUMN)
        if len(groups) == 0:
            return np.empty(0, dtype="int64")
        starts = np.r_[0, np.flatnonzero(groups[1:] != groups[:-1]) + 1]
        return np.diff(np.r_[starts, len(groups)])


def assemble_training_frame(
    entity_df: pd.DataFrame,
    labels: pd.DataFrame,
    features: pd.DataFrame,
    splits: SplitDays,
    keys: str | list[str] | tuple[str, ...],
    split_by: Literal["as_of", "event_day"] = "as_of",
    zone: str = "UTC",
) -> pd.DataFrame:
    """Join labels onto the point-in-time features of every entity row and mark each row's split (days of the
    lake's day ``zone``, ``Lake.day_zone``).

    ``entity_df`` [keys, event_timestamp, optional query_id and ``ctx_*`` columns] is what was asked for;
    ``labels`` [keys, as_of, label] must label every entity row and ``features`` (the point-in-time join,
    [keys, event_timestamp, features]) must return every entity row: a lost row is an error, never a silently
    smaller training set. A row's day is its as-of day (``split_by="as_of"``: timestamp = as_of(D)) or the day of
    its timestamp (``"event_day"``, e.g. an order's purchase time).
    """
    keys = [keys] if isinstance(keys, str) else list(keys)
    join = [*keys, TIMESTAMP_COLUMN]
    carried = [c for c in entity_df.columns if c == GROUP_COLUMN or c.startswith(CONTEXT_PREFIX)]
    asked = entity_df[[*join, *carried]].assign(**{TIMESTAMP_COLUMN: _utc_us(entity_df[TIMESTAMP_COLUMN])})
    feats = features.drop(columns=[c for c in carried if c in features.columns])
    feats = feats.assign(**{TIMESTAMP_COLUMN: _utc_us(feats[TIMESTAMP_COLUMN])})
    feats = asked.merge(feats, on=join, how="left", indicator=True)
    lost = feats["_merge"] != "both"
    if lost.any() or len(feats) != len(asked):
        raise TrainingSetError(
            f"the point-in-time feature join returned {int((~lost).sum())} of {len(asked)} entity rows "
            f"(e.g. {feats.loc[lost, join].head(3).to_dict('records')}); "
            "check pipelines/features/store.historical_features keeps every row"
        )
    lab = labels[[*keys, "as_of", LABEL_COLUMN]].rename(columns={"as_of": TIMESTAMP_COLUMN})
    lab = lab.assign(**{TIMESTAMP_COLUMN: _utc_us(lab[TIMESTAMP_COLUMN])})
    frame = feats.drop(columns="_merge").merge(lab, on=join, how="left")
    if len(frame) != len(asked):
        raise TrainingSetError("labels hold duplicate (entity, as_of) rows; expected one label per entity and time")
    unlabelled = frame[LABEL_COLUMN].isna()
    if unlabelled.any():
        raise TrainingSetError(
            f"{int(unlabelled.sum())} entity rows have no label "
            f"(e.g. {frame.loc[unlabelled, join].head(3).to_dict('records')}); "
            "the model's label builder must label every entity row"
        )
    feature_cols = [c for c in frame.columns if c not in {*join, *carried, LABEL_COLUMN}]
    not_numeric = [c for c in feature_cols if not pd.api.types.is_numeric_dtype(frame[c])]
    if not_numeric:
        raise TrainingSetError(f"feature column(s) {not_numeric} are not numeric; LightGBM needs numbers")
    if split_by == "as_of":
        # as_of(D) = D+1 00:00 (of the zone), so the as-of day of a row is its local timestamp minus one day.
        day = (frame[TIMESTAMP_COLUMN].dt.tz_convert(zone) - pd.Timedelta(days=1)).dt.date
    else:
        day = frame[TIMESTAMP_COLUMN].dt.tz_convert(zone).dt.date
    split = day.map({d: splits.split_of(d) for d in splits.days})
    if split.isna().any():
        raise TrainingSetError(f"entity rows on days outside the splits: {sorted(set(day[split.isna()]))[:5]}")
    out = pd.DataFrame(
        {
            **{k: frame[k].astype("int64") if pd.api.types.is_integer_dtype(frame[k]) else frame[k] for k in keys},
            TIMESTAMP_COLUMN: frame[TIMESTAMP_COLUMN],
            LABEL_COLUMN: frame[LABEL_COLUMN].astype("int64"),
            SPLIT_COLUMN: split.astype(str),
        }
    )
    out = pd.concat([out, frame[carried], frame[feature_cols].astype("float64")], axis=1)
    order = [GROUP_COLUMN] if GROUP_COLUMN in carried else []
    return out.sort_values([TIMESTAMP_COLUMN, *order, *keys], kind="stable").reset_index(drop=True)


def training_table(spec: ModelSpec) -> str:
    return f"training_sets/{spec.name}"


def save_training_set(lake: Lake, spec: ModelSpec, logical_date: dt.date, frame: pd.DataFrame) -> TrainingSet:
    """Publish an assembled frame as the training set of ``logical_date`` (replacing a previous one)."""
    _check_frame(spec, frame)
    uri = lake.write(training_table(spec), logical_date, frame)
    return TrainingSet(spec.name, as_date(logical_date), entity_keys(spec), frame, uri, frame_digest(frame))


def _check_frame(spec: ModelSpec, frame: pd.DataFrame) -> None:
    """The column contract every row builder meets (keys, timestamp, label, split, query_id for ranking)."""
    required = [*entity_keys(spec), TIMESTAMP_COLUMN, LABEL_COLUMN, SPLIT_COLUMN]
    if spec.objective == "lambdarank":
        required.append(GROUP_COLUMN)
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise TrainingSetError(
            f"training set of {spec.name}: column(s) {missing} missing; the row builder must add them"
        )
    bad = sorted(set(frame[SPLIT_COLUMN]) - set(SPLITS))
    if bad:
        raise TrainingSetError(f"training set of {spec.name}: unknown split value(s) {bad}; expected {SPLITS}")


def oracle_table(spec: ModelSpec) -> str:
    return f"{training_table(spec)}_oracle"


def _outputs_key(spec: ModelSpec, logical_date: dt.date) -> str:
    return f"{training_table(spec)}/ds={as_date(logical_date).isoformat()}/step_outputs.json"


def save_step_outputs(
    lake: Lake,
    spec: ModelSpec,
    training_set: TrainingSet,
    oracle: np.ndarray | None,
    lineage: dict[str, str],
    train_days: int | None = None,
) -> TrainingSet:
    """Keep the test rows' Bayes-optimal scores (or drop a previous run's), the feature lineage and the number of
    train days beside the set."""
    day = training_set.logical_date
    if oracle is None:
        lake.delete(oracle_table(spec), [day])
    else:
        if len(oracle) != training_set.row_counts["test"]:
            raise TrainingSetError(
                f"{len(oracle)} Bayes-optimal scores for the {training_set.row_counts['test']} test rows of "
                f"{training_set.uri}; the use case's oracle must score every test row"
            )
        lake.write(oracle_table(spec), day, pd.DataFrame({"bayes_optimal": np.asarray(oracle, dtype="float64")}))
    # The digest ties both to this very set: a set saved again without them must not inherit the old ones.
    outputs = {"training_set_digest": training_set.digest, "lineage": lineage, "train_days": train_days}
    lake.write_json(_outputs_key(spec, day), outputs)
    return dataclasses.replace(training_set, oracle=oracle, lineage=lineage, train_days=train_days)


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
    digest = frame_digest(frame)
    outputs = lake.read_json(_outputs_key(spec, logical_date)) or {}
    ours = outputs.get("training_set_digest") == digest
    oracle = None
    if ours and lake.exists(oracle_table(spec), logical_date):
        oracle = lake.read(oracle_table(spec), logical_date)["bayes_optimal"].to_numpy()
    return TrainingSet(
        spec.name,
        as_date(logical_date),
        entity_keys(spec),
        frame,
        lake.partition_uri(table, logical_date),
        digest,
        oracle=oracle,
        lineage=outputs.get("lineage", {}) if ours else {},
        train_days=outputs.get("train_days") if ours else None,
    )


def build_training_set(settings: Settings, lake: Lake, spec: ModelSpec, logical_date: dt.date) -> TrainingSet:
    """The spec's entity rows x labels x point-in-time features for ``logical_date``, written to the lake with the
    test rows' Bayes-optimal scores and the feature lineage (computed once here, read by training and evaluation)."""
    logical_date = as_date(logical_date)
    entity_keys(spec)
    splits = split_days(spec, logical_date, feature_days(lake, spec) if spec.windows.max_train_days else ())
    frame = use_case(spec.entity).build_rows(settings, lake, spec, splits, logical_date)
    training_set = save_training_set(lake, spec, logical_date, frame)
    oracle = oracle_scores(settings, lake, spec, training_set.split("test"))
    return save_step_outputs(lake, spec, training_set, oracle, feature_lineage(settings, spec), len(splits.train))


def oracle_scores(settings: Settings, lake: Lake, spec: ModelSpec, frame: pd.DataFrame) -> np.ndarray | None:
    """The simulator's true probabilities (or expected relevances) of ``frame``'s rows: the Bayes-optimal scorer.

    None when the data is not simulated or the truth is not in the lake.
    """
    entity_keys(spec)
    return use_case(spec.entity).oracle(settings, lake, spec, frame)
