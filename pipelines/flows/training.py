"""The training chain of one model for one logical date: training set -> train -> evaluate -> gate -> promote.

Human approval sits between the gate and promotion; it is Airflow's, so it lives in the DAG, and its answer
reaches :func:`promote` and :func:`record_review` as the ApprovalOperator's return value.
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
from pipelines.registry.approval import ApprovalRecord
from pipelines.registry.promotion import promote as promote_version
from pipelines.registry.promotion import record_rejection
from pipelines.registry.registry import get_champion
from pipelines.settings import Settings
from pipelines.specs import ModelSpec
from pipelines.training.dataset import build_training_set, load_training_set, oracle_scores
from pipelines.training.train import train_model


def training_set(settings: Settings, spec: ModelSpec, ds: str) -> dict:
    ts = build_training_set(settings, Lake(settings), spec, as_date(ds))
    return {"uri": ts.uri, "digest": ts.digest, "rows": ts.row_counts, "label_rate": ts.label_rate}


def train(settings: Settings, spec: ModelSpec, ds: str) -> dict:
    ts = load_training_set(Lake(settings), spec, as_date(ds))
    result = train_model(settings, spec, ts)
    return {"run_id": result.run_id, "version": str(result.model_version), "metrics": result.metrics}


def evaluate(settings: Settings, spec: ModelSpec, ds: str, version: str) -> dict:
    """Candidate, champion, baseline and (simulated data) the Bayes-optimal scorer on the same test rows."""
    lake = Lake(settings)
    ts = load_training_set(lake, spec, as_date(ds))
    oracle = oracle_scores(settings, lake, spec, ts.split("test"))
    return evaluate_candidate(settings, spec, version, ts, oracle_scores=oracle).to_dict()


def gate(settings: Settings, spec: ModelSpec, version: str, evaluation: dict) -> dict:
    """Apply the spec's thresholds to the evaluation, tag the version with the verdict and write the report.

    The reviewer's report is built whatever the verdict (a rejected candidate's report says why). A candidate
    that already is the champion (a rerun on the same data) needs no new approval: it is reported with
    ``already_champion`` and the DAG stops before the approval request.
    """
    champion = get_champion(settings, spec.name)
    if champion is not None and champion.version == str(version):
        return {
            "passed": False,
            "already_champion": True,
            "summary": f"version {version} already is the champion",
        }
    decision = apply_gate(spec, Evaluation.from_dict(evaluation))
    record_gate(settings, spec, version, decision)
    with tempfile.TemporaryDirectory(prefix="report-") as tmp:  # the run keeps it; nothing is left on the worker
        build_report(settings, spec, version, out_dir=Path(tmp))
    return {**decision.to_dict(), "already_champion": False, "report": report_link(settings, spec.name, version)}


def promote(settings: Settings, spec: ModelSpec, ds: str, version: str, approval: dict[str, Any]) -> dict:
    """Move the champion alias after checking the online store is fresh for the model's feature service.

    Freshness is judged at the run's data time, the as-of time of its logical date, so a backfill of past
    dates judges the features those dates had (for today's run it is the present).
    """
    record = ApprovalRecord.from_hitl(approval)
    freshness = online_freshness(
        settings,
        spec.feature_service,
        sample_user_ids=None,
        max_age=dt.timedelta(hours=spec.online_freshness_hours),
        now=as_of(as_date(ds)),
    )
    return _jsonable(promote_version(settings, spec, version, record, freshness))


def record_review(settings: Settings, spec: ModelSpec, version: str, approval: dict[str, Any] | None) -> dict:
    """Keep a rejection (or a missing answer) on the version's tags; approvals were recorded by promote."""
    if not approval:
        return {"decision": "none"}
    record = ApprovalRecord.from_hitl(approval)
    if record.decision != "approve":
        record_rejection(settings, spec, version, record)
    return _jsonable(record)


def _jsonable(obj: Any) -> dict:
    data = asdict(obj) if hasattr(obj, "__dataclass_fields__") else dict(obj)
    return {k: (v.isoformat() if isinstance(v, dt.datetime | dt.date) else v) for k, v in data.items()}
