"""What one DAG run came to, in one line a person reads, and the exit code `mlctl run`/`backfill` end with.

Training runs record their outcome in the lake (``runs/train_<model>/ds=D/outcome.json``: skipped, gate rejected,
waiting for approval, promoted, rejected by the reviewer); the daily DAG records the families it skipped
(``runs/daily_features/ds=D/skipped.json``). Both profiles read the same documents, so the CLI says the same
thing whether Airflow ran in-process or on the stack. A failed run is told by its failing task's error message,
taken from the task's log (never the whole log).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pipelines.flows.daily_plan import skipped_families
from pipelines.lake import Lake, as_date

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_REJECTED = 2
TRAINING_PREFIX = "train_"
FAMILY_TASK_PREFIX = "features_"
# A task's error text is cut to this many lines (a message, not a log).
MAX_ERROR_LINES = 6
_LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d[T ]\d\d:\d\d")


@dataclass(frozen=True)
class TaskState:
    task_id: str
    state: str | None
    try_number: int = 1


@dataclass(frozen=True)
class RunSummary:
    """One run told in a line; ``exit_code`` is what the CLI exits with when this is the worst run."""

    dag_id: str
    logical_date: str
    state: str
    line: str
    exit_code: int
    failed_task: str | None = None
    error: str | None = None
    verdict: str = ""  # what the CLI shows as the run's state: Airflow's, or rejected / skipped / waiting

    def __post_init__(self) -> None:
        if not self.verdict:
            object.__setattr__(self, "verdict", self.state)


def training_outcome_key(model: str, day: str | dt.date) -> str:
    return f"runs/{TRAINING_PREFIX}{model}/ds={as_date(day).isoformat()}/outcome.json"


def record_training_outcome(lake: Lake, model: str, day: str | dt.date, outcome: str, **details: Any) -> str:
    """Replace the run's outcome document (each training step writes the furthest stage it reached)."""
    return lake.write_json(training_outcome_key(model, day), {"outcome": outcome, **details})


# -- errors out of task logs ------------------------------------------------------------------------------
def task_log_section(log_text: str, task_id: str) -> str:
    """The part of an in-process (``dag.test``) log written by the last attempt of ``task_id``."""
    start = log_text.rfind(f"[DAG TEST] starting task_id={task_id} ")
    if start < 0:
        return ""
    end = log_text.find(f"[DAG TEST] end task task_id={task_id} ", start)
    return log_text[start : end if end >= 0 else len(log_text)]


def exception_message(log_text: str) -> str | None:
    """The last exception of a log: its type and message, with the message's own continuation lines."""
    start = log_text.rfind("Traceback (most recent call last):")
    if start < 0:
        return None
    lines = log_text[start:].splitlines()[1:]
    message: list[str] = []
    for line in lines:
        if not message:
            if line.startswith((" ", "\t")) or not line.strip():
                continue  # the frames of the traceback
            message.append(line.strip())
            continue
        if _LOG_RECORD.match(line) or not line.strip():
            break
        message.append(line.strip())
    if not message:
        return None
    if len(message) > MAX_ERROR_LINES:
        message = [*message[:MAX_ERROR_LINES], f"... ({len(message) - MAX_ERROR_LINES} more lines in the log)"]
    return "\n".join(message)


def structured_log_error(content: Iterable[Any]) -> str | None:
    """The last exception of a task log served by Airflow's REST API (structured messages, or plain lines)."""
    found: str | None = None
    text: list[str] = []
    for entry in content:
        if isinstance(entry, dict):
            for detail in entry.get("error_detail") or []:
                if isinstance(detail, dict) and detail.get("exc_type"):
                    found = f"{detail['exc_type']}: {detail.get('exc_value', '')}".strip()
            text.append(str(entry.get("event", "")))
        else:
            text.append(str(entry))
    return found or exception_message("\n".join(text))


def log_text(content: Iterable[Any]) -> str:
    """A REST task log as plain text (for the file the CLI writes)."""
    lines = []
    for entry in content:
        if isinstance(entry, dict):
            stamp = entry.get("timestamp") or ""
            extra = {k: v for k, v in entry.items() if k not in {"timestamp", "event", "level", "error_detail"}}
            lines.append(f"{stamp} [{entry.get('level', '')}] {entry.get('event', '')} {extra if extra else ''}")
            for detail in entry.get("error_detail") or []:
                if isinstance(detail, dict):
                    lines.append(f"{detail.get('exc_type')}: {detail.get('exc_value')}")
        else:
            lines.append(str(entry))
    return "\n".join(lines)


# -- one line per run ---------------------------------------------------------------------------------------
def describe_training(model: str, outcome: dict[str, Any] | None) -> tuple[str, int]:
    """The gate verdict and what happened after it, from the run's outcome document."""
    if not outcome:
        return "finished without recording an outcome", EXIT_OK
    kind, version = outcome.get("outcome"), outcome.get("version")
    if kind == "skipped":
        return f"skipped: {outcome.get('reason', 'no reason recorded')}", EXIT_OK
    if kind == "rejected":
        failed = outcome.get("failed_checks") or []
        checks = "; ".join(failed) if failed else outcome.get("summary", "")
        return f"gate rejected version {version}: {checks}", EXIT_REJECTED
    if kind == "already_champion":
        return f"version {version} already is the champion: nothing to approve", EXIT_OK
    if kind == "passed":
        command = f"mlctl login --user REVIEWER, then mlctl approve {model} {version} --comment '...'"
        return f"gate passed version {version}; waiting for approval: {command} (or mlctl reject)", EXIT_OK
    if kind == "promoted":
        by = f" (approved by {outcome['by']})" if outcome.get("by") else ""
        return f"gate passed and version {version} is the champion{by}", EXIT_OK
    if kind == "approval_rejected":
        who = outcome.get("by") or "the reviewer"
        why = f": {outcome['comment']}" if outcome.get("comment") else ""
        return f"gate passed version {version}; {who} rejected it{why}; the champion is unchanged", EXIT_OK
    return f"stopped after the {kind} step", EXIT_OK


def describe_daily(skipped: dict[str, str] | None, tasks: Iterable[TaskState]) -> str:
    """Which feature families ran, and which were skipped and why."""
    reasons = dict(skipped or {})
    ran, passed_over = [], []
    for task in tasks:
        if not task.task_id.startswith(FAMILY_TASK_PREFIX):
            continue
        family = task.task_id.removeprefix(FAMILY_TASK_PREFIX)
        if task.state == "success" and family not in reasons:
            ran.append(family)
        elif family not in reasons and task.state in {"skipped", "upstream_failed"}:
            passed_over.append(family)
    parts = [f"families built: {', '.join(sorted(ran)) or 'none'}"]
    if reasons:
        parts.append("skipped: " + "; ".join(f"{name} ({why})" for name, why in sorted(reasons.items())))
    if passed_over:
        parts.append(f"not run: {', '.join(sorted(passed_over))}")
    return "; ".join(parts)


def summarize_run(
    lake: Lake,
    dag_id: str,
    logical_date: str,
    state: str,
    tasks: list[TaskState] | None,
    error_of: Callable[[TaskState], str | None],
    log_path: str | None = None,
) -> RunSummary:
    """One run in a line: the failing task and its error, else the gate verdict (training) or the families.

    ``tasks`` None: the run's tasks are not known (a day already done); a daily run whose known tasks all did
    nothing is reported as a failure, never as a day done.
    """
    tasks = list(tasks) if tasks is not None else None
    known = tasks or []
    if state == "failed":
        failed = [t for t in known if t.state == "failed"]
        task = failed[0] if failed else None
        error = error_of(task) if task else None
        where = f"task {task.task_id} failed" if task else "the run failed"
        text = f"{where}: {error}" if error else f"{where} (no error message found)"
        if log_path:
            text += f"\nlog: {log_path}"
        return RunSummary(dag_id, logical_date, state, text, EXIT_FAILED, task.task_id if task else None, error)
    if dag_id.startswith(TRAINING_PREFIX):
        model = dag_id.removeprefix(TRAINING_PREFIX)
        outcome = lake.read_json(training_outcome_key(model, logical_date)) or {}
        line, code = describe_training(model, outcome)
        kind = outcome.get("outcome")
        verdict = {"rejected": "rejected", "skipped": "skipped", "passed": "waiting for approval"}.get(kind, state)
        return RunSummary(dag_id, logical_date, state, line, code, verdict=verdict)
    if dag_id == "daily_features":
        if tasks is not None and state == "success" and not any(t.state == "success" for t in tasks):
            line = "no task ran for this date: nothing was processed (is the date inside the DAG's schedule?)"
            return RunSummary(dag_id, logical_date, state, line, EXIT_FAILED, verdict="nothing ran")
        skipped = skipped_families(lake, as_date(logical_date))
        return RunSummary(dag_id, logical_date, state, describe_daily(skipped, known), EXIT_OK)
    return RunSummary(dag_id, logical_date, state, state, EXIT_OK if state == "success" else EXIT_FAILED)


def exit_code(summaries: Iterable[RunSummary]) -> int:
    """A failure (1) outweighs a gate rejection (2), which outweighs success (0)."""
    codes = {s.exit_code for s in summaries}
    return EXIT_FAILED if EXIT_FAILED in codes else EXIT_REJECTED if EXIT_REJECTED in codes else EXIT_OK
