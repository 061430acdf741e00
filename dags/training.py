"""Training DAGs, one per model spec in models/: check -> training set -> train -> evaluate -> gate -> approval ->
promote.

Schedule (the spec's ``schedule``): ``features`` (default) runs after the daily features the model reads were
refreshed, or after the daily monitoring found the champion drifting (Airflow Assets; the run trains for the day
the asset events name; its candidate still goes through gate and approval), ``drift`` only after the latter, a cron
string runs on that cron, ``null`` only when triggered (`mlctl run train_MODEL --date D`). The first task checks
the lake holds the history the spec needs and skips the run with the reason when it does not, so a fresh stack
never fails training; runs triggered only by a backfill's asset events are skipped too (train a backfilled day
with `mlctl run`).
"""

from __future__ import annotations

import datetime as dt

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import Asset, AssetAll, AssetAny, Param, chain, dag, task
from airflow.sdk.exceptions import AirflowSkipException

from pipelines.flows.daily_plan import schedule_window
from pipelines.settings import get_settings
from pipelines.specs import DRIFT_SCHEDULE, FEATURES_SCHEDULE, ModelSpec, load_specs
from pipelines.usecases import families_for

settings = get_settings()
# The days the daily features cover (with an ingested source, the landed span): a run for a date before the start
# date would have no task to run (a 2017 log against the default 2025 start).
FIRST_DAY, _ = schedule_window(settings)


def flow():
    """The steps module, imported when a task runs: its imports (Feast, MLflow, GX) are too heavy for parsing."""
    from pipelines.flows import training

    return training


APPROVAL_BODY = """\
A new candidate of **{name}** passed the gate and waits for a reviewer.

- model: {name}
- version: {{{{ ti.xcom_pull(task_ids='train')['version'] }}}}
- day trained for: {{{{ ti.xcom_pull(task_ids='check')['ds'] }}}}
- gate: {{{{ ti.xcom_pull(task_ids='gate')['summary'] }}}}
- reviewer's report (curves, slices, calibration, feature importance, verdict):
  {{{{ ti.xcom_pull(task_ids='gate')['report'] }}}}

Read the report first. Approve to make it the champion (the current one is kept as `previous`); reject to leave
the champion as it is.
Answer here or, logged in as yourself (`mlctl login`), with `mlctl approve {name} VERSION --comment ...` /
`mlctl reject ...`. Whoever triggered the training cannot approve it.
"""


class RecordedApprovalOperator(ApprovalOperator):
    """Airflow's ApprovalOperator that also keeps the answer in XCom (key ``answer``) before acting on it.

    On "Reject" the stock operator ends by skipping its downstream tasks, which leaves no return value behind;
    ``record_review`` still needs who rejected and why to put it on the model version.
    """

    def execute_complete(self, context, event):
        answer = {
            key: event.get(key) for key in ("chosen_options", "params_input", "responded_at", "responded_by_user")
        }
        context["ti"].xcom_push(key="answer", value=answer)
        return super().execute_complete(context, event)


def approval_task_id(index: int) -> str:
    """``approval`` for the first (or only) approval, ``approval_2``... for the further ones."""
    return "approval" if index == 0 else f"approval_{index + 1}"


def training_schedule(spec: ModelSpec) -> AssetAny | Asset | str | None:
    """The spec's schedule in Airflow's terms; STOREFRONT_TRAINING_SCHEDULES=false turns every one off (tests)."""
    if not settings.training_schedules or spec.schedule is None:
        return None
    # The same URIs as dags/daily_features.py's outlets: the monitoring step found the champion drifting ...
    drifted = Asset(f"storefront://drift/{spec.name}")
    if spec.schedule == DRIFT_SCHEDULE:
        return drifted
    if spec.schedule == FEATURES_SCHEDULE:
        # ... or every family the model reads was refreshed.
        refreshed = AssetAll(*(Asset(f"storefront://features/{family}") for family in families_for([spec])))
        return refreshed | drifted
    return spec.schedule


def build_training_dag(spec: ModelSpec):
    @dag(
        dag_id=f"train_{spec.name}",
        schedule=training_schedule(spec),
        start_date=dt.datetime.combine(FIRST_DAY, dt.time(), tzinfo=dt.UTC),
        catchup=False,
        max_active_runs=1,
        tags=["training", spec.name],
        doc_md=__doc__,
    )
    def training_dag():
        # Each step returns one dict, kept as one XCom (not one per key: an execution-API call each).
        @task(multiple_outputs=False)
        def check(dag_run=None, triggering_asset_events=None) -> dict:
            from pipelines.training.readiness import HistoryTooShort

            events = [event for found in (triggering_asset_events or {}).values() for event in found]
            day = flow().run_day(getattr(dag_run, "logical_date", None), [event.extra for event in events])
            try:
                return flow().check(get_settings(), spec, day, [event.source_run_id for event in events])
            except (HistoryTooShort, flow().TriggeredByBackfill) as skip:
                raise AirflowSkipException(str(skip)) from skip

        @task(multiple_outputs=False)
        def training_set(checked: dict) -> dict:
            return flow().training_set(get_settings(), spec, checked["ds"])

        @task(multiple_outputs=False)
        def train(checked: dict, dag_run=None) -> dict:
            settings = get_settings()
            who = flow().trainer_identity(settings, getattr(dag_run, "triggering_user_name", None))
            return flow().train(settings, spec, checked["ds"], trained_by=who)

        @task(multiple_outputs=False)
        def evaluate(checked: dict, trained: dict) -> dict:
            return flow().evaluate(get_settings(), spec, checked["ds"], trained["version"])

        @task.short_circuit(multiple_outputs=False)
        def gate(checked: dict, trained: dict, evaluation: dict) -> dict | bool:
            decision = flow().gate(get_settings(), spec, checked["ds"], trained["version"], evaluation)
            return decision if decision["passed"] else False

        # One approval task per approval the spec requires (approvals_required): answered one after the other, by
        # different reviewers (promote refuses the same name twice and the identities that triggered training).
        approvals = [
            RecordedApprovalOperator(
                task_id=approval_task_id(i),
                subject=f"Promote {spec.name} version {{{{ ti.xcom_pull(task_ids='train')['version'] }}}} to "
                f"champion? (approval {i + 1} of {spec.approvals_required})",
                body=APPROVAL_BODY.format(name=spec.name),
                assigned_users=[{"id": r, "name": r} for r in spec.reviewers],
                params={"comment": Param("", type="string", description="Why you approve or reject")},
                defaults="Reject",
                response_timeout=dt.timedelta(hours=spec.approval_ttl_hours),
            )
            for i in range(spec.approvals_required)
        ]

        @task(multiple_outputs=False)
        def promote(checked: dict, trained: dict, ti=None) -> dict:
            answers = [ti.xcom_pull(task_ids=a.task_id, key="answer") for a in approvals]
            return flow().promote(get_settings(), spec, checked["ds"], trained["version"], answers)

        # Runs after a reviewer's rejection (promote skipped), not when the check skipped the whole run.
        @task(multiple_outputs=False, trigger_rule="none_failed_min_one_success")
        def record_review(checked: dict, trained: dict, ti=None) -> dict:
            answers = [ti.xcom_pull(task_ids=a.task_id, key="answer") for a in approvals]
            rejection = next((a for a in answers if a and "Approve" not in (a.get("chosen_options") or [])), None)
            return flow().record_review(get_settings(), spec, checked["ds"], trained["version"], rejection)

        checked = check()
        built = training_set(checked)
        trained = train(checked)
        built >> trained
        evaluation = evaluate(checked, trained)
        decision = gate(checked, trained, evaluation)
        promoted = promote(checked, trained)
        chain(decision, *approvals, promoted, record_review(checked, trained))

    return training_dag()


for _spec in load_specs(settings.models_dir).values():
    build_training_dag(_spec)
