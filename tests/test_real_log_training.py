"""A weeks-long event log in a foreign format trains a model once it is mapped: nothing simulator-specific is used.

The log is written in the Taobao UserBehavior layout (headerless, unix seconds, pv/cart/fav/buy, no sessions,
prices, users or follow graph) from simulated behaviour, so the signal is known to be there; from then on only
the platform's real-data path runs: ``mlctl ingest --derive-users``, the daily steps with
``data_source=ingested``, the training set, training and evaluation.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.data import simulator
from pipelines.data.simulator import SimulationConfig
from pipelines.flows import daily_features, training
from pipelines.lake import Lake
from pipelines.settings import PROJECT_ROOT, Settings
from pipelines.specs import WindowSpec, load_spec
from tests.conftest import behaviour_only_models

DAYS = 30
WORLD = SimulationConfig(n_users=800, n_products=300, seed=11)
VOCABULARY = {"view": "pv", "cart": "cart", "wishlist": "fav", "purchase": "buy"}


def _write_log(path: Path) -> list[dt.date]:
    days = [WORLD.start + dt.timedelta(days=i) for i in range(DAYS)]
    events = pd.concat([simulator.simulate_day(WORLD, day) for day in days], ignore_index=True)
    events = events[events["event_type"].isin(list(VOCABULARY))]
    log = pd.DataFrame(
        {
            "user_id": events["user_id"],
            "item_id": events["product_id"],
            "category_id": events["category_id"],
            "behavior_type": events["event_type"].map(VOCABULARY),
            "timestamp": events["event_time"].astype("int64") // 10**6,
        }
    )
    log.to_csv(path, header=False, index=False)
    return days


def test_a_mapped_log_of_several_weeks_trains_and_evaluates(mlflow_settings: Settings, tmp_path: Path) -> None:
    # A behaviour log feeds the purchase-intent model alone (no orders: no fraud model in this world).
    models = behaviour_only_models(tmp_path)
    settings = mlflow_settings.model_copy(update={"data_source": "ingested", "models_dir": models})
    days = _write_log(tmp_path / "behaviour.csv")
    args = ["ingest", "--source", str(tmp_path / "behaviour.csv"), "--mapping"]
    result = CliRunner().invoke(
        app, [*args, str(PROJECT_ROOT / "mappings" / "taobao_style.yaml"), "--derive-users"], env=settings.environment()
    )
    assert result.exit_code == 0, result.output
    assert Lake(settings).partitions("events") == days

    for day in days:
        for step in (daily_features.extract, daily_features.validate, daily_features.features):
            step(settings, str(day))

    # The shipped spec's baseline: logistic regression on recency and event counts.
    shipped = load_spec(PROJECT_ROOT / "models" / "purchase_intent.yaml")
    windows = WindowSpec(train_days=12, validation_days=4, test_days=4)
    spec = shipped.model_copy(update={"windows": windows})
    built = training.training_set(settings, spec, str(days[-1]))
    assert 0.02 < built["label_rate"] < 0.98
    trained = training.train(settings, spec, str(days[-1]))
    evaluation = training.evaluate(settings, spec, str(days[-1]), trained["version"])
    # Behaviour carries the signal (propensity drives activity); the model finds it without prices or follows,
    # and beats the recency-frequency baseline on the same out-of-time rows.
    model, baseline = (evaluation["overall"][s]["roc_auc"]["value"] for s in ("candidate", "baseline"))
    assert model > 0.65 and model > baseline, evaluation["overall"]
    assert "oracle" not in evaluation["overall"], "a real log has no Bayes-optimal truth"
    decision = training.gate(settings, spec, str(days[-1]), trained["version"], evaluation)
    assert any(c["kind"] == "baseline" and c["passed"] for c in decision["checks"]), decision["summary"]
    page = Path(decision["report"].split()[0].removeprefix("file://"))
    html = page.read_text() if page.exists() else ""
    assert "baseline" in html
