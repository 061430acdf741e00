"""The ``order`` entity, its per-order risk view, request-time value features and the ``order_fraud`` service."""

from __future__ import annotations

import inspect
from datetime import timedelta

import numpy as np
import pandas as pd
from feast import Entity, FeatureService, FeatureView, Field, OnDemandFeatureView, RequestSource, ValueType
from feast.feature_view import DUMMY_ENTITY_ID
from feast.types import Float64, String

from feature_repo.parts import LAKE_TABLE_TAG, RepoPart
from feature_repo.users import lake_source
from pipelines.features.order_features import ENTITY_COLUMN, FEATURE_COLUMNS, ORDER_FEATURES_TABLE, TIMESTAMP_COLUMN
from pipelines.settings import Settings

# A row describes one order at its own purchase time and is looked up for that order only (training rows are
# stamped with the same time; serving reads it right after the day's materialization), so a short ttl suffices.
ORDER_RISK_TTL = timedelta(days=2)
# Known when the order is placed, so the request carries it rather than the feature view.
REQUEST_FIELDS = ["purchase_value"]
ON_DEMAND_FEATURES = ["log_purchase_value", "value_to_user_mean"]


def order_value(inputs: pd.DataFrame) -> pd.DataFrame:
    """The order's value from the request, on a log scale and against the account's mean order value before it.

    Feast keeps this function's source in its registry and runs it in a bare namespace (pandas as ``pd``, numpy
    as ``np``): it must not use any other name of this module.
    """
    value = inputs["purchase_value"].astype("float64")
    mean = inputs["user_mean_value_30d"].astype("float64")
    out = pd.DataFrame(index=inputs.index)
    out["log_purchase_value"] = np.log1p(value.clip(lower=0.0))
    out["value_to_user_mean"] = (value / mean.where(mean > 0)).astype("float64")
    return out


def order_declarations(settings: Settings) -> RepoPart:
    order = Entity(
        name="order",
        join_keys=[ENTITY_COLUMN],
        value_type=ValueType.STRING,
        description="An order placed in the storefront (scored for fraud).",
    )
    source = lake_source(
        settings,
        "order_risk_source",
        ORDER_FEATURES_TABLE,
        TIMESTAMP_COLUMN,
        "Per-order risk features written daily by pipelines.features.order_features.",
    )
    order_risk = FeatureView(
        name="order_risk",
        entities=[order],
        ttl=ORDER_RISK_TTL,
        schema=[Field(name=ENTITY_COLUMN, dtype=String), *[Field(name=n, dtype=Float64) for n in FEATURE_COLUMNS]],
        source=source,
        online=True,
        tags={LAKE_TABLE_TAG: ORDER_FEATURES_TABLE},
        description="Velocity of the order's account, device and IP, shared devices and IPs, account age, "
        "the account's order history and chargebacks known before the order.",
    )
    request = RequestSource(
        name="order_request",
        schema=[Field(name=name, dtype=Float64) for name in REQUEST_FIELDS],
        description="Fields of the order being scored, sent with the request.",
    )
    value_view = OnDemandFeatureView(
        name="order_value",
        sources=[order_risk[["user_mean_value_30d"]], request],
        schema=[Field(name=name, dtype=Float64) for name in ON_DEMAND_FEATURES],
        mode="pandas",
        udf=order_value,
        udf_string=inspect.getsource(order_value),
        description="log(1 + purchase_value) and purchase_value / the account's mean order value before it.",
    )
    # What `apply` infers for a view without entities; declared here so the definition equals the registered one
    # and an unchanged repo is not applied again by every process (pipelines.features.store.feature_store).
    value_view.entity_columns = [Field(name=DUMMY_ENTITY_ID, dtype=String)]
    order_fraud = FeatureService(
        name="order_fraud",
        features=[order_risk, value_view],
        description="Features of the order_fraud model (models/order_fraud.yaml).",
    )
    return RepoPart(
        entities=[order],
        sources=[source],
        views=[order_risk],
        on_demand_views=[value_view],
        services=[order_fraud],
    )
