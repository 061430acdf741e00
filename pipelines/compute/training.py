"""LightGBM training on the Dask cluster (``lightgbm.dask``, data-parallel): the same booster parameters and
rounds as ``fit_booster``, with early stopping's best iteration found on the validation split afterwards
(``lightgbm.dask`` does not support early-stopping callbacks: workers evaluate only their own rows).
"""

from __future__ import annotations

import warnings
from typing import Any

import dask.dataframe as dd
import lightgbm as lgb
import numpy as np
import pandas as pd
from distributed import Client
from lightgbm.dask import DaskLGBMClassifier

from pipelines.evaluation.metrics import compute_metrics
from pipelines.specs import ModelSpec
from pipelines.training.dataset import GROUP_COLUMN, LABEL_COLUMN, TrainingSet
from pipelines.training.train import LGB_METRIC, TrainingError, check_splits, lightgbm_params

_LOWER_IS_BETTER = {"log_loss", "calibration_error"}


def best_iteration(
    booster: lgb.Booster, training_set: TrainingSet, metric: str, patience: int, num_threads: int
) -> int:
    """The iteration early stopping would keep: the best ``metric`` on the validation split, stopping after
    ``patience`` rounds without improvement (as ``lgb.early_stopping(first_metric_only=True)`` on the booster's
    first metric)."""
    frame = training_set.split("validation")
    features, labels = frame[training_set.feature_columns], frame[LABEL_COLUMN].to_numpy()
    groups = frame[GROUP_COLUMN].to_numpy() if GROUP_COLUMN in frame.columns else None
    sign = -1.0 if metric in _LOWER_IS_BETTER else 1.0
    raw = np.zeros(len(frame))
    best, best_score = 0, -np.inf
    for i in range(booster.current_iteration()):
        # One tree at a time: the running sum is the raw score after i + 1 rounds; the link gives probabilities.
        raw += booster.predict(features, start_iteration=i, num_iteration=1, raw_score=True, num_threads=num_threads)
        score = sign * compute_metrics(labels, 1.0 / (1.0 + np.exp(-raw)), [metric], groups=groups)[metric]
        if score > best_score:
            best, best_score = i + 1, score
        elif i + 1 - best >= patience:
            break
    return best


def stopping_metric(spec: ModelSpec, params: dict[str, Any]) -> str:
    """Our name of the booster's first metric (the one early stopping watches), else the spec's main metric."""
    first = str(np.atleast_1d(params["metric"])[0])
    return next((ours for ours, lgb_name in LGB_METRIC.items() if lgb_name == first), spec.main_metric)


def _spread(client: Client, frame: pd.DataFrame, columns: list[str]) -> tuple[dd.DataFrame, dd.Series]:
    """The rows dealt round-robin into one partition per worker, each placed on its worker, so every worker bins
    features from a like sample of the whole set. Not bit-reproducible: which share becomes LightGBM's rank 0
    follows the workers' (random) ports, and the trees differ slightly between runs."""
    workers = sorted(client.scheduler_info()["workers"])
    chunks = [frame.iloc[i :: len(workers)] for i in range(len(workers))]
    features = [client.scatter(c[columns], workers=[w]) for c, w in zip(chunks, workers, strict=True)]
    labels = [client.scatter(c[LABEL_COLUMN], workers=[w]) for c, w in zip(chunks, workers, strict=True)]
    return (
        dd.from_delayed(features, meta=frame[columns].iloc[:0], verify_meta=False),
        dd.from_delayed(labels, meta=frame[LABEL_COLUMN].iloc[:0], verify_meta=False),
    )


def fit_booster_dask(
    client: Client, spec: ModelSpec, training_set: TrainingSet, num_threads: int
) -> tuple[lgb.Booster, dict[str, Any]]:
    """``fit_booster`` on the cluster: returns the booster (its ``best_iteration`` set) and the params."""
    if spec.objective != "binary":
        raise TrainingError(
            f"model {spec.name}: objective {spec.objective!r} has no Dask training path yet "
            "(only binary models); train it with STOREFRONT_COMPUTE=pandas"
        )
    check_splits(training_set)
    params, rounds, patience = lightgbm_params(spec, num_threads)
    # Each worker uses its own thread count; the loop's rounds are the estimator's.
    booster_params = {k: v for k, v in params.items() if k != "num_threads"}
    features, labels = _spread(client, training_set.split("train"), training_set.feature_columns)
    model = DaskLGBMClassifier(client=client, n_estimators=rounds, **booster_params)
    with warnings.catch_warnings():
        # The sklearn wrapper always passes n_jobs; lightgbm.dask replaces it with each worker's threads.
        warnings.filterwarnings("ignore", message="Parameter n_jobs will be ignored")
        model.fit(features, labels)
    booster = model.booster_
    metric = stopping_metric(spec, params)
    booster.best_iteration = best_iteration(booster, training_set, metric, patience, num_threads)
    return booster, params | {"num_boost_round": rounds, "early_stopping_rounds": patience, "compute": "dask"}
