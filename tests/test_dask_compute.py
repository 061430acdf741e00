"""The Dask engine (STOREFRONT_COMPUTE=dask, a LocalCluster of 2 worker processes) gives the pandas engine's
results: on a small simulated world the same user features and the same training set; on a synthetic training set
of 39,000 rows a model whose main metric is within 0.005 of the pandas path's (data-parallel LightGBM bins each
feature on one worker's rows, so the trees are close, not equal)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pandas as pd
import pytest

from pipelines.compute.cluster import close_dask_clients
from pipelines.compute.engine import fit_on_engine, user_features
from pipelines.data.extract import extract_day, simulation_config
from pipelines.features.user_features import write_user_features
from pipelines.lake import Lake
from pipelines.settings import Settings, get_settings
from pipelines.specs import ModelSpec
from pipelines.training.dataset import TrainingSet, save_training_set, split_days
from pipelines.training.synthetic import synthetic_training_frame
from pipelines.training.train import split_metrics
from pipelines.usecases import use_case
from tests.conftest import quick_spec

FIRST = dt.date(2025, 1, 1)
DAYS = 12
LAST = FIRST + dt.timedelta(days=DAYS - 1)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """300 simulated users over 12 days, with the pandas engine's user features of every day in the lake."""
    settings = get_settings(home=tmp_path_factory.mktemp("dask") / ".storefront", sim_users=300, num_threads=1)
    lake = Lake(settings)
    config = simulation_config(settings)
    for i in range(DAYS):
        day = FIRST + dt.timedelta(days=i)
        extract_day(lake, config, day)
        write_user_features(lake, day, user_features(settings, lake, day))
    return settings


@pytest.fixture(scope="module")
def on_dask(world: Settings) -> Iterator[Settings]:
    yield world.model_copy(update={"compute": "dask", "dask_workers": 2, "dask_worker_memory": "1GiB"})
    # Closed with its LocalCluster: later tests in this process must not find it as the default client (Feast's
    # stock materialization then ran its Dask graphs on it, and one failed to deserialize there), nor its workers
    # idling beside the rest of the suite.
    close_dask_clients()


def _training_set(settings: Settings, spec: ModelSpec) -> TrainingSet:
    lake = Lake(settings)
    frame = use_case("user").build_rows(settings, lake, spec, split_days(spec, LAST), LAST)
    return save_training_set(lake, spec, LAST, frame)


def test_user_features_on_dask_equal_the_pandas_ones(world: Settings, on_dask: Settings) -> None:
    lake = Lake(world)
    expected = user_features(world, lake, LAST)
    got = user_features(on_dask, lake, LAST)
    assert len(got) == len(expected) == lake.read("users", LAST)["user_id"].nunique()
    assert got["followee_purchases_7d"].sum() > 0  # the one feature that reads other users' events
    # Sums of prices may add in another order across partitions: equal to the last bits of a float.
    pd.testing.assert_frame_equal(got, expected, check_exact=False, rtol=1e-12)


def test_training_set_on_dask_equals_the_pandas_one(world: Settings, on_dask: Settings) -> None:
    spec = quick_spec(50, 5, train=3, validation=1, test=1)
    expected = _training_set(world, spec)
    got = _training_set(on_dask, spec)
    assert expected.row_counts["total"] > 1000
    pd.testing.assert_frame_equal(got.frame, expected.frame, check_exact=True)
    assert got.digest == expected.digest


def test_model_on_dask_scores_within_0_005_of_the_pandas_model(world: Settings, on_dask: Settings) -> None:
    spec = quick_spec(200, 20, train=7, validation=3, test=3)
    frame = synthetic_training_frame(spec, LAST, users_per_day=3000)
    training_set = save_training_set(Lake(world), spec, LAST, frame)

    pandas_booster, _ = fit_on_engine(world, spec, training_set)
    dask_booster, params = fit_on_engine(on_dask, spec, training_set)

    assert params["compute"] == "dask"
    main = f"test_{spec.main_metric}"
    pandas_score = split_metrics(spec, pandas_booster, training_set, 1)[main]
    dask_score = split_metrics(spec, dask_booster, training_set, 1)[main]
    assert pandas_score > 0.8
    assert abs(dask_score - pandas_score) <= 0.005, (dask_score, pandas_score)
