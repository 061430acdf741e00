"""A throwaway Airflow + Storefront environment for the tests that go through Airflow."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from pipelines.orchestration.airflow_env import airflow_environment, migrate_db
from pipelines.settings import PROJECT_ROOT, Settings, get_settings

START = dt.date(2025, 1, 1)


def small_spec(name: str, floor: float) -> dict:
    """purchase_intent with short windows (8 as-of days, 2-day labels) so an 11-day world can train, and a chosen
    ROC-AUC floor."""
    spec = yaml.safe_load((PROJECT_ROOT / "models" / "purchase_intent.yaml").read_text())
    spec.update(name=name, windows={"train_days": 4, "validation_days": 2, "test_days": 2})
    spec["label"]["window_days"] = 2
    spec["params"].update(num_boost_round=60, min_data_in_leaf=20)
    spec["gate"] = {"floors": {"roc_auc": floor}, "max_regression": {"roc_auc": 0.05}, "min_lift_over_baseline": None}
    # A world this small is about orchestration, not model quality: no baseline check (tests/test_gate_rejects.py
    # and tests/test_real_log_training.py cover it).
    return spec


@dataclass
class AirflowWorld:
    settings: Settings
    env: dict[str, str]

    def mlctl(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        mlctl = str(Path(sys.executable).with_name("mlctl"))
        return subprocess.run(
            [mlctl, *args], env={**os.environ, **self.env}, capture_output=True, text=True, timeout=timeout
        )

    def popen_mlctl(self, *args: str, log: Path) -> subprocess.Popen:
        mlctl = str(Path(sys.executable).with_name("mlctl"))
        sink = open(log, "w")  # noqa: SIM115 - closed by the child's exit
        return subprocess.Popen([mlctl, *args], env={**os.environ, **self.env}, stdout=sink, stderr=subprocess.STDOUT)


def make_world(root: Path, users: int = 300, lanes: int = 2) -> AirflowWorld:
    models = root / "models"
    models.mkdir(parents=True)
    for name, floor in (("purchase_intent", 0.6), ("purchase_intent_strict", 0.999)):
        (models / f"{name}.yaml").write_text(yaml.safe_dump(small_spec(name, floor)))
    settings = get_settings(
        home=root / ".storefront",
        models_dir=models,
        sim_users=users,
        start_date=START,
        num_threads=1,
        local_lanes=lanes,
    )
    env = airflow_environment(settings)
    migrate_db(settings)
    return AirflowWorld(settings, env)
