"""The platform's training step against a raw ``lightgbm.train`` on the same matrix and parameters.

A synthetic purchase-intent training set (``--rows`` rows, ``--features`` float features, the spec's 14/3/3-day
splits) is trained three ways with the same booster params, rounds, early stopping and ``num_threads``:

- raw ``lightgbm.train``: numpy matrices prepared beforehand, a Dataset per split, early stopping, nothing else;
- ``fit_booster``: the platform's fit on the ``TrainingSet`` (its frame -> LightGBM);
- ``train_model``: the whole training step (fit, validation/test metrics, importance, MLflow run, logged and
  registered model) on a local SQLite MLflow store.

Ratios are against the raw call; the boosters must stop at the same iteration. Run:
``uv run python -m bench.bench_train [--rows 1000000] [--features 40] [--rounds 200] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
import time
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd

from pipelines.data import schemas
from pipelines.lake import Lake
from pipelines.registry.registry import ensure_experiment
from pipelines.settings import get_settings
from pipelines.specs import ModelSpec, load_spec
from pipelines.training.dataset import (
    LABEL_COLUMN,
    SPLIT_COLUMN,
    TIMESTAMP_COLUMN,
    save_step_outputs,
    save_training_set,
    split_days,
)
from pipelines.training.lineage import feature_lineage
from pipelines.training.train import fit_booster, lightgbm_params, train_model

ROOT = Path(__file__).resolve().parents[1]
LOGICAL_DATE = dt.date(2025, 3, 31)


def _spec(rounds: int) -> ModelSpec:
    base = load_spec(ROOT / "models" / "purchase_intent.yaml")
    # No slices or baseline columns to fake: this measures training, not evaluation.
    return base.model_copy(update={"params": base.params | {"num_boost_round": rounds}, "slices": []})


def _frame(spec: ModelSpec, rows: int, features: int) -> pd.DataFrame:
    """Rows spread over the spec's as-of days; the label depends on a few features (a realistic, learnable set)."""
    rng = np.random.default_rng(3)
    splits = split_days(spec, LOGICAL_DATE)
    day = rng.integers(0, len(splits.days), rows)
    day.sort()
    x = rng.gamma(1.5, 2.0, size=(rows, features)).astype("float64")
    x[rng.random(x.shape) < 0.05] = np.nan
    logit = -2.0 + 0.4 * np.nan_to_num(x[:, 0]) - 0.3 * np.nan_to_num(x[:, 1]) + 0.2 * np.nan_to_num(x[:, 2] * x[:, 3])
    label = (rng.random(rows) < 1 / (1 + np.exp(-np.clip(logit, -30, 30)))).astype("int64")
    frame = pd.DataFrame(
        {
            "user_id": rng.integers(1, 380_000, rows),
            TIMESTAMP_COLUMN: pd.to_datetime([schemas.as_of(splits.days[d]) for d in range(len(splits.days))])[day],
            LABEL_COLUMN: label,
            SPLIT_COLUMN: np.array([splits.split_of(d) for d in splits.days])[day],
        }
    )
    return pd.concat([frame, pd.DataFrame(x, columns=[f"f{i:02d}" for i in range(features)])], axis=1)


def _raw(params: dict, rounds: int, patience: int, x: dict, y: dict) -> lgb.Booster:
    train = lgb.Dataset(x["train"], label=y["train"])
    valid = lgb.Dataset(x["validation"], label=y["validation"], reference=train)
    return lgb.train(
        params,
        train,
        num_boost_round=rounds,
        valid_sets=[valid],
        callbacks=[lgb.early_stopping(patience, first_metric_only=True, verbose=False)],
    )


def _timed(fn):
    """The result, wall seconds and CPU seconds (all threads) of ``fn()``: CPU time is less distorted than wall
    time on a busy shared machine."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, (time.perf_counter() - wall, time.process_time() - cpu)


def measure(rows: int, features: int, rounds: int, threads: int) -> list[dict]:
    """Raw ``lightgbm.train``, the platform's fit and its whole training step on one saved training set: wall and
    CPU seconds and the best iteration of each."""
    spec = _spec(rounds)
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        settings = get_settings(home=Path(tmp), num_threads=threads, data_source="ingested")
        lake = Lake(settings)
        training_set = save_training_set(lake, spec, LOGICAL_DATE, _frame(spec, rows, features))
        # What the training-set step keeps beside the set (no simulated truth here), and MLflow's store migration:
        # set-up, not training.
        training_set = save_step_outputs(lake, spec, training_set, None, feature_lineage(settings, spec))
        ensure_experiment(settings, spec.name)
        params, cap, patience = lightgbm_params(spec, threads)
        frame = training_set.frame
        cols = training_set.feature_columns
        x = {s: frame.loc[frame[SPLIT_COLUMN] == s, cols].to_numpy() for s in ("train", "validation")}
        y = {s: frame.loc[frame[SPLIT_COLUMN] == s, LABEL_COLUMN].to_numpy() for s in ("train", "validation")}

        raw, raw_s = _timed(lambda: _raw(params, cap, patience, x, y))
        (fit, _), fit_s = _timed(lambda: fit_booster(spec, training_set, threads))
        result, step_s = _timed(lambda: train_model(settings, spec, training_set))
    return [
        {"step": "raw lightgbm.train (numpy)", "wall": raw_s[0], "cpu": raw_s[1], "best": raw.best_iteration},
        {"step": "fit_booster (platform fit)", "wall": fit_s[0], "cpu": fit_s[1], "best": fit.best_iteration},
        {
            "step": "train_model (fit + metrics + MLflow run)",
            "wall": step_s[0],
            "cpu": step_s[1],
            "best": int(result.metrics["best_iteration"]),
            "train_rows": training_set.row_counts["train"],
        },
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=200, help="boosting rounds cap (early stopping may end sooner)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    steps = measure(args.rows, args.features, args.rounds, args.threads)
    print(
        f"training set: {args.rows:,} rows x {args.features} features ({steps[-1]['train_rows']:,} train), "
        f"cap {args.rounds} rounds, {args.threads} threads"
    )
    print(f"{'step':<44} | {'wall s':>8} | {'CPU s':>8} | {'best iteration':>14} | {'wall ratio':>10} | CPU ratio")
    print("-" * 108)
    raw = steps[0]
    for s in steps:
        print(
            f"{s['step']:<44} | {s['wall']:>8.2f} | {s['cpu']:>8.2f} | {s['best']:>14} | "
            f"{s['wall'] / raw['wall']:>9.2f}x | {s['cpu'] / raw['cpu']:>8.2f}x"
        )


if __name__ == "__main__":
    main()
