"""Training/serving skew: a day's logged online features (the prediction log) against the offline point-in-time
features of the same entities at the same instants, computed by the join training uses, reported per feature.

:func:`compare_features` is the pure core; :func:`training_serving_skew` reads the lake and joins;
:func:`publish_skew` keeps the report at ``monitoring/skew/<model>/ds=YYYY-MM-DD/skew.json``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.fs as pafs

from pipelines.lake import Lake, PartitionNotFound, as_date
from pipelines.serving.prediction_log import predictions_table
from pipelines.settings import Settings
from pipelines.specs import ModelSpec

# Online and offline values further apart than this differ (float64 features round-tripped through two stores).
SKEW_TOLERANCE = 1e-9
# A day served at 1,000 requests/s logs ~86M rows: a sample of whole parts (flushes) spread over the day suffices.
MAX_ROWS = 1_000_000
SKEW_PREFIX = "monitoring/skew"
TIMESTAMP_COLUMN = "event_timestamp"


class SkewError(ValueError):
    """The skew of a model's day cannot be computed (no prediction log that day, log lacking the join keys)."""


class NoPredictionLog(SkewError, LookupError):
    """No prediction of the model was logged on the day asked."""


@dataclass(frozen=True)
class FeatureSkew:
    """One feature over the day's logged rows: how often online and offline disagree, and by how much."""

    feature: str
    rows: int
    differ_share: float  # |online - offline| > tolerance, or one missing and not the other
    mean_abs_diff: float | None  # over rows where both are present (None: no such row)
    missing_online_share: float
    missing_offline_share: float


@dataclass(frozen=True)
class SkewReport:
    """Per feature skew of one model's logged predictions of one day."""

    model: str
    day: dt.date
    feature_service: str
    rows: int
    versions: list[str]
    features: list[FeatureSkew]
    not_compared: dict[str, str]  # feature -> why it could not be compared
    parts_read: int  # parts (flushes) of the day's log compared; fewer than parts_total: a sample
    parts_total: int
    tolerance: float = SKEW_TOLERANCE

    @property
    def sampled(self) -> bool:
        return self.parts_read < self.parts_total

    @property
    def flagged(self) -> list[str]:
        """Features whose online value differs from the offline one in any row."""
        return [f.feature for f in self.features if f.differ_share > 0]

    def feature(self, name: str) -> FeatureSkew:
        for skew in self.features:
            if skew.feature == name:
                return skew
        raise KeyError(
            f"skew report of {self.model!r} has no feature {name!r}; known: {[f.feature for f in self.features]}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "day": self.day.isoformat(),
            "feature_service": self.feature_service,
            "rows": self.rows,
            "parts_read": self.parts_read,
            "parts_total": self.parts_total,
            "sampled": self.sampled,
            "versions": list(self.versions),
            "tolerance": self.tolerance,
            "flagged": self.flagged,
            "features": [dataclasses.asdict(f) for f in self.features],
            "not_compared": dict(self.not_compared),
        }


# -- the pure core -------------------------------------------------------------------------------------------
def compare_features(
    online: pd.DataFrame, offline: pd.DataFrame, features: list[str], tolerance: float = SKEW_TOLERANCE
) -> list[FeatureSkew]:
    """Per feature, online against offline values row by row (same length and order; NaN is missing). A feature
    absent from ``online`` counts as missing online in every row."""
    if len(online) != len(offline):
        raise SkewError(f"online ({len(online)} rows) and offline ({len(offline)} rows) features must align row by row")
    rows = len(online)
    out = []
    for name in features:
        served = online[name].to_numpy(dtype="float64", na_value=np.nan) if name in online else np.full(rows, np.nan)
        truth = offline[name].to_numpy(dtype="float64", na_value=np.nan)
        gone_online, gone_offline = np.isnan(served), np.isnan(truth)
        both = ~gone_online & ~gone_offline
        gap = np.abs(served[both] - truth[both])
        differ = int((gap > tolerance).sum()) + int((gone_online != gone_offline).sum())
        out.append(
            FeatureSkew(
                feature=name,
                rows=rows,
                differ_share=differ / rows if rows else 0.0,
                mean_abs_diff=float(gap.mean()) if len(gap) else None,
                missing_online_share=float(gone_online.mean()) if rows else 0.0,
                missing_offline_share=float(gone_offline.mean()) if rows else 0.0,
            )
        )
    return out


# -- lake reading and the join ---------------------------------------------------------------------------------
def read_prediction_log(lake: Lake, model: str, day: dt.date | str, max_rows: int | None = None) -> pd.DataFrame:
    """The logged predictions of ``model`` on ``day`` (every part, or whole parts until ``max_rows``);
    NoPredictionLog when there is none."""
    table = predictions_table(model)
    try:
        return lake.read_parts(table, day, max_rows=max_rows)
    except PartitionNotFound:
        logged = [d.isoformat() for d in lake.part_days(table)]
        raise NoPredictionLog(
            f"model {model!r}: no prediction log for {as_date(day)} ({lake.uri(table)}/ds={as_date(day)} holds no "
            f"parts; days logged: {logged[-5:] or 'none'}); serve the model with the prediction log on, or pick a "
            "logged day"
        ) from None


def training_serving_skew(
    settings: Settings, spec: ModelSpec, day: dt.date | str, lake: Lake | None = None, max_rows: int | None = MAX_ROWS
) -> SkewReport:
    """Skew of ``spec``'s model on ``day``: its logged online features against the offline point-in-time features
    of the same entities at their ``logged_at`` instants (``pipelines.features.point_in_time``, through the
    compute engine, as training rows are joined). On-demand features are recomputed when the log holds their
    request fields; otherwise they are listed in ``not_compared``. Beyond ``max_rows`` logged rows, a seeded
    random sample of whole parts is compared (``parts_read`` < ``parts_total``; None: every part)."""
    from feature_repo.definitions import definitions
    from pipelines.compute.engine import point_in_time
    from pipelines.features.point_in_time import service_plan

    lake = lake or Lake(settings)
    day = as_date(day)
    logged = read_prediction_log(lake, spec.name, day, max_rows)
    parts_read = int(logged.attrs.get("parts_read", 0))
    parts_total = len(lake.part_files(predictions_table(spec.name), day))
    repo = definitions(settings)
    services = {s.name: s for s in repo.services}
    if spec.feature_service not in services:
        raise SkewError(
            f"model {spec.name!r}: feature service {spec.feature_service!r} is not declared in feature_repo/ "
            f"(known: {sorted(services)})"
        )
    plan = service_plan(repo, services[spec.feature_service])
    absent_keys = [k for k in plan.keys if k not in logged.columns]
    if absent_keys:
        raise SkewError(
            f"model {spec.name!r}, {day}: the prediction log lacks the join key column(s) {absent_keys} of feature "
            f"service {plan.name!r}; log them in the entity passed to PredictionLog.append"
        )
    not_compared: dict[str, str] = {}
    absent_request = [f for f in plan.request if f not in logged.columns]
    if absent_request:
        stored = [f for view in plan.views for f in view.features]
        for odfv in plan.on_demand:
            for field in odfv.features:
                not_compared[field.name] = (
                    f"on-demand feature: its request field(s) {absent_request} are not in the prediction log"
                )
        plan = dataclasses.replace(plan, on_demand=(), features=tuple(stored), request=())
    entity = logged[list(plan.keys)].copy()
    entity[TIMESTAMP_COLUMN] = pd.to_datetime(logged["logged_at"], utc=True, cache=False)
    for field in plan.request:
        entity[field] = logged[field].astype("float64")
    offline = point_in_time(settings, lake, plan, entity.reset_index(drop=True))
    online = logged.reset_index(drop=True)
    features = list(plan.features)
    return SkewReport(
        model=spec.name,
        day=day,
        feature_service=spec.feature_service,
        rows=len(logged),
        versions=sorted(logged["version"].astype(str).unique().tolist()),
        features=compare_features(online, offline, features),
        not_compared=not_compared,
        parts_read=parts_read,
        parts_total=parts_total,
    )


# -- publishing ------------------------------------------------------------------------------------------------
def skew_key(model: str, day: dt.date | str) -> str:
    return f"{SKEW_PREFIX}/{model}/ds={as_date(day).isoformat()}/skew.json"


def publish_skew(settings: Settings, report: SkewReport, lake: Lake | None = None) -> str:
    """Write ``report`` to the lake (atomically replacing the day's previous one); returns its URI."""
    return (lake or Lake(settings)).write_json(skew_key(report.model, report.day), report.to_dict())


def read_skew(settings: Settings, model: str, day: dt.date | str, lake: Lake | None = None) -> dict[str, Any] | None:
    """The published skew report of ``model`` on ``day`` (as written by :func:`publish_skew`), or None."""
    return (lake or Lake(settings)).read_json(skew_key(model, day))


def latest_skew(settings: Settings, model: str, lake: Lake | None = None) -> dict[str, Any] | None:
    """The newest published skew report of ``model`` (for ``mlctl status``), or None when there is none."""
    lake = lake or Lake(settings)
    selector = pafs.FileSelector(f"{lake.root}/{SKEW_PREFIX}/{model}", allow_not_found=True)
    days = sorted(
        info.base_name[3:]
        for info in lake.fs.get_file_info(selector)
        if info.type == pafs.FileType.Directory and info.base_name.startswith("ds=")
    )
    for day in reversed(days):
        report = lake.read_json(skew_key(model, day))
        if report is not None:
            return report
    return None
