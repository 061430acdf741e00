"""Feast declarations: the ``user`` entity, its behaviour feature view and the model feature services.

Declarations only. The lake location differs per profile, so ``definitions(settings)`` builds the objects
(used by ``pipelines.features.store``); ``repo.py`` exposes them at module level for the ``feast`` CLI.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.data_format import ParquetFormat
from feast.types import Float64, Int64

from pipelines.features.user_features import (
    ENTITY_COLUMN,
    FEATURE_COLUMNS,
    TIMESTAMP_COLUMN,
    USER_FEATURES_TABLE,
)
from pipelines.settings import Settings

# Rows exist once per day, stamped as_of(ds). A point-in-time join takes the newest row <= the entity row's
# time; three days tolerates one or two missed daily runs, then the features read as missing, not stale.
USER_BEHAVIOR_TTL = timedelta(days=3)


@dataclass(frozen=True)
class FeatureRepo:
    """Every Feast object of the project, for one lake location."""

    user: Entity
    user_behavior_source: FileSource
    user_behavior: FeatureView
    purchase_intent: FeatureService

    @property
    def objects(self) -> list:
        return [self.user, self.user_behavior_source, self.user_behavior, self.purchase_intent]


def definitions(settings: Settings) -> FeatureRepo:
    """The project's Feast objects, reading feature partitions from ``settings.lake_uri``."""
    user = Entity(
        name="user",
        join_keys=[ENTITY_COLUMN],
        value_type=ValueType.INT64,
        description="A storefront customer.",
    )
    # The directory of daily partitions (``ds=YYYY-MM-DD/data.parquet``): Dask reads it as one
    # hive-partitioned dataset, so each day stays its own atomically replaced file.
    source = FileSource(
        name="user_behavior_source",
        path=f"{settings.lake_uri.rstrip('/')}/{USER_FEATURES_TABLE}",
        file_format=ParquetFormat(),
        timestamp_field=TIMESTAMP_COLUMN,
        s3_endpoint_override=settings.s3_endpoint_url if settings.lake_is_s3 else None,
        description="Daily user behaviour features written by pipelines.features.user_features.",
    )
    user_behavior = FeatureView(
        name="user_behavior",
        entities=[user],
        ttl=USER_BEHAVIOR_TTL,
        schema=[Field(name=ENTITY_COLUMN, dtype=Int64)]
        + [Field(name=name, dtype=Float64) for name in FEATURE_COLUMNS],
        source=source,
        online=True,
        description="Per-user event counts, recencies, cart abandonment, price level and social signals.",
    )
    purchase_intent = FeatureService(
        name="purchase_intent",
        features=[user_behavior],
        description="Features of the purchase_intent model (models/purchase_intent.yaml).",
    )
    return FeatureRepo(user, source, user_behavior, purchase_intent)
