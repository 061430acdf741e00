"""What `mlctl status` prints: models, last runs, data contracts."""

from __future__ import annotations

from rich.console import Console

from pipelines.console import dag_runs_table, model_table, validation_table
from pipelines.registry.registry import ModelVersionInfo
from pipelines.settings import PROJECT_ROOT
from pipelines.specs import load_spec
from pipelines.status import model_summary


def test_validation_table_names_flagged_days_and_quarantine() -> None:
    summary = {
        "days": ["2025-01-01", "2025-01-02", "2025-01-03"],
        "tables": {
            "events": {
                "passed": 1,
                "warnings": 1,
                "critical": 1,
                "warnings_days": ["2025-01-02"],
                "critical_days": ["2025-01-03"],
                "quarantined": ["2025-01-03"],
            },
            "users": {
                "passed": 3,
                "warnings": 0,
                "critical": 0,
                "warnings_days": [],
                "critical_days": [],
                "quarantined": [],
            },
        },
    }
    out = Console(width=160, record=True)
    out.print(validation_table(summary))
    text = out.export_text()
    assert "2025-01-01 .. 2025-01-03" in text
    events = next(line for line in text.splitlines() if "events" in line)
    assert "2025-01-02" in events and "2025-01-03" in events
    users = next(line for line in text.splitlines() if "users" in line)
    assert "│ 3 " in users


def _version(version: str, metrics: dict[str, float], tags: dict[str, str], approval=None) -> ModelVersionInfo:
    return ModelVersionInfo(
        "order_fraud", version, run_id="r", source="s", tags=tags, metrics=metrics, approval=approval
    )


def _text(*tables) -> str:
    out = Console(width=200, record=True)
    for table in tables:
        out.print(table)
    return out.export_text()


def test_status_shows_one_table_per_model_with_champion_metric_and_what_waits() -> None:
    """issue 10 item 4: the champion's main metric against the best achievable and the baseline, its approval,
    and a candidate waiting for approval with the command that answers it; not every logged metric."""
    spec = load_spec(PROJECT_ROOT / "models" / "order_fraud.yaml")
    champion = _version(
        "2",
        {"eval_candidate_pr_auc": 0.41, "eval_bayes_optimal_pr_auc": 0.52, "eval_baseline_pr_auc": 0.3, "lr": 0.1},
        {"gate.status": "passed"},
        approval={"status": "approved", "by": "carol", "at": "2026-12-05T10:00:00", "comment": "beats v1"},
    )
    waiting = _version("3", {}, {"gate.status": "passed"})
    text = _text(model_table("order_fraud", model_summary(spec, champion, waiting)))
    assert "version 2" in text
    assert "pr_auc" in text and "0.4100 (best achievable 0.5200, baseline 0.3000)" in text
    assert "carol at 2026-12-05T10:00:00: 'beats v1'" in text
    assert "candidate v3 waits for approval: mlctl login --user REVIEWER, then mlctl approve order_fraud 3" in text
    assert "lr" not in text.split()


def test_status_says_when_a_candidate_was_rejected_and_when_there_is_no_champion() -> None:
    """issue 10 item 4: what is waiting: a rejected candidate, or no champion at all."""
    spec = load_spec(PROJECT_ROOT / "models" / "order_fraud.yaml")
    rejected = _version("1", {}, {"gate.status": "failed", "gate.summary": "rejected: pr_auc below the floor"})
    text = _text(model_table("order_fraud", model_summary(spec, None, rejected)))
    assert "none" in text
    assert "no champion yet; candidate v1 rejected by the gate: rejected: pr_auc below the floor" in text
    empty = _text(model_table("order_fraud", model_summary(spec, None, None)))
    assert "no champion yet: train it with `mlctl run train_order_fraud --date YYYY-MM-DD`" in empty


def test_status_runs_table_names_the_skipped_families() -> None:
    """issue 10 item 4: last runs per DAG with the families a daily run skipped and why."""
    dags = {
        "daily_features": [
            {"logical_date": "2017-12-03", "state": "success", "skipped": {"order_risk": "no orders partition"}},
            {"logical_date": "2017-12-02", "state": "failed", "skipped": {}},
        ],
        "train_order_fraud": [],
    }
    text = _text(dag_runs_table(dags))
    assert "2017-12-03 success, 2017-12-02 failed" in text
    assert "order_risk (2017-12-03: no orders partition)" in text
    assert "no runs yet" in text
