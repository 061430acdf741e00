"""Train a LightGBM model on a training set and record it in MLflow: run, lineage, plots, registered version.

Rerunning the same logical date on the same training set and configuration reuses the registered version.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightgbm as lgb
import mlflow
import mlflow.lightgbm
import numpy as np
import pandas as pd
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.models import infer_signature
from mlflow.types import ColSpec, DataType, Schema
from mlflow.utils.requirements_utils import warn_dependency_requirement_mismatches

from pipelines.compute.engine import fit_on_engine
from pipelines.evaluation import plots
from pipelines.evaluation.metrics import compute_metrics
from pipelines.registry.registry import connect, ensure_experiment, list_versions
from pipelines.settings import Settings
from pipelines.specs import ModelSpec
from pipelines.training.dataset import GROUP_COLUMN, TrainingSet
from pipelines.training.lineage import code_version, feature_lineage, spec_digest

TAG_LOGICAL_DATE = "logical_date"
TAG_DIGEST = "training_set.digest"
TAG_CONFIG = "training.config_digest"
TAG_URI = "training_set.uri"
DEFAULT_SEED = 42
# Spec params that steer the boosting loop rather than the booster itself.
LOOP_PARAMS = {"num_boost_round": 500, "early_stopping_rounds": 30}
LGB_METRIC = {
    "roc_auc": "auc",
    "pr_auc": "average_precision",
    "log_loss": "binary_logloss",
    "ndcg_at_10": "ndcg",
    "map_at_10": "map",
}
# Requirements written into the model by hand: inference would run the model in a subprocess and, with a
# uv.lock in the working directory, export the whole lock (MLFLOW_UV_AUTO_DETECT), neither of which we want.
MODEL_REQUIREMENTS = ("lightgbm", "mlflow", "numpy", "pandas", "scikit-learn")


class TrainingError(RuntimeError):
    """Training cannot run on this training set (empty split, single class, bad params)."""


@dataclass
class TrainResult:
    run_id: str
    model_version: str
    metrics: dict[str, float] = field(default_factory=dict)
    reused: bool = False


def lightgbm_params(spec: ModelSpec, num_threads: int) -> tuple[dict[str, Any], int, int]:
    """Booster params (deterministic, explicit threads), number of rounds, early-stopping patience."""
    loop = {k: int(spec.params.get(k, v)) for k, v in LOOP_PARAMS.items()}
    metrics = [LGB_METRIC[m] for m in [spec.main_metric, *spec.metrics] if m in LGB_METRIC]
    params: dict[str, Any] = {
        "objective": spec.objective,
        "metric": list(dict.fromkeys(metrics)) or (["ndcg"] if spec.objective == "lambdarank" else ["auc"]),
        "seed": DEFAULT_SEED,
        "deterministic": True,
        "force_col_wise": True,
        "verbosity": -1,
    }
    if spec.objective == "lambdarank":
        params["eval_at"] = [10]
    params |= {k: v for k, v in spec.params.items() if k not in LOOP_PARAMS}
    params["num_threads"] = num_threads  # always from settings: LightGBM's default can be 100x slower on busy cores
    return params, loop["num_boost_round"], loop["early_stopping_rounds"]


def config_digest(spec: ModelSpec, feature_columns: list[str]) -> str:
    """What, besides the data, determines the model: params, objective, features."""
    payload = {"params": spec.params, "objective": spec.objective, "features": feature_columns}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_splits(training_set: TrainingSet) -> None:
    """Training needs both classes in the train and validation splits."""
    for name in ("train", "validation"):
        if training_set.row_counts[name] == 0:
            raise TrainingError(f"training set {training_set.uri}: the {name} split is empty")
        if np.unique(training_set.labels(name)).size < 2:
            raise TrainingError(f"training set {training_set.uri}: the {name} split has a single label class")


def fit_booster(spec: ModelSpec, training_set: TrainingSet, num_threads: int) -> tuple[lgb.Booster, dict[str, Any]]:
    """Fit on the train split, early-stopping on the validation split's first metric (the main one).

    Returns the booster and every parameter that shaped it (booster params and the loop's), for logging.
    """
    check_splits(training_set)
    params, rounds, patience = lightgbm_params(spec, num_threads)
    # Numpy matrices, not frames: LightGBM would copy and dtype-check every pandas column again.
    train = lgb.Dataset(
        training_set.matrix("train"),
        label=training_set.labels("train"),
        group=training_set.group_sizes("train"),
        feature_name=training_set.feature_columns,
    )
    valid = lgb.Dataset(
        training_set.matrix("validation"),
        label=training_set.labels("validation"),
        group=training_set.group_sizes("validation"),
        reference=train,
    )
    booster = lgb.train(
        params,
        train,
        num_boost_round=rounds,
        valid_sets=[valid],
        valid_names=["validation"],
        callbacks=[lgb.early_stopping(patience, first_metric_only=True, verbose=False)],
    )
    return booster, params | {"num_boost_round": rounds, "early_stopping_rounds": patience}


def split_metrics(
    spec: ModelSpec, booster: lgb.Booster, training_set: TrainingSet, num_threads: int
) -> dict[str, float]:
    """``<split>_<metric>`` for validation and test at the best iteration."""
    out: dict[str, float] = {}
    for name in ("validation", "test"):
        scores = booster.predict(
            training_set.matrix(name), num_iteration=booster.best_iteration or None, num_threads=num_threads
        )
        for metric, value in _metrics(spec, training_set, name, scores).items():
            out[f"{name}_{metric}"] = value
    return out


def _metrics(spec: ModelSpec, training_set: TrainingSet, split: str, scores: np.ndarray) -> dict[str, float]:
    groups = training_set.column(split, GROUP_COLUMN) if GROUP_COLUMN in training_set.frame.columns else None
    return compute_metrics(training_set.labels(split), scores, spec.metrics, groups=groups)


def bayes_optimal_metrics(spec: ModelSpec, training_set: TrainingSet) -> dict[str, float]:
    """``bayes_optimal_test_<metric>``: the simulator's true probabilities of the test rows (kept beside the
    training set by its step; empty when the data is not simulated) scored like the model. No model fed
    observable data can beat them in expectation."""
    if training_set.oracle is None:
        return {}
    scores = training_set.oracle
    return {f"bayes_optimal_test_{m}": v for m, v in _metrics(spec, training_set, "test", scores).items()}


def find_version(settings: Settings, name: str, tags: dict[str, str]) -> Any:
    """The registered version of ``name`` carrying all ``tags``, if any (the newest one)."""
    matches = [v for v in list_versions(settings, name) if all(v.tags.get(k) == val for k, val in tags.items())]
    return matches[-1] if matches else None


def _schema(frame: pd.DataFrame) -> Schema:
    """The frame's MLflow schema from its dtypes and missing values: vectorised, where MLflow's own inference
    (``mlflow.data.from_pandas``) walks every value (15 s of CPU for 200,000 rows)."""
    kinds = {"f": DataType.double, "i": DataType.long, "u": DataType.long, "b": DataType.boolean}
    return Schema(
        [
            ColSpec(
                DataType.datetime if col.dtype.kind == "M" else kinds.get(col.dtype.kind, DataType.string),
                str(name),
                required=not col.hasnans,
            )
            for name, col in frame.items()
        ]
    )


def log_training_input(spec: ModelSpec, training_set: TrainingSet, schema: Schema) -> None:
    """Log the training set as the run's input: lake URI as source, digest and ``schema`` (not its rows)."""
    with warnings.catch_warnings():
        # Two equivalent local sources are registered for plain paths.
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        dataset = MetaDataset(
            resolve_dataset_source(training_set.uri),
            name=f"{spec.name}-training-set-{training_set.logical_date.isoformat()}",
            # MLflow caps dataset digests at 36 characters; the full sha256 is the run tag TAG_DIGEST.
            digest=training_set.digest[:32],
            schema=schema,
        )
        mlflow.log_input(dataset, context="training")


@dataclass(frozen=True)
class RunRecord:
    """What the run records that does not depend on the booster: prepared while LightGBM trains."""

    tags: dict[str, str]
    schema: Schema
    requirements: list[str]


def run_record(settings: Settings, spec: ModelSpec, training_set: TrainingSet, identity: dict[str, str]) -> RunRecord:
    """The run's tags (identity, lineage, code), the training set's schema and the model's pinned requirements."""
    tags = (
        identity
        | {TAG_URI: training_set.uri, "model": spec.name, "spec.digest": spec_digest(spec)}
        | code_version()
        # Recorded by the training-set step; a set saved without it (synthetic, older runs) is described now.
        | (training_set.lineage or feature_lineage(settings, spec))
    )
    requirements = [f"{p}=={importlib.metadata.version(p)}" for p in MODEL_REQUIREMENTS]
    # log_model checks the requirements against the installed packages; MLflow's first check in a process maps
    # every installed distribution to its modules (~0.7 s, then cached). Checking here moves that off the
    # critical path: the same check, its warning included, while LightGBM trains.
    warn_dependency_requirement_mismatches(requirements)
    return RunRecord(tags, _schema(training_set.frame), requirements)


def save_importance_figure(importance: dict[str, float], path: Path) -> Path:
    """The importance figure as a PNG at ``path``, as ``mlflow.log_figure`` would render it (savefig defaults)."""
    plots.importance_figure(importance).savefig(path)
    return path


def train_model(settings: Settings, spec: ModelSpec, training_set: TrainingSet) -> TrainResult:
    """Train, log and register ``spec.name``; reuse the version already made from this exact input."""
    ds = training_set.logical_date.isoformat()
    identity = {
        TAG_LOGICAL_DATE: ds,
        TAG_DIGEST: training_set.digest,
        TAG_CONFIG: config_digest(spec, training_set.feature_columns),
    }
    existing = find_version(settings, spec.name, identity)
    if existing is not None:
        metrics = {
            k: v for k, v in existing.metrics.items() if k.startswith(("validation_", "test_", "best_", "bayes_"))
        }
        return TrainResult(existing.run_id, existing.version, metrics, reused=True)

    experiment_id = ensure_experiment(settings, spec.name)
    with tempfile.TemporaryDirectory(prefix="train-") as tmp:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="train-record") as pool:
            # LightGBM releases the GIL while it boosts and leaves part of a core idle (its serial sections): the
            # run's booster-free parts are prepared meanwhile, and the importance figure drawn while the splits are
            # scored (prediction releases the GIL too).
            prepared = pool.submit(run_record, settings, spec, training_set, identity)
            booster, params = fit_on_engine(settings, spec, training_set)
            gain = booster.feature_importance(importance_type="gain", iteration=booster.best_iteration or None)
            importance = {c: float(g) for c, g in zip(training_set.feature_columns, gain, strict=True)}
            drawn = pool.submit(save_importance_figure, importance, Path(tmp) / "feature_importance.png")
            metrics = split_metrics(spec, booster, training_set, settings.num_threads)
            metrics["best_iteration"] = float(booster.best_iteration or booster.current_iteration())
            metrics |= bayes_optimal_metrics(spec, training_set)
            record, figure = prepared.result(), drawn.result()

        connect(settings)
        with mlflow.start_run(experiment_id=experiment_id, run_name=f"{spec.name}-{ds}", tags=record.tags) as run:
            mlflow.log_params(
                params
                | {
                    "metric": ",".join(np.atleast_1d(params["metric"]).astype(str)),
                    "label_window_days": spec.label.window_days,
                    "train_days": training_set.train_days or spec.windows.train_days,
                    "validation_days": spec.windows.validation_days,
                    "test_days": spec.windows.test_days,
                    "n_features": len(training_set.feature_columns),
                }
            )
            # Params and metrics before the model: log_model copies the run's metrics onto the logged model.
            mlflow.log_metrics(
                metrics
                | {f"rows_{k}": float(v) for k, v in training_set.row_counts.items()}
                | {"label_rate": training_set.label_rate}
            )
            log_training_input(spec, training_set, record.schema)
            mlflow.log_dict(spec.model_dump(mode="json"), "model_spec.json")
            mlflow.log_dict(importance, "feature_importance.json")
            mlflow.log_artifact(str(figure))

            example = training_set.features("validation", head=5)
            signature = infer_signature(example, booster.predict(example, num_threads=settings.num_threads))
            info = mlflow.lightgbm.log_model(
                booster, name="model", signature=signature, input_example=example, pip_requirements=record.requirements
            )
            version = mlflow.register_model(info.model_uri, spec.name, tags=record.tags)
    return TrainResult(run.info.run_id, str(version.version), metrics)
