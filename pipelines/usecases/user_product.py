"""User x product: the ``ranking`` feature family and the use case of ranking models (product ranking).

A ranking model orders candidate products for a user; its rows are (user, product) candidates of a request, its
labels the user's later events on them, and it reads the user's behaviour features as well as its own. It is
served by ranking products for a user.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import TYPE_CHECKING

from pipelines.usecases import FeatureFamily, UseCase

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from feature_repo.parts import RepoPart
    from pipelines.lake import Lake
    from pipelines.settings import Settings
    from pipelines.specs import ModelSpec
    from pipelines.training.dataset import SplitDays


def build_ranking(settings: Settings, day: dt.date) -> dict:
    from pipelines.features.product_features import build_and_write_ranking_features

    return build_and_write_ranking_features(settings, day)


def feast(settings: Settings, declared: Mapping[str, RepoPart]) -> RepoPart:
    from feature_repo.ranking import ranking_declarations

    return ranking_declarations(settings, declared["user"])


def build_rows(
    settings: Settings, lake: Lake, spec: ModelSpec, splits: SplitDays, logical_date: dt.date
) -> pd.DataFrame:
    from pipelines.training.rows_ranking import build_frame

    return build_frame(settings, lake, spec, splits, logical_date)


def oracle(settings: Settings, lake: Lake, spec: ModelSpec, frame: pd.DataFrame) -> np.ndarray | None:
    from pipelines.training.rows_ranking import oracle_scores

    return oracle_scores(settings, lake, spec, frame)


FAMILIES = (
    FeatureFamily(
        name="ranking",
        # The catalogue (products) is used when landed, else derived from the events.
        input_tables=("events",),
        # user_candidates: what serving ranks, read from the online store (training generates its own).
        feature_tables=(
            "features/product_stats",
            "features/user_category",
            "features/user_product",
        ),
        serving_tables=("features/user_candidates",),
        build=build_ranking,
    ),
)

USE_CASE = UseCase(
    entity="user_product",
    keys=("user_id", "product_id"),
    families=("user_behavior", "ranking"),
    label_tables=("events",),
    label_kinds=("ranking_relevance",),
    objective="lambdarank",
    feast=feast,
    build_rows=build_rows,
    oracle=oracle,
    serving="rank",
)
