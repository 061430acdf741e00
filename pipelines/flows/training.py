"""The training chain of one model for one day: check -> training set -> train -> evaluate -> gate -> promote.

Human approval sits between the gate and promotion; it is Airflow's, so it lives in the DAG, and its answer
reaches :func:`promote` and :func:`record_review` as the ApprovalOperator's return value. Each step records how
far the run got in ``runs/train_<model>/ds=D/outcome.json`` (see :mod:`pipelines.orchestration.outcomes`), which
is what `mlctl run` prints.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pipelines.data.schemas import as_of
from pipelines.evaluation.evaluate import Evaluation, evaluate_candidate
from pipelines.evaluation.gate import apply_gate, record_gate
from pipelines.evaluation.report import build_report, report_link
from pipelines.features.store import online_freshness
from pipelines.lake import Lake, as_date
from pipelines.orchestration.outcomes import record_training_outcome, training_outcome_key
from pipelines.registry.approval import ApprovalRecord
from pipelines.registry.decisions import DecisionRefused, record_trainer, refuse_if_rejected, request_review
from pipelines.registry.promotion import promote as promote_version
from pipelines.registry.promotion import record_rejection
from pipelines.registry.registry import get_champion, get_version
from pipelines.settings import Settings
from pipelines.specs import ModelSpec
from pipelines.training.dataset import build_training_set, load_training_set
from pipelines.training.readiness import HistoryTooShort, require_ready
from pipelines.training.train import train_model
from pipelines.usecases import FAMILIES, use_case

# Run ids of Airflow backfill runs start with this (DagRunType.BACKFILL_JOB).
BACKFILL_RUN_PREFIX = "backfill__"
# The triggering user Airflow's dag.test gives its runs (the local profile's in-process `mlctl run`).
DAG_TEST_USER = "dag_test"


class TriggeredByBackfill(Exception):  # noqa: N818 - an outcome, not an error: the DAG skips the run
    """Every asset event that triggered the run came from a backfill of the daily features."""


class NoRunDay(ValueError):
    """A training run has neither a logical date nor a triggering asset event that names its day."""


def run_day(logical_date: dt.datetime | dt.date | str | None, asset_extras: list[dict[str, Any]]) -> dt.date:
    """The day a training run trains for: its logical date (a manual or cron run), else the newest ``ds`` of the
    daily features' asset events that triggered it (asset-triggered runs have no logical date in Airflow 3)."""
    if logical_date is not None:
        return as_date(logical_date)
    days = [as_date(extra["ds"]) for extra in asset_extras if extra and extra.get("ds")]
    if not days:
        raise NoRunDay(
            "the run has no logical date and its triggering asset events carry no 'ds' in their extra; trigger it "
            "with a date (`mlctl run train_MODEL --date YYYY-MM-DD`)"
        )
    return max(days)


def check(settings: Settings, spec: ModelSpec, ds: str | dt.date, source_runs: list[str | None] | None = None) -> dict:
    """The readiness check of the run's first task: the day and the verdict, or HistoryTooShort (the DAG skips)
    / LabelDelayTooShort (the run fails). A rerun starts a fresh outcome document.

    ``source_runs``: the daily runs whose asset events triggered this run. When all are backfill runs the run is
    skipped (TriggeredByBackfill): a backfill of N days would otherwise queue training after every day of it;
    train for a backfilled day with `mlctl run train_MODEL --date D`.
    """
    lake = Lake(settings)
    day = as_date(ds)
    if source_runs and all((run or "").startswith(BACKFILL_RUN_PREFIX) for run in source_runs):
        reason = (
            f"triggered by a backfill of the daily features (up to {day}); training follows the scheduled daily "
            f"runs: train for a backfilled day with `mlctl run train_{spec.name} --date {day}`"
        )
        # A run that did something for the day (trained, waits, promoted) keeps its outcome: this one did nothing.
        earlier = lake.read_json(training_outcome_key(spec.name, day)) or {}
        if earlier.get("outcome") in (None, "skipped"):
            record_training_outcome(lake, spec.name, day, "skipped", reason=reason)
        raise TriggeredByBackfill(reason)
    try:
        readiness = require_ready(lake, spec, day)
    except HistoryTooShort as short:
        record_training_outcome(lake, spec.name, day, "skipped", reason=str(short))
        raise
    record_training_outcome(lake, spec.name, day, "checked", verdict=readiness.verdict)
    return {"ds": day.isoformat(), "verdict": readiness.verdict}


def training_set(settings: Settings, spec: ModelSpec, ds: str) -> dict:
    ts = build_training_set(settings, Lake(settings), spec, as_date(ds))
    return {"uri": ts.uri, "digest": ts.digest, "rows": ts.row_counts, "label_rate": ts.label_rate}


def trainer_identity(settings: Settings, triggering_user: str | None) -> str:
    """Who a training run acts for (four eyes): the Airflow user who triggered it, "scheduler" for scheduled and
    asset-triggered runs, and the engineer account for the local profile's in-process runs (`mlctl run`)."""
    if not triggering_user:
        return "scheduler"
    return settings.airflow_username if triggering_user == DAG_TEST_USER else triggering_user


def train(settings: Settings, spec: ModelSpec, ds: str, trained_by: str = "scheduler") -> dict:
    """Train and register; ``trained_by`` (:func:`trainer_identity`) is kept on the version and cannot approve it."""
    ts = load_training_set(Lake(settings), spec, as_date(ds))
    result = train_model(settings, spec, ts)
    trainers = record_trainer(settings, spec.name, str(result.model_version), trained_by)
    return {
        "run_id": result.run_id,
        "version": str(result.model_version),
        "metrics": result.metrics,
        "trained_by": trainers,
    }


def evaluate(settings: Settings, spec: ModelSpec, ds: str, version: str) -> dict:
    """Candidate, champion, baseline and (simulated data) the Bayes-optimal scorer on the same test rows."""
    ts = load_training_set(Lake(settings), spec, as_date(ds))
    return evaluate_candidate(settings, spec, version, ts).to_dict()


def gate(settings: Settings, spec: ModelSpec, ds: str, version: str, evaluation: dict) -> dict:
    """Apply the spec's thresholds to the evaluation, tag the version with the verdict and write the report.

    The reviewer's report is built whatever the verdict (a rejected candidate's report says why). A candidate
    that already is the champion (a rerun on the same data) needs no new approval: it is reported with
    ``already_champion`` and the DAG stops before the approval request.
    """
    lake = Lake(settings)
    champion = get_champion(settings, spec.name)
    if champion is not None and champion.version == str(version):
        record_training_outcome(lake, spec.name, ds, "already_champion", version=str(version))
        return {
            "passed": False,
            "already_champion": True,
            "summary": f"version {version} already is the champion",
        }
    try:  # the same data reuses the version, and with it a reviewer's rejection
        refuse_if_rejected(spec, get_version(settings, spec.name, str(version)))
    except DecisionRefused as rejected:
        record_training_outcome(lake, spec.name, ds, "skipped", version=str(version), reason=str(rejected))
        return {"passed": False, "already_champion": False, "rejected": True, "summary": str(rejected)}
    evaluated = Evaluation.from_dict(evaluation)
    decision = apply_gate(spec, evaluated)
    record_gate(settings, spec, version, decision)
    with tempfile.TemporaryDirectory(prefix="report-") as tmp:  # the run keeps it; nothing is left on the worker
        build_report(settings, spec, version, out_dir=Path(tmp))
    champion_name = f"champion v{evaluated.champion_version}"
    record_training_outcome(
        lake,
        spec.name,
        ds,
        "passed" if decision.passed else "rejected",
        version=str(version),
        summary=decision.summary,
        failed_checks=[c.describe(champion_name) for c in decision.checks if not c.passed],
        report=report_link(settings, spec.name, version),
    )
    if decision.passed:
        request_review(settings, spec, str(version))
    return {**decision.to_dict(), "already_champion": False, "report": report_link(settings, spec.name, version)}


def data_time(lake: Lake, spec: ModelSpec, day: dt.date) -> dt.datetime:
    """The end of the newest day up to ``day`` whose raw data the model's features read.

    On a live source that is ``day`` itself. A file of the past ends before the labels of its last rows have
    arrived (orders whose chargebacks take 30 days), so a run dated by its labels finds no newer input than the
    file's last day: features of that day are as fresh as the data allows. Input landed but not materialized
    still shows as stale.
    """
    newest = []
    for name in use_case(spec.entity).families:
        # The newest day on which the family could run: every one of its input tables has a partition.
        runnable = set.intersection(*({d for d in lake.partitions(t) if d <= day} for t in FAMILIES[name].input_tables))
        newest.append(max(runnable, default=day))
    return as_of(min(newest, default=day), lake.day_zone)


def promote(
    settings: Settings, spec: ModelSpec, ds: str, version: str, approval: dict[str, Any] | list[dict[str, Any]]
) -> dict:
    """Move the champion alias after checking the online store is fresh for the model's feature service.

    ``approval``: the approval task's answer, or the answers of each of the spec's ``approvals_required`` tasks.
    Freshness is judged at the run's data time (:func:`data_time`), so a backfill of past dates judges the
    features those dates had (for today's run it is the present).
    """
    records = [ApprovalRecord.from_hitl(a) for a in (approval if isinstance(approval, list) else [approval])]
    record = records[-1]
    lake = Lake(settings)
    freshness = online_freshness(
        settings,
        spec.feature_service,
        sample_user_ids=None,
        max_age=dt.timedelta(hours=spec.online_freshness_hours),
        now=data_time(lake, spec, as_date(ds)),
    )
    promoted = _jsonable(promote_version(settings, spec, version, records, freshness))
    outcome = "promoted" if record.decision == "approve" else "approval_rejected"
    record_training_outcome(
        Lake(settings), spec.name, ds, outcome, version=str(version), by=record.by, comment=record.comment
    )
    return promoted


def record_review(settings: Settings, spec: ModelSpec, ds: str, version: str, approval: dict[str, Any] | None) -> dict:
    """Keep a rejection (or a missing answer) on the version's tags; approvals were recorded by promote."""
    if not approval:
        return {"decision": "none"}
    record = ApprovalRecord.from_hitl(approval)
    if record.decision != "approve":
        record_rejection(settings, spec, version, record)
        record_training_outcome(
            Lake(settings),
            spec.name,
            ds,
            "approval_rejected",
            version=str(version),
            by=record.by,
            comment=record.comment,
        )
    return _jsonable(record)


def _jsonable(obj: Any) -> dict:
    data = asdict(obj) if hasattr(obj, "__dataclass_fields__") else dict(obj)
    return {k: (v.isoformat() if isinstance(v, dt.datetime | dt.date) else v) for k, v in data.items()}
