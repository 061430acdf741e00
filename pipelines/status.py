"""What `mlctl status` reports: per model the champion, its main metric against the best achievable and the
baseline, its approval record, what is waiting (a candidate to approve, a rejected one, no champion) and any alias
the audit log does not account for; per DAG its last runs (daily runs with the families they skipped); per table
the validation outcome of the latest days and the partitions in quarantine; per online view how far it is
materialized (a view behind its lake is flagged) and, locally, runs left `running` by a process that died.
``--json`` keeps everything, the terminal gets the summary."""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

from pipelines.flows.daily_plan import skipped_families
from pipelines.lake import Lake, as_date
from pipelines.orchestration.airflow_client import AirflowAPIError, AirflowClient, AirflowUnreachable
from pipelines.orchestration.run_leases import stuck_runs
from pipelines.registry.registry import ModelVersionInfo, get_champion, list_versions
from pipelines.registry.tamper import verify_aliases
from pipelines.settings import Settings
from pipelines.specs import ModelSpec, load_specs
from pipelines.validation.summary import validation_summary

DAILY_DAGS = ("daily_features",)


def collect_status(settings: Settings, runs_per_dag: int = 5, validation_days: int = 7) -> dict[str, Any]:
    """Champions, last DAG runs, and the validation outcome of the latest days per table (``validation``:
    see :func:`pipelines.validation.summary.validation_summary`)."""
    specs = load_specs(settings.models_dir)
    lake = Lake(settings)
    models: dict[str, Any] = {}
    for name, spec in specs.items():
        champion = get_champion(settings, name)
        versions = list_versions(settings, name)
        models[name] = {
            "champion": champion.to_dict() if champion else None,
            "summary": model_summary(spec, champion, versions[-1] if versions else None),
            "skew": _skew(settings, lake, name),
            "drift": _drift(lake, name),
            "alias_findings": [asdict(f) for f in verify_aliases(settings, spec)],
        }
    dags: dict[str, list[dict]] = {}
    try:
        client = AirflowClient(settings)
        for dag_id in (*DAILY_DAGS, *(f"train_{name}" for name in specs)):
            try:
                found = client.dag_runs(dag_id, limit=runs_per_dag)
            except AirflowUnreachable:
                raise
            except AirflowAPIError:
                found = []  # not parsed into Airflow yet: no runs
            dags[dag_id] = [
                {
                    "run_id": r["dag_run_id"],
                    "logical_date": (r.get("logical_date") or "")[:10],
                    "state": r["state"],
                    "start_date": r.get("start_date"),
                    "end_date": r.get("end_date"),
                    "skipped": _skipped(lake, dag_id, (r.get("logical_date") or "")[:10]),
                }
                for r in found
            ]
        airflow_error = None
    except (AirflowAPIError, OSError) as exc:
        airflow_error = str(exc)
    stuck, online, online_error = [], None, None
    # On the stack the scheduler fails the tasks of a dead worker itself; locally the in-process client above has
    # configured Airflow for this process (stuck_runs reads its metadata DB), unless Airflow is unreachable.
    if settings.profile == "local" and airflow_error is None:
        try:
            stuck = [asdict(run) | {"command": run.command()} for run in stuck_runs(settings)]
        except Exception as exc:  # noqa: BLE001 - the metadata DB unreadable: Airflow's error above says so
            airflow_error = airflow_error or str(exc)
    try:
        from pipelines.features.store import online_lag  # imports Feast: seconds, and only this part needs it

        logging.getLogger("feast").setLevel(logging.WARNING)  # its registry-cache lines would break --json
        online = [asdict(lag) | {"message": lag.message()} for lag in online_lag(settings)]
    except Exception as exc:  # noqa: BLE001 - the registry or online store unreachable: say so, report the rest
        online_error = f"{type(exc).__name__}: {exc}"
    validation, validation_error = None, None
    try:
        validation = validation_summary(lake, days=validation_days)
    except OSError as exc:  # the lake (S3 on the stack profile) unreachable: say so, report the rest
        validation_error = str(exc)
    return {
        "profile": settings.profile,
        "models": models,
        "dags": dags,
        "airflow_error": airflow_error,
        "stuck_runs": stuck,
        "online_views": online,
        "online_error": online_error,
        "validation": validation,
        "validation_error": validation_error,
    }


def _skew(settings: Settings, lake: Lake, model: str) -> dict[str, Any] | None:
    """The newest training/serving skew report of the model (None before it was served, or unreadable)."""
    from pipelines.monitoring.skew import latest_skew

    try:
        return latest_skew(settings, model, lake)
    except OSError:
        return None


def _drift(lake: Lake, model: str) -> str:
    """One line on the model's newest drift report (pipelines/monitoring/watch.py)."""
    from pipelines.monitoring.drift_reports import monitoring_line

    try:
        return monitoring_line(lake, model)
    except OSError as exc:
        return f"drift: monitoring reports unreadable ({exc})"


def skew_line(report: dict[str, Any] | None) -> str:
    """One line on a model's newest skew report: the flagged features with their share of rows, or none."""
    if report is None:
        return "training/serving skew: no served predictions compared yet"
    head = f"training/serving skew on {report['day']} ({report['rows']:,} logged rows"
    head += ", a sample)" if report.get("sampled") else ")"
    features = {f["feature"]: f for f in report["features"]}
    if not report["flagged"]:
        return f"{head}: none; every online feature equals the offline one"
    worst = sorted(report["flagged"], key=lambda f: -features[f]["differ_share"])
    parts = [f"{f} differs in {features[f]['differ_share']:.1%} of rows" for f in worst[:5]]
    more = f" and {len(worst) - 5} more" if len(worst) > 5 else ""
    return f"{head}: {'; '.join(parts)}{more}"


def _skipped(lake: Lake, dag_id: str, day: str) -> dict[str, str]:
    """The families a daily run skipped, with the reason ({} for other DAGs or when none was)."""
    if dag_id not in DAILY_DAGS or not day:
        return {}
    try:
        return skipped_families(lake, as_date(day))
    except OSError:
        return {}


def _metric(info: ModelVersionInfo, scorer: str, metric: str) -> float | None:
    """A version's evaluation metric (``eval_<scorer>_<metric>``, logged by the evaluation step)."""
    return info.metrics.get(f"eval_{scorer}_{metric}")


def model_summary(spec: ModelSpec, champion: ModelVersionInfo | None, latest: ModelVersionInfo | None) -> dict:
    """What a person wants to know about one model: its champion, how good it is, and what waits for someone."""
    main = spec.main_metric
    summary: dict[str, Any] = {"main_metric": main, "champion": None, "waiting": ""}
    if champion is not None:
        approval = champion.approval or {}
        summary["champion"] = {
            "version": champion.version,
            "value": _metric(champion, "candidate", main),
            "best_achievable": _metric(champion, "bayes_optimal", main),
            "baseline": _metric(champion, "baseline", main),
            "approved_by": approval.get("by"),
            "approved_at": approval.get("at"),
            "comment": approval.get("comment"),
        }
    if latest is not None and (champion is None or int(latest.version) > int(champion.version)):
        gate = latest.tags.get("gate.status")
        approval = latest.approval or {}
        if approval.get("status") == "rejected":
            who = approval.get("by") or "a reviewer"
            summary["waiting"] = f"candidate v{latest.version} rejected by {who}: {approval.get('comment') or ''}"
        elif gate == "failed":
            summary["waiting"] = (
                f"candidate v{latest.version} rejected by the gate: {latest.tags.get('gate.summary', '')}"
            )
        elif gate == "passed":
            summary["waiting"] = (
                f"candidate v{latest.version} waits for approval: "
                f"mlctl login --user REVIEWER, then mlctl approve {spec.name} {latest.version} --comment '...'"
            )
        else:
            summary["waiting"] = f"candidate v{latest.version} not gated yet (its training run did not finish)"
    if champion is None and not summary["waiting"]:
        summary["waiting"] = f"no champion yet: train it with `mlctl run train_{spec.name} --date YYYY-MM-DD`"
    elif champion is None:
        summary["waiting"] = f"no champion yet; {summary['waiting']}"
    return summary
