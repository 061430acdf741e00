"""The daily watch of a champion on a small simulated world: before the simulator's change of behaviour the
champion is stable, after it its features and scores drift, the report is in the lake (one per day, a rerun
replaces it), the step names the drift event that triggers training, and its realised metric has an interval."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.data import schemas, simulator
from pipelines.data.extract import simulation_config
from pipelines.features.user_features import build_user_features, write_user_features
from pipelines.flows import daily_features
from pipelines.lake import Lake, date_range
from pipelines.monitoring.drift_reports import drift_days, drift_history, monitoring_line, read_drift
from pipelines.monitoring.page import build_monitoring_page
from pipelines.registry.registry import CHAMPION, set_alias
from pipelines.settings import PROJECT_ROOT, Settings, get_settings
from pipelines.specs import load_spec
from pipelines.training.dataset import build_training_set
from pipelines.training.train import train_model

START = dt.date(2025, 1, 1)
TRAINED = START + dt.timedelta(days=44)  # the champion's logical date: its rows have full 30-day windows
SHIFT = START + dt.timedelta(days=47)  # users browse three times as often from this day
LAST = SHIFT + dt.timedelta(days=6)  # the 7-day windows are all after the shift


def _models(root: Path) -> Path:
    """purchase_intent alone, with short windows (the world is 50 days: the champion trains on full 30-day windows)."""
    spec = yaml.safe_load((PROJECT_ROOT / "models" / "purchase_intent.yaml").read_text())
    spec["windows"] = {"train_days": 4, "validation_days": 2, "test_days": 1}
    spec["params"].update(num_boost_round=40, min_data_in_leaf=20)
    models = root / "models"
    models.mkdir()
    (models / "purchase_intent.yaml").write_text(yaml.safe_dump(spec))
    return models


def shifted_world(base: Settings, root: Path) -> Settings:
    """A 300-user world whose users browse three times as often from SHIFT, its features up to LAST, and a
    purchase_intent champion trained for TRAINED (before the shift)."""
    settings = base.model_copy(
        update={"models_dir": _models(root), "sim_users": 300, "start_date": START, "sim_shift_day": SHIFT}
    )
    lake, config = Lake(settings), simulation_config(settings)
    for day in date_range(START, LAST):
        lake.write("events", day, simulator.simulate_day(config, day), schema=schemas.EVENTS)
        lake.write("users", day, simulator.users_snapshot(config, day), schema=schemas.USERS)
        lake.write("follows", day, simulator.follows_snapshot(config, day), schema=schemas.FOLLOWS)
        write_user_features(lake, day, build_user_features(lake, day))
    spec = load_spec(settings.models_dir / "purchase_intent.yaml")
    trained = train_model(settings, spec, build_training_set(settings, lake, spec, TRAINED))
    set_alias(settings, spec.name, CHAMPION, trained.model_version)  # promotion itself is tested elsewhere
    return settings


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, migrated_mlflow_db: Path) -> Settings:
    """One world for the module's tests (building it is most of their time)."""
    root = tmp_path_factory.mktemp("monitoring")
    base = get_settings(home=root / ".storefront", num_threads=1)
    db = Path(base.mlflow_tracking_uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True)
    shutil.copy(migrated_mlflow_db, db)
    return shifted_world(base, root)


def test_the_shift_setting_changes_behaviour_from_its_day_only() -> None:
    calm = simulator.SimulationConfig(n_users=300, n_products=100, start=START)
    shifted = simulator.SimulationConfig(n_users=300, n_products=100, start=START, shift_day=SHIFT)
    before, after = SHIFT - dt.timedelta(days=1), SHIFT + dt.timedelta(days=1)
    assert simulator.simulate_day(shifted, before).equals(simulator.simulate_day(calm, before))
    assert len(simulator.simulate_day(shifted, after)) > 1.5 * len(simulator.simulate_day(calm, after))


def test_a_shift_in_behaviour_raises_drift_and_names_the_event_that_triggers_training(world: Settings) -> None:
    lake = Lake(world)
    calm_day = SHIFT - dt.timedelta(days=1)

    calm = daily_features.monitor(world, calm_day)
    assert calm["models"]["purchase_intent"]["drifting"] is False, calm
    assert daily_features.drift_events(calm, calm_day) == {}

    shifted = daily_features.monitor(world, LAST)
    assert shifted["models"]["purchase_intent"]["drifting"] is True, shifted
    flagged = shifted["models"]["purchase_intent"]["flagged"]
    assert {"views_1d", "sessions_7d"} <= set(flagged)
    assert daily_features.drift_events(shifted, LAST) == {
        "purchase_intent": {"ds": LAST.isoformat(), "model": "purchase_intent", "features": flagged}
    }

    report = read_drift(lake, "purchase_intent", LAST)
    assert report["reference"]["logical_date"] == TRAINED.isoformat()
    assert report["population"]["source"] == "offline" and report["population"]["rows"] > 250
    # Browsing more moves the champion's scores too, if less than its inputs (purchases follow carts, not views).
    assert report["prediction"]["psi"] > read_drift(lake, "purchase_intent", calm_day)["prediction"]["psi"]
    # Labels of LAST - 7 days have matured: the champion's ROC-AUC on that day, with its interval.
    realised = report["realised"]
    assert realised["day"] == (LAST - dt.timedelta(days=7)).isoformat() and realised["metric"] == "roc_auc"
    assert realised["low"] <= realised["value"] <= realised["high"]

    # One report per day; a rerun replaces it.
    daily_features.monitor(world, LAST)
    assert drift_days(lake, "purchase_intent") == [calm_day, LAST]
    assert [r["drifting"] for r in drift_history(lake, "purchase_intent")] == [False, True]
    assert monitoring_line(lake, "purchase_intent").startswith(f"drift on {LAST} (v1): drifting: ")

    # The page: verdict first, the plots embedded, the newest day's features with the drifting ones marked.
    page = build_monitoring_page(world, "purchase_intent", days=30)
    html = page.read_text()
    assert page == world.home / "reports" / "purchase_intent" / "monitoring" / "index.html"
    assert f"Drifting since {LAST}: {len(flagged)} of 19 features over PSI 0.25" in html
    assert html.index("Drifting since") < html.index("data:image/png;base64,")
    assert html.count("data:image/png;base64,") == 3 and "Realised roc_auc on" in html
    assert html.count("<span class='bad'>drifting</span>") == len(flagged)


def test_mlctl_monitor_computes_a_day_and_prints_the_page(world: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in world.environment().items():
        monkeypatch.setenv(key, value)

    shown = CliRunner().invoke(app, ["monitor", "purchase_intent", "--date", LAST.isoformat(), "--no-open"])
    missing = CliRunner().invoke(app, ["monitor", "no_such_model", "--no-open"])

    assert shown.exit_code == 0, shown.output
    assert shown.output.strip().endswith("reports/purchase_intent/monitoring/index.html")
    assert read_drift(Lake(world), "purchase_intent", LAST)["drifting"] is True
    assert missing.exit_code == 1 and "no_such_model" in missing.output
