"""The one switch between engines (``settings.compute``): each heavy step asks here which one runs it.

The pandas path stays the default and imports nothing of Dask; the Dask path runs the same pandas cores per hash
partition on the cluster of ``pipelines.compute.cluster``.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import lightgbm as lgb
    import pandas as pd

    from pipelines.features.point_in_time import ServicePlan
    from pipelines.lake import Lake
    from pipelines.settings import Settings
    from pipelines.specs import ModelSpec
    from pipelines.training.dataset import TrainingSet


def user_features(settings: Settings, lake: Lake, ds: dt.date) -> pd.DataFrame:
    """The day's user behaviour features (``build_user_features``)."""
    if settings.compute == "dask":
        from pipelines.compute.cluster import dask_client, partition_count
        from pipelines.compute.user_features import user_features_dask

        client = dask_client(settings)
        return user_features_dask(client, lake, ds, partition_count(settings, client))
    from pipelines.features.user_features import build_user_features

    return build_user_features(lake, ds)


def point_in_time(settings: Settings, lake: Lake, plan: ServicePlan, entity: pd.DataFrame) -> pd.DataFrame:
    """A feature service's point-in-time features of every entity row (``historical_join``)."""
    if settings.compute == "dask":
        from pipelines.compute.cluster import dask_client, partition_count
        from pipelines.compute.point_in_time import point_in_time_dask

        client = dask_client(settings)
        return point_in_time_dask(client, lake, plan, entity, partition_count(settings, client))
    from pipelines.features.point_in_time import historical_join

    return historical_join(lake, plan, entity)


def fit_on_engine(settings: Settings, spec: ModelSpec, training_set: TrainingSet) -> tuple[lgb.Booster, dict[str, Any]]:
    """The booster of ``spec`` on the training set's train split, early-stopped on its validation split."""
    if settings.compute == "dask":
        from pipelines.compute.cluster import dask_client
        from pipelines.compute.training import fit_booster_dask

        return fit_booster_dask(dask_client(settings), spec, training_set, settings.num_threads)
    from pipelines.training.train import fit_booster

    return fit_booster(spec, training_set, settings.num_threads)
