"""Run DAGs and follow them.

``local`` profile: runs execute in this process through ``dag.test`` (Airflow's own task runner on the SQLite
metadata DB; no scheduler needed). ``stack`` profile: runs are triggered through the REST API and the scheduler
executes them; backfills are Airflow backfills (``POST /api/v2/backfills``), never a loop of our own.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pipelines.lake import as_date, date_range
from pipelines.orchestration.airflow_client import AirflowAPIError, AirflowClient
from pipelines.orchestration.airflow_env import configure_airflow, migrate_db
from pipelines.settings import Settings

FINISHED = {"success", "failed"}


class UnknownDag(LookupError):
    """The DAG id is not defined in dags/."""


@dataclass
class RunOutcome:
    dag_id: str
    logical_date: str
    state: str
    run_id: str = ""
    skipped: bool = False


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
    configure_airflow(settings)
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(settings.dags_dir))
    if bag.import_errors:
        errors = "\n".join(f"{path}: {err}" for path, err in bag.import_errors.items())
        raise RuntimeError(f"DAG files failed to import:\n{errors}")
    dag = bag.dags.get(dag_id)
    if dag is None:
        raise UnknownDag(f"no DAG {dag_id!r} in {settings.dags_dir} (DAGs: {', '.join(sorted(bag.dags))})")
    return dag


def succeeded_dates(settings: Settings, dag_id: str) -> set[dt.date]:
    """Logical dates whose latest run of ``dag_id`` succeeded (read from the metadata DB)."""
    configure_airflow(settings)
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        runs = session.query(DagRun).filter(DagRun.dag_id == dag_id).order_by(DagRun.run_after).all()
        latest = {r.logical_date.date(): r.state for r in runs if r.logical_date is not None}
    return {day for day, state in latest.items() if state == "success"}


def run_in_process(
    settings: Settings,
    dag_id: str,
    days: list[dt.date],
    *,
    skip_succeeded: bool = False,
    logfile: Path | None = None,
    on_done: Callable[[RunOutcome], None] | None = None,
) -> list[RunOutcome]:
    """Run ``dag_id`` once per day, in order, through ``dag.test``; stop at the first failed day."""
    migrate_db(settings)
    done = succeeded_dates(settings, dag_id) if skip_succeeded else set()
    outcomes: list[RunOutcome] = []
    with output_to(logfile):
        dag = load_dag(settings, dag_id)
    for day in days:
        if day in done:
            outcome = RunOutcome(dag_id, day.isoformat(), "success", skipped=True)
        else:
            with output_to(logfile):
                run = dag.test(logical_date=logical_datetime(day))
            state = str(getattr(run.state, "value", run.state)) if run is not None else "failed"
            outcome = RunOutcome(dag_id, day.isoformat(), state, getattr(run, "run_id", ""))
        outcomes.append(outcome)
        if on_done:
            on_done(outcome)
        if outcome.state != "success":
            break
    return outcomes


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
