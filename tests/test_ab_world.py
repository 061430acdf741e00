"""An A/B rollout on the simulated world, from its start to `mlctl ab-report` (issue 12).

The world is the demo's simulator at a small size: its days are built by the daily steps, two versions of
purchase_intent are trained on them (a one-split champion and a full challenger), the challenger is rolled out to
half the users, every user is scored over HTTP by the serving app on the world's next day (``serving_clock``: a
simulated world's "now"), the world then lives its next seven days (the label window), and the report compares the
arms on those labels.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.evaluation.gate import TAG_STATUS as GATE_STATUS
from pipelines.flows import daily_features, training
from pipelines.monitoring.ab import ab_report
from pipelines.registry.registry import set_version_tags
from pipelines.registry.rollouts import in_split, start_rollout
from pipelines.serving.app import create_app
from pipelines.settings import Settings
from pipelines.specs import ModelSpec, WindowSpec, load_specs
from tests.audit_support import audit_promotion
from tests.conftest import behaviour_only_models

MODEL = "purchase_intent"
USERS = 1500
BUILT = 20  # days with features: 7 label days + 7 train + 2 validation + 2 test as-of days, and two spare
SHARE = 0.5


def _spec(shipped: ModelSpec, rounds: int, leaves: int) -> ModelSpec:
    windows = WindowSpec(train_days=7, validation_days=2, test_days=2)
    params = shipped.params | {"num_boost_round": rounds, "early_stopping_rounds": rounds, "num_leaves": leaves}
    return shipped.model_copy(update={"windows": windows, "params": params})


def _trained(settings: Settings, spec: ModelSpec, day: dt.date) -> str:
    training.training_set(settings, spec, str(day))
    version = training.train(settings, spec, str(day), trained_by="scheduler")["version"]
    set_version_tags(settings, MODEL, version, {GATE_STATUS: "passed"})  # the gate is tested elsewhere
    return version


@pytest.mark.timeout(900)
def test_a_split_rollout_served_over_http_is_labelled_by_the_next_days_and_reported(
    mlflow_settings: Settings, tmp_path: Path
) -> None:
    models = behaviour_only_models(tmp_path)
    world = mlflow_settings.model_copy(update={"models_dir": models, "sim_users": USERS, "num_threads": 1})
    days = [world.start_date + dt.timedelta(days=i) for i in range(BUILT)]
    for day in days:
        for step in (daily_features.extract, daily_features.validate, daily_features.features):
            step(world, str(day))
    daily_features.materialize(world, str(days[-1]))

    shipped = load_specs(models)[MODEL]
    champion = _trained(world, _spec(shipped, rounds=1, leaves=2), days[-2])  # one split: a weak champion
    challenger = _trained(world, _spec(shipped, rounds=150, leaves=15), days[-1])
    audit_promotion(world, MODEL, champion)

    # The world's next morning is serving's "now": the rollout starts then, and every score is stamped then.
    now = dt.datetime.combine(days[-1] + dt.timedelta(days=1), dt.time(9), tzinfo=dt.UTC)
    served = world.model_copy(update={"serving_clock": now, "serving_refresh_seconds": 3600})
    rollout = start_rollout(served, shipped, challenger, "split", SHARE, "ab-1", "alice", "half the users")
    assert rollout.started_at == now

    users = list(range(1, USERS + 1))
    answered: dict[int, str] = {}
    with TestClient(create_app(served)) as client:
        for start in range(0, USERS, 100):
            response = client.post(f"/v1/models/{MODEL}/predict", json={"user_ids": users[start : start + 100]})
            assert response.status_code == 200, response.text
            answered |= {p["user_id"]: str(p["version"]) for p in response.json()["predictions"]}
    # Sticky arms: each user got the version their hash puts them in.
    expected = {u: challenger if in_split(rollout.name, str(u), SHARE) else champion for u in users}
    assert answered == expected
    assert 0.4 < sum(v == challenger for v in answered.values()) / USERS < 0.6

    waiting = ab_report(served, shipped)
    assert waiting.verdict == "wait" and sum(a.labelled for a in waiting.arms) == 0
    assert sum(a.rows for a in waiting.arms) == USERS

    # The world lives the seven days of the label window; then every logged row has its label.
    for day in (days[-1] + dt.timedelta(days=i) for i in range(1, shipped.label.window_days + 1)):
        daily_features.extract(world, str(day))
    report = ab_report(served, shipped)
    by_role = {a.role: a for a in report.arms}
    assert by_role["champion"].rows + by_role["challenger"].rows == USERS
    assert by_role["champion"].labelled == by_role["champion"].rows
    assert by_role["challenger"].labelled == by_role["challenger"].rows
    auc = {role: arm.metrics["roc_auc"]["value"] for role, arm in by_role.items()}
    assert auc["challenger"] > auc["champion"] + 0.02, auc
    assert report.verdict == "promote", (report.recommendation, report.difference)

    printed = CliRunner().invoke(app, ["ab-report", MODEL], env=served.environment())
    assert printed.exit_code == 0, printed.output
    assert "promote" in printed.output.lower()
