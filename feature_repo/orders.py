"""The ``order`` entity, its per-order risk view, request-time value features and the ``order_fraud`` service;
the account, device and IP order histories checkout scoring reads (the ``order_checkout`` service)."""

from __future__ import annotations

import inspect
from datetime import timedelta

import numpy as np
import pandas as pd
from feast import (
    Entity,
    FeatureService,
    FeatureView,
    Field,
    OnDemandFeatureView,
    PushSource,
    RequestSource,
    ValueType,
)
from feast.feature_view import DUMMY_ENTITY_ID
from feast.types import Array, Bool, Float64, Int64, String

from feature_repo.parts import LAKE_TABLE_TAG, RepoPart
from feature_repo.users import lake_source
from pipelines.features.checkout import KEY_COLUMNS, history_table
from pipelines.features.checkout import TIMESTAMP_COLUMN as HISTORY_TIMESTAMP
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


# What each history list holds, as Feast types (pipelines/features/checkout.py: HISTORY_LISTS).
HISTORY_TYPES = {
    "order_time_us": Array(Int64),
    "order_user_id": Array(Int64),
    "order_device_id": Array(String),
    "order_ip_address": Array(String),
    "order_value": Array(Float64),
    "order_new_account": Array(Bool),
    "order_prev_device_time_us": Array(Int64),
    "chargeback_order_time_us": Array(Int64),
    "chargeback_time_us": Array(Int64),
}
# A history is rebuilt every day and updated by each scored order; a day-old one still serves exactly.
HISTORY_TTL = timedelta(days=3)


def history_push_source(entity: str) -> str:
    """The push source of ``entity``'s (user, device, ip) history view, for producers that push orders through
    Feast (the serving app writes its scored orders in batches with the platform's writer instead: cheaper)."""
    return f"order_history_{entity}_push"


def _history_views(settings: Settings, user: Entity) -> tuple[list[Entity], list, list[FeatureView]]:
    """Per-key order histories (account, device, IP) that checkout scoring reads: built daily by the order_risk
    family, updated online with each scored order."""
    device = Entity(
        name="device", join_keys=[KEY_COLUMNS["device"]], value_type=ValueType.STRING, description="A device id."
    )
    ip = Entity(name="ip", join_keys=[KEY_COLUMNS["ip"]], value_type=ValueType.STRING, description="An IP address.")
    sources, views = [], []
    for entity_name, entity, key_type in (("user", user, Int64), ("device", device, String), ("ip", ip, String)):
        table = history_table(entity_name)
        batch = lake_source(
            settings,
            f"order_history_{entity_name}_source",
            table,
            HISTORY_TIMESTAMP,
            f"Order histories by {entity_name} as of each day's start (pipelines.features.checkout).",
        )
        push = PushSource(name=history_push_source(entity_name), batch_source=batch)
        key = KEY_COLUMNS[entity_name]
        views.append(
            FeatureView(
                name=f"order_history_{entity_name}",
                entities=[entity],
                ttl=HISTORY_TTL,
                schema=[Field(name=key, dtype=key_type), *[Field(name=n, dtype=t) for n, t in HISTORY_TYPES.items()]],
                source=push,
                online=True,
                tags={LAKE_TABLE_TAG: table},
                description=f"The {entity_name}'s orders of the last 30 days and their chargebacks, for checkout.",
            )
        )
        sources += [batch, push]
    return [device, ip], sources, views


def order_declarations(settings: Settings, user: Entity) -> RepoPart:
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
    history_entities, history_sources, history_views = _history_views(settings, user)
    # Serving's, not training's: what `POST /v1/models/order_fraud/score` reads to compute an order's features.
    order_checkout = FeatureService(
        name="order_checkout",
        features=history_views,
        description="Order histories of an order's account, device and IP, read at checkout.",
    )
    return RepoPart(
        entities=[order, *history_entities],
        sources=[source, *history_sources],
        views=[order_risk, *history_views],
        on_demand_views=[value_view],
        services=[order_fraud, order_checkout],
    )
