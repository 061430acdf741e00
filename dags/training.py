"""Training DAGs, one per model spec in models/: training set -> train -> evaluate -> gate -> approval -> promote."""

from __future__ import annotations

import datetime as dt

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import Param, dag, task

from pipelines.settings import get_settings
from pipelines.specs import ModelSpec, load_specs

settings = get_settings()


def flow():
    """The steps module, imported when a task runs: its imports (Feast, MLflow, GX) are too heavy for parsing."""
    from pipelines.flows import training

    return training


APPROVAL_BODY = """\
A new candidate of **{name}** passed the gate and waits for a reviewer.

- model: {name}
- version: {{{{ ti.xcom_pull(task_ids='train')['version'] }}}}
- logical date: {{{{ ds }}}}
- gate: {{{{ ti.xcom_pull(task_ids='gate')['summary'] }}}}
- reviewer's report (curves, slices, calibration, feature importance, verdict):
  {{{{ ti.xcom_pull(task_ids='gate')['report'] }}}}

Read the report first. Approve to make it the champion (the current one is kept as `previous`); reject to leave
the champion as it is.
Answer here or with `mlctl approve {name} VERSION --as YOU --comment ...` / `mlctl reject ...`.
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


def build_training_dag(spec: ModelSpec):
    @dag(
        dag_id=f"train_{spec.name}",
        schedule=spec.schedule if settings.training_schedules else None,
        start_date=dt.datetime.combine(settings.start_date, dt.time(), tzinfo=dt.UTC),
        catchup=False,
        max_active_runs=1,
        tags=["training", spec.name],
        doc_md=__doc__,
    )
    def training_dag():
        @task
        def training_set(ds: str | None = None) -> dict:
            return flow().training_set(get_settings(), spec, ds)

        @task
        def train(ds: str | None = None) -> dict:
            return flow().train(get_settings(), spec, ds)

        @task
        def evaluate(trained: dict, ds: str | None = None) -> dict:
            return flow().evaluate(get_settings(), spec, ds, trained["version"])

        @task.short_circuit
        def gate(trained: dict, evaluation: dict) -> dict | bool:
            decision = flow().gate(get_settings(), spec, trained["version"], evaluation)
            return decision if decision["passed"] else False

        approval = RecordedApprovalOperator(
            task_id="approval",
            subject=f"Promote {spec.name} version {{{{ ti.xcom_pull(task_ids='train')['version'] }}}} to champion?",
            body=APPROVAL_BODY.format(name=spec.name),
            assigned_users=[{"id": r, "name": r} for r in spec.reviewers],
            params={"comment": Param("", type="string", description="Why you approve or reject")},
            defaults="Reject",
            response_timeout=dt.timedelta(days=3),
        )

        @task
        def promote(trained: dict, answer: dict, ds: str | None = None) -> dict:
            return flow().promote(get_settings(), spec, ds, trained["version"], answer)

        @task(trigger_rule="none_failed")
        def record_review(trained: dict, ti=None) -> dict:
            answer = ti.xcom_pull(task_ids="approval", key="answer")
            return flow().record_review(get_settings(), spec, trained["version"], answer)

        built = training_set()
        trained = train()
        built >> trained
        evaluation = evaluate(trained)
        decision = gate(trained, evaluation)
        decision >> approval
        promoted = promote(trained, approval.output)
        promoted >> record_review(trained)

    return training_dag()


for _spec in load_specs(settings.models_dir).values():
    build_training_dag(_spec)
