"""`mlctl approvals --wait MODEL`: returns the model's request once it comes, and stops with the cause when the
training run ends without asking or the time runs out. The client here is a recorded sequence of Airflow's
answers (the live path is run by the docs walkthrough, tests/test_docs_walkthrough.py)."""

from __future__ import annotations

import datetime as dt

import pytest

from pipelines.orchestration.airflow_client import PendingApproval
from pipelines.orchestration.runs import NoApprovalRequest, wait_for_request


def _request(model: str, version: int) -> PendingApproval:
    body = f"- model: `{model}`\n- version: `{version}`"
    return PendingApproval(f"train_{model}", "manual__x", "approval", -1, "review", body, ["alice"])


class _Answers:
    """Airflow's answers in order: each poll takes the next (the last one repeats)."""

    def __init__(self, pending: list[list[PendingApproval]], runs: list[list[dict]]) -> None:
        self.pending, self.runs, self.polls = pending, runs, 0
        self.asked: list[str | None] = []

    def pending_approvals(self, dag_id: str | None = None) -> list[PendingApproval]:
        self.asked.append(dag_id)
        self.polls += 1
        return self.pending[min(self.polls, len(self.pending)) - 1]

    def dag_runs(self, dag_id: str, limit: int = 5) -> list[dict]:
        return self.runs[min(self.polls, len(self.runs)) - 1]


def _run(state: str, end: dt.datetime | None) -> dict:
    return {"dag_run_id": "manual__x", "state": state, "end_date": end.isoformat() if end else None}


def test_returns_the_models_request_once_it_comes() -> None:
    other = _request("order_fraud", 3)
    ours = _request("purchase_intent", 1)
    client = _Answers([[], [other], [other, ours]], [[_run("running", None)]])
    found = wait_for_request(client, "purchase_intent", timeout_seconds=60, poll_seconds=0)  # type: ignore[arg-type]
    assert found == [ours]
    assert client.polls == 3 and set(client.asked) == {"train_purchase_intent"}


def test_a_run_that_ends_without_asking_stops_the_wait() -> None:
    earlier = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)  # a run that ended before the wait began does not count
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5)
    client = _Answers([[]], [[_run("failed", earlier)], [_run("running", None)], [_run("failed", later)]])
    with pytest.raises(NoApprovalRequest, match="train_purchase_intent run manual__x ended failed"):
        wait_for_request(client, "purchase_intent", timeout_seconds=60, poll_seconds=0)  # type: ignore[arg-type]
    assert client.polls == 3


def test_gives_up_after_the_timeout() -> None:
    client = _Answers([[]], [[_run("running", None)]])
    with pytest.raises(NoApprovalRequest, match="no review request for purchase_intent came within 0.05 s"):
        wait_for_request(client, "purchase_intent", timeout_seconds=0.05, poll_seconds=0.01)  # type: ignore[arg-type]
    assert client.polls >= 2
