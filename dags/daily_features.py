"""Daily features: extract -> validate -> features (one task per family) -> materialize -> skew and monitor, one
run per complete day.

Logical date D is the data interval [D, D+1): the scheduler starts it after D has ended and every task reads and
writes the partition ds = D. A family whose input tables the day lacks is skipped with the reason in its log;
materialize fails when no family ran, so such a day is never counted as done (unless it holds late labels only,
which validate checks). With data_source=ingested the DAG schedules the span `mlctl ingest` landed.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Asset, AssetAlias, CronDataIntervalTimetable, dag, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from pipelines.flows.daily_plan import NOT_RETRYABLE, FamilySkipped, feature_families, schedule_window
from pipelines.settings import get_settings

settings = get_settings()
FIRST_DAY, LAST_DAY = schedule_window(settings)
FAMILIES = feature_families(settings)


def flow():
    """The steps module, imported when a task runs: its imports (Feast, MLflow, GX) are too heavy for parsing."""
    from pipelines.flows import daily_features

    return daily_features


def once(step, *args) -> dict:
    """Run a step; a day that has not ended, holds no data, or feeds no family fails without retries."""
    try:
        return step(get_settings(), *args)
    except NOT_RETRYABLE as exc:
        raise AirflowFailException(str(exc)) from exc


def feature_asset(family: str) -> Asset:
    return Asset(f"storefront://features/{family}")


def drift_asset(model: str) -> Asset:
    return Asset(f"storefront://drift/{model}")


# Drift events go through an alias: only the models found drifting get one (a plain outlet always emits).
DRIFT_ALIAS = AssetAlias("storefront-drift")


def midnight(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)


@dag(
    dag_id="daily_features",
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=midnight(FIRST_DAY),
    end_date=midnight(LAST_DAY) if LAST_DAY else None,
    catchup=settings.airflow_catchup,
    max_active_runs=2,
    default_args={"retries": 1, "retry_delay": dt.timedelta(seconds=settings.task_retry_delay_seconds)},
    tags=["features"],
    doc_md=__doc__,
)
def daily_features():
    # Each step returns one dict, kept as one XCom: one per key (TaskFlow's default for a dict) costs an
    # execution-API call each.
    @task(multiple_outputs=False)
    def extract(ds: str | None = None) -> dict:
        return once(flow().extract, ds)

    @task(multiple_outputs=False)
    def validate(ds: str | None = None) -> dict:
        return flow().validate(get_settings(), ds)

    def family_task(family: str):
        asset = feature_asset(family)

        @task(multiple_outputs=False, task_id=f"features_{family}", outlets=[asset])
        def features(ds: str | None = None, outlet_events=None) -> dict:
            try:
                result = flow().feature_family(get_settings(), ds, family)
            except FamilySkipped as skip:
                raise AirflowSkipException(str(skip)) from skip
            # Training DAGs scheduled on this asset read the day from the event.
            outlet_events[asset].extra = {"ds": ds}
            return result

        return features()

    # Runs after skipped families too; it fails itself when every family was skipped (and no late label landed).
    @task(multiple_outputs=False, trigger_rule="none_failed")
    def materialize(ds: str | None = None) -> dict:
        return once(flow().materialize, ds)

    # The day's served predictions against the offline features (nothing to do on a day nothing was served).
    @task(multiple_outputs=False)
    def skew(ds: str | None = None) -> dict:
        return flow().skew(get_settings(), ds)

    # Each champion against its training rows; a drifting one triggers its training DAG (gate and approval apply).
    @task(multiple_outputs=False, outlets=[DRIFT_ALIAS])
    def monitor(ds: str | None = None, outlet_events=None) -> dict:
        monitored = flow().monitor(get_settings(), ds)
        for model, extra in flow().drift_events(monitored, ds).items():
            outlet_events[DRIFT_ALIAS].add(drift_asset(model), extra=extra)
        return monitored

    validated = validate()
    extract() >> validated
    materialized = materialize()
    validated >> materialized >> [skew(), monitor()]
    for family in FAMILIES:
        validated >> family_task(family) >> materialized


daily_features()
