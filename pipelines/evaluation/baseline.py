"""The spec's baseline scorer: what a first model (no champion yet) must beat on the same rows.

``logistic_regression``: standardised logistic regression on a few simple features (e.g. recency and frequency),
fit on the train split. ``feature``: one column used as the score (e.g. popularity for ranking).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from pipelines.specs import ModelSpec
from pipelines.training.dataset import TrainingSet


class BaselineError(ValueError):
    """The spec's baseline cannot be computed on this training set."""


def baseline_scores(spec: ModelSpec, training_set: TrainingSet) -> np.ndarray | None:
    """Baseline scores of the test rows (None when the spec declares no baseline)."""
    if spec.baseline is None:
        return None
    columns = list(spec.baseline.features)
    missing = [c for c in columns if c not in training_set.frame.columns]
    if missing:
        raise BaselineError(
            f"model spec {spec.name!r}: baseline feature(s) {missing} are not in the training set; "
            f"fix 'baseline.features' in models/{spec.name}.yaml"
        )
    test = training_set.split("test")[columns].astype("float64")
    if spec.baseline.kind == "feature":
        return test[columns[0]].fillna(test[columns[0]].min()).to_numpy()
    train = training_set.split("train")
    x, y = _filled(train[columns]), (train["label"].to_numpy() > 0).astype(int)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
    model.fit(x, y)
    return model.predict_proba(_filled(test, reference=train[columns]))[:, 1]


def _filled(frame: pd.DataFrame, reference: pd.DataFrame | None = None) -> np.ndarray:
    medians = (reference if reference is not None else frame).astype("float64").median()
    return frame.astype("float64").fillna(medians).fillna(0.0).to_numpy()
