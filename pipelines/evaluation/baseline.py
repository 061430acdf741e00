"""The spec's baseline scorer: what a first model (no champion yet) must beat on the same test rows.

``logistic_regression``: standardised logistic regression on a few simple features (e.g. recency and frequency),
fit on the train split (missing values filled with the train split's medians; relevance > 0 counts as positive
for ranking). ``feature``: one column used as the score (e.g. popularity for ranking); missing values rank last.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipelines.specs import ModelSpec
from pipelines.training.dataset import LABEL_COLUMN, TrainingSet


class BaselineError(ValueError):
    """The spec's baseline cannot be computed on this training set."""


def describe_baseline(spec: ModelSpec) -> str | None:
    """The baseline in words, for verdicts and reports (None when the spec declares none)."""
    if spec.baseline is None:
        return None
    if spec.baseline.kind == "feature":
        return f"the feature {spec.baseline.features[0]} as the score"
    return f"logistic regression on {', '.join(spec.baseline.features)}"


def baseline_scores(spec: ModelSpec, training_set: TrainingSet) -> np.ndarray | None:
    """Baseline scores of the test rows, in the test split's row order (None when the spec declares no baseline)."""
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
        score = test[columns[0]]
        return score.fillna(score.min() - 1 if score.notna().any() else 0.0).to_numpy()
    train = training_set.split("train")
    y = (train[LABEL_COLUMN].to_numpy() > 0).astype(int)
    if len(np.unique(y)) < 2:
        raise BaselineError(
            f"model spec {spec.name!r}: the train split's {len(y)} rows hold one class only; "
            "the logistic-regression baseline cannot be fit (widen 'windows.train_days')"
        )
    # Imported here: scikit-learn takes seconds to import, and the modules importing this one (the gate, `mlctl
    # status` through it) mostly never fit a baseline.
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    medians = train[columns].astype("float64").median()
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    model.fit(_filled(train[columns], medians), y)
    return model.predict_proba(_filled(test, medians))[:, 1]


def _filled(frame: pd.DataFrame, medians: pd.Series) -> np.ndarray:
    return frame.astype("float64").fillna(medians).fillna(0.0).to_numpy()
