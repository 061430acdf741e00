"""Model quality at scale (issue 11): build a large simulated world's lake, then compare each model's main metric
with the best achievable one (the simulator's Bayes-optimal scores on the same test rows).

The world is built by calling the daily steps (extract, validate, features) of
``pipelines/flows/daily_features.py`` day by day in this process, so the simulator replays its world once; no
online store is loaded (training does not read it). A day whose feature tables are all in the lake is skipped, so
a stopped build resumes. Each day's seconds go to ``--log``. Training is ``mlctl run train_MODEL --date LAST``;
``--report`` prints one table from the newest MLflow run of each model.

A training run whose gate passes waits for a reviewer (from another shell, ``mlctl login --user REVIEWER`` then
``mlctl reject MODEL VERSION --comment ...``; this home has no online store, so an approved model would fail at
promotion).

Run (57 days are the fewest for which every train as-of day of purchase_intent and product_ranking has full 30-day
windows; see docs/models.md "At 50,000 users"):
``STOREFRONT_HOME=/tmp/q50k STOREFRONT_SIM_USERS=50000 STOREFRONT_NUM_THREADS=1 uv run python -m
bench.quality_at_scale --days 57 --log build.log [--train] [--report]``
"""

from __future__ import annotations

import argparse
import datetime as dt
import subprocess
import sys
import time
from pathlib import Path

import mlflow

from pipelines.flows import daily_features
from pipelines.lake import Lake
from pipelines.registry.registry import connect
from pipelines.settings import Settings
from pipelines.specs import load_specs
from pipelines.usecases import family

MODELS = ("purchase_intent", "order_fraud", "product_ranking")


def day_built(settings: Settings, lake: Lake, day: dt.date) -> bool:
    """Whether every feature table training reads (the families' ``feature_tables``) is in the lake for ``day``."""
    names = daily_features.feature_families(settings)
    return all(lake.exists(table, day) for name in names for table in family(name).feature_tables)


def build_world(settings: Settings, days: int, log: Path) -> dt.date:
    """Extract, validate and build the features of ``days`` days from ``settings.start_date``; returns the last."""
    lake = Lake(settings)
    last = settings.start_date + dt.timedelta(days=days - 1)
    with log.open("a") as out:
        out.write(
            f"# {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M:%S} UTC: {settings.sim_users} users, "
            f"{settings.start_date} .. {last}, home {settings.home}\n"
        )
        for i in range(days):
            day = settings.start_date + dt.timedelta(days=i)
            if day_built(settings, lake, day):
                out.write(f"{day} already built, skipped\n")
                out.flush()
                continue
            seconds: dict[str, float] = {}
            start = time.perf_counter()
            extracted = daily_features.extract(settings, day)
            seconds["extract"] = time.perf_counter() - start
            mark = time.perf_counter()
            daily_features.validate(settings, day)
            seconds["validate"] = time.perf_counter() - mark
            mark = time.perf_counter()
            daily_features.features(settings, day)
            seconds["features"] = time.perf_counter() - mark
            total = time.perf_counter() - start
            steps = " ".join(f"{k} {v:.1f}" for k, v in seconds.items())
            slow = "  SLOW: over 120 s" if total > 120 else ""
            out.write(
                f"{day} events {extracted['events']['rows']:,} orders {extracted['orders']['rows']:,} "
                f"total {total:.1f} s ({steps}){slow}\n"
            )
            out.flush()
    return last


def train(model: str, day: dt.date) -> None:
    """The shipped training DAG of ``model`` for ``day``, through ``mlctl run`` (same environment)."""
    mlctl = str(Path(sys.executable).with_name("mlctl"))
    subprocess.run([mlctl, "run", f"train_{model}", "--date", day.isoformat()], check=True)


def quality_row(settings: Settings, model: str) -> str:
    """One table row from the newest evaluated MLflow run of ``model``: test rows, metric, model, best, gap."""
    spec = load_specs(settings.models_dir)[model]
    metric = spec.main_metric
    client = connect(settings)
    experiment = client.get_experiment_by_name(model)
    runs = (
        []
        if experiment is None
        else client.search_runs(
            [experiment.experiment_id], f"metrics.eval_candidate_{metric} > -1", order_by=["attributes.start_time DESC"]
        )
    )
    if not runs:
        return f"| {model} | no evaluated run in {settings.mlflow_tracking_uri} | {metric} | | | | | |"
    run = runs[0]
    m = run.data.metrics
    evaluation = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/evaluation.json")
    rows = f"{evaluation['rows']:,} ({evaluation['positives']:,})"
    if evaluation.get("queries"):
        rows = f"{evaluation['queries']:,} queries, {rows}"
    ours, best = m[f"eval_candidate_{metric}"], m.get(f"eval_bayes_optimal_{metric}", float("nan"))
    calibration = ""
    if "eval_candidate_calibration_error" in m:
        best_calibration = m.get("eval_bayes_optimal_calibration_error", float("nan"))
        calibration = f"{m['eval_candidate_calibration_error']:.3f} ({best_calibration:.3f})"
    rounds = f"{m.get('best_iteration', float('nan')):,.0f} ({spec.params.get('num_boost_round', '?')})"
    return f"| {model} | {rows} | {metric} | {ours:.4f} | {best:.4f} | {best - ours:.4f} | {rounds} | {calibration} |"


def report(settings: Settings) -> str:
    """The quality table of every model (markdown)."""
    head = (
        "| model | test rows (positives) | metric | model | best | gap | rounds used (cap) | "
        "calibration error (best) |\n|---|---|---|---|---|---|---|---|"
    )
    return "\n".join([head, *(quality_row(settings, model) for model in MODELS)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=57, help="world length from the start date")
    parser.add_argument("--log", type=Path, default=Path("quality_at_scale.log"))
    parser.add_argument("--train", action="store_true", help="train every model for the last day")
    parser.add_argument("--report", action="store_true", help="print the quality table (newest MLflow runs)")
    args = parser.parse_args()
    settings = Settings()
    last = build_world(settings, args.days, args.log)
    if args.train:
        for model in MODELS:
            train(model, last)
    if args.report:
        print(report(settings))


if __name__ == "__main__":
    main()
