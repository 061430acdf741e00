"""The daily watch of every champion: its training rows (the reference), the day's rows it would score, its scores
on both, and its realised main metric on the newest day whose labels have matured. The report is published with
:mod:`pipelines.monitoring.drift_reports` for ``mlctl status``, ``mlctl monitor`` and the DAG's Asset.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import TYPE_CHECKING

import pandas as pd

from pipelines.evaluation.evaluate import score
from pipelines.lake import Lake, as_date
from pipelines.monitoring.drift import (
    DriftReport,
    RealisedMetric,
    features_drift,
    prediction_drift,
    realised_metric,
    score_histograms,
)
from pipelines.monitoring.skew import NoPredictionLog, read_prediction_log
from pipelines.registry.registry import ModelVersionInfo, get_champion, load_booster
from pipelines.settings import Settings
from pipelines.specs import ModelSpec
from pipelines.training.dataset import (
    GROUP_COLUMN,
    LABEL_COLUMN,
    SPLIT_COLUMN,
    TIMESTAMP_COLUMN,
    SplitDays,
    TrainingSet,
    TrainingSetError,
    load_training_set,
)
from pipelines.training.train import TAG_LOGICAL_DATE
from pipelines.usecases import use_case

if TYPE_CHECKING:
    import lightgbm as lgb

# Rows of the reference and of a day's population compared at most (seeded samples): PSI and KS settle long before.
MAX_ROWS = 200_000
SEED = 0


class MonitoringError(ValueError):
    """A champion cannot be watched (its training set is gone, its version records no logical date)."""


# -- the reference -----------------------------------------------------------------------------------------------
def champion_reference(lake: Lake, spec: ModelSpec, champion: ModelVersionInfo) -> TrainingSet:
    """The training set the champion was built from (``training_sets/<model>/ds=<its logical_date tag>``): every
    split is the reference of its features, the rows it was not fitted on the reference of its scores."""
    logical = champion.tags.get(TAG_LOGICAL_DATE)
    if not logical:
        raise MonitoringError(
            f"{spec.name} v{champion.version} has no {TAG_LOGICAL_DATE!r} tag, so its training rows are unknown; "
            "retrain it with `mlctl run train_MODEL --date D` (versions registered by training carry the tag)"
        )
    try:
        return load_training_set(lake, spec, as_date(logical))
    except TrainingSetError as exc:
        raise MonitoringError(f"{spec.name} v{champion.version}: its training rows are gone ({exc})") from exc


def _sample(frame: pd.DataFrame, rows: int = MAX_ROWS) -> pd.DataFrame:
    return frame if len(frame) <= rows else frame.sample(rows, random_state=SEED)


# -- the day's population ------------------------------------------------------------------------------------------
def _user_rows(lake: Lake, spec: ModelSpec, day: dt.date) -> pd.DataFrame:
    from pipelines.training.rows_user import entity_rows

    return entity_rows(lake, [day])


def _order_rows(lake: Lake, spec: ModelSpec, day: dt.date) -> pd.DataFrame:
    from feature_repo.orders import REQUEST_FIELDS
    from pipelines.training.rows_order import KEY, entity_rows

    return entity_rows(lake, [day])[[KEY, TIMESTAMP_COLUMN, *REQUEST_FIELDS]]


def _ranking_rows(lake: Lake, spec: ModelSpec, day: dt.date) -> pd.DataFrame:
    from pipelines.features.candidates import EVENT_COLUMNS, history_days
    from pipelines.features.user_features import WINDOW_DAYS
    from pipelines.training.rows_ranking import request_rows

    first = day - dt.timedelta(days=max(WINDOW_DAYS, history_days(spec.candidates)) - 1)
    return request_rows(lake.read_range("events", first, day, columns=EVENT_COLUMNS), spec, [day], lake.day_zone)


# The entities a model of each kind scores on a day, as training builds them (without labels: they are not known
# yet). Belongs on the use case (pipelines/usecases/) once the lead moves the row builders there.
DAY_ENTITIES: dict[str, Callable[[Lake, ModelSpec, dt.date], pd.DataFrame]] = {
    "user": _user_rows,
    "order": _order_rows,
    "user_product": _ranking_rows,
}


def day_population(settings: Settings, lake: Lake, spec: ModelSpec, day: dt.date) -> tuple[pd.DataFrame, str]:
    """The rows the model scored on ``day`` (its prediction log, when it was served) or would have scored (the
    point-in-time features of the day's entities, joined as training joins them); and which of the two."""
    try:
        return read_prediction_log(lake, spec.name, day, max_rows=MAX_ROWS), "prediction_log"
    except NoPredictionLog:
        pass
    from pipelines.features.store import historical_features

    if spec.entity not in DAY_ENTITIES:
        raise MonitoringError(f"{spec.name}: no day population for entity {spec.entity!r}; add it to DAY_ENTITIES")
    entities = _sample(DAY_ENTITIES[spec.entity](lake, spec, day))
    return historical_features(settings, entities, spec.feature_service), "offline"


# -- realised metric ------------------------------------------------------------------------------------------------
def realised(settings: Settings, lake: Lake, spec: ModelSpec, booster: lgb.Booster, day: dt.date) -> RealisedMetric:
    """The champion's main metric on the newest as-of day whose labels are complete on ``day`` (``day`` minus the
    label's maturity), on the rows training would build for it; NaN with the reason when they cannot be built."""
    labelled = day - dt.timedelta(days=spec.label.maturity_days)
    try:
        rows = use_case(spec.entity).build_rows(settings, lake, spec, SplitDays((), (), (labelled,)), day)
    except TrainingSetError as exc:
        return RealisedMetric(labelled, spec.main_metric, float("nan"), None, None, 0, 0, str(exc))
    groups = rows[GROUP_COLUMN].to_numpy() if GROUP_COLUMN in rows else None
    scores = score(booster, rows, settings.num_threads)
    return realised_metric(labelled, spec.main_metric, rows[LABEL_COLUMN].to_numpy(), scores, groups)


# -- the whole step -----------------------------------------------------------------------------------------------
def monitor_model(
    settings: Settings, spec: ModelSpec, day: dt.date | str, lake: Lake | None = None
) -> DriftReport | None:
    """Drift of ``spec``'s champion on ``day`` and its realised metric; None when the model has no champion."""
    lake, day = lake or Lake(settings), as_date(day)
    champion = get_champion(settings, spec.name)
    if champion is None:
        return None
    training = champion_reference(lake, spec, champion)
    reference = _sample(training.frame)
    population, source = day_population(settings, lake, spec, day)
    features, not_compared = features_drift(reference, population, training.feature_columns, spec.monitoring)
    booster = load_booster(settings, spec.name, champion.version)
    missing = [c for c in booster.feature_name() if c not in population]
    if missing or population.empty:
        prediction, histograms = None, None
        if missing:
            not_compared["score"] = f"the day's rows lack the champion's feature(s) {missing}"
    else:
        # Its scores on rows it did not learn from: on its own train rows they are more extreme than on any new day.
        held_out = _sample(training.frame[training.frame[SPLIT_COLUMN] != "train"])
        ref_scores = score(booster, held_out, settings.num_threads)
        day_scores = score(booster, population, settings.num_threads)
        prediction = prediction_drift(ref_scores, day_scores, spec.monitoring)
        histograms = score_histograms(ref_scores, day_scores)
    return DriftReport(
        model=spec.name,
        day=day,
        version=champion.version,
        reference={"logical_date": training.logical_date.isoformat(), "uri": training.uri, "rows": len(reference)},
        population={"source": source, "rows": len(population)},
        thresholds=spec.monitoring,
        features=features,
        not_compared=not_compared,
        prediction=prediction,
        scores=histograms,
        realised=realised(settings, lake, spec, booster, day),
    )
