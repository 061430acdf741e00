"""Run DAGs and follow them.

``local`` profile: runs execute in this process through ``dag.test`` (Airflow's own task runner on the SQLite
metadata DB; no scheduler needed). ``stack`` profile: runs are triggered through the REST API and the scheduler
executes them; backfills are Airflow backfills (``POST /api/v2/backfills``), never a loop of our own.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import multiprocessing
import os
import queue
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.lake import as_date, date_range
from pipelines.orchestration.airflow_client import AirflowAPIError, AirflowClient, PendingApproval
from pipelines.orchestration.airflow_env import (
    at_recorded_heads,
    configure_airflow,
    migrate_db,
    no_db_yet,
    record_heads,
)
from pipelines.orchestration.outcomes import (
    TaskState,
    exception_message,
    log_text,
    structured_log_error,
    task_log_section,
)
from pipelines.orchestration.run_leases import StuckRun, lease, stuck_runs
from pipelines.settings import Settings

FINISHED = {"success", "failed"}
# States of the human-approval task while it waits for a reviewer: `awaiting_input` since Airflow 3.3 (no trigger),
# `deferred` to the triggerer before.
WAITING_FOR_REVIEW = {"deferred", "awaiting_input"}
APPROVAL_TASK = "approval"


class UnknownDag(LookupError):
    """The DAG id is not defined in dags/."""


@dataclass
class RunOutcome:
    dag_id: str
    logical_date: str
    state: str
    run_id: str = ""
    skipped: bool = False
    tasks: list[TaskState] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)  # failed task -> its error message
    log_path: str | None = None
    replaced: list[StuckRun] = field(default_factory=list)  # stuck runs of the day this run replaced


def logical_datetime(day: str | dt.date) -> dt.datetime:
    return dt.datetime.combine(as_date(day), dt.time(), tzinfo=dt.UTC)


@contextlib.contextmanager
def output_to(logfile: Path | None) -> Iterator[None]:
    """Send this process's stdout/stderr (file descriptors, so Airflow's task logs too) to ``logfile``."""
    if logfile is None:
        yield
        return
    logfile.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(logfile, "a") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def load_dag(settings: Settings, dag_id: str):
    """The DAG ``dag_id`` from the DAG folder, ready for ``dag.test`` in this process."""
    configure_airflow(settings)
    from pipelines.orchestration.execution_api import use_newest_version_app

    use_newest_version_app()
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(settings.dags_dir))
    if bag.import_errors:
        errors = "\n".join(f"{path}: {err}" for path, err in bag.import_errors.items())
        raise RuntimeError(f"DAG files failed to import:\n{errors}")
    dag = bag.dags.get(dag_id)
    if dag is None:
        raise UnknownDag(f"no DAG {dag_id!r} in {settings.dags_dir} (DAGs: {', '.join(sorted(bag.dags))})")
    return dag


def ensure_migrated(settings: Settings) -> None:
    """Bring the metadata DB to Airflow's schema head. A DB already there is checked in this process: the
    ``airflow db migrate`` command would start a process importing all of Airflow (seconds) for every run. The
    heads of this Airflow version are kept in ``migrated.json`` once checked (finding them loads every migration
    script: a second or two), so later runs only read the DB's revision."""
    configure_airflow(settings)
    if at_recorded_heads(settings):
        return
    if no_db_yet(settings):  # a new home: checking would only wait for a DB that is not there (seconds)
        migrate_db(settings)  # records the heads
        return
    from airflow.utils.db import check_migrations
    from sqlalchemy.exc import SQLAlchemyError

    try:
        check_migrations(timeout=1)
    except (TimeoutError, SQLAlchemyError):  # behind Airflow's head, or a server's DB not created yet
        migrate_db(settings)  # records the heads
    else:
        record_heads(settings)


def succeeded_dates(settings: Settings, dag_id: str) -> set[dt.date]:
    """Logical dates whose latest run of ``dag_id`` succeeded (read from the metadata DB)."""
    configure_airflow(settings)
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        runs = session.query(DagRun).filter(DagRun.dag_id == dag_id).order_by(DagRun.run_after).all()
        latest = {r.logical_date.date(): r.state for r in runs if r.logical_date is not None}
    return {day for day, state in latest.items() if state == "success"}


# DAGs whose next day may start before this day's run has ended, and the task it waits for: a day's features read
# the raw partitions of earlier days (windows of up to 30 days), so the day before must have landed and validated
# them. The rest of the two days (features, materialize, monitoring) runs side by side.
NEXT_DAY_AFTER = {"daily_features": "validate"}
_WAIT_POLL_SECONDS = 0.25


def lanes_to_use(requested: int) -> int:
    """``requested`` lanes, or with 0 what the machine allows now: two when about two cores are idle, else one.
    A lane is a process of its own that imports Airflow, Feast and GX; with a core each, two days run in 0.66x the
    time of one after another, while beside other busy work they took longer than one lane (docs/performance.md)."""
    if requested:
        return requested
    import psutil

    cores = os.cpu_count() or 1
    idle = cores * (1 - psutil.cpu_percent(interval=1.0) / 100)
    return 2 if idle >= 1.5 else 1


def _plan(todo: int, skipped: int, lanes: int) -> str:
    """What a run of several days is about to do, in one line."""
    pace = "one day at a time" if lanes == 1 else f"{lanes} days at a time"
    return f"{todo} day(s) to run, {pace}" + (f"; {skipped} already succeeded" if skipped else "")


def run_in_process(
    settings: Settings,
    dag_id: str,
    days: list[dt.date],
    *,
    skip_succeeded: bool = False,
    logfile: Path | None = None,
    on_done: Callable[[RunOutcome], None] | None = None,
    lanes: int = 1,
    on_plan: Callable[[str], None] | None = None,
) -> list[RunOutcome]:
    """Run ``dag_id`` once per day through ``dag.test``, in day order; stop at the first failed day.

    With ``lanes`` > 1 (0: as many as :func:`lanes_to_use` finds the machine allows) and more than one day to run
    (DAGs of ``NEXT_DAY_AFTER`` only), days run side by side in that many processes: a day starts once the day
    before has passed the task named there, and no day starts after one failed (a day already under way finishes).
    ``on_plan`` gets one line saying how many days will run and how many at a time, once that is known. Outcomes
    are returned in day order, ``on_done`` is called as each day ends.
    """
    outcomes: list[RunOutcome] = []
    with output_to(logfile):  # Airflow logs from its first import on: keep them in the run's log
        ensure_migrated(settings)
        done = succeeded_dates(settings, dag_id) if skip_succeeded else set()
        dag = load_dag(settings, dag_id)
    todo = [day for day in days if day not in done]
    for day in days:
        if day in done:
            outcomes.append(RunOutcome(dag_id, day.isoformat(), "success", skipped=True))
            if on_done:
                on_done(outcomes[-1])
    lanes = lanes_to_use(lanes) if len(todo) > 1 and dag_id in NEXT_DAY_AFTER else 1
    if on_plan:
        on_plan(_plan(len(todo), len(days) - len(todo), lanes))
    if lanes > 1:
        outcomes += _run_in_lanes(settings, dag_id, todo, lanes, logfile, on_done)
        return sorted(outcomes, key=lambda o: o.logical_date)
    for day in todo:
        outcome = _run_day(settings, dag, day, logfile)
        outcomes.append(outcome)
        if on_done:
            on_done(outcome)
        if outcome.state != "success":
            break
    return sorted(outcomes, key=lambda o: o.logical_date)


def _run_day(settings: Settings, dag, day: dt.date, logfile: Path | None) -> RunOutcome:
    start = logfile.stat().st_size if logfile is not None and logfile.exists() else 0
    with output_to(logfile):
        replaced = stuck_runs(settings, dag.dag_id, day)  # before taking the lease; dag.test deletes them
        with lease(settings, dag.dag_id, day):
            run = dag.test(logical_date=logical_datetime(day))
    state = str(getattr(run.state, "value", run.state)) if run is not None else "failed"
    outcome = RunOutcome(dag.dag_id, day.isoformat(), state, getattr(run, "run_id", ""), replaced=replaced)
    if run is not None:
        outcome.tasks = [TaskState(ti.task_id, _state(ti.state), ti.try_number) for ti in run.get_task_instances()]
    if logfile is not None:
        outcome.log_path = str(logfile)
        outcome.errors = _errors_in_log(logfile, start, outcome.tasks)
    return outcome


def _run_in_lanes(
    settings: Settings,
    dag_id: str,
    days: list[dt.date],
    lanes: int,
    logfile: Path | None,
    on_done: Callable[[RunOutcome], None] | None,
) -> list[RunOutcome]:
    """Run ``days`` in ``lanes`` processes (lane i takes days i, i+lanes, ...); see :func:`run_in_process`."""
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: Airflow's DB engine is not fork-safe
    results, stop = context.Queue(), context.Event()
    since = dt.datetime.now(dt.UTC)
    workers = [
        context.Process(
            target=_lane,
            args=(settings, dag_id, days[lane::lanes], days, since, logfile, results, stop, os.getpid()),
            name=f"{dag_id}-lane-{lane}",
            daemon=True,
        )
        for lane in range(min(lanes, len(days)))
    ]
    for worker in workers:
        worker.start()
    outcomes: list[RunOutcome] = []
    try:
        while len(outcomes) < len(days):
            try:
                outcome = results.get(timeout=1)
            except queue.Empty:
                if all(not worker.is_alive() for worker in workers):
                    break  # every lane has stopped (a failed day, or a lane that crashed: its log says why)
                if any(worker.exitcode not in (None, 0) for worker in workers):
                    stop.set()  # a crashed lane leaves its days undone: start no more
                continue
            outcomes.append(outcome)
            if on_done:
                on_done(outcome)
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    return outcomes


def _lane(
    settings: Settings,
    dag_id: str,
    mine: list[dt.date],
    days: list[dt.date],
    since: dt.datetime,
    logfile: Path | None,
    results,
    stop,
    parent: int,
) -> None:
    """One lane of :func:`_run_in_lanes`: its days in order, each once the day before it may be followed. A lane
    whose parent died (killed: nobody follows the lanes any more) starts no other day."""

    def stopped() -> bool:
        return stop.is_set() or os.getppid() != parent

    with output_to(logfile):
        dag = load_dag(settings, dag_id)
    for day in mine:
        index = days.index(day)
        if index and not _wait_for_day_before(dag_id, days[index - 1], since, stopped):
            return
        if stopped():
            return
        outcome = _run_day(settings, dag, day, logfile)
        results.put(outcome)
        if outcome.state != "success":
            stop.set()
            return


def _wait_for_day_before(dag_id: str, day: dt.date, since: dt.datetime, stopped: Callable[[], bool]) -> bool:
    """Wait until the run of ``day`` started after ``since`` has passed ``NEXT_DAY_AFTER[dag_id]``; False when
    that run ended without passing it, or once ``stopped()``."""
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    task_id = NEXT_DAY_AFTER[dag_id]
    while not stopped():
        with create_session() as session:
            run = (
                session.query(DagRun)
                .filter(DagRun.dag_id == dag_id, DagRun.logical_date == logical_datetime(day))
                .filter(DagRun.run_after >= since)
                .order_by(DagRun.run_after.desc())
                .first()
            )
            if run is not None:
                ti = (
                    session.query(TaskInstance)
                    .filter(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run.run_id)
                    .filter(TaskInstance.task_id == task_id)
                    .one_or_none()
                )
                if ti is not None and _state(ti.state) == "success":
                    return True
                if _state(run.state) in FINISHED:
                    return False
        time.sleep(_WAIT_POLL_SECONDS)
    return False


def _state(state: object) -> str | None:
    return None if state is None else str(getattr(state, "value", state))


def _errors_in_log(logfile: Path, start: int, tasks: list[TaskState]) -> dict[str, str]:
    """The error message of each failed task, out of the part of ``logfile`` this run wrote."""
    failed = [t for t in tasks if t.state == "failed"]
    if not failed:
        return {}
    with open(logfile, errors="replace") as src:
        src.seek(start)
        text = src.read()
    errors = {}
    for task in failed:
        message = exception_message(task_log_section(text, task.task_id))
        if message:
            errors[task.task_id] = message
    return errors


def stack_task_details(client: AirflowClient, outcome: RunOutcome, log_dir: Path) -> RunOutcome:
    """Fill ``outcome`` with its task states and, for each failed task, its error; the failed task's whole log
    is written to ``log_dir`` (its path in ``outcome.log_path``)."""
    if not outcome.run_id:
        return outcome
    instances = client.task_instances(outcome.dag_id, outcome.run_id)
    outcome.tasks = [TaskState(ti["task_id"], ti.get("state"), int(ti.get("try_number") or 1)) for ti in instances]
    for task in outcome.tasks:
        if task.state != "failed":
            continue
        content = client.task_log(outcome.dag_id, outcome.run_id, task.task_id, task.try_number)
        log_dir.mkdir(parents=True, exist_ok=True)
        path = log_dir / f"{outcome.dag_id}_{outcome.logical_date}_{task.task_id}_try{task.try_number}.log"
        path.write_text(log_text(content))
        outcome.log_path = outcome.log_path or str(path)
        message = structured_log_error(content)
        if message:
            outcome.errors[task.task_id] = message
    return outcome


def waiting_for_review(client: AirflowClient, dag_id: str, run_id: str) -> bool:
    """The run's approval task waits for a reviewer (the gate passed)."""
    return any(
        ti["task_id"] == APPROVAL_TASK and ti.get("state") in WAITING_FOR_REVIEW
        for ti in client.task_instances(dag_id, run_id)
    )


class NoApprovalRequest(RuntimeError):
    """The awaited review request did not come: the training run ended without one, or the wait timed out."""


def wait_for_request(
    client: AirflowClient,
    model: str,
    timeout_seconds: float,
    poll_seconds: float = 3.0,
) -> list[PendingApproval]:
    """Wait until ``model``'s training run asks for a review and return the requests for it. Raises
    ``NoApprovalRequest`` when a run of its training DAG ends without asking (the gate rejected the candidate,
    or a task failed) after the wait began, or when ``timeout_seconds`` pass."""
    dag_id = f"train_{model}"
    since = dt.datetime.now(dt.UTC)
    deadline = time.monotonic() + timeout_seconds
    while True:
        pending = [p for p in client.pending_approvals(dag_id=dag_id) if p.field("model") == model]
        if pending:
            return pending
        for run in client.dag_runs(dag_id, limit=3):
            ended = run.get("end_date")
            if run["state"] in FINISHED and ended and dt.datetime.fromisoformat(ended) >= since:
                raise NoApprovalRequest(
                    f"{dag_id} run {run['dag_run_id']} ended {run['state']} and no review request for {model} is "
                    "waiting (a rejected gate asks no one; its `mlctl run` printed why)"
                )
        if time.monotonic() >= deadline:
            raise NoApprovalRequest(f"no review request for {model} came within {timeout_seconds:g} s")
        time.sleep(poll_seconds)


def trigger_and_follow(
    client: AirflowClient,
    dag_id: str,
    day: dt.date,
    poll_seconds: float = 2.0,
    on_poll: Callable[[dict], None] | None = None,
) -> RunOutcome:
    """Trigger one run through the REST API and wait until it finishes (stack profile).

    When the date already has a run (scheduled, backfilled or triggered before), that run is cleared and runs
    again, as on the local profile: one run per logical date, never a duplicate.
    """
    logical = logical_datetime(day).isoformat()
    try:
        run = client.trigger(dag_id, logical)
    except AirflowAPIError as exc:
        if exc.status != 409:
            raise
        existing = client.runs_between(dag_id, logical, logical)
        if not existing:
            raise
        run = existing[0]
        if run["state"] in FINISHED:
            client.clear(dag_id, run["dag_run_id"])
            run = client.dag_run(dag_id, run["dag_run_id"])
    while run["state"] not in FINISHED:
        time.sleep(poll_seconds)
        run = client.dag_run(dag_id, run["dag_run_id"])
        if on_poll:
            on_poll(run)
    return RunOutcome(dag_id, day.isoformat(), run["state"], run["dag_run_id"])


def days_between(start: str | dt.date, end: str | dt.date) -> list[dt.date]:
    days = date_range(start, end)
    if not days:
        raise ValueError(f"empty date range: --from {start} is after --to {end}")
    return days
