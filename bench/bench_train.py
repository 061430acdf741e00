"""The platform's training step against a raw ``lightgbm.train`` on the same matrix and parameters.

A synthetic purchase-intent training set (``--rows`` rows, ``--features`` float features, the spec's 14/3/3-day
splits) is trained three ways with the same booster params, rounds, early stopping and ``num_threads``:

- raw ``lightgbm.train``: numpy matrices prepared beforehand, a Dataset per split, early stopping, nothing else;
- ``fit_booster``: the platform's fit on the ``TrainingSet`` (its frame -> LightGBM);
- ``train_model``: the whole training step (fit, validation/test metrics, importance, MLflow run, logged and
  registered model) on a local SQLite MLflow store.

The three run ``--repeat`` times (default 3), each repeat in its own process (a training task's first MLflow
model log pays one-off costs a warm process would hide) on a fresh lake and MLflow store (so ``train_model`` trains
rather than reuses a version), in a rotated order (raw, fit, step; fit, step, raw; ...) so none of them always runs
first or last on a machine whose load drifts. The table gives each step's median wall and CPU seconds and the median
of its per-repeat ratios to the raw call of the same repeat; the boosters must stop at the same iteration. Run:
``uv run python -m bench.bench_train [--rows 1000000] [--features 40] [--rounds 200] [--threads 2] [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
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
STEPS = {
    "raw": "raw lightgbm.train (numpy)",
    "fit": "fit_booster (platform fit)",
    "step": "train_model (fit + metrics + MLflow run)",
}


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


def _timed(fn: Callable[[], int]) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds (all threads) and the best iteration ``fn()`` returns: CPU time is less distorted
    than wall time on a busy shared machine."""
    wall, cpu = time.perf_counter(), time.process_time()
    best = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, best


def _repeat(rows: int, features: int, rounds: int, threads: int, order: list[str]) -> dict:
    """One timing of each step, in ``order``, on a fresh lake and MLflow store; and the train split's rows."""
    spec = _spec(rounds)
    frame = _frame(spec, rows, features)
    params, cap, patience = lightgbm_params(spec, threads)
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        settings = get_settings(home=Path(tmp), num_threads=threads, data_source="ingested")
        lake = Lake(settings)
        training_set = save_training_set(lake, spec, LOGICAL_DATE, frame)
        # What the training-set step keeps beside the set (no simulated truth here), and MLflow's store migration:
        # set-up, not training.
        training_set = save_step_outputs(lake, spec, training_set, None, feature_lineage(settings, spec))
        ensure_experiment(settings, spec.name)
        cols = training_set.feature_columns
        x = {s: frame.loc[frame[SPLIT_COLUMN] == s, cols].to_numpy() for s in ("train", "validation")}
        y = {s: frame.loc[frame[SPLIT_COLUMN] == s, LABEL_COLUMN].to_numpy() for s in ("train", "validation")}
        steps = {
            "raw": lambda: _raw(params, cap, patience, x, y).best_iteration,
            "fit": lambda: fit_booster(spec, training_set, threads)[0].best_iteration,
            "step": lambda: int(train_model(settings, spec, training_set).metrics["best_iteration"]),
        }
        return {name: _timed(steps[name]) for name in order} | {"train_rows": training_set.row_counts["train"]}


def measure(rows: int, features: int, rounds: int, threads: int, repeats: int = 1) -> list[dict]:
    """Raw ``lightgbm.train``, the platform's fit and its whole training step on one training set, ``repeats``
    times (a process each) in rotated orders: median wall and CPU seconds of each, the median of its per-repeat
    ratios to the raw call and the best iterations seen."""
    names = list(STEPS)
    runs = []
    for i in range(repeats):
        order = names[i % len(names) :] + names[: i % len(names)]
        with tempfile.TemporaryDirectory(prefix="bench-train-out-") as tmp:
            out = Path(tmp) / "repeat.json"
            args = [f"--rows={rows}", f"--features={features}", f"--rounds={rounds}", f"--threads={threads}"]
            worker = ["--order", ",".join(order), "--out", str(out)]
            subprocess.run([sys.executable, "-m", "bench.bench_train", *args, *worker], check=True, cwd=ROOT)
            runs.append(json.loads(out.read_text()))
    steps = []
    for name, label in STEPS.items():
        wall, cpu, best = zip(*(run[name] for run in runs), strict=True)
        steps.append(
            {
                "step": label,
                "wall": statistics.median(wall),
                "cpu": statistics.median(cpu),
                "wall_ratio": statistics.median(run[name][0] / run["raw"][0] for run in runs),
                "cpu_ratio": statistics.median(run[name][1] / run["raw"][1] for run in runs),
                "best": "/".join(str(b) for b in sorted(set(best))),
                "train_rows": runs[0]["train_rows"],
            }
        )
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=200, help="boosting rounds cap (early stopping may end sooner)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="timings of each step (medians are shown)")
    parser.add_argument("--order", help=argparse.SUPPRESS)  # a repeat's process: steps to time, comma-separated
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)  # ... and where it writes their timings
    args = parser.parse_args()
    if args.order:
        run = _repeat(args.rows, args.features, args.rounds, args.threads, args.order.split(","))
        args.out.write_text(json.dumps(run))
        return
    steps = measure(args.rows, args.features, args.rounds, args.threads, args.repeat)
    print(
        f"training set: {args.rows:,} rows x {args.features} features ({steps[-1]['train_rows']:,} train), "
        f"cap {args.rounds} rounds, {args.threads} threads, median of {args.repeat} rotated repeats"
    )
    print(f"{'step':<44} | {'wall s':>8} | {'CPU s':>8} | {'best iteration':>14} | {'wall ratio':>10} | CPU ratio")
    print("-" * 108)
    for s in steps:
        print(
            f"{s['step']:<44} | {s['wall']:>8.2f} | {s['cpu']:>8.2f} | {s['best']:>14} | "
            f"{s['wall_ratio']:>9.2f}x | {s['cpu_ratio']:>8.2f}x"
        )


if __name__ == "__main__":
    main()
