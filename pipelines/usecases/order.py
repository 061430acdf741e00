"""Orders: the ``order_risk`` feature family and the use case of order models (fraud).

An order model scores each order at its purchase time; its labels are chargebacks that arrive late
(``order_labels``, partitioned by arrival day). The champion scores orders at checkout over HTTP
(``POST /v1/models/{name}/score``, pipelines/serving/checkout.py).
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

ORDER_RISK_TABLE = "features/order_risk"


def build_order_risk(settings: Settings, day: dt.date) -> dict:
    """The day's per-order features (training), then the order histories checkout scoring starts the next day
    from (serving)."""
    from pipelines.features.checkout import build_and_write_histories
    from pipelines.features.order_features import build_and_write_order_features
    from pipelines.lake import Lake

    result = build_and_write_order_features(settings, day)
    return result | {"histories": build_and_write_histories(Lake(settings), day)}


def feast(settings: Settings, declared: Mapping[str, RepoPart]) -> RepoPart:
    from feature_repo.orders import order_declarations

    return order_declarations(settings, declared["user"].entity("user"))


def build_rows(
    settings: Settings, lake: Lake, spec: ModelSpec, splits: SplitDays, logical_date: dt.date
) -> pd.DataFrame:
    from pipelines.training.rows_order import build_frame

    return build_frame(settings, lake, spec, splits, logical_date)


def oracle(settings: Settings, lake: Lake, spec: ModelSpec, frame: pd.DataFrame) -> np.ndarray | None:
    from pipelines.training.rows_order import oracle_scores

    return oracle_scores(settings, lake, spec, frame)


FAMILIES = (
    FeatureFamily(
        name="order_risk",
        # Chargebacks known before an order feed its features when they are there; a day without any is fine.
        input_tables=("orders",),
        feature_tables=(ORDER_RISK_TABLE,),
        serving_tables=tuple(f"features/order_history_{e}" for e in ("user", "device", "ip")),
        build=build_order_risk,
    ),
)

USE_CASE = UseCase(
    entity="order",
    keys=("order_id",),
    families=("order_risk",),
    label_tables=("orders", "order_labels"),
    label_kinds=("chargeback",),
    objective="binary",
    feast=feast,
    build_rows=build_rows,
    oracle=oracle,
    serving="checkout",
)
