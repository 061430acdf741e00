"""What `mlctl run` / `backfill` say about a run (issue 10 item 4) and which day a training run trains for
(issue 10 item 11)."""

from __future__ import annotations

import datetime as dt

import pytest
from rich.console import Console

from pipelines.console import runs_table
from pipelines.flows.training import NoRunDay, TriggeredByBackfill, check, run_day
from pipelines.lake import Lake
from pipelines.orchestration.outcomes import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_REJECTED,
    TaskState,
    exception_message,
    exit_code,
    record_training_outcome,
    structured_log_error,
    summarize_run,
    task_log_section,
    training_outcome_key,
)
from pipelines.settings import PROJECT_ROOT, Settings
from pipelines.specs import load_spec

DAY = "2017-12-03"

# What `dag.test` writes for a run whose second task fails (Airflow 3.3's format, shortened).
DAG_TEST_LOG = """\
2026-12-06T04:49:33.499165Z [info     ] [DAG TEST] starting task_id=extract map_index=-1 [airflow.sdk.definitions.dag]
2026-12-06T04:49:38.904766Z [info     ] Done. Returned value was: {'rows': 10}
2026-12-06T04:49:38.950454Z [info     ] [DAG TEST] end task task_id=extract map_index=-1 [airflow.sdk.definitions.dag]
2026-12-06T04:49:38.955205Z [info     ] [DAG TEST] starting task_id=features_order_risk map_index=-1 [airflow.sdk]
2026-12-06T04:49:39.007420Z [error    ] Task failed with exception     [task] loc=task_runner.py:1676
Traceback (most recent call last):
  File "/venv/airflow/sdk/execution_time/task_runner.py", line 1579, in _run_task_and_map_outcome
    result = _execute_task(context=context, ti=ti, log=log)
             ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/work/pipelines/lake.py", line 102, in read
    raise PartitionNotFound(f"{self.uri(table)}: no partition for ds={as_date(ds)}")
pipelines.lake.PartitionNotFound: /lake/orders: no partition for ds=2017-11-25
2026-12-06T04:49:39.009870Z [info     ] ::group::Post Execute          [task] loc=task_runner.py:1677
2026-12-06T04:49:39.028946Z [info     ] [DAG TEST] end task task_id=features_order_risk map_index=-1 [airflow.sdk]
"""


def test_the_error_of_a_failed_task_is_its_exception_not_the_log() -> None:
    """issue 10 item 4: the failing task's error message is the exception's line, not the whole log."""
    section = task_log_section(DAG_TEST_LOG, "features_order_risk")
    assert "starting task_id=extract" not in section
    message = exception_message(section)
    assert message == "pipelines.lake.PartitionNotFound: /lake/orders: no partition for ds=2017-11-25"
    assert exception_message(task_log_section(DAG_TEST_LOG, "extract")) is None


def test_multi_line_messages_keep_their_lines_and_rest_logs_their_structured_error() -> None:
    log = 'Traceback (most recent call last):\n  File "x.py", line 1\nValueError: first\nsecond\n2026-12-06T00:00 next'
    assert exception_message(log) == "ValueError: first\nsecond"
    structured = [
        {"event": "Task started", "timestamp": "2026-12-06T04:49:38Z"},
        {
            "event": "Task failed with exception",
            "error_detail": [{"exc_type": "TrainingSetError", "exc_value": "no feature partition", "frames": []}],
        },
    ]
    assert structured_log_error(structured) == "TrainingSetError: no feature partition"
    assert structured_log_error(["plain line", *log.splitlines()]) == "ValueError: first\nsecond"


def test_a_failed_run_names_the_task_its_error_and_the_log_path(lake: Lake) -> None:
    """issue 10 item 4: a failed run says which task failed and why, and where the log is; exit code 1."""
    tasks = [TaskState("extract", "success"), TaskState("features_order_risk", "failed")]
    errors = {"features_order_risk": "PartitionNotFound: /lake/orders: no partition for ds=2017-11-25"}
    summary = summarize_run(
        lake, "daily_features", DAY, "failed", tasks, lambda t: errors.get(t.task_id), "/home/.storefront/logs/d.log"
    )
    assert summary.exit_code == EXIT_FAILED and summary.failed_task == "features_order_risk"
    assert "task features_order_risk failed: PartitionNotFound" in summary.line
    assert summary.line.endswith("log: /home/.storefront/logs/d.log")


def _summary(lake: Lake, state: str = "success"):
    return summarize_run(lake, "train_order_fraud", DAY, state, [], lambda t: None)


def test_a_rejected_gate_prints_the_failed_checks_and_exits_2(lake: Lake) -> None:
    """issue 10 item 4: `success` of the Airflow run is not the outcome: a gate rejection is, with exit code 2."""
    record_training_outcome(
        lake,
        "order_fraud",
        DAY,
        "rejected",
        version="3",
        summary="rejected: ...",
        failed_checks=["pr_auc 0.0812 is below the floor 0.2"],
    )
    summary = _summary(lake)
    assert summary.exit_code == EXIT_REJECTED and summary.verdict == "rejected"
    assert summary.line == "gate rejected version 3: pr_auc 0.0812 is below the floor 0.2"


@pytest.mark.parametrize(
    ("outcome", "details", "expected"),
    [
        ("skipped", {"reason": "order_fraud cannot train for 2017-12-03: ..."}, "skipped: order_fraud cannot train"),
        ("passed", {"version": "4"}, "then mlctl approve order_fraud 4 --comment"),
        ("promoted", {"version": "4", "by": "carol"}, "version 4 is the champion (approved by carol)"),
        ("approval_rejected", {"version": "4", "by": "bob", "comment": "too few rows"}, "bob rejected it: too few"),
        ("already_champion", {"version": "4"}, "already is the champion"),
    ],
)
def test_each_training_outcome_in_one_line(lake: Lake, outcome: str, details: dict, expected: str) -> None:
    """issue 10 item 4: passed and promoted / waiting with the approve command / skipped with the reason."""
    record_training_outcome(lake, "order_fraud", DAY, outcome, **details)
    summary = _summary(lake)
    assert expected in summary.line and summary.exit_code == EXIT_OK


def test_a_daily_run_says_which_families_ran_and_which_were_skipped(lake: Lake) -> None:
    """issue 10 item 4: the families of a daily run and the recorded reasons of those skipped."""
    lake.write_json(f"runs/daily_features/ds={DAY}/skipped.json", {"order_risk": "no orders partition for 2017-12-03"})
    tasks = [
        TaskState("extract", "success"),
        TaskState("features_user_behavior", "success"),
        TaskState("features_ranking", "success"),
        TaskState("features_order_risk", "skipped"),
    ]
    summary = summarize_run(lake, "daily_features", DAY, "success", tasks, lambda t: None)
    assert summary.line == (
        "families built: ranking, user_behavior; skipped: order_risk (no orders partition for 2017-12-03)"
    )


def test_a_failure_outweighs_a_rejection_in_the_exit_code(lake: Lake) -> None:
    record_training_outcome(lake, "order_fraud", DAY, "rejected", version="1", failed_checks=["x"])
    rejected = _summary(lake)
    failed = summarize_run(lake, "daily_features", DAY, "failed", [TaskState("extract", "failed")], lambda t: "E")
    assert exit_code([rejected]) == EXIT_REJECTED
    assert exit_code([rejected, failed]) == EXIT_FAILED
    assert exit_code([]) == EXIT_OK


def test_runs_table_shows_error_text_with_brackets_as_written() -> None:
    out = Console(width=200, record=True)
    out.print(runs_table("train_x", [(DAY, "failed")], ["task check failed: day(s) ['2017-11-25'] [red]"]))
    assert "day(s) ['2017-11-25'] [red]" in out.export_text()


def test_asset_triggered_runs_train_for_the_newest_day_the_events_name() -> None:
    """issue 10 item 11: a run triggered by the daily features' assets has no logical date; its day is the newest
    ``ds`` of the triggering events; a manual run keeps its logical date."""
    extras = [{"ds": "2017-12-02"}, {"ds": "2017-12-03"}, {}]
    assert run_day(None, extras) == dt.date(2017, 12, 3)
    assert run_day(dt.datetime(2017, 12, 1, tzinfo=dt.UTC), extras) == dt.date(2017, 12, 1)
    with pytest.raises(NoRunDay, match="mlctl run train_MODEL --date"):
        run_day(None, [{}])


def test_a_daily_run_in_which_no_task_ran_is_not_a_day_done(lake: Lake) -> None:
    """issue 10 item 1: a run that processed nothing is reported as such and fails the command (exit 1)."""
    tasks = [TaskState("extract", None), TaskState("features_user_behavior", None)]
    summary = summarize_run(lake, "daily_features", DAY, "success", tasks, lambda t: None)
    assert summary.exit_code == EXIT_FAILED and summary.verdict == "nothing ran"
    already_done = summarize_run(lake, "daily_features", DAY, "success", None, lambda t: None)
    assert already_done.exit_code == EXIT_OK


def test_a_run_triggered_only_by_a_backfill_is_skipped_with_the_reason(settings: Settings) -> None:
    """issue 10 item 11: a backfill of the daily features emits one asset event per day; training follows the
    scheduled daily runs and says how to train a backfilled day."""
    spec = load_spec(PROJECT_ROOT / "models" / "purchase_intent.yaml")
    backfill = ["backfill__2017-12-02T00:00:00+00:00", "backfill__2017-12-03T00:00:00+00:00"]
    with pytest.raises(TriggeredByBackfill, match="mlctl run train_purchase_intent --date 2017-12-03"):
        check(settings, spec, DAY, backfill)
    summary = summarize_run(Lake(settings), "train_purchase_intent", DAY, "success", [], lambda t: None)
    assert summary.verdict == "skipped" and "triggered by a backfill" in summary.line


def test_a_backfill_triggered_skip_keeps_the_outcome_of_a_run_that_trained_that_day(settings: Settings) -> None:
    """A run started by a backfill's asset event does nothing: the day's outcome stays the one of the run that
    trained and promoted (the drift test on the stack showed it overwritten with "skipped")."""
    spec = load_spec(PROJECT_ROOT / "models" / "purchase_intent.yaml")
    lake = Lake(settings)
    record_training_outcome(lake, spec.name, DAY, "promoted", version="3")
    with pytest.raises(TriggeredByBackfill):
        check(settings, spec, DAY, ["backfill__2017-12-03T00:00:00+00:00"])
    assert lake.read_json(training_outcome_key(spec.name, DAY)) == {"outcome": "promoted", "version": "3"}
