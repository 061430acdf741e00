"""The daily chain for one logical date: extract -> validate -> features (one step per family) -> materialize
-> skew (what serving logged that day against the offline features) and monitor (each champion's drift against
its training rows, its realised metric once labels matured).

A logical date D is the day D itself, processed once it has ended. Each step reads only its inputs for the day
and replaces its one output atomically, so rerunning a day changes nothing and a failed day can simply be
retried. A family whose input tables the day lacks is skipped with the reason (``FamilySkipped``, kept in the
lake for ``mlctl status``); a day where no family could run fails.
"""

from __future__ import annotations

import datetime as dt
import logging

from pipelines.data.extract import extract_day, simulation_config
from pipelines.data.landed import day_timezone
from pipelines.flows.daily_plan import (
    FamilySkipped,
    MissingIngestedDay,
    NothingToProcess,
    ensure_day_ended,
    feature_families,
    label_only_tables,
    landed_window,
    record_plan,
    skipped_families,
)
from pipelines.lake import Lake, as_date
from pipelines.settings import Settings
from pipelines.usecases import family, raw_tables
from pipelines.validation.daily import validate_day

log = logging.getLogger(__name__)

__all__ = [
    "FamilySkipped",
    "MissingIngestedDay",
    "NothingToProcess",
    "extract",
    "feature_families",
    "feature_family",
    "features",
    "materialize",
    "monitor",
    "skew",
    "validate",
]


def _landed_tables(lake: Lake, day: dt.date) -> dict:
    return {
        table: {"rows": lake.row_count(table, day), "uri": lake.partition_uri(table, day)}
        for table in raw_tables()
        if lake.exists(table, day)
    }


def extract(settings: Settings, ds: str | dt.date, now: dt.datetime | None = None) -> dict:
    """Land the day's raw partitions in the lake, once the day has ended.

    With ``data_source=ingested`` the day was landed by ``mlctl ingest`` (a real log, any subset of events, users,
    follows, orders and order labels): check that it holds at least one of them and leave it as it is.
    """
    lake, day = Lake(settings), as_date(ds)
    ensure_day_ended(day, now, day_timezone(lake) if settings.data_source == "ingested" else "UTC")
    if settings.data_source == "simulator":
        return extract_day(lake, simulation_config(settings), day, threads=settings.num_threads)
    landed = _landed_tables(lake, day)
    if not landed:
        span = landed_window(lake)
        where = (
            f"mlctl ingest landed {span[0]} .. {span[1]}"
            + (f"; {day} is outside that span" if not span[0] <= day <= span[1] else "")
            if span
            else "nothing was ingested yet"
        )
        raise MissingIngestedDay(
            f"{day}: none of the tables {', '.join(raw_tables())} has a partition in {settings.lake_uri} ({where}); "
            "run days of the landed span, or land the day first with "
            "`mlctl ingest --source FILE --mapping MAPPING --table events --derive-users`"
        )
    return landed


def validate(settings: Settings, ds: str | dt.date) -> dict:
    """Validate every table of the day, dimensions first; a critical failure quarantines that partition and
    raises (stopping the chain), warnings are returned per table and kept in each partition's report."""
    return validate_day(Lake(settings), as_date(ds), settings.expectations_dir)


def feature_family(settings: Settings, ds: str | dt.date, name: str) -> dict:
    """Build and publish one family's tables of the day; ``FamilySkipped`` when the day lacks its inputs."""
    step, lake, day = family(name), Lake(settings), as_date(ds)
    skipped = record_plan(lake, day, feature_families(settings))
    if name in skipped:
        raise FamilySkipped(name, skipped[name])
    return step.build(settings, day)


def features(settings: Settings, ds: str | dt.date) -> dict:
    """Every family the specs read, in order, as the DAG runs them (skipped ones say why); fails when none ran."""
    results: dict[str, dict] = {}
    for name in feature_families(settings):
        try:
            results[name] = feature_family(settings, ds, name)
        except FamilySkipped as skip:
            results[name] = {"skipped": skip.reason}
    _families_built(settings, Lake(settings), as_date(ds))
    return results


def _families_built(settings: Settings, lake: Lake, day: dt.date) -> bool:
    """Whether a feature family ran on ``day``; a day on which none ran fails, unless it holds only late labels
    (chargebacks arriving after the last order of a file): it is done once they are validated, as later
    training runs read them from the lake."""
    families, skipped = feature_families(settings), skipped_families(lake, day)
    if not families or any(name not in skipped for name in families):
        return True
    if any(lake.exists(table, day) for table in label_only_tables(settings)):
        return False
    reasons = "; ".join(f"{name}: {why}" for name, why in skipped.items())
    raise NothingToProcess(
        f"{day}: no feature family could run, so the day is not done ({reasons}); land the tables the models "
        f"in {settings.models_dir} need, or keep only the specs this source can feed"
    )


def materialize(settings: Settings, ds: str | dt.date) -> dict:
    """Load the day's features into the online store (fails when every family was skipped)."""
    # Imported here: Feast takes seconds to import and only this step needs it.
    from pipelines.features.store import materialize_day

    day = as_date(ds)
    if not _families_built(settings, Lake(settings), day):
        return {"rows": 0}  # a day of late labels only: no feature of the day to load
    return {"rows": materialize_day(settings, day)}


def skew(settings: Settings, ds: str | dt.date) -> dict:
    """Training/serving skew of every model served on day ``ds``: the online features its prediction log holds
    against the offline point-in-time features of the same entities and instants, per feature, published to
    ``monitoring/skew/<model>/ds=...`` for ``mlctl status`` and the reviewer's report. Nothing served that day:
    nothing to compare (``{"models": {}}``). Also flags every alias that disagrees with the audit log (``aliases``:
    model -> findings with the command that fixes each, logged as errors) without failing the run: serving
    already refuses such a version, and the fix is a reviewer's (`mlctl restore`)."""
    # Imported here: the point-in-time join imports Feast, and only this step needs it.
    from pipelines.monitoring.skew import publish_skew, training_serving_skew
    from pipelines.registry.tamper import verify_aliases
    from pipelines.serving.prediction_log import predictions_table
    from pipelines.specs import load_specs

    day, lake = as_date(ds), Lake(settings)
    models, flagged = {}, {}
    for spec in load_specs(settings.models_dir).values():
        if findings := [f"{f.alias}: {f.message}; fix: {f.fix}" for f in verify_aliases(settings, spec)]:
            flagged[spec.name] = findings
            for finding in findings:
                log.error("%s: alias disagrees with the audit log: %s", spec.name, finding)
        if not lake.part_files(predictions_table(spec.name), day):
            continue
        report = training_serving_skew(settings, spec, day, lake)
        publish_skew(settings, report, lake)
        models[spec.name] = {"rows": report.rows, "flagged": report.flagged}
    return {"models": models, "aliases": flagged}


def monitor(settings: Settings, ds: str | dt.date) -> dict:
    """Drift of every champion on day ``ds`` against the rows it was trained on (features and scores, thresholds of
    the spec's ``monitoring:`` block) and its realised main metric on the newest day whose labels matured,
    published to ``monitoring/drift/<model>/ds=...`` (replacing the day's previous report). A model without a
    champion is not watched; one that cannot be (its training set gone, the day lacking its features) is listed
    under ``unwatched`` with the reason. A day of late labels only has no features to watch."""
    from pipelines.registry.registry import never_written
    from pipelines.specs import load_specs

    day, lake = as_date(ds), Lake(settings)
    models: dict[str, dict] = {}
    unwatched: dict[str, str] = {}
    if never_written(settings) or not _families_built(settings, lake, day):
        return {"models": models, "unwatched": unwatched}  # no model trained yet, or no features of the day
    # Imported here: the point-in-time join imports Feast, scoring MLflow and LightGBM; only this step needs them.
    from pipelines.monitoring.drift_reports import publish_drift
    from pipelines.monitoring.watch import MonitoringError, monitor_model
    from pipelines.training.dataset import TrainingSetError

    for spec in load_specs(settings.models_dir).values():
        try:
            report = monitor_model(settings, spec, day, lake)
        except (MonitoringError, TrainingSetError) as exc:
            unwatched[spec.name] = str(exc)
            continue
        if report is not None:
            publish_drift(lake, report)
            models[spec.name] = {"drifting": report.drifting, "flagged": report.flagged, "summary": report.summary}
    return {"models": models, "unwatched": unwatched}


def drift_events(monitored: dict, ds: str | dt.date) -> dict[str, dict]:
    """The Asset event extras of :func:`monitor`'s drifting models (model -> {"ds", "model", "features"}): what
    triggers each one's training DAG."""
    day = as_date(ds).isoformat()
    return {
        name: {"ds": day, "model": name, "features": result["flagged"]}
        for name, result in monitored["models"].items()
        if result["drifting"]
    }
