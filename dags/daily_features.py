"""Daily features: extract -> validate -> features -> materialize, one run per logical date."""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Asset, dag, task

from pipelines.features.families import families_in
from pipelines.settings import get_settings

settings = get_settings()
FAMILIES = families_in(settings.models_dir)


def flow():
    """The steps module, imported when a task runs: its imports (Feast, MLflow, GX) are too heavy for parsing."""
    from pipelines.flows import daily_features

    return daily_features


def feature_asset(family: str) -> Asset:
    return Asset(f"storefront://features/{family}")


@dag(
    dag_id="daily_features",
    schedule="@daily",
    start_date=dt.datetime.combine(settings.start_date, dt.time(), tzinfo=dt.UTC),
    end_date=dt.datetime.combine(settings.end_date, dt.time(), tzinfo=dt.UTC) if settings.end_date else None,
    catchup=settings.airflow_catchup,
    max_active_runs=2,
    default_args={"retries": 1, "retry_delay": dt.timedelta(seconds=30)},
    tags=["features"],
    doc_md=__doc__,
)
def daily_features():
    @task
    def extract(ds: str | None = None) -> dict:
        return flow().extract(get_settings(), ds)

    @task
    def validate(ds: str | None = None) -> dict:
        return flow().validate(get_settings(), ds)

    def family_task(family: str):
        @task(task_id=f"features_{family}", outlets=[feature_asset(family)])
        def features(ds: str | None = None) -> dict:
            return flow().feature_family(get_settings(), ds, family)

        return features()

    @task
    def materialize(ds: str | None = None) -> dict:
        return flow().materialize(get_settings(), ds)

    validated = validate()
    extract() >> validated
    materialized = materialize()
    for family in FAMILIES:
        validated >> family_task(family) >> materialized


daily_features()
