"""What `mlctl status` reports: per model the champion, its metrics and approval record; per DAG its last runs;
per table the validation outcome of the latest days and the partitions in quarantine."""

from __future__ import annotations

from typing import Any

from pipelines.lake import Lake
from pipelines.orchestration.airflow_client import AirflowAPIError, AirflowClient
from pipelines.registry.registry import get_champion
from pipelines.settings import Settings
from pipelines.specs import load_specs
from pipelines.validation.summary import validation_summary

DAILY_DAGS = ("daily_features",)


def collect_status(settings: Settings, runs_per_dag: int = 5, validation_days: int = 7) -> dict[str, Any]:
    """Champions, last DAG runs, and the validation outcome of the latest days per table (``validation``:
    see :func:`pipelines.validation.summary.validation_summary`)."""
    specs = load_specs(settings.models_dir)
    models: dict[str, Any] = {}
    for name in specs:
        champion = get_champion(settings, name)
        models[name] = {"champion": champion.to_dict() if champion else None}
    dags: dict[str, list[dict]] = {}
    try:
        client = AirflowClient(settings)
        for dag_id in (*DAILY_DAGS, *(f"train_{name}" for name in specs)):
            try:
                found = client.dag_runs(dag_id, limit=runs_per_dag)
            except AirflowAPIError:
                found = []  # not parsed into Airflow yet: no runs
            dags[dag_id] = [
                {
                    "run_id": r["dag_run_id"],
                    "logical_date": (r.get("logical_date") or "")[:10],
                    "state": r["state"],
                    "start_date": r.get("start_date"),
                    "end_date": r.get("end_date"),
                }
                for r in found
            ]
        airflow_error = None
    except (AirflowAPIError, OSError) as exc:
        airflow_error = str(exc)
    validation, validation_error = None, None
    try:
        validation = validation_summary(Lake(settings), days=validation_days)
    except OSError as exc:  # the lake (S3 on the stack profile) unreachable: say so, report the rest
        validation_error = str(exc)
    return {
        "profile": settings.profile,
        "models": models,
        "dags": dags,
        "airflow_error": airflow_error,
        "validation": validation,
        "validation_error": validation_error,
    }
