"""Users: the ``user_behavior`` feature family and the use case of user models (purchase intent).

A user model scores every known user at an as-of day; its labels are the user's next events (the ``events``
table), and it is served by scoring user ids.
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

USER_BEHAVIOR_TABLE = "features/user_behavior"


def build_user_behavior(settings: Settings, day: dt.date) -> dict:
    """Compute the day's user features, check them, and publish them to the offline store."""
    from pipelines.compute.engine import user_features
    from pipelines.features.user_features import write_user_features
    from pipelines.lake import Lake
    from pipelines.validation.contracts import validate_with_contract
    from pipelines.validation.quarantine import ValidationFailed, report_key

    lake = Lake(settings)
    frame = user_features(settings, lake, day)
    # The frame is checked before it is published: a failure leaves the previous partition (if any) in place.
    report = validate_with_contract(
        lake, frame, USER_BEHAVIOR_TABLE, day, settings.expectations_dir, suite="user_features"
    )
    lake.write_json(report_key(USER_BEHAVIOR_TABLE, day), report.to_dict())
    if report.critical_failures:
        raise ValidationFailed(report)
    uri = write_user_features(lake, day, frame)
    return {"rows": len(frame), "uri": uri, "warnings": [c.describe() for c in report.warnings]}


def feast(settings: Settings, declared: Mapping[str, RepoPart]) -> RepoPart:
    from feature_repo.users import user_declarations

    return user_declarations(settings)


def build_rows(
    settings: Settings, lake: Lake, spec: ModelSpec, splits: SplitDays, logical_date: dt.date
) -> pd.DataFrame:
    from pipelines.training.rows_user import build_frame

    return build_frame(settings, lake, spec, splits, logical_date)


def oracle(settings: Settings, lake: Lake, spec: ModelSpec, frame: pd.DataFrame) -> np.ndarray | None:
    from pipelines.training.rows_user import oracle_scores

    return oracle_scores(settings, lake, spec, frame)


FAMILIES = (
    FeatureFamily(
        name="user_behavior",
        input_tables=("events", "users", "follows"),
        feature_tables=(USER_BEHAVIOR_TABLE,),
        build=build_user_behavior,
    ),
)

USE_CASE = UseCase(
    entity="user",
    keys=("user_id",),
    families=("user_behavior",),
    label_tables=("events",),
    label_kinds=("purchase_within",),
    objective="binary",
    feast=feast,
    build_rows=build_rows,
    oracle=oracle,
    serving="score",
)
