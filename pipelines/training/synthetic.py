"""Synthetic training sets with a known logistic relationship, for tests and smoke runs of training/gating.

``label ~ Bernoulli(sigmoid(intercept + sum(coef_i * signal_i)))``; the noise columns carry no signal.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from pipelines.data import schemas
from pipelines.specs import CONTEXT_PREFIX, ModelSpec
from pipelines.training.dataset import TIMESTAMP_COLUMN, assemble_training_frame, entity_keys, split_days


def synthetic_training_frame(
    spec: ModelSpec,
    logical_date: dt.date,
    users_per_day: int = 300,
    coefs: tuple[float, ...] = (1.5, -1.0, 0.75),
    intercept: float = -1.0,
    noise_features: int = 2,
    seed: int = 0,
) -> pd.DataFrame:
    """A training frame shaped like :func:`build_training_set`'s, for the as-of days of ``logical_date``.

    Every column the spec's slices name is there too (``ctx_*`` ones as context, others as features): a positive
    number when the slice is banded, one of four groups "a".."d" otherwise.
    """
    rng = np.random.default_rng(seed)
    splits = split_days(spec, logical_date)
    (key,) = entity_keys(spec)
    days = splits.days
    n = users_per_day * len(days)
    entity = pd.DataFrame(
        {
            key: np.tile(np.arange(users_per_day, dtype="int64"), len(days)),
            TIMESTAMP_COLUMN: np.repeat([pd.Timestamp(schemas.as_of(d)) for d in days], users_per_day),
        }
    )
    signal = rng.normal(size=(n, len(coefs)))
    p = 1.0 / (1.0 + np.exp(-(intercept + signal @ np.asarray(coefs))))
    features = entity.copy()
    for i in range(len(coefs)):
        features[f"signal_{i + 1}"] = signal[:, i]
    for i in range(noise_features):
        features[f"noise_{i + 1}"] = rng.normal(size=n)
    for column, banded in {s.column: s.bands is not None for s in spec.slices}.items():
        values = rng.gamma(2.0, 20.0, size=n) if banded else rng.choice(["a", "b", "c", "d"], size=n)
        (entity if column.startswith(CONTEXT_PREFIX) else features)[column] = values
    labels = entity.rename(columns={TIMESTAMP_COLUMN: "as_of"}).assign(label=(rng.random(n) < p).astype("int64"))
    return assemble_training_frame(entity, labels, features, splits, key)
