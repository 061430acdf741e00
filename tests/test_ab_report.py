"""ab-report: a rollout's prediction log (written as serving writes it) joined with labels made from the lake's
events, per arm with bootstrap intervals, and the recommendation a reviewer reads."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.lake import Lake
from pipelines.monitoring.ab import NotSupported, ab_report, render_ab_html
from pipelines.registry.registry import CHAMPION, set_alias
from pipelines.registry.rollouts import end_rollout, in_split, start_rollout
from pipelines.serving.prediction_log import PredictionLog
from pipelines.settings import PROJECT_ROOT, Settings
from pipelines.specs import ModelSpec, load_spec
from tests.test_rollouts import MODEL, register_version

START = dt.datetime(2024, 3, 10, 8, 0, tzinfo=dt.UTC)
SERVED_DAYS = [dt.date(2024, 3, 10), dt.date(2024, 3, 11), dt.date(2024, 3, 12)]  # labels due by 03-16 .. 03-18
LATE_DAY = dt.date(2024, 3, 20)  # as-of day 03-19: its 7-day window needs the events of 03-26


@pytest.fixture
def settings(mlflow_settings: Settings) -> Settings:
    return mlflow_settings


@pytest.fixture
def spec() -> ModelSpec:
    return load_spec(PROJECT_ROOT / "models" / f"{MODEL}.yaml")


@pytest.fixture
def challenger(settings: Settings) -> str:
    """v1 the champion (trained by carol), v2 the challenger (trained by carol, gated)."""
    set_alias(settings, MODEL, CHAMPION, register_version(settings, "carol"))
    return register_version(settings, "carol")


def buyers_world(lake: Lake, users: int, last_events_day: dt.date, seed: int = 0) -> dict[int, int]:
    """Events from 03-08 to ``last_events_day``: every user views daily, a third of them also buy every day (so
    their label is 1 on every as-of day here, 0 for the others). Returns user -> label."""
    rng = np.random.default_rng(seed)
    labels = {uid: int(rng.random() < 1 / 3) for uid in range(1, users + 1)}
    buyers = [u for u, y in labels.items() if y]
    day = dt.date(2024, 3, 8)
    while day <= last_events_day:
        noon = pd.Timestamp(day, tz="UTC") + pd.Timedelta(hours=12)
        ids = [*labels, *buyers]
        lake.write(
            "events",
            day,
            pd.DataFrame(
                {
                    "user_id": np.asarray(ids, dtype="int64"),
                    "event_type": ["view"] * len(labels) + ["purchase"] * len(buyers),
                    "event_time": [noon] * len(ids),
                }
            ),
        )
        day += dt.timedelta(days=1)
    return labels


def scores(labels: dict[int, int], signal: float, rng: np.random.Generator) -> dict[int, float]:
    """Label times ``signal`` plus uniform noise: the larger the signal, the better the ranking."""
    return {u: float(signal * y + (1 - signal) * rng.random()) for u, y in labels.items()}


def serve(lake: Lake, labels: dict[int, int], days: list[dt.date], arm_of, version_of, seed: int = 1) -> None:
    """Log one request per user per day at noon as serving does: the answered row, plus the shadow's row under
    the same request id when ``arm_of`` says shadow. Champion scores are weak, the challenger's strong."""
    rng = np.random.default_rng(seed)
    with PredictionLog(lake, flush_seconds=60) as log:
        for day in days:
            at = dt.datetime.combine(day, dt.time(12), tzinfo=dt.UTC)
            weak, strong = scores(labels, 0.25, rng), scores(labels, 0.7, rng)
            for uid in labels:
                request_id = f"{day}-{uid}"
                for arm in arm_of(uid):
                    score = weak[uid] if arm == "champion" else strong[uid]
                    features = {"views_7d": float(uid % 7)}
                    log.append(MODEL, version_of(arm), request_id, {"user_id": uid}, score, features, arm, at)


def test_shadow_with_a_better_challenger_recommends_promote_and_counts_rows_still_waiting(
    settings: Settings, lake: Lake, spec: ModelSpec, challenger: str, tmp_path: Path
) -> None:
    labels = buyers_world(lake, users=600, last_events_day=dt.date(2024, 3, 25))
    start_rollout(settings, spec, challenger, "shadow", 1.0, "ab1", "alice", now=START)
    both = lambda uid: ["champion", "shadow:ab1"]  # noqa: E731
    version = lambda arm: "1" if arm == "champion" else challenger  # noqa: E731
    serve(lake, labels, [dt.date(2024, 3, 9)], lambda uid: ["champion"], version)  # before the rollout
    serve(lake, labels, [*SERVED_DAYS, LATE_DAY], both, version)
    end_rollout(settings, spec, "ab1", "bob", promote=False, now=dt.datetime(2024, 3, 21, tzinfo=dt.UTC))
    serve(lake, labels, [dt.date(2024, 3, 21)], both, version)  # after its end

    report = ab_report(settings, spec, "ab1")

    champion, shadow = report.arms
    assert (champion.arm, champion.versions, shadow.arm, shadow.versions) == ("champion", ["1"], "shadow:ab1", ["2"])
    assert (champion.rows, champion.labelled, champion.waiting) == (600 * 4, 600 * 3, 600)
    assert (shadow.rows, shadow.labelled, shadow.waiting) == (600 * 4, 600 * 3, 600)
    assert champion.label_rate == pytest.approx(sum(labels.values()) / len(labels))
    assert report.paired and report.unpaired_rows == 0
    assert report.waiting == 1200 and report.last_label_due == dt.date(2024, 3, 26)
    assert report.newest_events_day == dt.date(2024, 3, 25)
    auc = {a.role: a.metrics["roc_auc"] for a in report.arms}
    assert auc["challenger"]["value"] > auc["champion"]["value"] + 0.1
    diff = report.difference["roc_auc"]
    assert diff["low"] > 0 and diff["value"] == pytest.approx(auc["challenger"]["value"] - auc["champion"]["value"])
    assert (report.verdict, report.recommendation) == ("promote", "promote")

    data = json.loads(json.dumps(report.to_dict()))
    assert data["recommendation"] == "promote" and data["waiting"] == 1200
    assert data["rollout"]["outcome"] == "stopped" and data["arms"][1]["metrics"]["roc_auc"]["low"] > 0.9
    page = render_ab_html(report)
    assert "PROMOTE" in page and "shadow:ab1" in page and "<b>roc_auc</b>" in page and "1,200 row(s) wait" in page


def test_split_arms_follow_the_share_and_are_compared_unpaired(
    settings: Settings, lake: Lake, spec: ModelSpec, challenger: str
) -> None:
    labels = buyers_world(lake, users=3000, last_events_day=dt.date(2024, 3, 25))
    start_rollout(settings, spec, challenger, "split", 0.3, "ab1", "alice", now=START)
    arm = lambda uid: ["split:ab1" if in_split("ab1", str(uid), 0.3) else "champion"]  # noqa: E731
    serve(lake, labels, SERVED_DAYS[:2], arm, lambda a: "1" if a == "champion" else challenger)

    report = ab_report(settings, spec)

    champion, split = report.arms
    in_challenger = sum(in_split("ab1", str(uid), 0.3) for uid in labels)
    assert (split.users, split.rows) == (in_challenger, 2 * in_challenger)
    assert (champion.users, champion.rows) == (3000 - in_challenger, 2 * (3000 - in_challenger))
    assert report.challenger_share == pytest.approx(0.3, abs=0.03)
    assert not report.paired and report.waiting == 0
    assert report.difference["roc_auc"]["low"] > 0 and report.verdict == "promote"


def test_labels_not_due_yet_are_waiting_and_no_recommendation_is_made(
    settings: Settings, lake: Lake, spec: ModelSpec, challenger: str
) -> None:
    labels = buyers_world(lake, users=300, last_events_day=dt.date(2024, 3, 16))  # only 03-10's rows are due
    start_rollout(settings, spec, challenger, "shadow", 1.0, "ab1", "alice", now=START)
    serve(lake, labels, SERVED_DAYS, lambda uid: ["champion", "shadow:ab1"], lambda a: "1" if a == "champion" else "2")

    report = ab_report(settings, spec)

    assert (report.labelled, report.waiting) == (600, 1200)
    assert report.last_label_due == dt.date(2024, 3, 18)
    early = ab_report(settings, spec.model_copy(update={"label": spec.label.model_copy(update={"window_days": 9})}))
    assert (early.labelled, early.waiting) == (0, 1800)
    assert early.recommendation == "not enough labelled rows yet (0 of 1,800)"
    assert early.arms[0].metrics == {} and early.difference == {}


def test_other_kinds_of_model_are_refused_by_name(settings: Settings) -> None:
    fraud = load_spec(PROJECT_ROOT / "models" / "order_fraud.yaml")
    with pytest.raises(NotSupported, match="not supported yet for order models"):
        ab_report(settings, fraud)


def test_cli_prints_the_table_json_and_html(
    settings: Settings, lake: Lake, spec: ModelSpec, challenger: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    labels = buyers_world(lake, users=400, last_events_day=dt.date(2024, 3, 25))
    start_rollout(settings, spec, challenger, "shadow", 1.0, "ab1", "alice", now=START)
    serve(lake, labels, SERVED_DAYS, lambda uid: ["champion", "shadow:ab1"], lambda a: "1" if a == "champion" else "2")
    monkeypatch.setenv("STOREFRONT_HOME", str(settings.home))
    page = tmp_path / "ab" / "index.html"

    shown = CliRunner().invoke(app, ["ab-report", MODEL, "--html", str(page)])
    as_json = CliRunner().invoke(app, ["ab-report", MODEL, "--name", "ab1", "--json"])
    unknown = CliRunner().invoke(app, ["ab-report", MODEL, "--name", "nope"])

    assert shown.exit_code == 0, shown.output
    printed = " ".join(shown.output.split())
    assert "recommendation: promote" in printed and "every logged row is labelled" in printed
    assert page.read_text().startswith("<!DOCTYPE html>")
    assert json.loads(as_json.stdout)["verdict"] == "promote"
    assert unknown.exit_code == 1
    assert "no rollout named 'nope'; its rollouts: ab1 (active)" in " ".join(unknown.output.split())


def test_recommendation_reads_the_interval_on_the_metrics_better_side() -> None:
    from pipelines.monitoring.ab import ArmSummary, recommend

    arms = [ArmSummary(a, a, ["1"], 1000, 1000, 0, 500, 0.3, {}) for a in ("champion", "challenger")]
    assert recommend("roc_auc", {"value": 0.02, "low": 0.01, "high": 0.03}, arms) == ("promote", "promote")
    assert recommend("roc_auc", {"value": -0.02, "low": -0.03, "high": -0.01}, arms)[0] == "keep"
    assert recommend("log_loss", {"value": -0.02, "low": -0.03, "high": -0.01}, arms)[0] == "promote"
    assert recommend("roc_auc", {"value": 0.0, "low": -0.01, "high": 0.01}, arms) == (
        "wait",
        "not enough labelled rows yet (2,000 of 2,000)",
    )
    few = [ArmSummary(a, a, ["1"], 1000, 150, 850, 100, 0.3, {}) for a in ("champion", "challenger")]
    assert recommend("roc_auc", {"value": 0.02, "low": 0.01, "high": 0.03}, few)[0] == "wait"
