"""The request path's single-row scorer gives LightGBM's own scores (pipelines/serving/single_row.py)."""

from __future__ import annotations

import datetime as dt

import lightgbm as lgb
import numpy as np
import pytest

from pipelines.serving.model_loader import LoadedModel
from pipelines.serving.single_row import SingleRowScorer

FEATURES = 7


def _data(rows: int = 3000) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(11)
    x = rng.normal(size=(rows, FEATURES))
    x[rng.random(x.shape) < 0.1] = np.nan  # missing values take the trees' missing branch
    y = (np.nan_to_num(x[:, 0]) + 0.5 * np.nan_to_num(x[:, 1]) + rng.normal(size=rows) > 0).astype(int)
    return x, y


def _train(params: dict, rounds: int = 40, **kwargs) -> lgb.Booster:
    x, y = _data()
    return lgb.train({"verbose": -1, "num_leaves": 15, **params}, lgb.Dataset(x, y, **kwargs), rounds)


def _rows() -> np.ndarray:
    x, _ = _data(200)
    return np.vstack([x, np.full(FEATURES, np.nan), np.zeros(FEATURES), np.full(FEATURES, 1e30)])


@pytest.mark.parametrize(
    ("params", "kwargs"),
    [
        ({"objective": "binary"}, {}),
        ({"objective": "regression"}, {}),
        ({"objective": "lambdarank"}, {"group": [30] * 100}),
    ],
    ids=["binary", "regression", "lambdarank"],
)
def test_a_row_scores_as_booster_predict_scores_it(params: dict, kwargs: dict) -> None:
    booster = _train(params, **kwargs)
    scorer = SingleRowScorer(booster)
    rows = _rows()
    expected = booster.predict(rows, num_threads=1)
    got = np.array([scorer(row) for row in rows])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    if params["objective"] == "binary":
        assert ((got > 0) & (got < 1)).all()


def test_a_model_stopped_early_scores_with_its_best_iteration() -> None:
    x, y = _data()
    train, valid = lgb.Dataset(x[:2000], y[:2000]), lgb.Dataset(x[2000:], y[2000:])
    booster = lgb.train(
        {"objective": "binary", "verbose": -1, "learning_rate": 0.5},
        train,
        300,
        valid_sets=[valid],
        callbacks=[lgb.early_stopping(5, verbose=False)],
        keep_training_booster=True,  # the trees after the best one kept: predict must leave them out
    )
    assert 0 < booster.best_iteration < booster.current_iteration()
    rows = _rows()
    got = np.array([SingleRowScorer(booster)(row) for row in rows])
    np.testing.assert_allclose(got, booster.predict(rows), rtol=0, atol=1e-12)


def test_a_row_of_the_wrong_width_is_refused() -> None:
    scorer = SingleRowScorer(_train({"objective": "binary"}, rounds=3))
    with pytest.raises(ValueError, match="a row of 7 features expected"):
        scorer(np.zeros(FEATURES + 1))


def test_a_multiclass_model_is_scored_by_booster_predict() -> None:
    x, y = _data()
    booster = lgb.train(
        {"objective": "multiclass", "num_class": 3, "verbose": -1}, lgb.Dataset(x, (y + (x[:, 2] > 1)) % 3), 5
    )
    with pytest.raises(ValueError, match="one output per row"):
        SingleRowScorer(booster)
    loaded = LoadedModel("m", "1", booster, tuple(booster.feature_name()), dt.datetime.now(dt.UTC), 1)
    rows = _rows()[:1]
    np.testing.assert_allclose(loaded.score(rows, loaded.feature_names), booster.predict(rows))


def test_loaded_model_scores_one_row_in_the_columns_it_is_given() -> None:
    booster = _train({"objective": "binary"})
    loaded = LoadedModel("m", "1", booster, tuple(booster.feature_name()), dt.datetime.now(dt.UTC), 1)
    rows = _rows()
    # The request's columns in another order, with an extra one: the scorer gets the booster's order.
    names = ("extra", *reversed(loaded.feature_names))
    shuffled = np.hstack([np.full((len(rows), 1), 5.0), rows[:, ::-1]])
    one = np.concatenate([loaded.score(shuffled[i : i + 1], names) for i in range(len(rows))])
    np.testing.assert_allclose(one, booster.predict(rows), rtol=0, atol=1e-12)
    np.testing.assert_allclose(loaded.score(shuffled, names), booster.predict(rows), rtol=0, atol=1e-12)
